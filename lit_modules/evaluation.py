"""Judging a tokenizer on a data set: each metric's point value with a 95 % bootstrap interval over independent
units (trajectories, recordings, images), and what its tokens cost (bits per value).

Intervals. A GroupedSums metric (lit_modules/metrics.py) keeps sums per group; evaluate.py gives every bootstrap
unit its own group, so its states are per-unit sums `[U, ...]`. The point value is `values(Σ_u states_u)`. One
bootstrap resample draws U units with replacement and sums their states with multiplicity, `values(Σ_u m_u ·
states_u)`; the interval is the 2.5 and 97.5 percentiles of that over the resamples (percentile bootstrap). So an
interval comes from the metric's own definition: a ratio of sums (rel_l1 = Σ|x̂−x| / Σ|x|) stays a ratio of sums,
never a mean of per-unit ratios. Resamples are drawn from a fixed seed: the same states give the same interval.

Rate, from the ids of every sample of the evaluated set (TokenRate), V_s the vocabulary of stream s, T_s its tokens
per sample, n the values of one sample (the tokenizer input's numel: fields H·W, EEG P, images C·H·W):
    bits_per_value         = Σ_s T_s · log2(V_s) / n                (the codebook's fixed cost)
    entropy_bits_per_value = Σ_s T_s · H_s / n, H_s = −Σ p log2 p of the stream's measured id histogram
    coded_bits_per_value   = 8 · Σ_s bytes_s / (n · N), bytes_s the size of the stream's ids of all N samples (each id
                             in the smallest unsigned dtype, samples in order) after lzma (xz, preset 9)
    tokens_per_sample      = Σ_s T_s
"""

from __future__ import annotations

import lzma
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from datamodules.token_store import id_dtype
from lit_modules.metrics import CodebookUsage

States = dict[str, torch.Tensor]
ValuesFn = Callable[[States], dict[str, torch.Tensor]]

LZMA_PRESET = 9


