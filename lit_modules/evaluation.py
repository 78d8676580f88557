"""Judging a tokenizer on a data set: each metric's point value with a 95 % bootstrap interval over independent
units (trajectories, recordings, images), and what its tokens cost (bits per value).

Intervals. A GroupedSums metric (lit_modules/metrics.py) keeps sums per group; evaluate.py gives every bootstrap
unit its own group, so its states are per-unit sums `[U, ...]`. The point value is `values(Σ_u states_u)`. One
bootstrap resample draws U units with replacement and sums their states with multiplicity, `values(Σ_u m_u ·
states_u)`; the interval is the 2.5 and 97.5 percentiles of that over the resamples (percentile bootstrap). So an
interval comes from the metric's own definition: a ratio of sums (rel_l1 = Σ|x̂−x| / Σ|x|) stays a ratio of sums,
never a mean of per-unit ratios. Resamples are drawn from a fixed seed: the same states give the same interval.

Strata. Where the units fall into strata fixed by the design of the set (the fields' splits are drawn per dataset:
every test set holds the same number of trajectories of each PDE), a resample draws each stratum's units from that
stratum alone (stratified bootstrap): how many Navier–Stokes trajectories a resample holds is not a source of
variance the set has, and drawing it anyway widens a pooled interval by the spread between the PDEs.

Paired differences. Two judgements of the same units (a forecast and persistence on the same pairs) drawn with the
same multiplicities give the interval of their difference (`paired`): what "better than" needs, since most of
either interval's width is which trajectories were drawn, shared by both.

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
    holds the central `level` of the resampled values. `chunk` resamples are summed at once (memory: chunk × units).
    strata: the index column whose value a unit's stratum is (`unit_strata`; None: no strata)."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0
    chunk: int = 100
    strata: str | None = None

    def __post_init__(self):
        if self.resamples < 1 or not 0 < self.level < 1 or self.chunk < 1:
            raise ValueError(f"bootstrap needs resamples ≥ 1, 0 < level < 1 and chunk ≥ 1, got {self}")

    def to_dict(self) -> dict:
        method = "percentile bootstrap over units" + (f", stratified by {self.strata}" if self.strata else "")
        return {**asdict(self), "method": method}

    def unit_strata(self, index: np.ndarray, unit: np.ndarray, units: int) -> np.ndarray | None:
        """index: [N] rows, unit: [N] each row's unit id < units -> [units] each unit's stratum id (the rank of its
        value of the `strata` column), or None without strata or where the index has no such column."""
        if self.strata is None or self.strata not in (index.dtype.names or ()):
            return None
        _, code = np.unique(index[self.strata], return_inverse=True)
        out = np.full(units, -1, dtype=np.int64)
        out[unit] = code.reshape(-1)
        if (out < 0).any() or (out[unit] != code.reshape(-1)).any():
            raise ValueError(f"bootstrap.strata={self.strata}: not one value per unit, or units without rows")
        return out

    def multiplicities(self, units: int, strata: np.ndarray | None = None) -> Iterator[torch.Tensor]:
        """[b, units] float64 blocks, b ≤ chunk, `resamples` rows in all: how often each unit is drawn in each
        resample (each row sums to `units`). strata: [units] the stratum of each unit; each resample then draws as
        many units of each stratum as it has, from that stratum only (one stratum: the plain draws)."""
        gen = np.random.Generator(np.random.PCG64(self.seed))
        groups = [np.arange(units)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
        if strata is not None and len(strata) != units:
            raise ValueError(f"strata give {len(strata)} units' strata for {units} units")
        for start in range(0, self.resamples, self.chunk):
            b = min(self.chunk, self.resamples - start)
            counts = np.zeros(b * units, dtype=np.int64)
            for members in groups:
                draws = members[gen.integers(0, len(members), size=(b, len(members)))] + units * np.arange(b)[:, None]
                counts += np.bincount(draws.ravel(), minlength=b * units)
            yield torch.from_numpy(counts.reshape(b, units).astype(np.float64))

    def draws(self, values: ValuesFn, states: States, strata: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """states: {name: [U, ...]} per-unit sums -> {metric: [resamples] float64} of `values` on each resample (the
        same resamples for the same units, strata and seed)."""
        units = len(next(iter(states.values())))
        if units == 0:
            raise ValueError("bootstrap over no units: there is nothing to resample")
        drawn: dict[str, list[np.ndarray]] = {}
        for weights in self.multiplicities(units, strata):
            summed = {k: resum(weights, v) for k, v in states.items()}
            for name, value in values(summed).items():
                drawn.setdefault(name, []).append(value.double().cpu().numpy().reshape(len(weights)))
        return {name: np.concatenate(parts) for name, parts in drawn.items()}

    def percentiles(self, drawn: np.ndarray) -> tuple[float, float]:
        """The central `level` of the finite resampled values (NaN where none is finite)."""
        finite = drawn[np.isfinite(drawn)]
        tail = 100 * (1 - self.level) / 2
        lo, hi = np.percentile(finite, [tail, 100 - tail]) if len(finite) else (math.nan, math.nan)
        return float(lo), float(hi)

    def interval(
        self, values: ValuesFn, states: States, strata: np.ndarray | None = None
    ) -> dict[str, tuple[float, float]]:
        """states: {name: [U, ...]} per-unit sums -> {metric: (lo, hi)} of `values` over the resamples (NaN where no
        resample gave a finite value)."""
        return {name: self.percentiles(d) for name, d in self.draws(values, states, strata).items()}


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
    strata: np.ndarray | None = None,
    baseline: States | None = None,
) -> dict:
    """states: {name: [U, G, ...]} sums per unit and metric group -> {"overall": {metric: {"value", "interval"}},
    "units": U, "groups": {group name: {..., "units": units that hold the group}}}. A group is summed (and resampled)
    over the units that hold data of it (`seen` > 0), since a unit of another group has nothing to say about it;
    group_names None: one group, no per-group entries. strata: [U] each unit's stratum (Bootstrap.multiplicities).
    baseline: the states of another judgement of the same units and groups: the metrics are then the differences
    states − baseline, each interval from the same resamples of both (`paired`)."""
    overall = {k: v.sum(1) for k, v in states.items()}

    def judge(part: States, select, strata_part) -> dict:
        if baseline is None:
            return judged(values, part, bootstrap, strata_part)
        return paired(values, part, {k: select(v) for k, v in baseline.items()}, bootstrap, strata_part)

    out = {"units": int((overall[seen] > 0).sum()), "overall": judge(overall, lambda v: v.sum(1), strata), "groups": {}}
    for g, name in enumerate(group_names or ()):
        has = states[seen][:, g] > 0
        if has.any():
            part = {k: v[has, g] for k, v in states.items()}
            in_group = None if strata is None else strata[has.numpy()]
            out["groups"][name] = {"units": int(has.sum()), **judge(part, lambda v, h=has, g=g: v[h, g], in_group)}
    return out


def judged(values: ValuesFn, states: States, bootstrap: Bootstrap, strata: np.ndarray | None = None) -> dict[str, dict]:
    """states: {name: [U, ...]} -> {metric: {"value": point value of the summed states, "interval": [lo, hi]}}."""
    point = values({k: v.sum(0) for k, v in states.items()})
    interval = bootstrap.interval(values, states, strata)
    return {
        k: {"value": finite_or_none(v), "interval": [finite_or_none(x) for x in interval[k]]} for k, v in point.items()
    }


def paired(
    values: ValuesFn, states: States, baseline: States, bootstrap: Bootstrap, strata: np.ndarray | None = None
) -> dict[str, dict]:
    """Two judgements {name: [U, ...]} of the same units -> {metric: {"value": values(states) − values(baseline),
    "interval": [lo, hi]}}, the interval of the difference over resamples that draw the same units for both."""
    a, b = (values({k: v.sum(0) for k, v in s.items()}) for s in (states, baseline))
    da, db = bootstrap.draws(values, states, strata), bootstrap.draws(values, baseline, strata)
    out = {}
    for k in a:
        lo, hi = bootstrap.percentiles(da[k] - db[k])
        out[k] = {"value": finite_or_none(a[k] - b[k]), "interval": [finite_or_none(lo), finite_or_none(hi)]}
    return out


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
