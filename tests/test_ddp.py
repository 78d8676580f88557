"""DDP on 2 CPU processes (gloo, trainer=ddp_cpu), launched as a user launches it (`python train.py … trainer=ddp_cpu`):
each rank reads its own share of the data, the validation metrics (codebook histograms included) equal a 1-process
validation of the same weights on the same data, one checkpoint set and one W&B run are written, and a run resumed
from last.ckpt ends with the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from datamodules.common import EpochShuffleSampler
from tests.helpers import ROOT, SMALL_DATA

pytestmark = pytest.mark.slow

# no EMA: the checkpoint's weights are the trained ones, which a 1-process validation then loads as they are; the
# schedule spans 6 steps also in the run stopped at step 3 (mid-epoch: 6 batches per rank and epoch)
BASE = [
    "experiment=phaedra",
    "debug=fast",
    "test=false",
    "callbacks.ema=null",
    "trainer.limit_val_batches=null",
    "scheduler.total_steps=6",
    *SMALL_DATA["datamodules.sources.EmbeddedFields"],
]


def test_ranks_share_an_epoch_once_in_the_one_process_order():
    orders = []
    for rank in range(3):
        sampler = EpochShuffleSampler(10, seed=4).shard(rank, 3)
        sampler.set_epoch(2)
        orders.append(list(sampler))
    one = EpochShuffleSampler(10, seed=4)
    one.set_epoch(2)
    full = list(one)
    assert [len(o) for o in orders] == [3, 3, 3]  # the same number of steps on every rank
    assert [full[i] for i in range(9)] == [orders[i % 3][i // 3] for i in range(9)]  # dealt out in order
    resumed = EpochShuffleSampler(10, seed=4).shard(1, 3)
    resumed.set_epoch(2)
    resumed.resume(2, 1)
    assert list(resumed) == orders[1][1:]
    with pytest.raises(ValueError, match=r"rank 3 is not in \[0, world size 3\)"):
        EpochShuffleSampler(10, seed=4).shard(3, 3)


def ddp_run(run_dir: Path, data_dir: Path, *overrides: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            *BASE,
            "trainer=ddp_cpu",
            f"paths.data_dir={data_dir}",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "run.json").read_text())


def test_two_process_ddp_validates_like_one_process_writes_once_and_resumes_exactly(tmp_path, data_dir, make_cfg):
    record = ddp_run(tmp_path / "ddp", data_dir)
    assert record["status"] == "completed" and record["step"] == 6
    # one run: one checkpoint set, one W&B run, one run.json (rank 1 writes none of them elsewhere)
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["last.ckpt", "step0000006.ckpt"]
    assert len(list((tmp_path / "ddp" / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]

    # the same weights validated by one process on the same data
    cfg = make_cfg(BASE, output_dir=tmp_path / "single")
    module = instantiate(cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, _recursive_=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    single = trainer.validate(
        module,
        datamodule=instantiate(cfg.data),
        ckpt_path=tmp_path / "ddp" / "checkpoints" / "last.ckpt",
        weights_only=True,
    )[0]
    ddp = {k: v for k, v in record["metrics"].items() if k.startswith("val/")}
    # usage and perplexity come from the codebook histograms: equal means rank histograms summed to the whole one
    assert {"val/usage/morph", "val/usage/amp", "val/perplexity/amp"} <= set(ddp)
    assert set(ddp) == set(single)
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    # stopped at step 3 and resumed from its last.ckpt: the weights of the uninterrupted run
    ddp_run(tmp_path / "half", data_dir, "trainer.max_steps=3")
    ddp_run(tmp_path / "resumed", data_dir, f"ckpt_path={tmp_path / 'half' / 'checkpoints' / 'last.ckpt'}")
    whole = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    half = torch.load(tmp_path / "half" / "checkpoints" / "last.ckpt", weights_only=True)
    assert half["global_step"] == 3 and whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    assert not torch.equal(half["state_dict"][key], whole[key])