@dataclass(frozen=True)
class Bootstrap:
    """Percentile bootstrap over units: `resamples` draws of all units with replacement from `seed`; the interval
    holds the central `level` of the resampled values. `chunk` resamples are summed at once (memory: chunk × units)."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0
    chunk: int = 100

    def __post_init__(self):
        if self.resamples < 1 or not 0 < self.level < 1 or self.chunk < 1:
            raise ValueError(f"bootstrap needs resamples ≥ 1, 0 < level < 1 and chunk ≥ 1, got {self}")

    def to_dict(self) -> dict:
        return {**asdict(self), "method": "percentile bootstrap over units"}

    def multiplicities(self, units: int) -> Iterator[torch.Tensor]:
        """[b, units] float64 blocks, b ≤ chunk, `resamples` rows in all: how often each unit is drawn in each
        resample (each row sums to `units`)."""
        gen = np.random.Generator(np.random.PCG64(self.seed))
        for start in range(0, self.resamples, self.chunk):
            b = min(self.chunk, self.resamples - start)
            draws = gen.integers(0, units, size=(b, units)) + units * np.arange(b)[:, None]
            yield torch.from_numpy(np.bincount(draws.ravel(), minlength=b * units).reshape(b, units).astype(np.float64))

    def interval(self, values: ValuesFn, states: States) -> dict[str, tuple[float, float]]:
        """states: {name: [U, ...]} per-unit sums -> {metric: (lo, hi)} of `values` over the resamples (NaN where no
        resample gave a finite value)."""
        units = len(next(iter(states.values())))
        if units == 0:
            raise ValueError("bootstrap over no units: there is nothing to resample")
        drawn: dict[str, list[np.ndarray]] = {}
        for weights in self.multiplicities(units):
            summed = {k: resum(weights, v) for k, v in states.items()}
            for name, value in values(summed).items():
                drawn.setdefault(name, []).append(value.double().cpu().numpy().reshape(len(weights)))
        tail = 100 * (1 - self.level) / 2
        out = {}
        for name, parts in drawn.items():
            finite = np.concatenate(parts)
            finite = finite[np.isfinite(finite)]
            lo, hi = np.percentile(finite, [tail, 100 - tail]) if len(finite) else (math.nan, math.nan)
            out[name] = (float(lo), float(hi))
        return out


def resum(weights: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """weights [b, U], state [U, ...] -> [b, ...]: Σ_u weights[:, u] · state[u], in the state's dtype (integer
    counts stay integers; float64 holds them exactly below 2^53)."""
    total = torch.tensordot(weights, state.double().cpu(), dims=1)
    return total if state.is_floating_point() else total.round().to(state.dtype)


def summarize(
    values: ValuesFn,
    states: States,
    seen: str,
    group_names: Sequence[str] | None,
    bootstrap: Bootstrap,
) -> dict:
    """states: {name: [U, G, ...]} sums per unit and metric group -> {"overall": {metric: {"value", "interval"}},
    "units": U, "groups": {group name: {..., "units": units that hold the group}}}. A group is summed (and resampled)
    over the units that hold data of it (`seen` > 0), since a unit of another group has nothing to say about it;
    group_names None: one group, no per-group entries."""
    overall = {k: v.sum(1) for k, v in states.items()}
    out = {"units": int((overall[seen] > 0).sum()), "overall": judged(values, overall, bootstrap), "groups": {}}
    for g, name in enumerate(group_names or ()):
        has = states[seen][:, g] > 0
        if has.any():
            part = {k: v[has, g] for k, v in states.items()}
            out["groups"][name] = {"units": int(has.sum()), **judged(values, part, bootstrap)}
    return out


def judged(values: ValuesFn, states: States, bootstrap: Bootstrap) -> dict[str, dict]:
    """states: {name: [U, ...]} -> {metric: {"value": point value of the summed states, "interval": [lo, hi]}}."""
    point = values({k: v.sum(0) for k, v in states.items()})
    interval = bootstrap.interval(values, states)
    return {
        k: {"value": finite_or_none(v), "interval": [finite_or_none(x) for x in interval[k]]} for k, v in point.items()
    }


def finite_or_none(x) -> float | None:
    """A JSON-safe number: NaN and ±inf (no data, or a resample that has none) become null."""
    x = float(x)
    return x if math.isfinite(x) else None


class TokenRate:
    """What the tokens of an evaluated set cost (module docstring: bits_per_value, entropy_bits_per_value,
    coded_bits_per_value, tokens_per_sample) and each stream's codebook use (CodebookUsage: usage %, perplexity,
    entropy_bits). update() every batch's ids in the set's order; compute() once at the end."""

    def __init__(self, streams: dict[str, int]):
        self.streams = dict(streams)
        self.usage = {s: CodebookUsage(v) for s, v in self.streams.items()}
        self.coders = {s: lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=LZMA_PRESET) for s in self.streams}
        self.coded = dict.fromkeys(self.streams, 0)
        self.per_sample: dict[str, int] = {}
        self.samples = 0
        self.finished = False

    def update(self, tokens: dict[str, torch.Tensor]) -> None:
        """tokens: {stream: ids [B, *grid]}, every stream of the tokenizer, one batch."""
        if self.finished:
            raise RuntimeError("TokenRate.update after compute()")
        if set(tokens) != set(self.streams):
            raise ValueError(f"tokens of streams {sorted(tokens)}, expected the tokenizer's {sorted(self.streams)}")
        batch = {len(ids) for ids in tokens.values()}
        if len(batch) != 1:
            raise ValueError(f"streams of one batch hold different numbers of samples: {batch}")
        for s, ids in tokens.items():
            ids = ids.detach().cpu()
            self.usage[s].update(ids)
            self.per_sample[s] = ids[0].numel()
            self.coded[s] += len(self.coders[s].compress(ids.numpy().astype(id_dtype(self.streams[s])).tobytes()))
        self.samples += batch.pop()

    def compute(self, values_per_sample: int) -> dict:
        if not self.finished:
            for s, coder in self.coders.items():
                self.coded[s] += len(coder.flush())
            self.finished = True
        if self.samples == 0:
            raise ValueError("TokenRate saw no samples")
        n = float(values_per_sample)
        streams = {}
        for s, vocabulary in self.streams.items():
            streams[s] = {
                "vocabulary": vocabulary,
                "tokens_per_sample": self.per_sample[s],
                "coded_bytes": self.coded[s],
            }
            streams[s].update({k: float(v) for k, v in self.usage[s].compute().items()})
        return {
            "tokens_per_sample": sum(self.per_sample.values()),
            "values_per_sample": int(values_per_sample),
            "bits_per_value": sum(t["tokens_per_sample"] * math.log2(t["vocabulary"]) for t in streams.values()) / n,
            "entropy_bits_per_value": sum(t["tokens_per_sample"] * t["entropy_bits"] for t in streams.values()) / n,
            "coded_bits_per_value": 8 * sum(self.coded.values()) / (n * self.samples),
            "coder": f"lzma (xz, preset {LZMA_PRESET}) of each stream's ids, smallest unsigned dtype, samples in order",
            "streams": streams,
        }
