"""Save and load SciTok tokenizer checkpoints without Hydra or Lightning in the caller's code, and atomic_write, the
one way every layer writes a file that others read."""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokenizers.base import DataMetadata, check_tokenizer


@contextlib.contextmanager
def atomic_write(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """`with atomic_write(path) as tmp:` write a file or a folder at `tmp`; when the block ends without an error it
    becomes `path` in one rename, so a reader finds the old `path` or the new one, never half of one.

    tmp is `<folder of path>/.<name>.tmp-<pid>` (the same filesystem: os.replace is atomic there; a leftover of a
    killed process with the same pid is removed first). The folder of `path` is created. fsync=True flushes the
    file's bytes to disk before the rename (what a crash of the machine must not lose: checkpoints). On any error,
    in the block or in the rename (also KeyboardInterrupt), the temporary is removed, `path` is left as it was and
    the error propagates. A folder replaces only a missing or empty `path` (os.replace refuses a full one).
    np.save appends ".npy" to a name without it: give it an open file (`open(tmp, "wb")`) or np.lib.format.open_memmap.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if fsync and tmp.is_file():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    """Delete a temporary file or folder if it is there; a failure to (a read-only disk) never hides the error that
    is being raised."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


# A file (checkpoint, store) is data: it may name only SciTok's own classes, never any other importable name
# (`subprocess.run`, `os.system`), because people share checkpoints. An allowlist maps a package (or module) to the
# kind of object a file may name in it; the object must be defined there, not merely imported into it. A tokenizer
# spec needs no class from elsewhere (activations and norms are chosen by name), so no torch class is on its list.


def is_module_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, nn.Module)


TOKENIZER_TARGETS: dict[str, Callable[[object], bool]] = {"tokenizers": is_module_class}
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class UnsafeTargetError(ValueError):
    """A file names a `_target_` outside the allowlist: nothing was imported or called."""


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def allowed_target(target: Any, source: str = "the spec", allowed: dict | None = None) -> Any:
    """The object `target` ("tokenizers.fsq.FSQ") names, if the allowlist permits it: for some `package` of `allowed`
    (default TOKENIZER_TARGETS), the target's module lies in it, the object is defined in it (not a name one of its
    modules imports from elsewhere) and `allowed[package](object)` holds. Anything else raises UnsafeTargetError
    naming `source` and the target; nothing outside the allowed packages is imported."""
    allowed = TOKENIZER_TARGETS if allowed is None else allowed
    module_name, _, attr = target.rpartition(".") if isinstance(target, str) else ("", "", "")
    refuse = UnsafeTargetError(
        f"{source} names _target_ {target!r}, which SciTok refuses to import or call: a file may only name "
        f"SciTok's own classes ({', '.join(f'{p}.*' for p in allowed)}; e.g. tokenizers.phaedra.PhaedraTokenizer). "
        f"Nothing was run; if you trust this file's origin, build the model in your code and load its state_dict"
    )
    packages = [
        p for p in allowed if isinstance(target, str) and _DOTTED_NAME.fullmatch(target) and _within(module_name, p)
    ]
    if not packages:
        raise refuse
    try:
        module = importlib.import_module(module_name)  # inside an allowed package: importing it runs only its code
    except ImportError:
        raise refuse from None
    obj = getattr(module, attr, None)
    if not any(_within(getattr(obj, "__module__", None) or "", p) and allowed[p](obj) for p in packages):
        raise refuse
    return obj


def build(spec: Any, source: str = "the spec") -> Any:
    """Plain config -> objects: every dict with `_target_: tokenizers.mod.Name` becomes Name(**its built kwargs), at
    any depth (lists and dicts are walked); keys starting with "_" are Hydra's and are left out. Every target is
    checked against the allowlist (allowed_target) before anything is built; `source` names the file in errors."""
    check_targets(spec, source)
    return _build(spec)


def check_targets(spec: Any, source: str = "the spec", allowed: dict | None = None) -> None:
    """Raise UnsafeTargetError if any `_target_` in spec (at any depth) is not on the allowlist (allowed_target), or
    any string holds an OmegaConf interpolation: Hydra resolves `${oc.create:{_target_: …}}` into a new target after
    any check. SciTok saves specs resolved, so a file of its own holds none."""
    if isinstance(spec, str) and "${" in spec:
        raise UnsafeTargetError(
            f"{source} holds the interpolation {spec[:120]!r}, which SciTok refuses to resolve: resolving it could "
            f"build or read anything (a new _target_, an environment variable). Nothing was run"
        )
    if isinstance(spec, list | tuple):
        for v in spec:
            check_targets(v, source, allowed)
    elif isinstance(spec, dict):
        if "_target_" in spec:
            allowed_target(spec["_target_"], source, allowed)
        for k, v in spec.items():
            check_targets(k, source, allowed)
            if k != "_target_":
                check_targets(v, source, allowed)


