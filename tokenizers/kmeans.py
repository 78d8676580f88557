"""K-means in torch, on whatever device the vectors are on: greedy k-means++ seeding, then full-batch Lloyd steps
or mini-batch updates. A plain function on a tensor (no Lightning), for codebooks fitted after an autoencoder.

    result = fit_kmeans(x, k=2048)                 # x: [N, D] float; result.centroids [K, D], result.inertia
    ids, sq_dist = assign(x, result.centroids)      # nearest centroid per vector, int64 [N], its squared distance

Distances use ‖x‖² − 2 x·c + ‖c‖² in chunks of 2048 rows (one fused matmul per chunk, small enough that the
[2048, K] block stays in cache), accumulated in fp32 with autocast off. Seeding (as scikit-learn's, on every
row unless `init_size` is set): each new centroid is the best of 2 + ⌊ln K⌋ candidates drawn with probability ∝ D²,
D the distance to the nearest centroid so far. Seeding among a subset of a few rows per cluster leaves Lloyd in a
far worse optimum once K is large (bench/README.md has the figures).
Lloyd (on all rows, or at most `per_cluster`·K of them): centroids ← cluster means; a cluster left empty takes the
vector farthest from its centroid; between full passes each row searches only its few nearest centroids of the last
full pass.
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


def _nearest(x: torch.Tensor, centroids: torch.Tensor, c_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row: ‖x‖² is the same for every centroid, so the argmin needs only ‖c‖² − 2 x·c
    (one fused addmm over [n, K]); ‖x‖² is added to the minimum alone."""
    best = torch.addmm(c_norm, x, centroids.T, alpha=-2).min(1)
    return best.indices, (best.values + x.pow(2).sum(1)).clamp_min(0)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, D], centroids [K, D] -> (ids int64 [N] of the nearest centroid, squared distance [N] to it)."""
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"assign needs x [N, D] and centroids [K, D] of one D, got {tuple(x.shape)} and {tuple(centroids.shape)}"
        )
    with full_precision(x.device):
        c = centroids.float()
        c_norm = c.pow(2).sum(1)
        ids, dist = [], []
        for start in range(0, len(x), chunk):
            best_ids, best_dist = _nearest(x[start : start + chunk].float(), c, c_norm)
            ids.append(best_ids)
            dist.append(best_dist)
    return torch.cat(ids), torch.cat(dist)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding: [K, D] centroids chosen among the rows of x [N, D] (fp32).

    One [trials, N] distance matmul per centroid: candidates are drawn by inverting the cumulative D² (searchsorted,
    cheaper than multinomial), and the chosen candidate's row updates D² without a second pass. Rows run along the
    last axis because [N, trials] with a small D is a skinny matmul many times slower on CPU than its transpose. Memory:
    x transposed plus [trials, N] floats, trials = 2 + ⌊ln K⌋ (9 at K = 2048)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    x_t = x.T.contiguous()  # [D, N]
    x_norm = x.pow(2).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    closest = (x_norm - 2 * x[first] @ x_t + x_norm[first]).clamp_min(0)  # [N]: D² to the nearest centroid so far
    uniform = torch.rand(k, trials, generator=generator, dtype=torch.float64).to(x.device)
    for i in range(1, k):
        cumulative = closest.double().cumsum(0)
        total = cumulative[-1]
        if total > 0:
            candidates = torch.searchsorted(cumulative, uniform[i] * total).clamp_max(n - 1)
        else:  # every row coincides with a centroid already
            candidates = (uniform[i] * n).long().clamp_max(n - 1)
        d = torch.addmm(x_norm, x[candidates], x_t, alpha=-2).add_(x_norm[candidates][:, None]).clamp_min_(0)
        torch.minimum(d, closest, out=d)  # [trials, N]: D² if each candidate were added
        best = int(d.sum(1).argmin())
        chosen.append(int(candidates[best]))
        closest = d[best]
    return x[torch.tensor(chosen, device=x.device)]


def fit_kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 100,
    tol: float = 1e-4,
    batch_size: int | None = None,
    max_vectors: int | None = None,
    per_cluster: int | None = None,
    init_size: int | None = None,
    seed: int = 0,
    chunk: int = 2048,
) -> KMeansResult:
    """K-means of the rows of x [N, D] on x's device.

    iters: Lloyd iterations (full batch) or mini-batch steps; tol: stop when the inertia falls by less than this
    fraction in a Lloyd step; batch_size: None for Lloyd, else mini-batch k-means with batches of this size;
    max_vectors: use a seeded random subset of at most this many rows of x (the returned inertia is over it);
    per_cluster: Lloyd steps see a seeded random subset of at most per_cluster·K of those rows (None: all), so the
    cost no longer grows with N, at the price of centroids fitted to fewer rows; the final assignment and inertia use
    all; init_size: a seeded random subset of this many rows for the k-means++ seeding to choose among (None: all).
    """
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"fit_kmeans needs float vectors [N, D], got {x.dtype} {tuple(x.shape)}")
    if not 1 <= k <= len(x):
        raise ValueError(f"fit_kmeans needs 1 <= k <= N, got k={k} for N={len(x)}")
    if not torch.isfinite(x).all():
        raise ValueError("fit_kmeans: the vectors hold NaN/Inf values")
    generator = torch.Generator().manual_seed(seed)

    def subset(rows: torch.Tensor, n: int | None) -> torch.Tensor:
        if n is None or len(rows) <= n:
            return rows
        return rows[torch.randperm(len(rows), generator=generator)[:n].to(rows.device)]

    with full_precision(x.device):
        x = subset(x.float(), max_vectors)
        centroids = kmeans_plus_plus(subset(x, init_size), k, generator)
        if batch_size is None:
            centroids, n_iter = _lloyd(subset(x, per_cluster and per_cluster * k), centroids, iters, tol, chunk)
        else:
            centroids, n_iter = _mini_batch(x, centroids, iters, batch_size, generator, chunk)
        inertia = float(assign(x, centroids, chunk)[1].double().sum())
    return KMeansResult(centroids, inertia, n_iter)


def _nearest_candidates(
    x: torch.Tensor, centroids: torch.Tensor, m: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full pass: (nearest ids [N], their squared distances [N], the m nearest centroid ids [N, m])."""
    c_norm = centroids.pow(2).sum(1)
    ids, dist, cand = [], [], []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        top = torch.addmm(c_norm, part, centroids.T, alpha=-2).topk(m, dim=1, largest=False)
        ids.append(top.indices[:, 0])
        dist.append((top.values[:, 0] + part.pow(2).sum(1)).clamp_min(0))
        cand.append(top.indices)
    return torch.cat(ids), torch.cat(dist), torch.cat(cand)


