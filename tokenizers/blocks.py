"""Convolutional building blocks of the Phaedra autoencoder (VQGAN-style encoder/decoder)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm(min(groups, channels) groups, eps 1e-6)."""
    groups = min(groups, channels)
    if channels % groups:
        raise ValueError(f"{channels} channels are not divisible into {groups} GroupNorm groups")
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GN→SiLU→conv3×3→GN→SiLU→dropout→conv3×3, plus a skip (1×1 conv when channels change)."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(c_in, groups),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            group_norm(c_out, groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all H·W positions with a residual connection."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        # q, k, v [B, 1, HW, C] with unit stride along C: SDPA's fused (flash) kernels need it, on CPU and GPU, and
        # otherwise fall back to materializing the [HW, HW] attention matrix (slower, and memory that grows as HW²)
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).contiguous()
        q, k, v = qkv.unsqueeze(2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C]
        return x + self.out(h.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Pad right/bottom by 1, then 3×3 conv with stride 2: [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2, then 3×3 conv: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _stage(c_in: int, c_out: int, n_blocks: int, attn: bool, dropout: float, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_blocks):
        layers.append(ResBlock(c_in if i == 0 else c_out, c_out, dropout, groups))
        if attn:
            layers.append(AttnBlock(c_out, groups))
    return nn.Sequential(*layers)


def _mid(channels: int, dropout: float, groups: int) -> nn.Sequential:
    return nn.Sequential(
        ResBlock(channels, channels, dropout, groups),
        AttnBlock(channels, groups),
        ResBlock(channels, channels, dropout, groups),
    )


class Encoder(nn.Module):
    """[B, in_channels, H, W] -> [B, z_channels, H/f, W/f] with f = 2^(len(ch_mult)-1).

    Level i works at resolution/2^i with ch·ch_mult[i] channels; attention follows every ResBlock of
    the levels whose (training) resolution is listed in attn_resolutions.
    """

    def __init__(
        self,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        groups: int = 32,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths = [ch] + [ch * m for m in ch_mult]
        levels: list[nn.Module] = []
        res = resolution
        for i in range(len(ch_mult)):
            levels.append(_stage(widths[i], widths[i + 1], num_res_blocks, res in attn_resolutions, dropout, groups))
            if i < len(ch_mult) - 1:
                levels.append(Downsample(widths[i + 1]))
                res //= 2
        self.levels = nn.Sequential(*levels)
        self.mid = _mid(widths[-1], dropout, groups)
        self.out = nn.Sequential(
            group_norm(widths[-1], groups), nn.SiLU(), nn.Conv2d(widths[-1], z_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(self.levels(self.conv_in(x))))


class Decoder(nn.Module):
    """Mirror of Encoder with num_res_blocks+1 ResBlocks per level: [B, z, h, w] -> [B, out, h·f, w·f]."""

    def __init__(
        self,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        groups: int = 32,
    ):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = _mid(widths[-1], dropout, groups)
        levels: list[nn.Module] = []
        res = resolution // 2 ** (len(ch_mult) - 1)
        c_in = widths[-1]
        for i in reversed(range(len(ch_mult))):
            levels.append(_stage(c_in, widths[i], num_res_blocks + 1, res in attn_resolutions, dropout, groups))
            c_in = widths[i]
            if i > 0:
                levels.append(Upsample(c_in))
                res *= 2
        self.levels = nn.Sequential(*levels)
        self.out = nn.Sequential(group_norm(c_in, groups), nn.SiLU(), nn.Conv2d(c_in, out_channels, 3, padding=1))

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the final conv (for a GAN's adaptive weight, which balances gradients there)."""
        return self.out[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.levels(self.mid(self.conv_in(z))))
