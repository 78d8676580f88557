"""Tiling for images larger than a training crop: tile positions, blend weights and overlap-add.

Tiles of `tile` pixels start every `tile − overlap` pixels; the last tile is aligned with the image end,
so tiles cover the image exactly. An image smaller than a tile is padded up to one tile (reflect, or
replicate where the image is too small to reflect) and the result cropped back.

Blend weight of a tile along one axis, over an overlap of width v shared with a neighbour: a tiny weight
(1e-3) on the outer v/4 (where the tile's own zero padding disturbs its output), a linear ramp over the
middle v/2, 1 beyond; the neighbour's weights mirror these, so the two add up to one across the overlap.
At an image border the weight stays 1 (never 0: a plain Hann window would black out the borders).
Overlap-add divides by the summed weights, so any point covered by one tile gets exactly that tile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def check_tiling(tile: int, overlap: int, multiple: int) -> None:
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile > overlap >= 0, got tile={tile}, overlap={overlap}")
    if tile % multiple or overlap % multiple:
        raise ValueError(
            f"tile ({tile}) and overlap ({overlap}) must be multiples of the downsampling factor {multiple}"
        )


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length) (length >= tile), the last one ending at `length`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def axis_weights(tile: int, start: int, length: int, overlap: int, device: torch.device) -> torch.Tensor:
    """[tile] blend weights of the tile at `start` on an axis of `length` (see the module docstring)."""
    w = torch.ones(tile, device=device)
    margin, ramp = overlap // 4, overlap - 2 * (overlap // 4)
    if overlap <= 0:
        return w
    side = torch.cat(
        [
            torch.full((margin,), 1e-3, device=device),
            (torch.arange(ramp, device=device, dtype=torch.float32) + 0.5) / ramp,
        ]
    )
    if start > 0:  # a neighbour before this tile
        w[: overlap - margin] = torch.minimum(w[: overlap - margin], side)
    if start + tile < length:  # a neighbour after it
        w[tile - overlap + margin :] = torch.minimum(w[tile - overlap + margin :], side.flip(0))
    return w


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [B, C, H, W] at the bottom/right up to height × width (reflect when possible, else replicate)."""
    ph, pw = max(0, height - x.shape[-2]), max(0, width - x.shape[-1])
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def overlap_add(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    scale: float,
    tile_batch: int = 1,
) -> torch.Tensor:
    """Apply `fn` to every tile of x [B, C, H, W] (H, W >= tile) and blend the outputs.

    fn maps a tile of `tile` pixels to one of `tile·scale` (scale = 1/f for an encoder, f for a decoder);
    returns [B, C', H·scale, W·scale]. `tile_batch` tiles go through fn together (as one batch of
    tile_batch·B): fewer, larger calls, which a GPU needs to be busy. fn must treat the samples of a batch
    independently (per-sample normalization, eval mode), so the result equals tile-by-tile up to float rounding.
    Tiles go to fn in channels_last memory format: convolutions (oneDNN, cuDNN) then run without layout reorders,
    which makes tiled encoding much faster on CPU (bench/bench_tiled.py); the values are the same.
    """
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be ≥ 1, got {tile_batch}")
    H, W = x.shape[-2:]
    B = x.shape[0]
    out_tile, ramp = round(tile * scale), round(overlap * scale)
    places = [(top, left) for top in tile_starts(H, tile, overlap) for left in tile_starts(W, tile, overlap)]
    acc = weight = None
    for first in range(0, len(places), tile_batch):
        chunk = places[first : first + tile_batch]
        tiles = torch.cat([x[..., top : top + tile, left : left + tile] for top, left in chunk])
        ys = fn(tiles.contiguous(memory_format=torch.channels_last)).split(B)
        for (top, left), y in zip(chunk, ys, strict=True):
            if acc is None:
                acc = y.new_zeros(*y.shape[:2], round(H * scale), round(W * scale))
                weight = y.new_zeros(1, 1, *acc.shape[-2:])
            t, l = round(top * scale), round(left * scale)  # noqa: E741
            w = (
                axis_weights(out_tile, t, acc.shape[-2], ramp, y.device)[:, None]
                * axis_weights(out_tile, l, acc.shape[-1], ramp, y.device)[None, :]
            )
            acc[..., t : t + out_tile, l : l + out_tile] += y * w
            weight[..., t : t + out_tile, l : l + out_tile] += w
    return acc / weight


def seam_ratio(image: torch.Tensor, tile: int, overlap: int, cell: int = 1, dim: int = -1) -> float:
    """How visible the tiling of a tiled output is along `dim` (−1: columns, −2: rows); about 1: no seam.

    The mean |jump| between neighbouring pixels over the bands where tiles blend (the jumps into and within
    a tile's first `overlap` lines and within and out of its neighbour's last ones), each jump divided by
    the mean |jump| at the same phase of the model's cell size `cell` (its downsampling factor) outside the
    bands. The whole band counts, not only its two borders: a bad blend leaves lines anywhere inside it, which
    the borders alone miss.
    Comparing at the same cell phase matters because a decoder's output differs more across cell
    boundaries than within a cell, tiled or not. Pasting tiles without blending scores several times 1.
    """
    x = image.movedim(dim, -1)
    length = x.shape[-1]
    jumps = (x[..., 1:] - x[..., :-1]).abs().flatten(0, -2).mean(0)  # jumps[j]: between pixel j and j + 1
    starts = tile_starts(length, tile, overlap)
    if len(starts) < 2:
        raise ValueError(f"an axis of {length} pixels has no tile borders for tile={tile}")
    band: set[int] = set()  # a tile's first `overlap` lines and its neighbour's last ones (they differ at the end)
    for prev, start in zip(starts, starts[1:], strict=False):
        band.update(range(start - 1, start + overlap), range(prev + tile - overlap - 1, prev + tile))
    inside = torch.tensor(sorted(j for j in band if 0 <= j < length - 1))
    outside = torch.ones(length - 1, dtype=torch.bool)
    outside[inside] = False
    phase = torch.arange(length - 1) % cell
    reference = torch.stack([jumps[outside & (phase == p)].mean() for p in range(cell)])
    return float((jumps[inside] / reference[phase[inside]]).mean())
