"""MediaLogger (best effort, panels by data kind) and StepProgressBar (steps against max_steps)."""

from types import SimpleNamespace
from unittest.mock import MagicMock

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import WandbLogger

from lit_modules.callbacks import MediaLogger, StepProgressBar
from tokenizers.base import DataMetadata


def field_module() -> SimpleNamespace:
    meta = DataMetadata(kind="fields", normalization="standardize", variables=["ns/u", "sw/h"], mean=[0, 1], std=[1, 2])
    return SimpleNamespace(metadata=meta, codebook_counts={"tokens": torch.arange(8.0)})


def trainer_with(logger) -> SimpleNamespace:
    return SimpleNamespace(loggers=[logger], is_global_zero=True, sanity_checking=False, global_step=3)


def field_batch(n: int = 6) -> tuple[dict, dict]:
    """(validation step outputs, batch) of a field run."""
    x = torch.randn(n, 1, 16, 16)
    outputs = {"input": x, "recon": x + 0.1}
    batch = {
        "field_variables_in": x,
        "variable_id": torch.tensor([1, 0] * (n // 2)),
        "field_variables_in_std": torch.full((n, 1), 2.0),
    }
    return outputs, batch


def test_media_logger_logs_a_field_panel_that_names_the_variables():
    logger, media = MagicMock(spec=WandbLogger), MediaLogger(n_samples=4)
    trainer, module = trainer_with(logger), field_module()
    outputs, batch = field_batch()
    media.on_validation_batch_end(trainer, module, outputs, batch, batch_idx=0)
    media.on_validation_batch_end(trainer, module, {"input": 0 * outputs["input"]}, batch, batch_idx=1)  # not kept
    media.on_validation_end(trainer, module)
    (logged,), _ = logger.experiment.log.call_args
    assert logged["trainer/global_step"] == 3 and "val/codebook_histogram/tokens" in logged
    panel = logged["val/reconstructions"]
    assert panel._caption.split("; ") == ["sw/h · nRMSE 5 %", "ns/u · nRMSE 5 %"] * 2  # the first 4 samples
    assert panel.image.width >= 3 * 200  # three tiles of ≥ 2 inches at 100 dpi


@pytest.mark.parametrize("failure", ["panel", "logger"])
def test_a_media_failure_is_a_warning_not_an_error(failure):
    logger, media = MagicMock(spec=WandbLogger), MediaLogger()
    trainer, module = trainer_with(logger), field_module()
    outputs, batch = field_batch()
    if failure == "panel":
        outputs["recon"] = outputs["recon"][:1]  # a reconstruction that does not match its input
    else:
        logger.experiment.log.side_effect = OSError("disk full")
    media.on_validation_batch_end(trainer, module, outputs, batch, batch_idx=0)
    with pytest.warns(UserWarning, match="W&B media logging failed and was skipped"):
        media.on_validation_end(trainer, module)


class Recorder(L.Callback):
    """What the rich bar's training task shows after each batch and at each epoch start."""

    def __init__(self, bar: StepProgressBar):
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        task = self.bar.progress.tasks[self.bar.train_progress_bar_id]
        self.seen.append((task.id, task.description.strip(), task.completed, task.total, trainer.global_step))


def fit(tmp_path, **limits) -> list[tuple]:
    bar = StepProgressBar()
    recorder = Recorder(bar)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        callbacks=[bar, recorder],
        limit_train_batches=3,
        limit_val_batches=1,
        val_check_interval=2,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        **limits,
    )
    trainer.fit(BoringModel())
    return recorder.seen


def test_a_step_bounded_run_counts_optimizer_steps_against_max_steps(tmp_path):
    seen = fit(tmp_path, max_steps=7)  # 3 batches an epoch: the run spans three epochs
    assert len({task for task, *_ in seen}) == 1  # one bar for the whole run, not one per epoch
    assert [(desc, done, total) for _, desc, done, total, _ in seen] == [("step", s, 7) for s in range(1, 8)]
    assert all(done == step for *_, done, _, step in seen)


def test_an_epoch_bounded_run_keeps_lightnings_epoch_bar(tmp_path):
    seen = fit(tmp_path, max_epochs=2)
    assert [(desc, done, total) for _, desc, done, total, _ in seen] == [
        (f"Epoch {e}/1", b, 3) for e in range(2) for b in range(1, 4)
    ]
