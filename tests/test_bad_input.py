"""Bad input that train.py refuses with a message naming the config key or file (issue 23, item 5): a model and data
that do not belong together, a checkpoint of another model, batch sizes and trainer limits that train nothing, a disk
that fills while a checkpoint is written. Every refusal before training leaves no checkpoint."""

from __future__ import annotations

import errno
import json
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from lit_modules.checkpoint_io import AtomicCheckpointIO, check_checkpoint
from lit_modules.schedulers import WarmupCosine
from tests.helpers import ROOT
from train import train


@contextmanager
def on_the_command_line(overrides: list[str]):
    """HydraConfig as under `python train.py <overrides>` (the Compose API of tests records none): the config-group
    choices that messages name (experiment=…, model=…, data=…)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        HydraConfig.instance().set_config(compose(config_name="train", overrides=overrides, return_hydra_config=True))
    try:
        yield
    finally:
        HydraConfig.instance().cfg = None


def refusal(make_cfg, run_dir: Path, overrides: list[str], error=ValueError) -> str:
    """The message train() on `overrides` (+ debug=fast, no logger) fails with, run as `python train.py <overrides>`,
    once it is clear that it failed before training and recorded so."""
    cfg = make_cfg([*overrides, "debug=fast", "logger=none"], output_dir=run_dir)
    with on_the_command_line(overrides), pytest.raises(error) as err:
        train(cfg)
    assert not (run_dir / "checkpoints").exists()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    return str(err.value)


# ---- a. model and data that do not belong together --------------------------------------------------------------
@pytest.mark.parametrize(
    ("experiment", "data", "model_class", "data_class", "reads"),
    [
        (
            "eeg",
            "fields",
            "tokenizers.eeg.EEGTokenizer",
            "datamodules.fields.FieldDataModule",
            "patch_len: data.patch_len",
        ),
        (
            "astro_image",
            "images",
            "tokenizers.astro.GalaxyImageTokenizer",
            "datamodules.images.ImageDataModule",
            "bands: data.source.bands",
        ),
    ],
)
def test_a_model_config_reading_a_key_the_data_config_lacks_names_model_data_and_key(
    make_cfg, tmp_path, experiment, data, model_class, data_class, reads
):
    message = refusal(make_cfg, tmp_path / "run", [f"experiment={experiment}", f"data={data}"])
    setting, key = reads.split(": ")
    assert message.startswith(
        f"model config experiment={experiment}, model={experiment} ({model_class}) cannot train on data config "
        f"data={data} "
        f"({data_class}): model.tokenizer.{setting} reads ${{{key}}}, which this data config does not have"
    ), message


def test_an_experiments_data_setting_on_other_data_names_the_key_experiment_and_data(make_cfg, tmp_path):
    """svqvae_paper sets data.crop for its image data; on fields data that key means nothing."""
    message = refusal(make_cfg, tmp_path / "run", ["experiment=svqvae_paper", "data=fields"])
    assert message.startswith(
        "model config experiment=svqvae_paper, model=svqvae_paper (tokenizers.svqvae.SVQVAE) cannot train on data "
        "config data=fields (datamodules.fields.FieldDataModule): data.crop is set"
    ), message
    assert "~data.crop" in message


# ---- b. resuming from another model's checkpoint ----------------------------------------------------------------
def save_training_checkpoint(path: Path, hyper_parameters: dict) -> Path:
    """A checkpoint with the keys a resume reads (training state, hyper-parameters), no weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": {}, "loops": {}, "optimizer_states": [], "global_step": 6}
    torch.save({**state, "hyper_parameters": hyper_parameters}, path)
    return path


def test_resuming_from_another_models_checkpoint_names_both_classes_and_the_run(make_cfg, tmp_path):
    eeg = save_training_checkpoint(
        tmp_path / "eeg_run" / "checkpoints" / "last.ckpt",
        {"tokenizer": {"_target_": "tokenizers.eeg.EEGTokenizer", "patch_len": 32}, "optimizer": {}},
    )
    (tmp_path / "eeg_run" / "config_resolved.yaml").write_text("task_name: eeg\nseed: 0\n")
    message = refusal(make_cfg, tmp_path / "run", ["experiment=phaedra", f"ckpt_path={eeg}"])
    assert message.startswith(
        f"ckpt_path={eeg} holds a tokenizers.eeg.EEGTokenizer (written by a run with task_name=eeg; its config: "
        f"{tmp_path / 'eeg_run' / 'config_resolved.yaml'}), but this run (experiment=phaedra, model=phaedra) builds a "
        f"tokenizers.phaedra.PhaedraTokenizer"
    ), message

    phaedra = make_cfg(["experiment=phaedra"]).model
    check_checkpoint(str(eeg), make_cfg(["experiment=eeg"]).model)  # the model it holds: accepted
    transformer = save_training_checkpoint(tmp_path / "t.ckpt", {"transformer": {"d_model": 8}})
    with pytest.raises(ValueError, match=r"t.ckpt holds a lit_modules.transformer_module.TransformerModule, but this"):
        check_checkpoint(str(transformer), phaedra)


