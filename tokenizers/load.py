"""Load a trained tokenizer from a SciTok checkpoint without Hydra or Lightning in the caller's code."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn


def _build(spec: dict) -> nn.Module:
    """{'_target_': 'pkg.mod.Class', **kwargs} -> Class(**kwargs) (kwargs are plain values)."""
    module_name, _, attr = spec["_target_"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**{k: v for k, v in spec.items() if not k.startswith("_")})


def load_tokenizer(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The tokenizer of a TokenizerModule checkpoint, in eval mode, with EMA weights where trained with EMA.

    The returned module has `.normalization`: {"variables": [...], "mean": [...], "std": [...]} from the
    train split (or None), to normalize inputs as in training: x_in = (x − mean[v]) / std[v].
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    try:
        spec = ckpt["hyper_parameters"]["tokenizer"]
    except KeyError as e:
        raise ValueError(f"{path} is not a SciTok TokenizerModule checkpoint (no hyper_parameters.tokenizer)") from e
    tokenizer = _build(spec)
    prefix = "tokenizer."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    tokenizer.load_state_dict(state)
    tokenizer.normalization = ckpt.get("normalization")
    return tokenizer.eval()
