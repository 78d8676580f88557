"""Checkpoints written atomically on any filesystem, and checked before a run resumes from one.

Lightning's TorchCheckpointIO writes through an fsspec transaction: a temporary file in $TMPDIR, then a move.
Across filesystems (a run dir on network storage or a scratch disk) the move is a copy, which a full disk or a kill
can cut short, leaving a truncated last.ckpt that will not load. Here the temporary file lies next to the
checkpoint, is flushed to disk, and replaces it in one rename (tokenizers.load.atomic_write); on any error it is
deleted and the previous checkpoint is left as it was. A full disk or quota ends the run with an OSError that says so
(torch.save reports it as a RuntimeError, "unexpected pos", with the cause deep in its chain).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from tokenizers.load import atomic_write, read_checkpoint

TRANSFORMER_MODULE = "lit_modules.transformer_module.TransformerModule"
# what a full disk or an exceeded quota looks like in an error's chain (torch.save raises a RuntimeError, "unexpected
# pos", whose context is the OSError of the file write)
DISK_FULL = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)  # object stores: Lightning's way
        path = Path(path)
        written = 0  # bytes of the partial file, for the message (atomic_write removes it)
        try:
            with atomic_write(path, fsync=True) as tmp, open(tmp, "wb") as f:
                try:
                    torch.save(checkpoint, f)
                except BaseException:
                    written = f.tell()
                    raise
        except BaseException as e:
            full = disk_full(e)
            if full is not None:
                last = path.parent / "last.ckpt"  # what a run resumes from (callbacks.last_checkpoint)
                advice = "Free space (or set paths.output_dir to a larger disk)"
                if last.exists():
                    advice += f", then resume with ckpt_path={last}"
                raise OSError(
                    full,
                    f"disk full: writing checkpoint {path} failed ({DISK_FULL[full]}); the previous {path.name}, if "
                    f"any, is unchanged. {_size(shutil.disk_usage(path.parent).free)} free in {path.parent} once the "
                    f"partial file ({_size(written)}) was removed. {advice}",
                ) from e
            if isinstance(e, OSError):
                raise OSError(
                    e.errno,
                    f"writing checkpoint {path} failed ({e.strerror or e}); the previous "
                    f"{path.name}, if any, is unchanged",
                ) from e
            raise


def disk_full(error: BaseException) -> int | None:
    """errno.ENOSPC or EDQUOT if `error` or an exception in its chain (__cause__, __context__) says the disk or the
    quota is full, by errno or by text (torch's writer reports it in a RuntimeError's message); None otherwise."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return error.errno
        for number, text in DISK_FULL.items():
            if text in str(error):
                return number
        error = error.__cause__ or error.__context__
    return None


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def held_model(hparams: Any) -> str | None:
    """The class a model's hyper-parameters (a checkpoint's, or a run's model config) build: the tokenizer's
    `_target_` (TokenizerModule), or TransformerModule; None for neither (another tool's checkpoint). Read as data:
    nothing is imported."""
    if not isinstance(hparams, dict):
        return None
    tokenizer = hparams.get("tokenizer")
    if isinstance(tokenizer, dict) and isinstance(tokenizer.get("_target_"), str):
        return tokenizer["_target_"]
    return TRANSFORMER_MODULE if "transformer" in hparams else None


RUN_CONFIG = "config_resolved.yaml"  # train.py writes the resolved config of a run under this name in its run dir


def run_config(ckpt: str | Path) -> Path:
    """The resolved config of the run that wrote `ckpt` (<run dir>/checkpoints/<name>.ckpt -> <run dir>/RUN_CONFIG),
    which may not exist (a checkpoint copied out of its run dir)."""
    return Path(ckpt).parent.parent / RUN_CONFIG


def recorded_task(config: Path) -> str | None:
    """The task_name (for a preset: the experiment's name) in a run's config_resolved.yaml (train.py writes it in
    the run dir, beside checkpoints/); None where there is none. Read as plain YAML: nothing is resolved."""
    try:
        task = yaml.safe_load(config.read_text()).get("task_name")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return task if isinstance(task, str) else None


def check_checkpoint(path: str, model: Any = None, run: str = "this run") -> None:
    """Refuse, before any work, a ckpt_path that cannot resume a run: missing, empty, corrupt, no Lightning training
    state (a state_dict alone, e.g. from encode.py or another tool), or, given the run's `model` config, the
    weights of another model (an EEGTokenizer's checkpoint for a Phaedra run): its tokenizer class (or
    TransformerModule) read from the checkpoint's hyper-parameters as data, nothing built. `run` names the run in the
    message (train.py: "this run (experiment=…, model=…)")."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; nothing to resume from")
    ckpt = read_checkpoint(path, mmap=True)
    missing = [k for k in ("loops", "optimizer_states", "global_step") if k not in ckpt]
    if missing:
        raise ValueError(
            f"ckpt_path={path} holds weights but no training state to resume ({', '.join(missing)} "
            f"missing): resume from a run's checkpoints/last.ckpt"
        )
    if model is None:
        return
    held = held_model(ckpt.get("hyper_parameters"))
    built = held_model(OmegaConf.to_container(model, resolve=True) if OmegaConf.is_config(model) else model)
    if held is not None and held != built:
        config = run_config(path)
        task = recorded_task(config)
        trained_by = f" (written by a run with task_name={task}; its config: {config})" if task else ""
        raise ValueError(
            f"ckpt_path={path} holds a {held}{trained_by}, but {run} builds a {built}: none of its weights would "
            f"load. Resume with the config that checkpoint was trained with, or leave ckpt_path unset to start afresh"
        )
