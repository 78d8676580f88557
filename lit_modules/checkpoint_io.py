"""Checkpoints written atomically on any filesystem, and checked before a run resumes from one.

Lightning's TorchCheckpointIO writes through an fsspec transaction: a temporary file in $TMPDIR, then a move.
Across filesystems (a run dir on network storage or a scratch disk) the move is a copy, which a full disk or a kill
can cut short, leaving a truncated last.ckpt that will not load. Here the temporary file lies next to the
checkpoint, is flushed to disk, and replaces it with os.replace (atomic within one filesystem); on any error it is
deleted and the previous checkpoint is left as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tokenizers.load import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)  # object stores: Lightning's way
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise OSError(
                    e.errno,
                    f"writing checkpoint {path} failed ({e.strerror or e}); the previous "
                    f"{path.name}, if any, is unchanged",
                ) from e
            raise


def check_checkpoint(path: str) -> None:
    """Refuse, before any work, a ckpt_path that cannot resume a run: missing, empty, corrupt, or no Lightning
    training state (a state_dict alone, e.g. from encode.py or another tool)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; nothing to resume from")
    ckpt = read_checkpoint(path, mmap=True)
    missing = [k for k in ("loops", "optimizer_states", "global_step") if k not in ckpt]
    if missing:
        raise ValueError(
            f"ckpt_path={path} holds weights but no training state to resume ({', '.join(missing)} "
            f"missing): resume from a run's checkpoints/last.ckpt"
        )
