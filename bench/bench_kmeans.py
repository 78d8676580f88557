"""K-means codebook fit: tokenizers.kmeans (torch) against scikit-learn's MiniBatchKMeans on the same vectors.

    python bench/bench_kmeans.py                       # K = 256 and 2048 on 100k vectors of dimension 16
    python bench/bench_kmeans.py --n 200000 --dim 8 --ks 2048

The vectors are a stand-in for autoencoder latents until the astro image autoencoder exists (issue 9): a mixture
of 500 anisotropic Gaussians, seeded. Prints inertia and wall time per method and writes bench/results/kmeans.json.
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
from tokenizers.kmeans import fit_kmeans  # noqa: E402


def latent_like(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(500, dim, generator=g) * 2
    scales = torch.rand(500, dim, generator=g) + 0.2
    which = torch.randint(500, (n,), generator=g)
    return means[which] + scales[which] * torch.randn(n, dim, generator=g)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--ks", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "kmeans.json"))
    args = parser.parse_args()
    from sklearn.cluster import MiniBatchKMeans

    x = latent_like(args.n, args.dim)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for k in args.ks:
        sk, t_sk = timed(lambda k=k: MiniBatchKMeans(k, random_state=0, n_init=1, batch_size=4096).fit(x.numpy()))
        rows.append({"method": "sklearn MiniBatchKMeans (cpu)", "k": k, "inertia": sk.inertia_, "seconds": t_sk})
        xd = x.to(device)
        for name, kwargs in (("torch Lloyd", {}), ("torch mini-batch", {"batch_size": 4096, "iters": 300})):
            res, t = timed(lambda k=k, kwargs=kwargs, xd=xd: fit_kmeans(xd, k, **kwargs))
            rows.append({"method": f"{name} ({device})", "k": k, "inertia": res.inertia, "seconds": t})
    for row in rows:
        ref = next(r for r in rows if r["k"] == row["k"] and r["method"].startswith("sklearn"))
        row["vs_sklearn"] = row["inertia"] / ref["inertia"]
        row["speedup"] = ref["seconds"] / row["seconds"]
        row["device"] = torch.cuda.get_device_name() if "cuda" in row["method"] else platform.processor() or "cpu"
    report(f"k-means on {args.n} vectors of dimension {args.dim}",
           {"method": "{method}", "K": "{k}", "inertia": "{inertia:.4g}", "inertia / sklearn": "{vs_sklearn:.4f}",
            "seconds": "{seconds:.2f}", "speed-up": "{speedup:.1f}x"}, rows, args.out)


if __name__ == "__main__":
    main()
