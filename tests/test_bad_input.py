"""Bad input that train.py refuses with a message naming the config key or file (issue 23, item 5): a model and data
that do not belong together, a checkpoint of another model, batch sizes and trainer limits that train nothing, a disk
that fills while a checkpoint is written. Every refusal before training leaves no checkpoint."""

from __future__ import annotations

import errno
import re

import pytest
import torch

from lit_modules.checkpoint_io import AtomicCheckpointIO


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
