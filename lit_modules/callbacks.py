"""Callbacks: W&B media (reconstruction panels, codebook histograms), last.ckpt, progress lines for logs without a
terminal; `batch_size` for Lightning's ThroughputMonitor.

Media logging is best effort: a logger failure is reported as a warning and never stops training.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException


def _wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def reconstruction_panel(inputs: torch.Tensor, *recons: torch.Tensor) -> np.ndarray:
    """inputs and one or more reconstructions: [N, C, H, W] -> uint8 rows of input | recon … | |error of the last
    recon|: [N·H, (2 + len(recons))·W, 3] for RGB (C = 3), else [N·H, …] from channel 0. Every tile of a row shares
    the input's min–max scale; the error is scaled by the same range.
    """
    rgb = inputs.shape[1] == 3
    rows = []
    for x, *ys in zip(inputs.float().cpu(), *(r.float().cpu() for r in recons), strict=True):
        if not rgb:
            x, ys = x[:1], [y[:1] for y in ys]
        lo, rng = x.min(), (x.max() - x.min()).clamp_min(1e-12)
        tiles = [(x - lo) / rng, *((y - lo) / rng for y in ys), (ys[-1] - x).abs() / rng]
        rows.append(torch.cat([t.clamp(0, 1) for t in tiles], dim=2))  # [C, H, (2 + R)·W]
    panel = torch.cat(rows, dim=1).permute(1, 2, 0)  # [N·H, (2 + R)·W, C]
    panel = panel if rgb else panel[..., 0]
    return (panel.numpy() * 255).astype(np.uint8)


def id_histogram(counts: torch.Tensor, max_bins: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Token counts per id [V] -> (counts per bin, bin edges over id space) with at most max_bins bins
    of consecutive ids (W&B histograms hold at most 512 bins)."""
    per_bin = -(-len(counts) // max_bins)
    padded = np.zeros(per_bin * -(-len(counts) // per_bin), dtype=np.float64)
    padded[: len(counts)] = counts.numpy()
    binned = padded.reshape(-1, per_bin).sum(1)
    edges = np.minimum(np.arange(len(binned) + 1) * per_bin, len(counts)).astype(np.float64)
    return binned, edges


def signal_panel(inputs: torch.Tensor, recons: torch.Tensor, height: int = 64) -> np.ndarray:
    """inputs, recons: [N, P] -> uint8 [N·height, P] image: input in white, reconstruction in grey, one row
    per signal on the input's min–max scale (where the two overlap the input is drawn on top)."""
    rows = []
    for x, y in zip(inputs.float().cpu(), recons.float().cpu(), strict=True):
        lo, rng = x.min(), (x.max() - x.min()).clamp_min(1e-12)
        img = np.zeros((height, x.shape[0]), dtype=np.uint8)
        for signal, shade in ((y, 128), (x, 255)):
            rows_px = ((1 - ((signal - lo) / rng).clamp(0, 1)) * (height - 1)).round().long().numpy()
            for t in range(len(rows_px)):  # vertical segment from the previous point: a connected trace
                a, b = sorted((rows_px[t - 1] if t else rows_px[t], rows_px[t]))
                img[a : b + 1, t] = shade
        rows.append(img)
    return np.concatenate(rows, axis=0)


def batch_size(batch: dict[str, torch.Tensor]) -> int:
    """Samples in a batch dict (every value has them on its first axis), for ThroughputMonitor."""
    return len(next(iter(batch.values())))


class MediaLogger(L.Callback):
    """Per validation epoch: a panel (one per group of three bands for multi-band images) of `n_samples`
    input | recon | error from the first validation batch's
    outputs ({"input", "recon"}), and one histogram of token counts per stream from the module's
    `codebook_counts` ({stream: counts [V]} of the last evaluation epoch; TokenizerModule keeps it)."""

    def __init__(self, n_samples: int = 4):
        self.n_samples = n_samples
        self._batch: dict[str, torch.Tensor] | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and isinstance(outputs, dict):
            self._batch = {k: v[: self.n_samples].detach().cpu() for k, v in outputs.items()}

    def on_validation_end(self, trainer, pl_module) -> None:
        loggers = _wandb_loggers(trainer)
        if not loggers or not trainer.is_global_zero or trainer.sanity_checking:
            return
        try:
            import wandb

            media = {}
            if self._batch is not None:
                inputs, recons = self._batch["input"], self._batch["recon"]
                caption = "input | reconstruction | |error| (per-row target range)"
                if inputs.ndim == 2:  # 1-D patches
                    media["val/reconstructions"] = wandb.Image(
                        signal_panel(inputs, recons), caption="input (white) and reconstruction (grey)"
                    )
                elif inputs.shape[1] <= 3:
                    media["val/reconstructions"] = wandb.Image(reconstruction_panel(inputs, recons), caption=caption)
                else:  # multi-band: one panel per group of three bands
                    for first in range(0, inputs.shape[1], 3):
                        bands = slice(first, min(first + 3, inputs.shape[1]))
                        media[f"val/reconstructions/bands_{first}-{bands.stop - 1}"] = wandb.Image(
                            reconstruction_panel(inputs[:, bands], recons[:, bands]), caption=caption
                        )
            for stream, counts in getattr(pl_module, "codebook_counts", {}).items():  # streams that saw tokens
                media[f"val/codebook_histogram/{stream}"] = wandb.Histogram(np_histogram=id_histogram(counts))
            for lg in loggers:
                lg.experiment.log({**media, "trainer/global_step": trainer.global_step})
        except Exception as e:  # a logger failure must never stop training
            warnings.warn(f"W&B media logging failed and was skipped: {e!r}", stacklevel=1)


class LatestCheckpoint(ModelCheckpoint):
    """`<dirpath>/last.ckpt`: the latest training state, written at every validation, when fit ends, and when a
    SIGTERM stops fit (Lightning raises SIGTERMException at the end of a batch, a consistent state to resume from;
    during a validation, at the end of a validation batch: the training weights are put back before saving).

    Lightning 2.6's `ModelCheckpoint(save_last=True)` rewrites last.ckpt only when its monitored metric
    improves, so after a worse validation "last" is an older state and resuming from it repeats steps.
    This one has no monitor: it always overwrites its single file.
    """

    def __init__(self, dirpath: str, filename: str = "last"):
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
            auto_insert_metric_name=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_global_step_saved and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Other exceptions (a NaN loss, a crash mid-step) may leave a half-updated state: keep the previous file.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            if trainer.validating:  # stopped inside a validation: the model holds the averaged (EMA) weights, which
                for callback in trainer.callbacks:  # weight averaging swaps back at the validation's end; do it now
                    if isinstance(callback, WeightAveraging):
                        callback.on_validation_epoch_end(trainer, pl_module)
            self.on_train_end(trainer, pl_module)


progress = logging.getLogger("scitok.progress")


class ProgressLog(L.Callback):
    """A log line every `every_n_steps` optimizer steps: step / max_steps, loss, samples/s and ETA, e.g.
        step 500/2000 (25%) · train/loss 0.1021 · 41.3 samples/s · ETA 9m12s
    The rich progress bar draws nothing where stdout is not a terminal (SLURM, nohup, a pipe), so a long run's log
    would show no line between the model summary and the test table. `when`: "no_tty" (default: only then),
    "always" or "never". Rank 0 only; samples/s counts this process's batches over the last interval."""

    def __init__(self, every_n_steps: int = 50, when: str = "no_tty"):
        if every_n_steps < 1 or when not in ("no_tty", "always", "never"):
            raise ValueError(
                f"ProgressLog: every_n_steps must be ≥ 1 and when one of no_tty, always, never; got "
                f"{every_n_steps}, {when!r}"
            )
        self.every, self.when = every_n_steps, when
        self._mark: tuple[float, int, int] | None = None  # (time, step, samples) at the last line
        self._samples = 0

    def active(self, trainer: L.Trainer) -> bool:
        if not trainer.is_global_zero or self.when == "never":
            return False
        # the process's own stdout: rich's progress display and pytest replace sys.stdout with proxies
        return self.when == "always" or sys.__stdout__ is None or not sys.__stdout__.isatty()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark, self._samples = (time.perf_counter(), trainer.global_step, 0), 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._samples += batch_size(batch) if isinstance(batch, dict) else 0
        step = trainer.global_step
        if not self.active(trainer) or step % self.every or self._mark is None or step == self._mark[1]:
            return
        now, (t0, step0, samples0) = time.perf_counter(), self._mark
        rate = (self._samples - samples0) / max(now - t0, 1e-9)
        total = eta = ""
        if trainer.max_steps > 0:  # -1: no step limit, so no total and no ETA
            left = (trainer.max_steps - step) * (now - t0) / (step - step0)
            total = f"/{trainer.max_steps} ({100 * step / trainer.max_steps:.0f}%)"
            eta = f" · ETA {int(left // 60)}m{int(left % 60):02d}s"
        loss = trainer.callback_metrics.get("train/loss")
        loss = f" · train/loss {float(loss):.4g}" if loss is not None else ""
        progress.info("step %d%s%s · %.1f samples/s%s", step, total, loss, rate, eta)
        self._mark = (now, step, self._samples)


class FiniteLoss(L.Callback):
    """Stops training at the first step whose loss is NaN or infinite, before its backward pass and optimizer step,
    so the weights (and every checkpoint written so far) stay finite. Raises FloatingPointError naming the step,
    the loss terms (the module's `loss_terms`) and the learning rate; train.py records the run as failed and exits
    non-zero. Without it a diverged run trains on NaN to the next validation and checkpoints NaN weights."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        terms = {k: float(v) for k, v in (getattr(pl_module, "loss_terms", None) or {}).items()}
        lrs = sorted({g["lr"] for opt in trainer.optimizers for g in opt.param_groups})
        last = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
        raise FloatingPointError(
            f"step {trainer.global_step}: the training loss is {float(loss.detach().float().mean())} "
            f"(terms: {', '.join(f'{k}={v:.4g}' for k, v in terms.items()) or 'n/a'}) at lr {lrs}; stopped before "
            f"this step's update, so the weights and the checkpoints in {last} are those of earlier steps. "
            f"Lower optimizer.lr, or clip gradients (trainer.gradient_clip_val)"
        )
