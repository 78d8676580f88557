"""K-means codebook fit: tokenizers.kmeans (torch) against scikit-learn's KMeans (defaults: k-means++, Lloyd) and
MiniBatchKMeans (the codebook callback's `backend=sklearn`) on the same vectors.

    python bench/bench_kmeans.py                       # K = 256 and 2048, D = 2 and 16, on 100k vectors
    python bench/bench_kmeans.py --n 200000 --dims 8 --ks 2048

The vectors: by default a seeded mixture of 500 anisotropic Gaussians per dimension; `--latents CKPT` takes the
latent vectors of a trained astro_image checkpoint on the embedded galaxies' train split (--data-dir: where that set
is cached; --dims is then ignored). Every inertia is Σ over all the vectors of the squared distance to the nearest
centroid, computed the same way for every method. Prints inertia, its ratio to KMeans' and wall time per method and
writes bench/results/kmeans.json.
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


def inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    return float(assign(x, centroids)[1].double().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--ks", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--latents", default=None, help="an astro_image checkpoint: fit its galaxy latents")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "kmeans.json"))
    args = parser.parse_args()
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if args.latents:
        data = {"galaxy latents": galaxy_latents(args.latents, args.data_dir, args.n)}
    else:
        data = {f"mixture, D = {dim}": latent_like(args.n, dim) for dim in args.dims}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = platform.processor() or "cpu"
    rows = []
    for name, x in data.items():
        for k in args.ks:
            sklearn = {
                "sklearn KMeans": lambda k=k, x=x: KMeans(k, random_state=0).fit(x.numpy()),
                "sklearn MiniBatchKMeans": lambda k=k, x=x: MiniBatchKMeans(
                    k, random_state=0, n_init=1, batch_size=4096
                ).fit(x.numpy()),
            }
            fits = {f"{method} (cpu)": (fit, cpu) for method, fit in sklearn.items()}
            for dev in dict.fromkeys(["cpu", device]):
                xd = x.to(dev)
                where = torch.cuda.get_device_name() if dev == "cuda" else cpu
                fits[f"torch Lloyd ({dev})"] = (lambda k=k, xd=xd: fit_kmeans(xd, k), where)
                fits[f"torch mini-batch ({dev})"] = (
                    lambda k=k, xd=xd: fit_kmeans(xd, k, batch_size=4096, iters=300),
                    where,
                )
            for method, (fit, where) in fits.items():
                res, t = timed(fit)
                centroids = res.centroids.cpu() if method.startswith("torch") else torch.as_tensor(res.cluster_centers_)
                rows.append(
                    {
                        "data": name,
                        "dim": x.shape[1],
                        "method": method,
                        "k": k,
                        "seconds": t,
                        "inertia": inertia(x, centroids.float()),
                        "device": where,
                    }
                )
    for row in rows:
        ref = next(
            r for r in rows if (r["data"], r["k"], r["method"]) == (row["data"], row["k"], "sklearn KMeans (cpu)")
        )
        row["vs_sklearn"] = row["inertia"] / ref["inertia"]
        row["speedup"] = ref["seconds"] / row["seconds"]
    report(
        f"k-means on {args.n} vectors" + (" (galaxy latents)" if args.latents else ""),
        {
            "data": "{data}",
            "K": "{k}",
            "method": "{method}",
            "inertia": "{inertia:.5g}",
            "inertia / KMeans": "{vs_sklearn:.4f}",
            "seconds": "{seconds:.2f}",
            "speed-up vs KMeans": "{speedup:.1f}x",
        },
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
