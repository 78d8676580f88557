"""Tokenize and reconstruct one large image with a trained SVQVAE, tile by tile, at several scales.

    python encode_image.py CKPT IMAGE [--tile 256] [--overlap 64] [--scales 0.25 0.5 1] [--out DIR]
    python encode_image.py weights/vq_ds16_c2i.pt IMAGE ...     # LlamaGen's published VQ-16 weights

CKPT is an SVQVAE checkpoint of train.py, or LlamaGen VQ weights (tokenizers.load_released("llamagen_vq"); for
another configuration than the full-size VQ-16 give its config with --released-config).

How small a tile can be depends on the model (its latents depend on each tile's GroupNorm statistics and
attention context): README "Tokenize a large image" has measurements, and bench/bench_tiled.py --ckpt
measures seams and error for your checkpoint.

Writes into DIR (default: <image name>_tokens/ beside the image): tokens_<s>.npy (int64 [h_s, w_s]),
recon_<s>.png (round(H·s) × round(W·s)) for every scale s, and meta.json (sizes, tiling, checkpoint).
Needs neither Hydra nor Lightning; runs on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules.images import read_image, to_chw01
from tokenizers import load_released, load_tokenizer
from tokenizers.released import RELEASES, SciTokCheckpointGiven


def image_tokenizer(ckpt: str | Path, released_config: str | Path | None = None) -> torch.nn.Module:
    """An SVQVAE checkpoint of train.py, or released LlamaGen VQ weights taking SciTok's [0, 1] pixels."""
    if not str(ckpt).startswith("hf://") and not Path(ckpt).is_file():
        raise FileNotFoundError(
            f"{ckpt} does not exist: give an SVQVAE checkpoint of train.py, or LlamaGen's VQ-16 weights "
            f"({RELEASES['llamagen_vq'].download_hint()})"
        )
    try:
        return load_released("llamagen_vq", ckpt, released_config, pixel_range=(0.0, 1.0))
    except SciTokCheckpointGiven:
        return load_tokenizer(ckpt)


def encode_image(
    ckpt: str | Path,
    image: str | Path,
    tile: int = 256,
    overlap: int = 64,
    scales: tuple[float, ...] = (1.0,),
    out: str | Path | None = None,
    tile_batch: int | None = None,
    released_config: str | Path | None = None,
) -> Path:
    """tile_batch: tiles per encoder/decoder call (default: the checkpoint's model.tokenizer.tile_batch; 2 is
    fastest on a 2-core CPU, several tiles at once keep a GPU busy). released_config: the hyper-parameters of
    released weights other than the full-size VQ-16's."""
    image = Path(image)
    out = Path(out) if out is not None else image.with_name(f"{image.stem}_tokens")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = image_tokenizer(ckpt, released_config).to(device, memory_format=torch.channels_last)  # as the tiles are
    if not hasattr(model, "reconstruct_tiled"):
        raise ValueError(f"{ckpt} holds a {type(model).__name__}, which cannot tile images; use an SVQVAE checkpoint")
    if tile_batch is not None:
        if tile_batch < 1:
            raise ValueError(f"--tile-batch must be ≥ 1, got {tile_batch}")
        model.tile_batch = tile_batch
    x = to_chw01(read_image(image), str(image))[None].to(device)
    with torch.no_grad():
        results = model.reconstruct_tiled(x, tile_size=tile, overlap=overlap, scales=scales)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "image": str(image),
        "checkpoint": str(ckpt),
        "size": list(x.shape[-2:]),
        "tile": tile,
        "overlap": overlap,
        "scales": {},
    }
    if hasattr(model, "released"):
        meta["released"] = model.released
    for s, (recon, tokens) in results.items():
        np.save(out / f"tokens_{s:g}.npy", tokens[0].cpu().numpy())
        pixels = (recon[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(out / f"recon_{s:g}.png")
        meta["scales"][f"{s:g}"] = {"tokens": list(tokens.shape[-2:]), "recon": list(recon.shape[-2:])}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("image")
    parser.add_argument("--tile", type=int, default=256, help="tile side in pixels")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--tile-batch",
        type=int,
        default=None,
        help="tiles per encoder/decoder call (default: the checkpoint's; try 8 on a GPU)",
    )
    parser.add_argument("--released-config", default=None, help="config.json of released weights (not full-size)")
    args = parser.parse_args()
    out = encode_image(
        args.ckpt,
        args.image,
        args.tile,
        args.overlap,
        tuple(args.scales),
        args.out,
        args.tile_batch,
        args.released_config,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