def _build(spec: Any) -> Any:
    if isinstance(spec, list):
        return [_build(v) for v in spec]
    if not isinstance(spec, dict):
        return spec
    kwargs = {k: _build(v) for k, v in spec.items() if not k.startswith("_")}
    return allowed_target(spec["_target_"])(**kwargs) if "_target_" in spec else kwargs


# what torch.load / np.load raise on a truncated, corrupt or foreign file (the unpickler fails in many ways)
UNREADABLE = (
    OSError,
    EOFError,
    RuntimeError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """A SciTok (Lightning) checkpoint as a dict, or an error naming the file and what is wrong with it: missing,
    empty, truncated or not a checkpoint at all. mmap=True only maps the tensors (a cheap check of a big file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): a write that never finished; use another one")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except UNREADABLE as e:
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
            f"it is truncated, corrupt or not a torch checkpoint; use another one (the run's "
            f"checkpoints/ folder keeps the best and the last)"
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a Lightning checkpoint of a SciTok run (no 'state_dict'; found {found})")
    return ckpt


def put_metadata(checkpoint: dict, metadata: DataMetadata | None) -> None:
    """Store `metadata` in `checkpoint` where load_tokenizer reads it: a plain dict under "data" (loads with
    weights_only=True); nothing for None (a tokenizer trained without a datamodule)."""
    if metadata is not None:
        checkpoint["data"] = metadata.to_dict()


def save_tokenizer(tokenizer: nn.Module, spec: dict, metadata: DataMetadata | None, path: str | Path) -> Path:
    """Write `tokenizer` as a checkpoint that load_tokenizer reads, in TokenizerModule's layout:
    {"hyper_parameters": {"tokenizer": spec}, "state_dict": {"tokenizer.<k>": tensor}, "data": metadata.to_dict()}
    ("data" left out for metadata None). `spec` is the plain config that builds it ({"_target_":
    "tokenizers.astro.SpectrumTokenizer", **kwargs}); it must pass the allowlist that load_tokenizer applies and
    name the tokenizer's own class, so that a file that would not load back is never written. Written atomically
    (atomic_write); returns `path`."""
    path = Path(path)
    check_targets(spec, source=f"the spec of {path}")
    cls = allowed_target(spec.get("_target_") if isinstance(spec, dict) else None, source=f"the spec of {path}")
    if cls is not type(tokenizer):
        raise ValueError(
            f"save_tokenizer({path}): the spec builds {spec['_target_']}, but the tokenizer is a "
            f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}: its weights would not load into it"
        )
    ckpt = {
        "hyper_parameters": {"tokenizer": spec},
        "state_dict": {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()},
    }
    put_metadata(ckpt, metadata)
    with atomic_write(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def load_tokenizer(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The tokenizer of a TokenizerModule checkpoint, in eval mode, with EMA weights where trained with EMA.

    The returned module has `.metadata`: the DataMetadata of its training data (kind, normalization, variables,
    per-variable mean/std from the train split, sampling rates; see tokenizers/base.py), or None for a
    checkpoint written without a datamodule. For fields, normalize as in training: x' = (x − mean[v]) / std[v].
    """
    path = Path(ckpt_path)
    ckpt = read_checkpoint(path, map_location)
    try:
        spec = ckpt["hyper_parameters"]["tokenizer"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a SciTok TokenizerModule checkpoint (no hyper_parameters.tokenizer)") from e
    tokenizer = build(spec, source=f"checkpoint {path} (hyper_parameters.tokenizer)")
    check_tokenizer(tokenizer)
    prefix = "tokenizer."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a diverged run's weights would encode everything to one token
        raise ValueError(
            f"{path}: {len(bad)} weight tensors are not finite (NaN/inf), e.g. {bad[:3]}: the run "
            f"diverged before this checkpoint; use an earlier one, or retrain with a lower optimizer.lr"
        )
    tokenizer.load_state_dict(state)
    tokenizer.metadata = DataMetadata.from_dict(ckpt["data"]) if "data" in ckpt else None
    return tokenizer.eval()
