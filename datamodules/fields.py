"""LightningDataModule for 2-D physical fields, one variable per sample (Phaedra's batch dict).

Batch (B samples, each one variable of one snapshot):
    field_variables_in       [B, 1, H, W]  normalized input (x − μ_var) / σ_var
    field_variables_out      [B, 1, H, W]  raw target in physical units
    field_variables_in_mean  [B, 1]        μ of the sample's (dataset, variable), train split only
    field_variables_in_std   [B, 1]        σ of the sample's (dataset, variable), train split only
    variable_id              [B]           index into `variable_names`
Splits are by trajectory (no snapshot of a validation trajectory is ever trained on), deterministic
from `seed`; train order depends on (seed, epoch) only, so a resumed run sees the same batches.

Samples are read when a batch asks for them (datamodules/sources.py FieldArrays): a user's 100 GB of HDF5 costs
the memory of a few batches. The statistics come from one streaming pass over the train split (or a seeded sample
of `stats_frames` snapshots per variable), cached under `<data_dir>/stats/` keyed by the files, their sizes and
modification times, the split and the sample: a second run starts at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.adapters import BatchAdapter, FieldAdapter
from datamodules.common import EpochShuffleSampler, SplitDataModule, cache_key, split_indices
from datamodules.sources import FieldArrays, describe_arrays, same_frames
from tokenizers.base import DataMetadata
from tokenizers.load import atomic_write

log = logging.getLogger(__name__)


class FieldSamples(Dataset):
    """Samples (dataset, trajectory, time, variable) of `arrays`, read and normalized a batch at a time.

    rows: int64 [n, 4] (array index, trajectory, time, variable within the array); mean/std: float64 per global
    variable id; var_offset[k]: global id of array k's first variable."""

    def __init__(
        self,
        arrays: list[FieldArrays],
        rows: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        var_offset: list[int],
    ):
        self.arrays, self.rows, self.mean, self.std = arrays, rows, mean.float(), std.float()
        self.var_offset = torch.tensor(var_offset)

    def __len__(self) -> int:
        return len(self.rows)

    def variable_id(self, rows: torch.Tensor) -> torch.Tensor:
        return self.var_offset[rows[:, 0]] + rows[:, 3]

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.rows[torch.as_tensor(idx, dtype=torch.long)]
        h, w = self.arrays[0].hw
        raw = np.empty((len(rows), h, w), np.float32)
        for k in rows[:, 0].unique().tolist():
            pick = (rows[:, 0] == k).numpy()
            raw[pick] = self.arrays[k].read(*rows[pick, 1:].numpy().T)
        raw = torch.from_numpy(raw).unsqueeze(1)
        var_id = self.variable_id(rows)
        mean, std = self.mean[var_id][:, None], self.std[var_id][:, None]
        return {
            "field_variables_in": (raw - mean[..., None, None]) / std[..., None, None],
            "field_variables_out": raw,
            "field_variables_in_mean": mean,
            "field_variables_in_std": std,
            "variable_id": var_id,
        }

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([idx]).items()}


