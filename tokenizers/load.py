"""Load a trained tokenizer from a SciTok checkpoint without Hydra or Lightning in the caller's code."""

from __future__ import annotations

import importlib
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokenizers.base import DataMetadata, check_tokenizer

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
