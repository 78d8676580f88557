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
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("abs_norm", "sq_norm", "abs_err", "abs_ref", "sq_err", "sq_ref", "psnr", "ssim"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_values", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_flat", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> None:
        """pred, target: [B, C, H, W] physical units; sigma: [B, C] data-set σ per sample and channel."""
        if pred.shape != target.shape or pred.ndim != 4:
            raise ValueError(f"FieldErrors needs pred and target [B, C, H, W] of one shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        pred, target = pred.double(), target.double()
        err = pred - target
        norm_err = err / sigma.double()[..., None, None]
        self.abs_norm += norm_err.abs().sum()
        self.sq_norm += norm_err.pow(2).sum()
        self.abs_err += err.abs().sum()
        self.abs_ref += target.abs().sum()
        self.sq_err += err.pow(2).sum()
        self.sq_ref += target.pow(2).sum()
        self.n_values += target.numel()
        rng = target.amax(dim=(1, 2, 3)) - target.amin(dim=(1, 2, 3))
        ok = rng > 1e-6 * sigma.double().amax(dim=1)
        self.n_samples += ok.sum()
        self.n_flat += (~ok).sum()
        if not ok.any():
            return
        pred, target, err, rng = pred[ok], target[ok], err[ok], rng[ok]
        mse = err.pow(2).mean(dim=(1, 2, 3))
        self.psnr += (10 * torch.log10(rng.pow(2) / mse.clamp_min(1e-30))).sum()
        # SSIM with range R on (x̂, x) equals SSIM with range 1 on (x̂/R, x/R) (scale-, not shift-invariant)
        scale = rng[:, None, None, None]
        self.ssim += structural_similarity_index_measure(
            (pred / scale).float(), (target / scale).float(), data_range=1.0, reduction="none"
        ).double().sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n, s = self.n_values.double(), self.n_samples.double().clamp_min(1)
        return {
            "nmae": 100 * self.abs_norm / n,
            "nrmse": 100 * torch.sqrt(self.sq_norm / n),
            "rel_l1": 100 * self.abs_err / self.abs_ref,
            "rel_l2": 100 * torch.sqrt(self.sq_err / self.sq_ref),
            "psnr": self.psnr / s,
            "ssim": self.ssim / s,
        }


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

