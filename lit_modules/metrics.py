"""torchmetrics metrics for reconstructions of physical fields and for codebook statistics.

All states are sums, reduced by summation across processes, so epoch values are exact for the whole
validation set (never an average of per-batch values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure

from tokenizers.base import check_ids, codebook_stats


def ssim_shifted(pred: torch.Tensor, target: torch.Tensor, rng: torch.Tensor, **kwargs) -> torch.Tensor:
    """Per-sample SSIM of pred and target ([N, C, H, W]) with data range R = `rng` ([N]), both first shifted by the
    target sample's minimum m, so that a constant offset of the data never changes it: SSIM(x̂ − m, x − m; L = R),
    R = max(x_s) − min(x_s) of the target sample, which then spans [0, R] like an image in [0, L].

    Why the shift: SSIM's luminance term (2μx̂μx + C1) / (μx̂² + μx² + C1) is not shift-invariant. On raw data far
    from zero (pressure at 101325 ± 40 Pa: μ ≈ 2500 R) it is ≈ 1 whatever the means, so the value would depend on
    where the variable's zero lies; shifted, it compares the means above the target's minimum, the same for an
    offset of 0 or 1e5·R. Why it is exact enough: the shift is taken in float64 (a float32 input's difference from
    m is exact there) and only (x − m) / R, in ~[0, 1], is cast to float32 for SSIM, where float32's cancellation
    in E[x²] − E[x]² (~1e-7) is small against C2 = 0.03². On the raw data that error grows with the offset
    squared and swamps C2 (SSIM far below −1). Dividing by R with L = 1 equals L = R (SSIM is scale-invariant
    when L scales with the data).

    SSIM is torchmetrics' structural_similarity_index_measure with its defaults: C1 = (0.01 L)², C2 = (0.03 L)²,
    a Gaussian window σ 1.5 of 2·int(3.5σ + 0.5) + 1 = 11 taps per axis (`kernel_size` is ignored with a
    Gaussian), population (not sample) covariances, each image reflect-padded by 5 (torch's "reflect",
    d c b | a b c d) so that every pixel is a window centre, and the SSIM map averaged over all pixels.
    scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) has the
    same window but drops a 5-pixel border before averaging: its map equals this one on the interior, and its
    value equals this one on inputs np.pad(·, 5, mode="reflect"). `kwargs` go to torchmetrics (sigma=(0.1, 1.5)
    for 1-D signals as [N, 1, 1, P]: a 1-tap window along the unit axis).
    """
    shape = (-1,) + (1,) * (target.ndim - 1)
    low, scale = target.flatten(1).amin(1).double().view(shape), rng.double().view(shape)
    shift = lambda x: ((x.double() - low) / scale).float()  # noqa: E731
    return structural_similarity_index_measure(shift(pred), shift(target), data_range=1.0, reduction="none", **kwargs)


def _as_fields(x: torch.Tensor, r: torch.Tensor, window: int | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x, r: [..., H, W] -> both float64 [N, 1, H, W] (N the product of the leading dims), shapes checked."""
    if x.shape != r.shape or x.ndim < 2:
        raise ValueError(f"{name} needs x and r [..., H, W] of one shape, got {tuple(x.shape)} and {tuple(r.shape)}")
    if window is not None and (window % 2 == 0 or min(x.shape[-2:]) < window):
        raise ValueError(f"{name} needs an odd window ≤ H and W, got window {window} for fields {tuple(x.shape)}")
    return x.double().reshape(-1, 1, *x.shape[-2:]), r.double().reshape(-1, 1, *x.shape[-2:])


