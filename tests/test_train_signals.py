"""How a run ends when it is stopped or handed a bad file: SIGTERM, Ctrl+C and a SLURM requeue save last.ckpt at a
batch boundary and exit 143 / 130 (run.json and W&B say why); unreadable checkpoints and caches are named.

The signal tests run train.py as a process (signals go to a process) on the small embedded fields, and send the
signal once a progress line shows that training is under way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.sources import EmbeddedFields
from lit_modules.checkpoint_io import check_checkpoint
from tests.helpers import ROOT, SMALL_DATA, assert_same_final_weights
from tokenizers import load_tokenizer
from train import train

SMALL = SMALL_DATA["datamodules.sources.EmbeddedFields"]


def train_until_signal(
    run_dir: Path, data_dir: Path, signum: int | None, *overrides: str, env: dict | None = None, after_step: int = 8
) -> tuple[int, str]:
    """Run `train.py experiment=phaedra debug=fast` with no step limit, send `signum` once the progress log passes
    `after_step` (None: let it finish), and return (exit code, output)."""
    cmd = [
        sys.executable,
        "train.py",
        "experiment=phaedra",
        "debug=fast",
        *SMALL,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=100000",
        *overrides,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
    )
    lines = []
    for line in proc.stdout:  # stdout is a pipe, so ProgressLog writes a line every 2 steps
        lines.append(line)
        if signum is not None and "scitok.progress" in line and int(line.split("step ")[1].split("/")[0]) >= after_step:
            proc.send_signal(signum)
            signum = None
    proc.wait(timeout=120)
    return proc.returncode, "".join(lines)


def assert_resumable_last(run_dir: Path, min_step: int) -> int:
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    check_checkpoint(str(last))  # holds the full training state
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert ckpt["global_step"] >= min_step and progress["completed"] == progress["started"]  # a batch boundary
    return ckpt["global_step"]


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_at_a_batch_boundary_and_exits_143(tmp_path, data_dir):
    code, out = train_until_signal(tmp_path / "run", data_dir, signal.SIGTERM)
    assert code == 143, out[-3000:]
    step = assert_resumable_last(tmp_path / "run", 8)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "preempted" and record["step"] == step
    assert f"Run stopped by SIGTERM at step {step}; resume with ckpt_path=" in out
    wandb_dir = next((tmp_path / "run" / "wandb").glob("offline-run-*"))
    summary = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(wandb_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(summary.stdout)
    assert info["exit_code"] == 143 and info["state"] == "failed"


@pytest.mark.slow
def test_ctrl_c_stops_after_the_batch_saves_last_ckpt_and_exits_130(tmp_path, data_dir):
    code, out = train_until_signal(tmp_path / "run", data_dir, signal.SIGINT, "logger=none")
    assert code == 130, out[-3000:]
    assert "Ctrl+C: stopping at the end of this batch" in out and "Traceback" not in out
    assert_resumable_last(tmp_path / "run", 8)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_a_slurm_time_limit_signal_saves_requeues_and_the_restart_resumes(tmp_path, data_dir):
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "scitok",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    code, out = train_until_signal(tmp_path / "run", data_dir, signal.SIGUSR1, "logger=none", env=slurm)
    assert code == 143, out[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    step = assert_resumable_last(tmp_path / "run", 8)
    # SLURM starts the same script again with SLURM_RESTART_COUNT=1: same run dir, no ckpt_path given
    code, out = train_until_signal(
        tmp_path / "run",
        data_dir,
        None,
        "logger=none",
        "test=false",
        f"trainer.max_steps={step + 2}",
        env={**slurm, "SLURM_RESTART_COUNT": "1"},
    )
    assert code == 0, out[-3000:]
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}" in out
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 2


@pytest.fixture
def real_ckpt(make_cfg, tmp_path) -> Path:
    train(make_cfg(["debug=fast", "logger=none", "test=false", "trainer.max_steps=2"], tmp_path / "ok"))
    return tmp_path / "ok" / "checkpoints" / "last.ckpt"


def test_unreadable_checkpoints_are_refused_by_name(real_ckpt, make_cfg, tmp_path):
    empty, garbage, truncated = tmp_path / "empty.ckpt", tmp_path / "garbage.ckpt", tmp_path / "truncated.ckpt"
    empty.write_bytes(b"")
    garbage.write_bytes(b"this is not a checkpoint" * 100)
    truncated.write_bytes(real_ckpt.read_bytes()[: real_ckpt.stat().st_size // 2])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.ckpt")
    state_only = torch.load(real_ckpt, weights_only=True)
    torch.save({"state_dict": state_only["state_dict"]}, tmp_path / "weights_only.ckpt")
    cases = {
        empty: "is empty",
        garbage: "cannot be read",
        truncated: "cannot be read",
        tmp_path / "foreign.ckpt": "is not a Lightning checkpoint of a SciTok run",
        tmp_path / "weights_only.ckpt": "holds weights but no training state to resume",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message) as err:
            check_checkpoint(str(path))
        assert str(path) in str(err.value)
    for path in (empty, garbage, truncated, tmp_path / "foreign.ckpt"):
        with pytest.raises(ValueError, match=str(path)):
            load_tokenizer(path)
    # given as ckpt_path, it fails before training, and the checkpoint it came from is untouched
    before = real_ckpt.read_bytes()
    cfg = make_cfg(["debug=fast", "logger=none", f"ckpt_path={truncated}"], output_dir=tmp_path / "ok")
    with pytest.raises(ValueError, match="truncated.ckpt cannot be read"):
        train(cfg)
    assert real_ckpt.read_bytes() == before
    assert json.loads((tmp_path / "ok" / "run.json").read_text())["status"] == "failed"


def test_a_corrupt_embedded_cache_is_regenerated(tmp_path, caplog):
    source = EmbeddedFields(resolution=16, n_traj=3, n_frames=3)
    source.prepare(tmp_path)
    good = source.load(tmp_path)
    path = source.cache_path(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])  # a cut-off copy
    with pytest.raises(
        ValueError, match=f"{path}: the cached embedded fields cannot be read .* delete it to regenerate"
    ):
        source.load(tmp_path)
    source.prepare(tmp_path)  # what every run does first: it notices and regenerates
    assert "cannot be read" in caplog.text and "regenerating" in caplog.text
    again = source.load(tmp_path)
    assert all(torch.equal(a.data, b.data) for a, b in zip(good, again, strict=True))


def test_a_corrupt_token_store_is_named(tmp_path):
    from datamodules.token_store import SplitStore, SplitStoreWriter

    path = tmp_path / "train"
    with SplitStoreWriter(path, 4, {"image": 16}, {"image": (3,)}) as writer:
        writer.rows(0, {"image": np.arange(12).reshape(4, 3)})
        writer.commit(np.arange(4), {"kind": "test", "streams": {"image": 16}})
    assert np.array_equal(SplitStore.open(path).tokens["image"], np.arange(12).reshape(4, 3))
    ids = path / "image.npy"
    ids.write_bytes(ids.read_bytes()[:-5])
    with pytest.raises(ValueError, match=f"{path}: a file of the store cannot be read .* write it again"):
        SplitStore.open(path)


@pytest.mark.slow
def test_sigterm_during_validation_stops_at_a_batch_boundary_and_resumes_exactly(make_cfg, tmp_path):
    """SIGTERM while fit validates (at step 4 of 8): the validation ends, the run stops at the next batch boundary
    with last.ckpt (exit 143), and resuming from it ends with the weights (EMA and raw) of an uninterrupted run."""
    import lightning as L

    class SigtermDuringValidation(L.Callback):
        sent = False

        def on_validation_batch_end(self, trainer, *args):
            if trainer.global_step == 4 and not trainer.sanity_checking and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    common = [
        "experiment=phaedra",
        "debug=fast",
        "logger=none",
        "test=false",
        "trainer.val_check_interval=4",
        "scheduler.total_steps=8",
        "callbacks.ema.decay=0.9",
        "trainer.max_steps=8",
    ]
    train(make_cfg(common, output_dir=tmp_path / "full"))
    with pytest.raises(SystemExit) as stopped:
        train(make_cfg(common, output_dir=tmp_path / "stopped"), extra_callbacks=[SigtermDuringValidation()])
    assert stopped.value.code == 143
    step = assert_resumable_last(tmp_path / "stopped", 4)
    assert step < 8
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    train(make_cfg([*common, f"ckpt_path={last}"], output_dir=tmp_path / "resumed"))
    assert_same_final_weights(tmp_path / "full", tmp_path / "resumed", 8, ("state_dict", "current_model_state"))
