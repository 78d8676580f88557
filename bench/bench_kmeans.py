"""K-means codebook fit: tokenizers.kmeans (torch) against scikit-learn's MiniBatchKMeans on the same vectors.

    python bench/bench_kmeans.py                       # K = 256 and 2048 on 100k vectors of dimension 16
    python bench/bench_kmeans.py --n 200000 --dim 8 --ks 2048

The vectors: by default a seeded mixture of 500 anisotropic Gaussians; `--latents CKPT` takes the latent vectors of
a trained astro_image checkpoint on the embedded galaxies' train split (--data-dir: where that set is cached).
Every inertia is Σ over all the vectors of the squared distance to the nearest centroid, computed the same way for
every method. Prints inertia and wall time per method and writes bench/results/kmeans.json.
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
from tokenizers.kmeans import assign, fit_kmeans  # noqa: E402


def latent_like(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(500, dim, generator=g) * 2
    scales = torch.rand(500, dim, generator=g) + 0.2
    which = torch.randint(500, (n,), generator=g)
    return means[which] + scales[which] * torch.randn(n, dim, generator=g)


def galaxy_latents(ckpt: str, data_dir: str, n: int) -> torch.Tensor:
    """Latent vectors [≤ n, D] of the embedded galaxies' train split under a trained GalaxyImageTokenizer."""
    from datamodules.galaxies import EmbeddedGalaxies, GalaxyDataModule
    from tokenizers import load_tokenizer

    tokenizer = load_tokenizer(ckpt)
    data = GalaxyDataModule(EmbeddedGalaxies(), data_dir=data_dir)
    data.setup("fit")
    chunks, total = [], 0
    with torch.no_grad():
        for batch in data.eval_loader("train"):
            z = tokenizer.encode_latents(batch["image"])
            chunks.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
            total += len(chunks[-1])
            if total >= n:
                break
    return torch.cat(chunks)[:n]


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


# fit_kmeans' defaults run Lloyd to convergence (tol 1e-3, ≤ 100 steps, ≤ 128 vectors per cluster); this budget
# stops early, as MiniBatchKMeans does
FAST = {"iters": 15, "per_cluster": 64}


def inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    return float(assign(x, centroids)[1].double().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--ks", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--latents", default=None, help="an astro_image checkpoint: fit its galaxy latents")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "kmeans.json"))
    args = parser.parse_args()
    from sklearn.cluster import MiniBatchKMeans

    x = galaxy_latents(args.latents, args.data_dir, args.n) if args.latents else latent_like(args.n, args.dim)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for k in args.ks:
        sk, t_sk = timed(lambda k=k: MiniBatchKMeans(k, random_state=0, n_init=1, batch_size=4096).fit(x.numpy()))
        rows.append(
            {
                "method": "sklearn MiniBatchKMeans (cpu)",
                "k": k,
                "seconds": t_sk,
                "inertia": inertia(x, torch.as_tensor(sk.cluster_centers_, dtype=torch.float32)),
            }
        )
        for dev in dict.fromkeys(["cpu", device]):
            xd = x.to(dev)
            for name, kwargs in (
                ("torch Lloyd", {}),
                ("torch Lloyd, 15 steps, 64/cluster", FAST),
                ("torch mini-batch", {"batch_size": 4096, "iters": 300}),
            ):
                res, t = timed(lambda k=k, kwargs=kwargs, xd=xd: fit_kmeans(xd, k, **kwargs))
                rows.append(
                    {"method": f"{name} ({dev})", "k": k, "inertia": inertia(x, res.centroids.cpu()), "seconds": t}
                )
    for row in rows:
        ref = next(r for r in rows if r["k"] == row["k"] and r["method"].startswith("sklearn"))
        row["vs_sklearn"] = row["inertia"] / ref["inertia"]
        row["speedup"] = ref["seconds"] / row["seconds"]
        row["device"] = torch.cuda.get_device_name() if "cuda" in row["method"] else platform.processor() or "cpu"
    report(
        f"k-means on {len(x)} vectors of dimension {x.shape[1]}" + (" (galaxy latents)" if args.latents else ""),
        {
            "method": "{method}",
            "K": "{k}",
            "inertia": "{inertia:.4g}",
            "inertia / sklearn": "{vs_sklearn:.4f}",
            "seconds": "{seconds:.2f}",
            "speed-up": "{speedup:.1f}x",
        },
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
