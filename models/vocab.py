"""The transformer's vocabulary, built from trained tokenizers' `streams`, never typed by hand.

    vocab = Vocabulary.from_streams({"image": {"image": 2048}, "catalog": {"catalog": 1025}, "spectrum": {...}})
    vocab.to_global("image", "image", ids)      # tokenizer ids -> transformer ids
    vocab.to_local(global_ids)                  # -> (range index per id, tokenizer id)

Ids: the special tokens PAD, BOS, EOS, SEP, MISS, MASK (0 … 5), then one contiguous range per (modality, stream) in
the order given, sized by the tokenizer's vocabulary. Type ids: 0 for every special token, then 1, 2, … per
(modality, stream) in the same order — fixed by the schema, so an object that lacks a modality still gives every
other token the same type id. The vocabulary is plain data (`to_dict` / `from_dict`), saved in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SPECIALS = ("PAD", "BOS", "EOS", "SEP", "MISS", "MASK")
SPECIAL_TYPE = 0


@dataclass(frozen=True)
class StreamRange:
    """Global ids [start, start + size) of one (modality, stream); its type id."""

    modality: str
    stream: str
    start: int
    size: int
    type_id: int

    @property
    def stop(self) -> int:
        return self.start + self.size


class Vocabulary:
    def __init__(self, ranges: list[StreamRange]):
        self.ranges = list(ranges)
        self.size = len(SPECIALS) + sum(r.size for r in self.ranges)
        self.n_types = 1 + len(self.ranges)
        self._check()

    @classmethod
    def from_streams(cls, streams: dict[str, dict[str, int]]) -> Vocabulary:
        """streams: modality -> {stream: vocabulary size} (each tokenizer's `streams`), in sequence order."""
        ranges, start = [], len(SPECIALS)
        for modality, per_stream in streams.items():
            if not per_stream:
                raise ValueError(f"Vocabulary: modality {modality!r} has no streams")
            for stream, size in per_stream.items():
                if not isinstance(size, int) or size < 1:
                    raise ValueError(f"Vocabulary: stream {modality}/{stream} has vocabulary size {size!r}")
                ranges.append(StreamRange(modality, stream, start, size, 1 + len(ranges)))
                start += size
        return cls(ranges)

    def _check(self) -> None:
        """Ranges contiguous after the specials, non-overlapping, inside the vocabulary; type ids unique, < n_types.
        Raises ValueError (not assert: it must hold under python -O too)."""
        expected = len(SPECIALS)
        for r in self.ranges:
            if r.start != expected or r.size < 1:
                raise ValueError(f"Vocabulary: range {r} overlaps or leaves a gap (expected start {expected})")
            expected = r.stop
        types = [r.type_id for r in self.ranges]
        if len(set(types)) != len(types) or not all(0 < t < self.n_types for t in types):
            raise ValueError(f"Vocabulary: type ids {types} must be unique and in [1, {self.n_types})")

    def special(self, name: str) -> int:
        return SPECIALS.index(name)

    def range(self, modality: str, stream: str | None = None) -> StreamRange:
        """The range of (modality, stream); stream may be left out when the modality has one."""
        found = [r for r in self.ranges if r.modality == modality and (stream is None or r.stream == stream)]
        if len(found) != 1:
            known = [f"{r.modality}/{r.stream}" for r in self.ranges]
            raise KeyError(f"Vocabulary has no single stream {modality}/{stream or '*'}; it has {known}")
        return found[0]

    def to_global(self, modality: str, stream: str, ids: torch.Tensor) -> torch.Tensor:
        r = self.range(modality, stream)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= r.size):
            raise ValueError(
                f"{modality}/{stream} ids must lie in [0, {r.size}), got [{int(ids.min())}, {int(ids.max())}]"
            )
        return ids.long() + r.start

    def type_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Type id of every global id (0 for specials)."""
        starts = torch.tensor([r.start for r in self.ranges], device=ids.device)
        return torch.where(ids < len(SPECIALS), SPECIAL_TYPE, torch.searchsorted(starts, ids, right=True))

    def type_bounds(self) -> torch.Tensor:
        """[n_types, 2]: the global id range [lo, hi) each type may take (type 0: the specials)."""
        return torch.tensor([[0, len(SPECIALS)], *[[r.start, r.stop] for r in self.ranges]])

    def to_local(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global ids -> (type id, id within its range; the special's own index for specials)."""
        types = self.type_of(ids)
        starts = torch.tensor([0, *[r.start for r in self.ranges]], device=ids.device)
        return types, ids - starts[types]

    def to_dict(self) -> dict:
        return {"specials": list(SPECIALS), "ranges": [vars(r).copy() for r in self.ranges]}

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        if list(d["specials"]) != list(SPECIALS):
            raise ValueError(f"vocabulary saved with special tokens {d['specials']}, this version has {SPECIALS}")
        return cls([StreamRange(**r) for r in d["ranges"]])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.ranges == other.ranges

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.modality}/{r.stream}: [{r.start}, {r.stop}) type {r.type_id}" for r in self.ranges)
        return f"Vocabulary(size={self.size}, specials 0–{len(SPECIALS) - 1}, {parts})"
