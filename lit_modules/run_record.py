"""`<run dir>/run.json`, the record every run leaves: its status (running, completed, failed with the error,
preempted or interrupted), the optimized metric's best value, the step reached, the best and last checkpoints and
the final val/test metrics. Grid summaries (`--multirun`, sweep.GridSummary) and sweep.py read it."""

from __future__ import annotations

import json
import signal
import traceback
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from lit_modules.signals import EXIT_CODES
from tokenizers.load import atomic_write

RUN_RECORD = "run.json"
STATUS = {EXIT_CODES[signal.SIGTERM]: "preempted", EXIT_CODES[signal.SIGINT]: "interrupted"}


class RunRecord:
    """`with RunRecord(run_dir, optimized_metric) as record:` gives the record (a dict the block fills in) and writes
    it when the block ends, also when it raises: the status then says why (failed, preempted, interrupted) and the
    record keeps the error and its traceback. Rank 0 alone writes: under DDP the other ranks' runs are the same run."""

    def __init__(self, run_dir: Path, optimized_metric: str):
        self.run_dir = run_dir
        self.record = {"status": "running", "optimized_metric": optimized_metric, "value": None, "metrics": {}}

    def __enter__(self) -> dict:
        return self.record

    def __exit__(self, exc_type, exc: BaseException | None, tb) -> None:
        if exc is not None:
            status = STATUS.get(exc.code, "failed") if isinstance(exc, SystemExit) else "failed"
            error, trace = f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc))
            self.record.update(status=status, error=error, traceback=trace)
        if rank_zero_only.rank == 0:
            write_run_record(self.run_dir, self.record)


def write_run_record(run_dir: Path, record: dict) -> None:
    """<run_dir>/run.json, written atomically (atomic_write): a reader never sees half a record."""
    with atomic_write(run_dir / RUN_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))


def scalar_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def record_progress(record: dict, trainer: L.Trainer, last: Path) -> None:
    """The step the run reached and its last.ckpt (`last`; None when none was saved)."""
    record.update(step=trainer.global_step, last_ckpt=str(last) if last.is_file() else None)


def record_fit(record: dict, trainer: L.Trainer, last: Path, optimized_metric: str) -> float | None:
    """Fit's outcome into the record; returns the optimized metric's best value (the best checkpoint's score, else
    its last logged value, else None)."""
    record["metrics"].update(scalar_metrics(trainer.callback_metrics))
    checkpoint = trainer.checkpoint_callback
    record["best_ckpt"] = (checkpoint.best_model_path if checkpoint else "") or None
    record_progress(record, trainer, last)
    if checkpoint is not None and checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    if optimized_metric in trainer.callback_metrics:
        return float(trainer.callback_metrics[optimized_metric])
    return None
