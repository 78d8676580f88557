"""torchmetrics metrics for reconstructions of physical fields and for codebook statistics.

All states are sums, reduced by summation across processes, so epoch values are exact for the whole
validation set (never an average of per-batch values).
"""

from __future__ import annotations

import torch
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

    Sums are kept per group (e.g. per variable, `groups` of them): compute() gives the values over
    all samples, compute_groups() one dict per group with the same definitions.
    """

    sums = ("abs_norm", "sq_norm", "abs_err", "abs_ref", "sq_err", "sq_ref", "psnr", "ssim")
    counts = ("n_values", "n_samples", "n_flat")

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, group: torch.Tensor | None = None
    ) -> None:
        """pred, target: [B, C, H, W] physical units; sigma: [B, C] data-set σ; group: [B] ids in [0, groups)."""
        pred, target, group = self._prepare(pred, target, group, "[B, C, H, W]")
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

    @staticmethod
    def values(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n, s = t["n_values"].double(), t["n_samples"].double().clamp_min(1)
        return {
            "nmae": 100 * t["abs_norm"] / n,
            "nrmse": 100 * torch.sqrt(t["sq_norm"] / n),
            "rel_l1": 100 * t["abs_err"] / t["abs_ref"],
            "rel_l2": 100 * torch.sqrt(t["sq_err"] / t["sq_ref"]),
            "psnr": t["psnr"] / s,
            "ssim": t["ssim"] / s,
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
