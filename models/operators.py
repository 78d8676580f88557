"""Neural operators in pixel space (pure torch, no Lightning or Hydra): the baseline the field transformer's token
forecasts are compared with (experiment=field_fno). The operator is neuraloperator's FNO (Li et al. 2021, the
library's reference implementation), not a copy: SciTok adds only the variable as input and the residual form, and
configs name this class, never the library's (checkpoints may only name SciTok's classes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from neuralop.models import FNO
from torch import nn


class FieldOperator(nn.Module):
    """The normalized field Δ snapshots ahead from the normalized present one and its variable:

        forward(x [B, C, H, W], variable [B] int64) -> x + FNO([x, one_hot(variable)])  [B, C, H, W]

    The variable enters as `n_variables` constant one-hot channels beside the field (one operator for every
    variable; each is standardized with its own statistics, so the variable is the only thing that tells a
    Gray–Scott concentration from a vorticity). FNO adds its own grid coordinates (`positional_embedding="grid"`).

    Residual, with the FNO's last projection zero at init: the model starts exactly at persistence (the present as the
    forecast, the baseline it must beat) and learns the change over Δ snapshots, a smaller and smoother target than
    the field itself (the same reason FieldTokenDataModule's context starts the transformer from the present tokens).

    n_modes: Fourier modes kept per axis (FNO: ≤ H and W; the last axis keeps n // 2 + 1 of the real FFT);
    hidden_channels, n_layers, lifting/projection_channel_ratio: FNO's. Other FNO options keep the library's
    defaults."""

    def __init__(
        self,
        n_variables: int,
        n_modes: Sequence[int] = (16, 16),
        hidden_channels: int = 32,
        n_layers: int = 4,
        lifting_channel_ratio: float = 2,
        projection_channel_ratio: float = 2,
        channels: int = 1,
    ):
        super().__init__()
        if n_variables < 1:
            raise ValueError(f"FieldOperator needs n_variables ≥ 1, got {n_variables}")
        self.n_variables, self.channels = n_variables, channels
        self.fno = FNO(
            n_modes=tuple(n_modes),
            in_channels=channels + n_variables,
            out_channels=channels,
            hidden_channels=hidden_channels,
            n_layers=n_layers,
            lifting_channel_ratio=lifting_channel_ratio,
            projection_channel_ratio=projection_channel_ratio,
        )
        last = self.fno.projection.fcs[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def state_dict(self, *args, **kwargs) -> dict:
        # neuraloperator's models put their constructor arguments (functions among them: F.gelu) under the key
        # "_metadata" of the state dict they are part of: not a tensor, so a checkpoint holding it would not load with
        # torch.load(weights_only=True). The config that built this module says the same.
        out = super().state_dict(*args, **kwargs)
        out.pop("_metadata", None)
        return out

    def forward(self, x: torch.Tensor, variable: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"FieldOperator expects x [B, {self.channels}, H, W], got {tuple(x.shape)}")
        onehot = F.one_hot(variable, self.n_variables).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return x + self.fno(torch.cat([x, onehot], 1))
