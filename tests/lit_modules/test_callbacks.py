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
    meta = DataMetadata(
        kind="fields", normalization="standardize", variables=["ns/u", "sw/h", "burgers/u"], mean=[0] * 3, std=[1] * 3
    )
    return SimpleNamespace(metadata=meta, codebook_counts={"tokens": torch.arange(8.0)})


def trainer_with(logger) -> SimpleNamespace:
    return SimpleNamespace(loggers=[logger], is_global_zero=True, sanity_checking=False, global_step=3)


def field_batch(variable_ids: list[int]) -> tuple[dict, dict]:
    """(validation step outputs, batch) of a field run: an RMSE of 0.1, every variable's σ 2 (nRMSE 5 %)."""
    n = len(variable_ids)
    x = torch.randn(n, 1, 16, 16)
    outputs = {"input": x, "recon": x + 0.1}
    batch = {
        "field_variables_in": x,
        "variable_id": torch.tensor(variable_ids),
        "field_variables_in_std": torch.full((n, 1), 2.0),
    }
    return outputs, batch


def validate(media: MediaLogger, trainer, module, batches) -> None:
    media.on_validation_epoch_start(trainer, module)
    for i, (outputs, batch) in enumerate(batches):
        media.on_validation_batch_end(trainer, module, outputs, batch, batch_idx=i)
    media.on_validation_end(trainer, module)


def test_the_field_panel_shows_each_variable_then_the_first_batch_and_names_them():
    logger, media = MagicMock(spec=WandbLogger), MediaLogger(n_samples=4)
    trainer, module = trainer_with(logger), field_module()
    validate(media, trainer, module, [field_batch([1, 0, 1, 0]), field_batch([0, 1]), field_batch([2, 2])])
    (logged,), _ = logger.experiment.log.call_args
    assert logged["trainer/global_step"] == 3 and "val/codebook_histogram/tokens" in logged
    panel = logged["val/reconstructions"]
    names = ["sw/h", "ns/u", "burgers/u", "sw/h"]  # a row per variable in validation order, then batch 0's third
    assert panel._caption.split("; ") == [f"{name} · nRMSE 5 %" for name in names]
    assert panel.image.width >= 3 * 200  # three tiles of ≥ 2 inches at 100 dpi


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("samples", "not kept for the panel"),  # outputs that cannot be split into samples
        ("panel", "W&B media logging failed and was skipped"),  # a reconstruction of another size
        ("logger", "W&B media logging failed and was skipped"),
    ],
)
def test_a_media_failure_is_a_warning_not_an_error(failure, message):
    logger, media = MagicMock(spec=WandbLogger), MediaLogger()
    trainer, module = trainer_with(logger), field_module()
    outputs, batch = field_batch([0, 1, 2, 0])
    if failure == "samples":
        outputs["recon"] = outputs["recon"][:1]
    elif failure == "panel":
        outputs["recon"] = outputs["recon"][..., :8]
    else:
        logger.experiment.log.side_effect = OSError("disk full")
    with pytest.warns(UserWarning, match=message):
        validate(media, trainer, module, [(outputs, batch)])


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
