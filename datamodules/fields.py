"""LightningDataModule for 2-D physical fields, one variable per sample (Phaedra's batch dict).

Batch (B samples, each one variable of one snapshot):
    field_variables_in       [B, 1, H, W]  normalized input (x − μ_var) / σ_var
    field_variables_out      [B, 1, H, W]  raw target in physical units
    field_variables_in_mean  [B, 1]        μ of the sample's (dataset, variable), train split only
    field_variables_in_std   [B, 1]        σ of the sample's (dataset, variable), train split only
    variable_id              [B]           index into `variable_names`
Splits are by trajectory (no snapshot of a validation trajectory is ever trained on), deterministic
from `seed`; train order depends on (seed, epoch) only, so a resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A permutation of range(n) drawn from (seed, epoch): identical across restarts and resumes.

    `resume(epoch, n_done)` makes the next pass over `epoch` start after its first n_done indices, so
    a run resumed mid-epoch sees exactly the samples an uninterrupted run would.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, n_done: int) -> None:
        self._resume = (epoch, n_done)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen).tolist()
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1]:]
        self._resume = None
        return iter(order)

    def __len__(self) -> int:
        return self.n


class FieldSamples(Dataset):
    """In-memory samples; `__getitems__` builds a whole batch with tensor indexing (no per-sample Python)."""

    def __init__(self, fields: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, variable_id: torch.Tensor):
        self.fields, self.mean, self.std, self.variable_id = fields, mean, std, variable_id

    def __len__(self) -> int:
        return self.fields.shape[0]

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        i = torch.as_tensor(idx, dtype=torch.long)
        raw, mean, std = self.fields[i], self.mean[i], self.std[i]
        return {
            "field_variables_in": (raw - mean[..., None, None]) / std[..., None, None],
            "field_variables_out": raw,
            "field_variables_in_mean": mean,
            "field_variables_in_std": std,
            "variable_id": self.variable_id[i],
        }

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([idx]).items()}


def _batch_is_ready(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


class FieldDataModule(L.LightningDataModule):
    def __init__(self, source, data_dir: str = "data", batch_size: int = 16, eval_batch_size: int | None = None,
                 split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, num_workers: int = 0):
        super().__init__()
        if len(split) != 3 or abs(sum(split) - 1) > 1e-6 or min(split) < 0:
            raise ValueError(f"data.split must be three fractions (train, val, test) summing to 1, got {list(split)}")
        self.source, self.data_dir = source, Path(data_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.split, self.seed, self.num_workers = tuple(split), seed, num_workers
        self.variable_names: list[str] = []
        self.splits: dict[str, FieldSamples] = {}
        self.train_sampler: EpochShuffleSampler | None = None
        self._resume_state: dict[str, int] | None = None

    def prepare_data(self) -> None:
        self.source.prepare(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        fieldsets = self.source.load(self.data_dir)
        sizes = {tuple(fs.data.shape[-2:]) for fs in fieldsets}
        if len(sizes) > 1:
            raise ValueError(f"all data sets of one run need the same H×W, got {sorted(sizes)}")
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] = {
            "train": [], "val": [], "test": []}
        means, stds = [], []
        for fs in fieldsets:
            n_traj = fs.data.shape[0]
            if n_traj < 3:
                raise ValueError(
                    f"{fs.origin}: {n_traj} trajectories cannot be split by trajectory into train/val/test; "
                    "need at least 3 (for independent snapshots use layout NHW)"
                )
            order = torch.randperm(n_traj, generator=torch.Generator().manual_seed(self.seed))
            n_val = max(1, round(self.split[1] * n_traj))
            n_test = max(1, round(self.split[2] * n_traj))
            n_train = n_traj - n_val - n_test
            idx = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
            train = fs.data[idx["train"].sort().values].double()
            for v, var in enumerate(fs.variables):
                var_id = len(self.variable_names)
                self.variable_names.append(f"{fs.name}/{var}")
                mu = train[:, :, v].mean()
                sigma = train[:, :, v].std().clamp_min(1e-12)
                means.append(float(mu))
                stds.append(float(sigma))
                for split, traj in idx.items():
                    x = fs.data[traj.sort().values][:, :, v].flatten(0, 1).unsqueeze(1)  # [n, 1, H, W]
                    n = x.shape[0]
                    parts[split].append((x, torch.full((n, 1), float(mu)), torch.full((n, 1), float(sigma)),
                                         torch.full((n,), var_id)))
        self.normalization = {"variables": list(self.variable_names), "mean": means, "std": stds}
        for split, chunks in parts.items():
            self.splits[split] = FieldSamples(*(torch.cat(c) for c in zip(*chunks, strict=False)))
        if len(self.splits["train"]) < self.batch_size:
            raise ValueError(f"the train split has {len(self.splits['train'])} samples, fewer than "
                             f"data.batch_size={self.batch_size}")

    def train_dataloader(self) -> DataLoader:
        self.train_sampler = EpochShuffleSampler(len(self.splits["train"]), self.seed)
        if self._resume_state is not None:
            self.train_sampler.resume(self._resume_state["epoch"], self._resume_state["batches_done"] * self.batch_size)
            self._resume_state = None
        return DataLoader(self.splits["train"], batch_size=self.batch_size, sampler=self.train_sampler,
                          drop_last=True, collate_fn=_batch_is_ready, num_workers=self.num_workers)

    def state_dict(self) -> dict[str, int]:
        """Where the train pass stands (Lightning's own count of batches done in this epoch), for exact resume."""
        trainer = self.trainer
        if trainer is None or self.train_sampler is None:
            return {}
        return {"epoch": self.train_sampler.epoch,
                "batches_done": int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_state = dict(state) or None

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=_batch_is_ready, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def hdf5_datamodule(path: str, variables: list[str] | None = None, **kwargs) -> FieldDataModule:
    """`data=fields_hdf5 data.path=/my/run.hdf5`: The Well-style HDF5 file(s) (see HDF5Fields)."""
    from datamodules.sources import HDF5Fields

    return FieldDataModule(HDF5Fields(path, variables), **kwargs)


def npy_datamodule(path: str, layout: str = "auto", **kwargs) -> FieldDataModule:
    """`data=fields_npy data.path=/my/x.npy [data.layout=NTHW]`: .npy/.npz arrays (see NpyFields)."""
    from datamodules.sources import NpyFields

    return FieldDataModule(NpyFields(path, layout), **kwargs)
