"""train.py started from released weights (model.init_from): experiment=phaedra_released at the size of the golden
fixture (tests/data/released/phaedra_small, its config.json) on 64×64 fields. The first step's loss is the released
model's, the run resumes exactly and its checkpoint names the file it started from; a SciTok checkpoint starts a run
alike; a missing file, or weights of another architecture, stop the run naming the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_modules.tokenizer_module import TokenizerModule
from tests.helpers import ROOT, assert_same_final_weights, compose_cfg, f32_tolerance, layer_depth
from tokenizers import load_tokenizer
from tokenizers.load import save_tokenizer
from tokenizers.released import RELEASES, load_released
from train import train

FIXTURE = ROOT / "tests" / "data" / "released" / "phaedra_small"
WEIGHTS = FIXTURE / "model.safetensors"
# the fixture's architecture (config.json: latent_channels 32, channel_mult [2, 2, 1], num_res_blocks 1, attention
# at 8 and 16, input 64×64) and fields of that size (compose_cfg keeps them few: tests/helpers.py SMALL_DATA)
ARCHITECTURE = [
    "model.tokenizer.ch_mult=[2,2,1]",
    "model.tokenizer.num_res_blocks=1",
    "model.tokenizer.attn_resolutions=[8,16]",
    "model.tokenizer.resolution=64",
    "data.source.resolution=64",
]
RUN = ["experiment=phaedra_released", "debug=fast", "logger=none", "test=false"]
SMALL = [*RUN, "model.tokenizer.ch=32", *ARCHITECTURE]
# 8 steps with a validation (and last.ckpt) at step 4, where the interrupted run stops; an EMA that moves in 8 steps
RESUMABLE = [*SMALL, "trainer.val_check_interval=4", "callbacks.ema.decay=0.9"]


class FirstStep(L.Callback):
    """The tokenizer's weights when training starts, the first training batch, the loss the run computed on it
    (before any update) and the module."""

    def __init__(self):
        self.weights, self.batch, self.loss, self.module = None, None, None, None

    def on_train_start(self, trainer, pl_module):
        self.weights = {k: v.clone() for k, v in pl_module.tokenizer.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.batch is None:
            self.batch, self.loss, self.module = batch, outputs["loss"].detach(), pl_module


def fine_tune(overrides: list[str], out: Path, data_dir: Path) -> FirstStep:
    first = FirstStep()
    train(compose_cfg(overrides, out, data_dir), extra_callbacks=[first])
    return first


def assert_starts_as_the_released_model(first: FirstStep) -> None:
    """The run starts with the released model's weights (load_released), and its first loss equals that model's loss
    (train mode) on the same batch, through the run's loss module. Both are one float32 computation whose sums may
    run in another order (threads, Lightning's loop): the reconstruction moves by at most f32_tolerance (δ), so the
    loss l1 + mse by at most δ·(1 + 2·max|error| + δ), plus the rounding of its two means over the N values (N·eps
    of each)."""
    tokenizer = load_released("phaedra", WEIGHTS, FIXTURE / "config.json").train()
    for name, value in tokenizer.state_dict().items():
        assert torch.equal(first.weights[name], value), name
    example = first.module.adapter.unpack(first.batch)
    with torch.no_grad():
        out = tokenizer(example.x, **example.cond)
        loss = first.module.loss(out.recon, example.target, out.aux_losses, step=0, train=True, weight=example.weight)
    delta = f32_tolerance(out.recon, layer_depth(tokenizer))
    error = float((out.recon - example.target).abs().max())
    bound = delta * (1 + 2 * error + delta) + out.recon.numel() * torch.finfo(torch.float32).eps * float(loss.loss)
    assert abs(float(first.loss) - float(loss.loss)) <= bound, (float(first.loss), float(loss.loss), bound)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir) -> tuple[Path, FirstStep]:
    """8 steps fine-tuning from the fixture's released weights: (run dir, its first step)."""
    out = tmp_path_factory.mktemp("full")
    return out, fine_tune([*RESUMABLE, f"model.init_from={WEIGHTS}", "trainer.max_steps=8"], out, data_dir)


def test_fine_tuning_starts_from_the_released_weights(full_run):
    assert_starts_as_the_released_model(full_run[1])


def test_a_fine_tuned_checkpoint_names_the_file_and_the_convention_it_started_from(full_run):
    run_dir, first = full_run
    metadata = load_tokenizer(run_dir / "checkpoints" / "last.ckpt").metadata
    assert metadata.source.startswith(f"fine-tuned from {WEIGHTS} (sha256 ")
    assert "Phaedra_AE_FSQ_4x4" in metadata.source and "(x − mean)/(std + 1e-6)" in metadata.source
    data = first.module.trainer.datamodule.metadata  # the fine-tuning data's normalization, unchanged
    assert dataclasses.replace(metadata, source=data.source) == data


def test_a_fine_tuning_run_resumes_exactly(full_run, tmp_path, data_dir):
    """Resumed from step 4 it ends with the uninterrupted run's weights: the checkpoint's weights replace the
    init_from ones loaded at setup."""
    common = [*RESUMABLE, f"model.init_from={WEIGHTS}"]
    fine_tune([*common, "trainer.max_steps=4"], tmp_path / "half", data_dir)
    half = tmp_path / "half" / "checkpoints" / "last.ckpt"
    fine_tune([*common, "trainer.max_steps=8", f"ckpt_path={half}"], tmp_path / "resumed", data_dir)
    full = assert_same_final_weights(full_run[0], tmp_path / "resumed", 8)
    name = next(iter(full["current_model_state"]))  # the raw weights moved after step 4 (at lr 1e-5)
    assert not torch.equal(
        torch.load(half, weights_only=True)["current_model_state"][name], full["current_model_state"][name]
    )


def test_fine_tuning_starts_from_a_scitok_checkpoint(tmp_path, data_dir):
    released = load_released("phaedra", WEIGHTS, FIXTURE / "config.json")
    ckpt = save_tokenizer(released, released.spec, released.metadata, tmp_path / "phaedra_small.ckpt")
    first = fine_tune([*SMALL, f"model.init_from={ckpt}", "trainer.max_steps=3"], tmp_path / "run", data_dir)
    assert_starts_as_the_released_model(first)
    source = load_tokenizer(tmp_path / "run" / "checkpoints" / "last.ckpt").metadata.source
    assert source.startswith(f"fine-tuned from {ckpt} (sha256 ")
    assert "a SciTok checkpoint trained on fields data, normalization standardize" in source
    assert "Phaedra_AE_FSQ_4x4" in source  # the checkpoint's own source
    # the fine-tuned checkpoint is self-contained: the file it started from is read at fit's setup, not on loading
    ckpt.unlink()
    module = TokenizerModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert module.init_source == source


@pytest.mark.parametrize("experiment", ["phaedra_released", "svqvae_llamagen"])
def test_a_missing_init_from_file_stops_the_run_before_anything_is_built(tmp_path, experiment):
    """The experiments' released files, not downloaded into a folder: the message names the file and the download
    command that puts it there, before the data is prepared."""
    cfg = compose_cfg([f"experiment={experiment}", "debug=fast", "logger=none"], tmp_path / "run", tmp_path / "data")
    release = next(r for r in RELEASES.values() if cfg.model.init_from.endswith(r.hub_file))
    weights = tmp_path / "weights" / release.hub_file
    cfg.model.init_from = str(weights)
    with pytest.raises(FileNotFoundError) as err:
        train(cfg)
    message = str(err.value)
    assert f"model.init_from={weights} does not exist" in message
    assert f"hf download {release.hub_repo} {release.hub_file} --local-dir {tmp_path / 'weights'}`" in message
    assert not (tmp_path / "data").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_weights_of_another_architecture_are_refused_naming_the_file(tmp_path, data_dir):
    """The fixture's weights into the experiment's default width (ch 128): convert's ValueError names the file."""
    cfg = compose_cfg([*RUN, *ARCHITECTURE, f"model.init_from={WEIGHTS}"], tmp_path / "run", data_dir)
    with pytest.raises(ValueError) as err:  # at setup, before the first step
        train(cfg)
    assert str(err.value).startswith(f"{WEIGHTS}: ") and "has shape" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
