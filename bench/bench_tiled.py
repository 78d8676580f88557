"""Tiled-encode and tiled-reconstruct throughput of SVQVAE on one large image, in megapixels/s.

    python bench/bench_tiled.py                        # the CPU preset (conf/model/svqvae.yaml), 1024×1536
    python bench/bench_tiled.py --model svqvae_paper --height 4096 --width 4096

The model is built from its config with random weights (throughput does not depend on training).
Prints one table and writes bench/results/tiled.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="svqvae")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tiled.json"))
    args = parser.parse_args()
    spec = OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml")
    if "defaults" in spec:  # a preset that extends another model config
        base = OmegaConf.load(ROOT / "conf" / "model" / f"{spec.defaults[0]}.yaml")
        spec = OmegaConf.merge(base, {k: v for k, v in spec.items() if k != "defaults"})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = instantiate(spec.tokenizer).to(device).eval()
    x = torch.rand(1, 3, args.height, args.width, device=device)
    megapixels = args.height * args.width / 1e6
    rows = []
    for name, fn in (("encode_tiled", lambda: model.encode_tiled(x, args.tile, args.overlap)),
                     ("reconstruct_tiled", lambda: model.reconstruct_tiled(x, args.tile, args.overlap))):
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
        rows.append({"op": name, "model": args.model, "image": f"{args.height}x{args.width}", "tile": args.tile,
                     "overlap": args.overlap, "seconds": seconds, "megapixels_per_s": megapixels / seconds,
                     "device": device, "threads": torch.get_num_threads()})
    report(f"SVQVAE tiled throughput ({args.model}, {args.height}×{args.width}, tile {args.tile}, "
           f"overlap {args.overlap})",
           {"op": "{op}", "seconds": "{seconds:.2f}", "MP/s": "{megapixels_per_s:.3f}", "device": "{device}"},
           rows, args.out)


if __name__ == "__main__":
    main()