def welford_merge(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Chan et al.'s parallel update of (count, mean, M2) — M2 the sum of squared deviations — for two parts."""
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    if n == 0:
        return a
    delta = mb - ma
    return n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n


def frame_statistics(array: FieldArrays, var: int, frames: np.ndarray, chunk: int = 64) -> tuple[float, float]:
    """(mean, std) over every value of the snapshots `frames` ([n, 2]: trajectory, time) of one variable, streamed
    `chunk` snapshots at a time in float64 and merged with Welford/Chan: memory of one chunk, any file size."""
    acc = (0, 0.0, 0.0)
    for start in range(0, len(frames), chunk):
        part = frames[start : start + chunk]
        x = array.read(part[:, 0], part[:, 1], np.full(len(part), var)).astype(np.float64)
        acc = welford_merge(acc, (x.size, float(x.mean()), float(((x - x.mean()) ** 2).sum())))
    n, mean, m2 = acc
    return mean, (m2 / max(n - 1, 1)) ** 0.5  # unbiased, as torch.std


class FieldDataModule(SplitDataModule):
    def __init__(
        self,
        source,
        adapter: BatchAdapter | None = None,
        data_dir: str = "data",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        num_workers: int = 0,
        stats_frames: int | None = 4096,
    ):
        super().__init__(adapter or FieldAdapter(), batch_size, eval_batch_size, split, seed, num_workers)
        if stats_frames is not None and stats_frames < 1:
            raise ValueError(f"data.stats_frames must be ≥ 1 or null (every train snapshot), got {stats_frames}")
        self.source, self.data_dir, self.stats_frames = source, Path(data_dir), stats_frames
        self.variable_names: list[str] = []
        self._stats: tuple[list[float], list[float]] = ([], [])

    def prepare_data(self) -> None:
        self.source.prepare(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        arrays = self.source.open(self.data_dir)
        same_frames(arrays)
        rows: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
        split_trajs, var_offset = [], []
        for k, a in enumerate(arrays):
            n_traj, n_t = a.shape[:2]
            if a.splits is None and n_traj < 3:
                raise ValueError(
                    f"{a.origin}: {n_traj} trajectories cannot be split by trajectory into "
                    f"train/val/test; need at least 3{a.few_trajectories_hint}"
                )
            idx = a.splits if a.splits is not None else split_indices(n_traj, self.split, self.seed)
            split_trajs.append(idx)
            var_offset.append(len(self.variable_names))
            self.variable_names += [f"{a.name}/{v}" for v in a.variables]
            for v in range(len(a.variables)):  # order: variable, trajectory, time (as the in-memory layout)
                for split, traj in idx.items():
                    tt = torch.cartesian_prod(traj, torch.arange(n_t)).reshape(-1, 2)
                    rows[split].append(torch.cat([torch.full((len(tt), 1), k), tt, torch.full((len(tt), 1), v)], 1))
        mean, std = self.statistics(arrays, split_trajs)
        self._stats = (mean, std)
        for split, parts in rows.items():
            self.splits[split] = FieldSamples(
                arrays,
                torch.cat(parts),
                torch.tensor(mean, dtype=torch.float64),
                torch.tensor(std, dtype=torch.float64),
                var_offset,
            )
        if len(self.splits["train"]) < self.batch_size:
            raise ValueError(
                f"the train split has {len(self.splits['train'])} samples, fewer than data.batch_size={self.batch_size}"
            )

    def statistics(
        self, arrays: list[FieldArrays], splits: list[dict[str, torch.Tensor]]
    ) -> tuple[list[float], list[float]]:
        """Per (dataset, variable): mean and std over the train split's snapshots, or over a seeded sample of
        `stats_frames` of them. The same pass reads the val and test snapshots (all, or a seeded sample of
        `stats_frames` per split and variable) to find NaN/Inf before training; whatever it skipped is checked when
        read. Cached under <data_dir>/stats/ by a key of everything the result depends on."""
        key = {
            **describe_arrays(arrays),
            "splits": [{k: t.tolist() for k, t in idx.items()} for idx in splits],
            "stats_frames": self.stats_frames,
            "seed": self.seed,
            "version": 1,
        }
        path = self.data_dir / "stats" / f"fields-{cache_key(key)}.json"
        if path.is_file():
            try:
                cached = json.loads(path.read_text())
                return cached["mean"], cached["std"]
            except (ValueError, KeyError) as e:  # a cache: compute again
                log.warning("statistics cache %s cannot be read (%s); computing again", path, e)
        start = time.perf_counter()
        mean, std = [], []
        gen = np.random.default_rng(self.seed)
        for a, idx in zip(arrays, splits, strict=True):
            for split in ("train", "val", "test"):
                frames = np.stack(np.meshgrid(idx[split].numpy(), np.arange(a.shape[1]), indexing="ij"), -1).reshape(
                    -1, 2
                )
                if self.stats_frames is not None and len(frames) > self.stats_frames:  # a seeded sample, file order
                    frames = frames[np.sort(gen.choice(len(frames), self.stats_frames, replace=False))]
                for v in range(len(a.variables)):
                    m, sd = frame_statistics(a, v, frames)
                    if split == "train":
                        mean.append(m)
                        std.append(max(sd, 1e-12))
        try:
            with atomic_write(path) as tmp:
                tmp.write_text(json.dumps({"mean": mean, "std": std, "key": key}))
        except OSError as e:  # a read-only or full data dir: the cache only saves the next run this pass
            log.warning(
                "field statistics computed in %.1f s but not cached: %s cannot be written (%s); the next run "
                "computes them again (make paths.data_dir writable, or run once where it is)",
                time.perf_counter() - start,
                path,
                e,
            )
            return mean, std
        log.info("field statistics in %.1f s, cached in %s", time.perf_counter() - start, path)
        return mean, std

    def make_train_sampler(self) -> EpochShuffleSampler:
        return EpochShuffleSampler(len(self.splits["train"]), self.seed)

    # ---- for encode.py: a split's samples, what each row is, and what they depend on ------------------------------
    def use_statistics(self, metadata: DataMetadata) -> None:
        """Normalize with a tokenizer's statistics (its training split's), which must describe these variables."""
        if metadata.normalization != "standardize" or metadata.variables != self.variable_names:
            raise ValueError(
                f"the tokenizer was trained on variables {metadata.variables} ({metadata.normalization}); this data "
                f"has {self.variable_names}: give the data it was trained on (data=..., data.source.path=...)"
            )
        for samples in self.splits.values():
            samples.mean = torch.tensor(metadata.mean, dtype=torch.float64).float()
            samples.std = torch.tensor(metadata.std, dtype=torch.float64).float()
        self._stats = (list(metadata.mean), list(metadata.std))

    def encode_set(self, split: str) -> tuple[FieldSamples, np.ndarray, dict]:
        """(samples of `split` in their fixed order: variable, trajectory, time; index [N] of (dataset, variable,
        trajectory, time) per row; what they depend on: files, variables and each dataset's trajectories)."""
        samples = self.splits[split]
        rows = samples.rows.numpy()
        index = np.empty(len(rows), [("dataset", "i4"), ("variable", "i4"), ("trajectory", "i8"), ("time", "i4")])
        index["dataset"], index["trajectory"], index["time"] = rows[:, 0], rows[:, 1], rows[:, 2]
        index["variable"] = samples.variable_id(samples.rows).numpy()
        trajectories = {a.name: sorted(set(rows[rows[:, 0] == k, 1].tolist())) for k, a in enumerate(samples.arrays)}
        about = {**describe_arrays(samples.arrays), "variables": self.variable_names, "trajectories": trajectories}
        return samples, index, about

    @property
    def metadata(self) -> DataMetadata:
        """Each sample is standardized by its (dataset, variable) statistics from the train split."""
        mean, std = self._stats
        return DataMetadata(
            kind=self.adapter.kind,
            normalization="standardize",
            variables=list(self.variable_names),
            mean=list(mean),
            std=list(std),
        )
