"""Callbacks: W&B media (reconstruction panels, codebook histograms), last.ckpt, a progress bar counting steps and
progress lines for logs without a terminal; `batch_size` for Lightning's ThroughputMonitor.

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
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, WeightAveraging
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_modules.panels import LABEL_KEYS, reconstruction_panels


def _wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def id_histogram(counts: torch.Tensor, max_bins: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Token counts per id [V] -> (counts per bin, bin edges over id space) with at most max_bins bins
    of consecutive ids (W&B histograms hold at most 512 bins)."""
    per_bin = -(-len(counts) // max_bins)
    padded = np.zeros(per_bin * -(-len(counts) // per_bin), dtype=np.float64)
    padded[: len(counts)] = counts.numpy()
    binned = padded.reshape(-1, per_bin).sum(1)
    edges = np.minimum(np.arange(len(binned) + 1) * per_bin, len(counts)).astype(np.float64)
    return binned, edges


def batch_size(batch: dict[str, torch.Tensor]) -> int:
    """Samples in a batch dict (every value has them on its first axis), for ThroughputMonitor."""
    return len(next(iter(batch.values())))


class MediaLogger(L.Callback):
    """Per validation epoch: panels of `n_samples` input | reconstruction | error (lit_modules/panels.py, drawn by
    the module's data kind: fields in colour maps named by variable, EEG as traces, images as images), and one
    histogram of token counts per stream from the module's `codebook_counts` ({stream: counts [V]} of the last
    evaluation epoch; TokenizerModule keeps it).

    The rows: the first sample of each variable the validation reaches (batches carrying "variable_id"; validation
    order is fixed, and its first batch often holds one variable only), then the first batch's leading samples.
    A row holds the step's outputs ({"input", "recon"}) and the batch's LABEL_KEYS (its variable, σ, rate)."""

    def __init__(self, n_samples: int = 4):
        self.n_samples = n_samples
        self._distinct: list[dict[str, torch.Tensor]] = []  # one sample per variable, in validation order
        self._first: list[dict[str, torch.Tensor]] = []  # the first batch's other leading samples
        self._variables: set[int] = set()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._distinct, self._first, self._variables = [], [], set()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not _wandb_loggers(trainer) or not trainer.is_global_zero or not isinstance(outputs, dict):
            return
        found_all = len(self._variables) >= self._wanted(pl_module)
        if batch_idx > 0 and (found_all or not isinstance(batch, dict) or "variable_id" not in batch):
            return  # nothing left to find: later batches cost no copy and no device sync
        try:
            rows = {**outputs, **{k: batch[k] for k in LABEL_KEYS if isinstance(batch, dict) and k in batch}}
            distinct = []
            if "variable_id" in rows:
                for i, v in enumerate(rows["variable_id"].tolist()):
                    if v not in self._variables and len(self._variables) < self.n_samples:
                        self._variables.add(v)
                        distinct.append(i)
            first = (
                [] if batch_idx else [i for i in range(min(self.n_samples, len(rows["input"]))) if i not in distinct]
            )
            for picks, into in ((distinct, self._distinct), (first, self._first)):
                into += [{k: v[i].detach().cpu() for k, v in rows.items()} for i in picks]
        except Exception as e:  # a panel must never stop training
            warnings.warn(f"W&B media: validation samples not kept for the panel: {e!r}", stacklevel=1)

    def _wanted(self, pl_module) -> int:
        """How many distinct variables the rows can show: n_samples, or fewer where the data has fewer."""
        metadata = getattr(pl_module, "metadata", None)
        return (
            min(self.n_samples, len(metadata.variables))
            if metadata is not None and metadata.variables
            else self.n_samples
        )

    def on_validation_end(self, trainer, pl_module) -> None:
        loggers = _wandb_loggers(trainer)
        if not loggers or not trainer.is_global_zero or trainer.sanity_checking:
            return
        try:
            import wandb

            media = {}
            rows = (self._distinct + self._first)[: self.n_samples]
            if rows:
                panel = {k: torch.stack([row[k] for row in rows]) for k in rows[0]}
                metadata = getattr(pl_module, "metadata", None)
                kind, variables = (metadata.kind, metadata.variables) if metadata is not None else (None, [])
                for suffix, (image, caption) in reconstruction_panels(panel, kind, variables).items():
                    media[f"val/reconstructions{suffix}"] = wandb.Image(image, caption=caption)
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


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar, counting optimizer steps against trainer.max_steps in a step-bounded run (max_steps > 0):
    one bar for the whole run, "step ━━━━ 40/100", instead of a bar per epoch titled "Epoch 8/-2" (such runs have
    max_epochs -1). Other runs keep Lightning's epoch bar."""

    def _step_bounded(self) -> bool:
        return self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._step_bounded() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._step_bounded():
            return super()._get_train_description(current_epoch)
        return f"{'step':{len(self.validation_description)}}"  # padded as Lightning's: no flicker beside "Validation"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._step_bounded() and self.train_progress_bar_id is not None:
            return  # Lightning resets the bar to 0 (and its clock) every epoch; the step bar runs on
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        # Lightning draws batch_idx + 1 as the bar's count: hand it the optimizer steps done instead
        done = trainer.global_step - 1 if self._step_bounded() else batch_idx
        super().on_train_batch_end(trainer, pl_module, outputs, batch, done)


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
