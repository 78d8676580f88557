"""torchmetrics metrics for reconstructions of physical fields and for codebook statistics.

All states are sums, reduced by summation across processes, so epoch values are exact for the whole
validation set (never an average of per-batch values).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure


class FieldErrors(Metric):
    """Errors of a reconstruction x̂ of a physical field x (both in physical units), ×100 where a percentage.

    With σ the data-set standard deviation of the sample's variable (train split) and sums over
    every value of every sample of the epoch:
        nmae   = Σ|x̂−x|/σ / n ·100                 nrmse = sqrt(Σ((x̂−x)/σ)² / n) ·100
        rel_l1 = Σ|x̂−x| / Σ|x| ·100                rel_l2 = sqrt(Σ(x̂−x)² / Σx²) ·100
        psnr   = mean over samples of 10·log10(R² / mse_s), R = max(x_s) − min(x_s) of the target sample
        ssim   = mean over samples of SSIM(x̂_s, x_s) (Gaussian 11×11, σ 1.5) with data range R as above
    The data range is per sample because physical fields have no fixed range (DESIGN.md). PSNR and
    SSIM are undefined for a constant target: samples with R ≤ 1e-6·σ are left out of both means
    (`n_flat` counts them).

    Sums are kept per group (e.g. per variable, `groups` of them): compute() gives the values over
    all samples, compute_groups() one dict per group with the same definitions.
    """

    full_state_update = False
    sums = ("abs_norm", "sq_norm", "abs_err", "abs_ref", "sq_err", "sq_ref", "psnr", "ssim")
    counts = ("n_values", "n_samples", "n_flat")

    def __init__(self, groups: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        for name in self.sums:
            self.add_state(name, torch.zeros(groups, dtype=torch.float64), dist_reduce_fx="sum")
        for name in self.counts:
            self.add_state(name, torch.zeros(groups, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, name: str, group: torch.Tensor, per_sample: torch.Tensor) -> None:
        state = getattr(self, name)
        state.index_add_(0, group, per_sample.to(state.dtype))

    def update(self, pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor,
               group: torch.Tensor | None = None) -> None:
        """pred, target: [B, C, H, W] physical units; sigma: [B, C] data-set σ; group: [B] ids in [0, groups)."""
        if pred.shape != target.shape or pred.ndim != 4:
            raise ValueError(f"FieldErrors needs pred and target [B, C, H, W] of one shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        group = torch.zeros(len(pred), dtype=torch.long, device=pred.device) if group is None else group.long()
        if group.numel() and (group.min() < 0 or group.max() >= self.groups):
            raise ValueError(f"FieldErrors group ids must lie in [0, {self.groups}), got {group.tolist()}")
        pred, target = pred.double(), target.double()
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
        # SSIM with range R on (x̂, x) equals SSIM with range 1 on (x̂/R, x/R) (scale-, not shift-invariant)
        scale = rng[:, None, None, None]
        self._add("ssim", group, structural_similarity_index_measure(
            (pred / scale).float(), (target / scale).float(), data_range=1.0, reduction="none"))

    @staticmethod
    def _values(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n, s = t["n_values"].double(), t["n_samples"].double().clamp_min(1)
        return {
            "nmae": 100 * t["abs_norm"] / n,
            "nrmse": 100 * torch.sqrt(t["sq_norm"] / n),
            "rel_l1": 100 * t["abs_err"] / t["abs_ref"],
            "rel_l2": 100 * torch.sqrt(t["sq_err"] / t["sq_ref"]),
            "psnr": t["psnr"] / s,
            "ssim": t["ssim"] / s,
        }

    def compute(self) -> dict[str, torch.Tensor]:
        return self._values({name: getattr(self, name).sum() for name in self.sums + self.counts})

    def compute_groups(self) -> list[dict[str, torch.Tensor]]:
        """One dict per group with data this epoch (None for a group that saw no sample)."""
        with self.sync_context():  # the per-group view of the states compute() reduces across processes
            return [self._values({name: getattr(self, name)[g] for name in self.sums + self.counts})
                    if self.n_values[g] > 0 else None for g in range(self.groups)]


class CodebookUsage(Metric):
    """Histogram of token ids over the epoch, and from it (p = counts / Σcounts):
    usage = 100·|{i: counts_i > 0}| / V,  entropy_bits = −Σ p log2 p,  perplexity = 2^entropy_bits.
    """

    full_state_update = False

    def __init__(self, codebook_size: int, **kwargs):
        super().__init__(**kwargs)
        self.codebook_size = codebook_size
        self.add_state("counts", torch.zeros(codebook_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ids: torch.Tensor) -> None:
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.codebook_size):
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        self.counts += torch.bincount(ids.flatten(), minlength=self.codebook_size)

    def compute(self) -> dict[str, torch.Tensor]:
        counts = self.counts.double()
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p[p > 0] * torch.log2(p[p > 0])).sum()
        return {
            "usage": 100 * (counts > 0).double().mean(),
            "entropy_bits": entropy,
            "perplexity": torch.exp2(entropy),
        }