def _nearest_among(
    x: torch.Tensor, centroids: torch.Tensor, cand: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest of each row's candidate centroids cand [N, m]: (ids [N], squared distances [N])."""
    ids, dist = [], []
    for start in range(0, len(x), chunk):
        c = cand[start : start + chunk]
        d = (x[start : start + chunk, None, :] - centroids[c]).pow(2).sum(-1)  # [n, m]
        best = d.min(1)
        ids.append(c.gather(1, best.indices[:, None])[:, 0])
        dist.append(best.values)
    return torch.cat(ids), torch.cat(dist)


def _lloyd(
    x: torch.Tensor, centroids: torch.Tensor, iters: int, tol: float, chunk: int, candidates: int = 8, refresh: int = 8
) -> tuple[torch.Tensor, int]:
    """Lloyd steps. A full pass (every centroid) every `refresh` steps also keeps each row's `candidates` nearest
    centroids; the steps in between search only those (centroids move little between steps, so a row's nearest
    stays among them), which makes them ~K/candidates times cheaper. A top-k over K costs several plain passes, so
    for K up to 32·candidates every step is a plain full pass instead. fit_kmeans ends with an exact assignment."""
    k, previous = len(centroids), math.inf
    m = min(candidates, k)
    search = k > 32 * m
    cand = None
    for it in range(1, iters + 1):
        if not search:
            ids, dist = assign(x, centroids, chunk)
        elif (it - 1) % refresh == 0:
            ids, dist, cand = _nearest_candidates(x, centroids, m, chunk)
        else:
            ids, dist = _nearest_among(x, centroids, cand, chunk)
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


def _mini_batch(
    x: torch.Tensor, centroids: torch.Tensor, steps: int, batch_size: int, generator: torch.Generator, chunk: int
) -> tuple[torch.Tensor, int]:
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
