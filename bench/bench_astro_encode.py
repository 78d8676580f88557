"""Encode throughput of the astro tokenizers (objects/s), as encode.py runs them.

    python bench/bench_astro_encode.py                  # the astro_image model's default sizes
    python bench/bench_astro_encode.py --ckpt outputs/astro_image/<run>/checkpoints/last.ckpt

Image: [B, 6, 64, 64] cutouts through the autoencoder's encoder and the 2048-code nearest-centroid search (a trained
checkpoint with --ckpt; otherwise the experiment's architecture with a codebook fitted on its own latents: the cost
is the same). Scalars: 11 catalog columns × 1024 quantile bins. Spectra: 512 pixels, patches of 8, 2048 centroids.
Runs on the GPU when there is one. Prints one table and writes bench/results/astro_encode.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from tokenizers import load_tokenizer  # noqa: E402
from tokenizers.astro import GalaxyImageTokenizer, ScalarQuantileTokenizer, SpectrumTokenizer  # noqa: E402


def throughput(fn, n_objects: int, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return n_objects / best


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "astro_encode.json"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    if args.ckpt:
        image = load_tokenizer(args.ckpt, map_location=device)
    else:
        image = GalaxyImageTokenizer(bands=6, channels=(32, 64)).to(device).eval()
        z = image.encode_latents(torch.randn(64, 6, 64, 64, generator=g).to(device))
        image.fit_codebook(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), iters=5)
    x = torch.randn(args.batch, image.bands, 64, 64, generator=g).to(device)

    columns = [f"c{i}" for i in range(11)]
    scalars = ScalarQuantileTokenizer(columns).to(device).fit(torch.randn(20_000, 11, generator=g).to(device))
    catalog = torch.randn(100_000, 11, generator=g).to(device)

    spectra = SpectrumTokenizer(pixels=512, patch=8).to(device)
    flux = (torch.randn(1024, 512, generator=g).cumsum(1) + 100).to(device)
    ivar = torch.ones_like(flux)
    spectra.fit(flux, ivar, iters=5)

    host = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    rows = [
        {
            "tokenizer": "image (AE + 2048 centroids)",
            "batch": args.batch,
            "objects_per_s": throughput(lambda: image.encode(x), args.batch),
        },
        {
            "tokenizer": "catalog scalars (11 × 1024 bins)",
            "batch": len(catalog),
            "objects_per_s": throughput(lambda: scalars.encode(catalog), len(catalog)),
        },
        {
            "tokenizer": "spectra (512 px / 8, 2048 centroids)",
            "batch": len(flux),
            "objects_per_s": throughput(lambda: spectra.encode(flux, ivar), len(flux)),
        },
    ]
    for row in rows:
        row["device"] = host
    report(
        f"astro encode throughput on {device} ({torch.get_num_threads()} threads)",
        {"tokenizer": "{tokenizer}", "batch": "{batch}", "objects/s": "{objects_per_s:,.0f}", "device": "{device}"},
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
