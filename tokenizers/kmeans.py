"""K-means in torch, on whatever device the vectors are on: greedy k-means++ seeding, then full-batch Lloyd steps
or mini-batch updates. A plain function on a tensor (no Lightning), for codebooks fitted after an autoencoder.

    result = fit_kmeans(x, k=2048)                 # x: [N, D] float; result.centroids [K, D], result.inertia
    ids, sq_dist = assign(x, result.centroids)      # nearest centroid per vector, int64 [N], its squared distance

Distances use ‖x‖² − 2 x·c + ‖c‖² in chunks of rows (one fused matmul per chunk, bounded memory), accumulated in fp32
with autocast off. Seeding (as scikit-learn's, on a random subset of `init_size` rows): each new centroid is the
best of 2 + ⌊ln K⌋ candidates drawn with probability ∝ D², D the distance to the nearest centroid so far.
Lloyd: centroids ← cluster means; a cluster left empty takes the vector farthest from its centroid.
Mini-batch (batch_size set): each centroid moves towards the batch mean of its vectors with step
n_batch / n_seen (Sculley 2010).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tokenizers.base import full_precision


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # [K, D]
    inertia: float  # Σ over the fitted vectors of the squared distance to their centroid
    n_iter: int


def _sq_distances(x: torch.Tensor, centroids: torch.Tensor, c_norm: torch.Tensor) -> torch.Tensor:
    """[n, K] squared distances (clamped at 0 against rounding)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centroids.T + c_norm).clamp_min(0)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, c_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row: ‖x‖² is the same for every centroid, so the argmin needs only ‖c‖² − 2 x·c
    (one fused addmm over [n, K]); ‖x‖² is added to the minimum alone."""
    best = torch.addmm(c_norm, x, centroids.T, alpha=-2).min(1)
    return best.indices, (best.values + x.pow(2).sum(1)).clamp_min(0)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, D], centroids [K, D] -> (ids int64 [N] of the nearest centroid, squared distance [N] to it)."""
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(f"assign needs x [N, D] and centroids [K, D] of one D, got {tuple(x.shape)} and "
                         f"{tuple(centroids.shape)}")
    with full_precision(x.device):
        c = centroids.float()
        c_norm = c.pow(2).sum(1)
        ids, dist = [], []
        for start in range(0, len(x), chunk):
            best_ids, best_dist = _nearest(x[start:start + chunk].float(), c, c_norm)
            ids.append(best_ids)
            dist.append(best_dist)
    return torch.cat(ids), torch.cat(dist)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, chunk: int = 16384) -> torch.Tensor:
    """Greedy k-means++ seeding: [K, D] centroids chosen among the rows of x [N, D] (fp32)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    closest = assign(x, x[first:first + 1], chunk)[1]
    for _ in range(1, k):
        probs = closest / closest.sum() if closest.sum() > 0 else torch.full_like(closest, 1 / n)
        candidates = torch.multinomial(probs.cpu(), trials, replacement=True, generator=generator).to(x.device)
        # the potential Σ min(D², d²(candidate)) of each candidate; keep the lowest
        cand = x[candidates]
        c_norm = cand.pow(2).sum(1)
        potential = torch.zeros(trials, device=x.device)
        for start in range(0, n, chunk):
            d = _sq_distances(x[start:start + chunk], cand, c_norm)  # [n, trials]
            potential += torch.minimum(d, closest[start:start + chunk, None]).sum(0)
        best = int(potential.argmin())
        best_new = candidates[best]
        centroids.append(x[best_new])
        closest = torch.minimum(closest, assign(x, x[best_new:best_new + 1], chunk)[1])
    return torch.stack(centroids)


def fit_kmeans(x: torch.Tensor, k: int, iters: int = 100, tol: float = 1e-4, batch_size: int | None = None,
               max_vectors: int | None = None, init_size: int | None = None, seed: int = 0,
               chunk: int = 16384) -> KMeansResult:
    """K-means of the rows of x [N, D] on x's device.

    iters: Lloyd iterations (full batch) or mini-batch steps; tol: stop when the inertia falls by less than this
    fraction in a Lloyd step; batch_size: None for full-batch Lloyd, else mini-batch k-means with batches of this
    size; max_vectors: fit on a seeded random subset of at most this many rows (the inertia is over that subset).
    """
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"fit_kmeans needs float vectors [N, D], got {x.dtype} {tuple(x.shape)}")
    if not 1 <= k <= len(x):
        raise ValueError(f"fit_kmeans needs 1 <= k <= N, got k={k} for N={len(x)}")
    if not torch.isfinite(x).all():
        raise ValueError("fit_kmeans: the vectors hold NaN/Inf values")
    generator = torch.Generator().manual_seed(seed)
    with full_precision(x.device):
        x = x.float()
        if max_vectors is not None and len(x) > max_vectors:
            x = x[torch.randperm(len(x), generator=generator)[:max_vectors].to(x.device)]
        init_size = min(len(x), init_size or max(4 * k, 10_000))
        seeds = x if init_size == len(x) else x[torch.randperm(len(x), generator=generator)[:init_size].to(x.device)]
        centroids = kmeans_plus_plus(seeds, k, generator, chunk)
        if batch_size is None:
            centroids, n_iter = _lloyd(x, centroids, iters, tol, chunk)
        else:
            centroids, n_iter = _mini_batch(x, centroids, iters, batch_size, generator, chunk)
        inertia = float(assign(x, centroids, chunk)[1].double().sum())
    return KMeansResult(centroids, inertia, n_iter)


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, iters: int, tol: float, chunk: int) -> tuple[torch.Tensor, int]:
    k, previous = len(centroids), math.inf
    for it in range(1, iters + 1):
        ids, dist = assign(x, centroids, chunk)
        inertia = float(dist.double().sum())
        counts = torch.bincount(ids, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, ids, x)
        new = sums / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # an empty cluster takes the vector worst served by its centroid
            new[empty] = x[dist.topk(len(empty)).indices]
        centroids = new
        if previous - inertia <= tol * inertia:
            return centroids, it
        previous = inertia
    return centroids, iters


def _mini_batch(x: torch.Tensor, centroids: torch.Tensor, steps: int, batch_size: int, generator: torch.Generator,
                chunk: int) -> tuple[torch.Tensor, int]:
    seen = torch.zeros(len(centroids), device=x.device)
    for _ in range(steps):
        batch = x[torch.randint(len(x), (batch_size,), generator=generator).to(x.device)]
        ids, _ = assign(batch, centroids, chunk)
        counts = torch.bincount(ids, minlength=len(centroids)).float()
        sums = torch.zeros_like(centroids).index_add_(0, ids, batch)
        seen += counts
        hit = counts > 0
        step = (counts[hit] / seen[hit])[:, None]
        centroids[hit] = (1 - step) * centroids[hit] + step * sums[hit] / counts[hit][:, None]
    return centroids, steps