# ---- c, d. settings that train nothing --------------------------------------------------------------------------
@pytest.mark.parametrize("setting", ["data.batch_size=0", "data.batch_size=-4", "data.eval_batch_size=0"])
def test_a_batch_size_below_one_is_refused_by_its_key(make_cfg, tmp_path, setting):
    key, value = setting.split("=")
    message = refusal(make_cfg, tmp_path / "run", [setting], error=Exception)  # Hydra wraps the datamodule's error
    assert f"{key} must be a whole number of samples ≥ 1, got {value}" in message


STEPS = r"Set trainer.max_steps > 0, or trainer.max_steps=-1 with trainer.max_epochs > 0 to train a number of epochs"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (["scheduler=constant", "trainer.max_steps=0"], rf"trainer.max_steps=0: a training run needs .* step. {STEPS}"),
        (["scheduler=warmup_cosine", "trainer.max_steps=0"], r"trainer.max_steps=0: a training run needs at least"),
        (["trainer.max_steps=-3"], rf"trainer.max_steps=-3: a training run needs at least one optimizer step. {STEPS}"),
        (["trainer.max_steps=-1", "trainer.max_epochs=-1"], rf"max_epochs=-1: the run would never end. {STEPS}"),
        (["trainer.max_epochs=0"], r"trainer.max_epochs=0 trains nothing: set it > 0, or -1 for no epoch limit"),
    ],
)
def test_trainer_limits_that_train_nothing_are_refused_by_their_keys(make_cfg, tmp_path, settings, expected):
    message = refusal(make_cfg, tmp_path / "run", settings)
    assert re.search(expected, message), message


def test_warmup_cosine_without_a_step_count_asks_for_one_not_a_shorter_warmup():
    with pytest.raises(ValueError, match=r"scheduler.total_steps=-1 \(which follows trainer.max_steps\)") as err:
        WarmupCosine(2, -1)  # trainer.max_steps=-1: a run bounded by epochs
    assert "set trainer.max_steps > 0" in str(err.value) and "lower scheduler.warmup_steps" not in str(err.value)


# ---- e. a full disk while a checkpoint is written ---------------------------------------------------------------
def enospc_in_context():
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:  # what torch's writer does: its RuntimeError carries the file write's OSError as context
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2000128 vs 2000000") from None


def enospc_as_cause():
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from OSError(errno.ENOSPC, "x")


def enospc_in_text():
    raise RuntimeError(
        "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
        "data/0: file write failed, No space left on device"
    )


def quota_in_context():
    try:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2000128 vs 2000000") from None


@pytest.mark.parametrize("fail", [enospc_in_context, enospc_as_cause, enospc_in_text, quota_in_context])
def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail):
    last = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3, "w": torch.ones(4)}, last)
    before = last.read_bytes()

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        f.write(b"\0" * 2_000_000)
        fail()

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(OSError) as err:
        io.save_checkpoint({"global_step": 6, "w": torch.zeros(4)}, last)
    full = errno.EDQUOT if fail is quota_in_context else errno.ENOSPC
    reason = "Disk quota exceeded" if full == errno.EDQUOT else "No space left on device"
    assert err.value.errno == full
    assert re.fullmatch(
        rf"\[Errno {full}\] disk full: writing checkpoint {re.escape(str(last))} failed \({reason}\); the previous "
        rf"last.ckpt, if any, is unchanged. [\d.]+ [MG]B free in {re.escape(str(last.parent))} once the partial file "
        rf"\(2.0 MB\) was removed. Free space \(or set paths.output_dir to a larger disk\), then resume with "
        rf"ckpt_path={re.escape(str(last))}",
        str(err.value),
    ), str(err.value)
    assert last.read_bytes() == before and [p.name for p in last.parent.iterdir()] == ["last.ckpt"]

    # another checkpoint of the run (the best one): last.ckpt is named for the resume
    with pytest.raises(OSError, match=r"checkpoint .*step0000006.ckpt failed .* Free space .* ckpt_path=.*last.ckpt$"):
        io.save_checkpoint({"global_step": 6}, last.parent / "step0000006.ckpt")
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_another_error_while_checkpointing_is_not_called_a_full_disk(tmp_path, monkeypatch):
    last = tmp_path / "last.ckpt"

    def broken(obj, f, *args, **kwargs):
        f.write(b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 100 vs 64")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="unexpected pos 100 vs 64"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, last)
    assert list(tmp_path.iterdir()) == []
