"""Tiled-encode and tiled-reconstruct throughput of SVQVAE on one large image, in megapixels/s.

    python bench/bench_tiled.py                        # the CPU preset (conf/model/svqvae.yaml), 1024×1536
    python bench/bench_tiled.py --model svqvae_paper --height 4096 --width 4096
    python bench/bench_tiled.py --ckpt outputs/svqvae/<run>/checkpoints/last.ckpt --tile 64 --overlap 16

The model is built from its config with random weights (throughput does not depend on training).
Prints one table and writes bench/results/tiled.json. With --ckpt, also the quality of tiling with that
trained model on skimage's coffee upscaled to height × width: mean absolute error of the tiled and the
untiled reconstruction, their difference, and seam_ratio across columns and rows (≈ 1: no seam).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report, tokenizer_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="svqvae")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--tile-batches",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8],
        help="tiles per encoder/decoder call to compare (model.tokenizer.tile_batch)",
    )
    parser.add_argument("--ckpt", default=None, help="a trained SVQVAE checkpoint: also measure tiling quality")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tiled.json"))
    args = parser.parse_args()
    if args.ckpt:
        quality(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # weights in channels_last, as encode_image.py puts them
    model = instantiate(tokenizer_spec(args.model)).to(device, memory_format=torch.channels_last).eval()
    x = torch.rand(1, 3, args.height, args.width, device=device)
    megapixels = args.height * args.width / 1e6
    rows = []
    for tile_batch in args.tile_batches:
        model.tile_batch = tile_batch
        for name, fn in (
            ("encode_tiled", lambda: model.encode_tiled(x, args.tile, args.overlap)),
            ("reconstruct_tiled", lambda: model.reconstruct_tiled(x, args.tile, args.overlap)),
        ):
            with torch.no_grad():
                fn()  # warm-up
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.repeats):
                    fn()
                if device == "cuda":
                    torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / args.repeats
            rows.append(
                {
                    "op": name,
                    "tile_batch": tile_batch,
                    "model": args.model,
                    "image": f"{args.height}x{args.width}",
                    "tile": args.tile,
                    "overlap": args.overlap,
                    "seconds": seconds,
                    "megapixels_per_s": megapixels / seconds,
                    "device": device,
                    "threads": torch.get_num_threads(),
                }
            )
            print(rows[-1], flush=True)
    report(
        f"SVQVAE tiled throughput ({args.model}, {args.height}×{args.width}, tile {args.tile}, overlap {args.overlap})",
        {
            "op": "{op}",
            "tile batch": "{tile_batch}",
            "seconds": "{seconds:.2f}",
            "MP/s": "{megapixels_per_s:.3f}",
            "device": "{device}",
        },
        rows,
        args.out,
    )


def quality(args: argparse.Namespace) -> None:
    import torch.nn.functional as F

    from datamodules.images import BundledImages
    from tokenizers import load_tokenizer
    from tokenizers.tiling import seam_ratio

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_tokenizer(args.ckpt, map_location=device)
    x = BundledImages(["coffee"]).load()[0][0][None].to(device)
    x = F.interpolate(x, size=(args.height, args.width), mode="bicubic", antialias=True).clamp(0, 1)
    f = model.downsample_factor
    with torch.no_grad():
        tiled = model.reconstruct_tiled(x, args.tile, args.overlap)[1.0][0]
        untiled = model(x[..., : x.shape[-2] // f * f, : x.shape[-1] // f * f]).recon
    crop = (..., slice(0, untiled.shape[-2]), slice(0, untiled.shape[-1]))
    row = {
        "tile": args.tile,
        "overlap": args.overlap,
        "mae_tiled": float((tiled - x).abs().mean()),
        "mae_untiled": float((untiled - x[crop]).abs().mean()),
        "mae_tiled_vs_untiled": float((tiled[crop] - untiled).abs().mean()),
        "seam_cols": seam_ratio(tiled, args.tile, args.overlap, f, -1),
        "seam_rows": seam_ratio(tiled, args.tile, args.overlap, f, -2),
    }
    report(
        f"SVQVAE tiling quality ({args.ckpt}, coffee at {args.height}×{args.width})",
        {k: "{" + k + (":.4f}" if k.startswith(("mae", "seam")) else "}") for k in row},
        [row],
        str(Path(args.out).with_name("tiled_quality.json")),
    )


if __name__ == "__main__":
    main()
