"""SVQVAE: a conv VQ-VAE (LlamaGen style, cosine codebook) that tokenizes images of any size tile by tile.

With level_attention=True and net_range [-1, 1] it is LlamaGen's VQ-16 architecture, and tokenizers.load_released
("llamagen_vq") loads its published weights.

x: [B, C, H, W] in pixel_range (default [0, 1]) -> tokens {"tokens": int64 [B, H/f, W/f] in [0, codebook_size)},
f = 2^(len(ch_mult)-1).
forward/encode/decode work on H, W divisible by f. For large or odd-sized images:
    encode_tiled(x, tile_size, overlap)       tokens of the whole image from overlapping tiles, blended in
                                              the continuous latent before quantization (no seams)
    decode_tiled(tokens, tile_size, overlap)  the image back, decoded tile by tile and blended
    reconstruct_tiled(x, tile_size, overlap, scales)  {scale: (image [B, C, round(H·s), round(W·s)], tokens)}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tokenizers.base import TokenizerOutput, check_image_input
from tokenizers.blocks import Decoder, Encoder
from tokenizers.tiling import check_tiling, overlap_add, pad_to
from tokenizers.vq import CosineVectorQuantizer


class SVQVAE(nn.Module):
    # The decoder's output is disturbed up to ~2 latent cells inside a tile's edge (zero padding through the
    # upsampling convs), so decoding overlaps tiles by at least 4 cells whatever the encoding overlap: with
    # less, the disturbed bands of both neighbours meet inside the blend and leave a seam.
    min_decode_overlap_cells = 4

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        embed_dim: int = 8,
        codebook_size: int = 16384,
        beta: float = 0.25,
        entropy_weight: float = 0.0,
        dead_code_interval: int = 0,
        dropout: float = 0.0,
        norm_groups: int = 32,
        tile_batch: int = 2,
        level_attention: bool = False,
        pixel_range: Sequence[float] = (0.0, 1.0),
        net_range: Sequence[float] | None = None,
    ):
        super().__init__()
        self.in_channels, self.tile_batch = in_channels, tile_batch  # tiles per encoder/decoder call when tiling
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        # Images come in and go out in pixel_range; the network works in net_range (LlamaGen's weights: [-1, 1]).
        lo, hi = (float(v) for v in pixel_range)
        net_lo, net_hi = (float(v) for v in (net_range if net_range is not None else pixel_range))
        if not (hi > lo and net_hi > net_lo):
            raise ValueError(f"pixel_range and net_range must be [low, high], got {pixel_range}, {net_range}")
        self.pixel_range, self.net_range = (lo, hi), (net_lo, net_hi)
        # attention in the mid blocks, and with level_attention also after every ResBlock of the lowest-resolution
        # level (LlamaGen's VQ-16): the blocks place it by resolution, which counts 1 at the lowest level here
        arch = dict(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=(1,) if level_attention else (),
            resolution=self.downsample_factor,
            z_channels=z_channels,
            dropout=dropout,
            groups=norm_groups,
        )
        self.encoder = Encoder(in_channels, **arch)
        self.decoder = Decoder(in_channels, **arch)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.vq = CosineVectorQuantizer(
            codebook_size, embed_dim, beta=beta, entropy_weight=entropy_weight, dead_code_interval=dead_code_interval
        )

    @property
    def streams(self) -> dict[str, int]:
        return {"tokens": self.vq.codebook_size}

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight (where the adaptive GAN weight compares gradients)."""
        return self.decoder.last_layer

    def code_vectors(self, stream: str) -> torch.Tensor:
        if stream != "tokens":
            raise KeyError(f"unknown stream {stream!r}; this tokenizer has ['tokens']")
        return self.vq.codes()

    # ---- pieces ---------------------------------------------------------------------------------
    def _rescale(self, x: torch.Tensor, source: tuple[float, float], target: tuple[float, float]) -> torch.Tensor:
        if source == target:
            return x
        return (x - source[0]) * ((target[1] - target[0]) / (source[1] - source[0])) + target[0]

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] pixels in pixel_range -> continuous latent [B, embed_dim, H/f, W/f] (before quantization)."""
        return self.quant_conv(self.encoder(self._rescale(x, self.pixel_range, self.net_range)))

    def quantize(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        z_q, ids, losses = self.vq(latent.permute(0, 2, 3, 1))
        return z_q.permute(0, 3, 1, 2), ids, losses

    def decode_codes(self, z_q: torch.Tensor) -> torch.Tensor:
        """[B, embed_dim, h, w] codes -> [B, C, h·f, w·f] pixels in pixel_range (not clamped)."""
        y = self.decoder(self.post_quant_conv(z_q.to(self.post_quant_conv.weight.dtype)))
        return self._rescale(y, self.net_range, self.pixel_range)

    def _codes(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        if "tokens" not in tokens:
            raise ValueError(f"decode needs the token stream 'tokens', got {sorted(tokens)}")
        return self.vq.ids_to_codes(tokens["tokens"]).permute(0, 3, 1, 2)

    # ---- the Tokenizer contract -----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        check_image_input(x, self.in_channels, self.downsample_factor, type(self).__name__)
        z_q, ids, losses = self.quantize(self.latent(x))
        return TokenizerOutput(recon=self.decode_codes(z_q), tokens={"tokens": ids}, aux_losses=losses)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_image_input(x, self.in_channels, self.downsample_factor, type(self).__name__)
        return {"tokens": self.quantize(self.latent(x))[1]}

    def decode(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.decode_codes(self._codes(tokens))

    # ---- tiled, any size, several scales --------------------------------------------------------
    def _check_tiled(self, x: torch.Tensor, tile_size: int, overlap: int) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SVQVAE expects input of shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        check_tiling(tile_size, overlap, self.downsample_factor)

    def latent_tiled(self, x: torch.Tensor, tile_size: int, overlap: int) -> torch.Tensor:
        """Blended continuous latent [B, D, ceil(H/f), ceil(W/f)] of an image of any size."""
        self._check_tiled(x, tile_size, overlap)
        f = self.downsample_factor
        H, W = x.shape[-2:]
        h, w = math.ceil(H / f), math.ceil(W / f)
        padded = pad_to(x, max(tile_size, h * f), max(tile_size, w * f))
        return overlap_add(self.latent, padded, tile_size, overlap, 1 / f, self.tile_batch)[..., :h, :w]

    def decode_codes_tiled(self, z_q: torch.Tensor, tile_size: int, overlap: int) -> torch.Tensor:
        """[B, D, h, w] codes -> [B, C, h·f, w·f], decoded tile by tile (tile_size and overlap in pixels;
        the overlap is raised to `min_decode_overlap_cells` latent cells, and the tile to 4 overlaps)."""
        f = self.downsample_factor
        h, w = z_q.shape[-2:]
        overlap_cells = max(overlap // f, self.min_decode_overlap_cells)
        tile_cells = max(tile_size // f, 4 * overlap_cells)  # small tiles: fewer, larger decode tiles ...
        tile_cells = min(tile_cells, max(tile_size // f, h, w))  # ... but no larger than the image needs
        padded = pad_to(z_q, max(tile_cells, h), max(tile_cells, w))
        return overlap_add(self.decode_codes, padded, tile_cells, overlap_cells, f, self.tile_batch)[
            ..., : h * f, : w * f
        ]

    def encode_tiled(self, x: torch.Tensor, tile_size: int = 256, overlap: int = 64) -> dict[str, torch.Tensor]:
        return {"tokens": self.quantize(self.latent_tiled(x, tile_size, overlap))[1]}

    def decode_tiled(self, tokens: dict[str, torch.Tensor], tile_size: int = 256, overlap: int = 64) -> torch.Tensor:
        check_tiling(tile_size, overlap, self.downsample_factor)
        return self.decode_codes_tiled(self._codes(tokens), tile_size, overlap)

    def reconstruct_tiled(
        self, x: torch.Tensor, tile_size: int = 256, overlap: int = 64, scales: Sequence[float] = (1.0,)
    ) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
        """For each scale s: the blended latent resized to round(h·s) × round(w·s), quantized and decoded;
        the image is exactly round(H·s) × round(W·s). Returns {s: (image, token ids [B, h_s, w_s])}."""
        H, W = x.shape[-2:]
        latent = self.latent_tiled(x, tile_size, overlap)
        h, w = latent.shape[-2:]
        out = {}
        for s in scales:
            if s <= 0:
                raise ValueError(f"scales must be positive fractions of full resolution, got {s}")
            size = (max(1, round(h * s)), max(1, round(w * s)))
            lat = latent if size == (h, w) else F.interpolate(latent, size=size, mode="bilinear", align_corners=False)
            z_q, ids, _ = self.quantize(lat)
            image = self.decode_codes_tiled(z_q, tile_size, overlap)
            target = (max(1, round(H * s)), max(1, round(W * s)))
            if tuple(image.shape[-2:]) != target:
                image = (
                    image[..., : target[0], : target[1]]
                    if s == 1
                    else F.interpolate(image, size=target, mode="bilinear", align_corners=False)
                )
            out[s] = (image, ids)
        return out