def local_variance_error(x: torch.Tensor, r: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Local-variance error Δσ²_loc (Phaedra paper) of a reconstruction r of a field x, in percent.

    x (target), r: [..., H, W] (e.g. [B, H, W] or [B, C, H, W]) -> [...], one value per 2-D field. With v_x(w),
    v_r(w) the population variances (mean of squares − square of the mean, in float64) of x and r in the window w,
    over every window×window window lying wholly inside the field (valid, stride 1):
        local_var_err = max_w |v_x(w) − v_r(w)| / max_w v_x(w) · 100
    0 for r = x, 75 for r = x/2; unchanged by adding a constant to x or r (each field is centred on its own
    mean before the windows' moments are taken, so float64's cancellation does not grow with an offset).
    Undefined (inf or nan) for a target without variance in any window.
    """
    lead = x.shape[:-2]
    x, r = _as_fields(x, r, window, "local_variance_error")
    # each field minus its own mean first (variances do not change): E[f²] − E[f]² then cancels no offset
    x, r = x - x.mean((2, 3), keepdim=True), r - r.mean((2, 3), keepdim=True)
    pool = lambda f: F.avg_pool2d(f, window, stride=1)  # noqa: E731
    var_x = (pool(x * x) - pool(x).pow(2)).clamp_min(0).flatten(1)
    var_r = (pool(r * r) - pool(r).pow(2)).clamp_min(0).flatten(1)
    return (100 * (var_x - var_r).abs().amax(1) / var_x.amax(1)).reshape(lead)


def spectral_coherence_min(x: torch.Tensor, r: torch.Tensor, window: int = 7, threshold: float = 1e-4) -> torch.Tensor:
    """Minimum spectral coherence γ_min (Phaedra paper) of a reconstruction r of a field x, in [0, 1].

    x (target), r: [..., H, W] -> [...]. X = fft2(x), R = fft2(r) (torch's default norm; unshifted grid, k = 0 at
    index [0, 0]). B is the window×window box average over that index grid with zero padding (window // 2 zeros
    on each side, not circular: k = 0 and the most negative wavenumbers are not neighbours), always the box sum
    divided by window², at the edges too. Then
        S_xx = B(|X|²),   S_rr = B(|R|²),   S_xr = B(X·conj(R))  (complex, averaged as complex)
        γ(k) = |S_xr(k)|² / (S_xx(k)·S_rr(k))     (γ = 0 where S_rr(k) = 0: r has no power near k)
        spectral_coherence_min = min of γ(k) over the k with S_xx(k) > threshold · max_k S_xx(k)
    γ ≤ 1 (Cauchy–Schwarz), with equality where R ∝ X over the whole box: 1 for r = x and r = a·x (a ≠ 0).
    """
    lead = x.shape[:-2]
    x, r = _as_fields(x, r, window, "spectral_coherence_min")
    X, R = torch.fft.fft2(x), torch.fft.fft2(r)
    box = lambda f: F.avg_pool2d(f, window, stride=1, padding=window // 2).flatten(2)  # noqa: E731  zero-padded
    cross = X * R.conj()
    s_xx = box(X.real.pow(2) + X.imag.pow(2))[:, 0]  # [N, H·W]
    s_rr = box(R.real.pow(2) + R.imag.pow(2))[:, 0]
    s_xr_sq = box(torch.cat([cross.real, cross.imag], 1)).pow(2).sum(1)  # |S_xr|²
    power = s_xx * s_rr
    gamma = torch.where(power > 0, s_xr_sq / power.clamp_min(torch.finfo(power.dtype).tiny), 0.0)
    kept = s_xx > threshold * s_xx.amax(1, keepdim=True)
    return gamma.masked_fill(~kept, torch.inf).amin(1).reshape(lead)


def radial_power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """x: [N, 1, H, W] float64 -> [N, K]: P(k) = Σ of |fft2(x, norm="forward")|² over the wavenumbers (k_y, k_x)
    with round(sqrt(k_y² + k_x²)) = k, where k_y = fftfreq(H)·H and k_x = fftfreq(W)·W are the signed integer
    wavenumbers; K = the largest such radius + 1 (the corners beyond the Nyquist circle included, so Σ_k P(k) =
    mean(x²) by Parseval). No radius is a tie: sqrt of an integer is never an odd multiple of 1/2."""
    H, W = x.shape[-2:]
    ky = torch.fft.fftfreq(H, 1 / H, dtype=torch.float64, device=x.device)
    kx = torch.fft.fftfreq(W, 1 / W, dtype=torch.float64, device=x.device)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long().flatten()
    power = torch.fft.fft2(x, norm="forward").abs().pow(2).flatten(1)
    return power.new_zeros(len(power), int(radius.max()) + 1).index_add_(1, radius, power)


def spectral_energy_fidelity(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Spectral energy fidelity (Phaedra paper) of a reconstruction r of a field x, in percent.

    x (target), r: [..., H, W] -> [...]. With P_x, P_r the radial power spectra of radial_power_spectrum
    (|fft2(·, norm="forward")|² summed into integer radius bins k = round(sqrt(k_y² + k_x²)), float64):
        spectral_energy_fidelity = Σ_k min(P_x(k), P_r(k)) / Σ_k P_x(k) · 100
    100 for r = x, 25 for r = x/2 (and for r = 2x: min(P, 4P) = P gives 100 — it measures missing energy only).
    """
    lead = x.shape[:-2]
    x, r = _as_fields(x, r, None, "spectral_energy_fidelity")
    p_x, p_r = radial_power_spectrum(x), radial_power_spectrum(r)
    return (100 * torch.minimum(p_x, p_r).sum(1) / p_x.sum(1)).reshape(lead)


class GroupedSums(Metric):
    """Sum states kept per group (e.g. per variable or sampling rate), reduced by summation across processes.

    Subclasses name their states: `sums` (float64 [groups]), `counts` (int64 [groups]), `vectors`
    ({name: width}: float64 [groups, width]), and turn a dict of states into metric values in `values()`.
    compute() gives the values over all groups, compute_groups() one dict per group (None if it saw nothing).
    """

    full_state_update = False
    sums: tuple[str, ...] = ()
    counts: tuple[str, ...] = ()
    vectors: dict[str, int] = {}
    seen = "n_values"  # the count that says whether a group saw any data

    def __init__(self, groups: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        for name in self.sums:
            self.add_state(name, torch.zeros(groups, dtype=torch.float64), dist_reduce_fx="sum")
        for name in self.counts:
            self.add_state(name, torch.zeros(groups, dtype=torch.long), dist_reduce_fx="sum")
        for name, width in self.vectors.items():
            self.add_state(name, torch.zeros(groups, width, dtype=torch.float64), dist_reduce_fx="sum")

    def _groups(self, group: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        group = torch.zeros(n, dtype=torch.long, device=device) if group is None else group.long()
        if group.numel() and (group.min() < 0 or group.max() >= self.groups):
            raise ValueError(f"{type(self).__name__} group ids must lie in [0, {self.groups}), got {group.tolist()}")
        return group

    def _prepare(
        self, pred: torch.Tensor, target: torch.Tensor, group: torch.Tensor | None, layout: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check pred/target against `layout` (e.g. "[B, C, H, W]"); return them in float64 and the group ids."""
        if pred.shape != target.shape or pred.ndim != layout.count(",") + 1:
            raise ValueError(
                f"{type(self).__name__} needs pred and target {layout} of one shape, got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        return pred.double(), target.double(), self._groups(group, len(pred), pred.device)

    def _add(self, name: str, group: torch.Tensor, per_item: torch.Tensor) -> None:
        state = getattr(self, name)
        state.index_add_(0, group, per_item.to(state.dtype))

    def _states(self, index) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name)[index] for name in (*self.sums, *self.counts, *self.vectors)}

    @staticmethod
    def values(states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def compute(self) -> dict[str, torch.Tensor]:
        return self.values({k: v.sum(0) for k, v in self._states(slice(None)).items()})

    def compute_groups(self) -> list[dict[str, torch.Tensor] | None]:
        with self.sync_context():  # the per-group view of the states compute() reduces across processes
            return [
                self.values(self._states(g)) if getattr(self, self.seen)[g] > 0 else None for g in range(self.groups)
            ]


PHYSICS = ("local_var_err", "spectral_coherence_min", "spectral_energy_fidelity")  # FieldErrors' paper metrics
PHYSICS_WINDOW = 7  # the paper's 7×7 local-variance windows and spectral box


class FieldErrors(GroupedSums):
    """Errors of a reconstruction x̂ of a physical field x (both in physical units), ×100 where a percentage.

    With σ the data-set standard deviation of the sample's variable (train split) and sums over
    every value of every sample of the epoch:
        nmae   = Σ|x̂−x|/σ / n ·100                 nrmse = sqrt(Σ((x̂−x)/σ)² / n) ·100
        rel_l1 = Σ|x̂−x| / Σ|x| ·100                rel_l2 = sqrt(Σ(x̂−x)² / Σx²) ·100
        psnr   = mean over samples of 10·log10(R² / mse_s), R = max(x_s) − min(x_s) of the target sample
        ssim   = mean over samples of SSIM(x̂_s − m_s, x_s − m_s) (Gaussian 11×11, σ 1.5, reflect-padded, over all
                 pixels) with data range R as above, m_s = min(x_s): both shifted by the target's minimum so that
                 an offset never changes it (see ssim_shifted)
    The data range is per sample because physical fields have no fixed range (DESIGN.md). PSNR and
    SSIM are undefined for a constant target: samples with R ≤ 1e-6·σ are left out of both means
    (`n_flat` counts them).

    The Phaedra paper's physics metrics, on the fields as the tokenizer sees them, z = (x − μ)/σ and
    ẑ = (x̂ − μ)/σ with μ, σ the variable's data-set statistics (`mean`, `sigma`), one value per field (one channel
    of one sample) averaged over the fields whose target is not flat (R_c > 1e-6·σ_c; with one channel these are
    exactly the samples of psnr and ssim; `n_fields` counts them):
        local_var_err            = mean of local_variance_error(z, ẑ)       (7×7 windows, %)
        spectral_coherence_min   = mean of spectral_coherence_min(z, ẑ)     (7×7 spectral box, threshold 1e-4)
        spectral_energy_fidelity = mean of spectral_energy_fidelity(z, ẑ)   (%)
    Why normalized: the spectra of a raw field far from zero (pressure at 1e5 Pa) are dominated by its k = 0
    offset: the coherence threshold 1e-4·max S_xx would then drop nearly every wavenumber, and the energy fidelity
    would be ≈ 100 whatever the reconstruction. (Dividing by σ changes none of the three, which are scale-free;
    subtracting μ changes the two spectral ones.) Fields smaller than 7×7 are left out (n_fields counts none);
    with no field counted the three are nan.

    Sums are kept per group (e.g. per variable, `groups` of them): compute() gives the values over
    all samples, compute_groups() one dict per group with the same definitions.
    """

    sums = ("abs_norm", "sq_norm", "abs_err", "abs_ref", "sq_err", "sq_ref", "psnr", "ssim", *PHYSICS)
    counts = ("n_values", "n_samples", "n_flat", "n_fields")

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        sigma: torch.Tensor,
        group: torch.Tensor | None = None,
        mean: torch.Tensor | None = None,
    ) -> None:
        """pred, target: [B, C, H, W] physical units; sigma, mean: [B, C] data-set σ and mean of each sample's
        variable (mean None: 0); group: [B] ids in [0, groups)."""
        pred, target, group = self._prepare(pred, target, group, "[B, C, H, W]")
        self._physics(pred, target, sigma.double(), 0.0 if mean is None else mean.double(), group)
        err = pred - target
        norm_err = err / sigma.double()[..., None, None]
        dims = (1, 2, 3)
        self._add("abs_norm", group, norm_err.abs().sum(dims))
        self._add("sq_norm", group, norm_err.pow(2).sum(dims))
        self._add("abs_err", group, err.abs().sum(dims))
        self._add("abs_ref", group, target.abs().sum(dims))
        self._add("sq_err", group, err.pow(2).sum(dims))
        self._add("sq_ref", group, target.pow(2).sum(dims))
        self._add("n_values", group, torch.full_like(group, target[0].numel()))
        rng = target.amax(dim=dims) - target.amin(dim=dims)
        ok = rng > 1e-6 * sigma.double().amax(dim=1)
        self._add("n_samples", group, ok.long())
        self._add("n_flat", group, (~ok).long())
        if not ok.any():
            return
        pred, target, err, rng, group = pred[ok], target[ok], err[ok], rng[ok], group[ok]
        mse = err.pow(2).mean(dim=dims)
        self._add("psnr", group, 10 * torch.log10(rng.pow(2) / mse.clamp_min(1e-30)))
        self._add("ssim", group, ssim_shifted(pred, target, rng))

    def _physics(self, pred, target, sigma, mean, group) -> None:
        """Sum the physics metrics of the non-flat fields (float64 [B, C, H, W]; sigma, mean: [B, C] or 0)."""
        if min(target.shape[-2:]) < PHYSICS_WINDOW:
            return
        mean = torch.as_tensor(mean, dtype=torch.float64, device=target.device)
        mean, scale = mean[..., None, None] if mean.ndim else mean, sigma[..., None, None]
        z, z_hat = (target - mean) / scale, (pred - mean) / scale
        ok = (target.amax((2, 3)) - target.amin((2, 3))) > 1e-6 * sigma  # [B, C] (sigma [B, C] or [B, 1])
        self._add("n_fields", group, ok.sum(1))
        if not ok.any():
            return
        owner = group[:, None].expand_as(ok)[ok]  # the group of each non-flat field
        z, z_hat = z[ok], z_hat[ok]  # [F, H, W]
        self._add("local_var_err", owner, local_variance_error(z, z_hat, PHYSICS_WINDOW))
        self._add("spectral_coherence_min", owner, spectral_coherence_min(z, z_hat, PHYSICS_WINDOW))
        self._add("spectral_energy_fidelity", owner, spectral_energy_fidelity(z, z_hat))

    @staticmethod
    def values(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n, s = t["n_values"].double(), t["n_samples"].double().clamp_min(1)
        fields = t["n_fields"].double()
        fields = torch.where(fields > 0, fields, torch.nan)  # nan, not 0 (a perfect score), when none was seen
        return {
            "nmae": 100 * t["abs_norm"] / n,
            "nrmse": 100 * torch.sqrt(t["sq_norm"] / n),
            "rel_l1": 100 * t["abs_err"] / t["abs_ref"],
            "rel_l2": 100 * torch.sqrt(t["sq_err"] / t["sq_ref"]),
            "psnr": t["psnr"] / s,
            "ssim": t["ssim"] / s,
            **{name: t[name] / fields for name in PHYSICS},
        }


class CodebookUsage(Metric):
    """Histogram of token ids over the epoch, per group (e.g. per variable or sampling rate), and from it
    tokenizers.base.codebook_stats (p = counts / Σcounts):  usage = 100·|{i: counts_i > 0}| / V,
    entropy_bits = −Σ p log2 p,  perplexity = 2^entropy_bits. compute() uses the histogram summed over groups.
    """

    full_state_update = False

    def __init__(self, codebook_size: int, groups: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.codebook_size, self.groups = codebook_size, groups
        self.add_state("counts", torch.zeros(groups, codebook_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ids: torch.Tensor, group: torch.Tensor | None = None) -> None:
        """ids: [B, ...] token ids; group: [B] group of each sample (all in group 0 when None)."""
        check_ids(ids, self.codebook_size, "token")
        if group is None:
            group = torch.zeros(ids.shape[0] if ids.ndim else 1, dtype=torch.long, device=ids.device)
        per_sample = ids.reshape(len(group), -1)
        flat = (group.long()[:, None] * self.codebook_size + per_sample).flatten()
        self.counts += torch.bincount(flat, minlength=self.groups * self.codebook_size).view(self.groups, -1)

    def compute(self) -> dict[str, torch.Tensor]:
        return codebook_stats(self.counts.sum(0))

    def compute_groups(self) -> list[dict[str, torch.Tensor] | None]:
        with self.sync_context():
            return [codebook_stats(c) if c.sum() > 0 else None for c in self.counts]


EEG_BANDS_HZ = {
    "delta": (0.5, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 100.0),
}


def pearson(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[..., P] -> [...]: the correlation of pred and target along the last axis (0 where one is flat)."""
    pc, tc = pred - pred.mean(-1, keepdim=True), target - target.mean(-1, keepdim=True)
    return (pc * tc).sum(-1) / (pc.norm(dim=-1) * tc.norm(dim=-1)).clamp_min(1e-30)


def band_powers(x: torch.Tensor, sfreq: torch.Tensor) -> torch.Tensor:
    """x: [N, P] patches, sfreq: [N] Hz -> [N, 5] power per EEG band (|rFFT|², bins with lo ≤ f < hi)."""
    power = torch.fft.rfft(x.double(), dim=-1).abs().pow(2)  # [N, P//2+1]
    bins = torch.arange(power.shape[-1], dtype=torch.float64, device=x.device)
    freqs = bins[None, :] * sfreq.double()[:, None] / x.shape[-1]  # [N, F]
    return torch.stack([(power * ((freqs >= lo) & (freqs < hi))).sum(-1) for lo, hi in EEG_BANDS_HZ.values()], -1)


class SignalErrors(GroupedSums):
    """Errors of reconstructed 1-D patches x̂ of x ([N, P], same units), summed per group (e.g. per rate):
        mse, mae            over every sample of every patch
        snr_db  = 10·log10(Σx² / Σ(x̂−x)²) over the epoch
        psnr    = mean over patches of 10·log10(R² / mse_p), R = max − min of the target patch
        ssim    = mean over patches of 1-D SSIM (Gaussian window 11, σ 1.5, ends reflect-padded so every
                  sample is a window centre) with range R, both shifted by the target patch's minimum (ssim_shifted)
        pearson = mean over patches of the correlation of x̂ and x
        psd_err/<band> = Σ_patches |P̂_b − P_b| / Σ_patches P_b ·100, P_b the |rFFT|² power in the EEG band
    Patches with R ≤ 1e-6 (flat) are left out of psnr, ssim and pearson.
    """

    sums = ("sq_err", "abs_err", "sq_ref", "psnr", "ssim", "pearson")
    counts = ("n_values", "n_patches")
    vectors = {"band_err": len(EEG_BANDS_HZ), "band_ref": len(EEG_BANDS_HZ)}

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, sfreq: torch.Tensor, group: torch.Tensor | None = None
    ) -> None:
        pred, target, group = self._prepare(pred, target, group, "[N, P]")
        err = pred - target
        self._add("sq_err", group, err.pow(2).sum(-1))
        self._add("abs_err", group, err.abs().sum(-1))
        self._add("sq_ref", group, target.pow(2).sum(-1))
        self._add("n_values", group, torch.full_like(group, pred.shape[1]))
        p_ref, p_hat = band_powers(target, sfreq), band_powers(pred, sfreq)
        self._add("band_err", group, (p_hat - p_ref).abs())
        self._add("band_ref", group, p_ref)
        rng = target.amax(-1) - target.amin(-1)
        ok = rng > 1e-6
        if not ok.any():
            return
        pred, target, err, rng, group = pred[ok], target[ok], err[ok], rng[ok], group[ok]
        self._add("n_patches", group, torch.ones_like(group))
        self._add("psnr", group, 10 * torch.log10(rng.pow(2) / err.pow(2).mean(-1).clamp_min(1e-30)))
        # [N, 1, 1, P]; σ 0.1 makes the unit axis a 1-tap window
        self._add("ssim", group, ssim_shifted(pred[:, None, None], target[:, None, None], rng, sigma=(0.1, 1.5)))
        self._add("pearson", group, pearson(pred, target))

    @staticmethod
    def values(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n, p = t["n_values"].double(), t["n_patches"].double().clamp_min(1)
        out = {
            "mse": t["sq_err"] / n,
            "mae": t["abs_err"] / n,
            "snr_db": 10 * torch.log10(t["sq_ref"] / t["sq_err"].clamp_min(1e-30)),
            "psnr": t["psnr"] / p,
            "ssim": t["ssim"] / p,
            "pearson": t["pearson"] / p,
        }
        for b, band in enumerate(EEG_BANDS_HZ):
            out[f"psd_err/{band}"] = 100 * t["band_err"][..., b] / t["band_ref"][..., b].clamp_min(1e-30)
        return out


class ImageErrors(GroupedSums):
    """Reconstructions of images in [0, 1] ([N, C, H, W]), data range fixed at 1:
    mse  over every pixel;  psnr = mean over images of 10·log10(1 / mse_i);
    ssim = mean over images of SSIM (Gaussian 11×11, σ 1.5, data range 1; see ssim_shifted), unshifted: a fixed
    range has no offset to remove (pixels lie within L of 0, so float32 is as exact as SSIM's usual [0, 1]
    setting), and the luminance term on absolute intensity is the standard image SSIM that papers report
    """

    sums = ("sq_err", "psnr", "ssim")
    counts = ("n_values", "n_images")

    def update(self, pred: torch.Tensor, target: torch.Tensor, group: torch.Tensor | None = None) -> None:
        pred, target, group = self._prepare(pred, target, group, "[N, C, H, W]")
        mse = (pred - target).pow(2).flatten(1)
        self._add("sq_err", group, mse.sum(-1))
        self._add("n_values", group, torch.full_like(group, mse.shape[1]))
        self._add("n_images", group, torch.ones_like(group))
        self._add("psnr", group, -10 * torch.log10(mse.mean(-1).clamp_min(1e-30)))
        self._add(
            "ssim",
            group,
            structural_similarity_index_measure(pred.float(), target.float(), data_range=1.0, reduction="none"),
        )

    @staticmethod
    def values(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = t["n_images"].double().clamp_min(1)
        return {"mse": t["sq_err"] / t["n_values"].double(), "psnr": t["psnr"] / n, "ssim": t["ssim"] / n}


class TokenErrors(GroupedSums):
    """Next-token prediction per group (e.g. per modality): over every non-PAD target of the epoch,
    accuracy = 100 · #(argmax = target) / n      ce = Σ −log p(target) / n      perplexity = exp(ce)
    """

    sums = ("nll",)
    counts = ("n_values", "correct")

    def update(self, logits: torch.Tensor, targets: torch.Tensor, group: torch.Tensor) -> None:
        """logits [N, V], targets [N] (only the tokens to count), group [N] ids in [0, groups)."""
        group = self._groups(group, len(targets), targets.device)
        nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        self._add("nll", group, nll.double())
        self._add("n_values", group, torch.ones_like(group))
        self._add("correct", group, (logits.argmax(-1) == targets).long())

    @staticmethod
    def values(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = t["n_values"].double().clamp_min(1)
        ce = t["nll"] / n
        return {"accuracy": 100 * t["correct"].double() / n, "ce": ce, "perplexity": torch.exp(ce)}
