"""The Tokenizer contract shared by every SciTok tokenizer (pure torch; no Lightning or Hydra)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenizerOutput:
    """recon: same shape as the input; tokens: stream -> int64 ids; aux_losses: name -> scalar."""

    recon: torch.Tensor
    tokens: dict[str, torch.Tensor]
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


def check_image_input(x: torch.Tensor, channels: int, multiple: int, name: str) -> None:
    """Raise ValueError unless x is [B, channels, H, W] with H and W divisible by `multiple`."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{name} expects input of shape [B, {channels}, H, W], got {tuple(x.shape)}"
        )
    H, W = x.shape[-2:]
    if H % multiple or W % multiple:
        raise ValueError(
            f"{name} expects H and W divisible by its downsampling factor {multiple}, "
            f"got {tuple(x.shape)}"
        )
