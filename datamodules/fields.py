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

from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules.common import EpochShuffleSampler, InMemoryDataModule, TensorBatches, split_indices
from lit_modules.adapters import BatchAdapter, FieldAdapter
from tokenizers.base import DataMetadata


class FieldSamples(TensorBatches):
    """In-memory samples (raw fields, μ, σ, variable id); batches are normalized on the fly."""

    def __init__(self, fields: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, variable_id: torch.Tensor):
        super().__init__(fields=fields, mean=mean, std=std, variable_id=variable_id)

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        t = super().__getitems__(idx)
        raw, mean, std = t["fields"], t["mean"], t["std"]
        return {
            "field_variables_in": (raw - mean[..., None, None]) / std[..., None, None],
            "field_variables_out": raw,
            "field_variables_in_mean": mean,
            "field_variables_in_std": std,
            "variable_id": t["variable_id"],
        }


class FieldDataModule(InMemoryDataModule):
    def __init__(self, source, adapter: BatchAdapter | None = None, data_dir: str = "data", batch_size: int = 16,
                 eval_batch_size: int | None = None, split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                 num_workers: int = 0):
        super().__init__(adapter or FieldAdapter(), batch_size, eval_batch_size, split, seed, num_workers)
        self.source, self.data_dir = source, Path(data_dir)
        self.variable_names: list[str] = []
        self._stats: tuple[list[float], list[float]] = ([], [])

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
            idx = split_indices(n_traj, self.split, self.seed)
            train = fs.data[idx["train"]].double()
            for v, var in enumerate(fs.variables):
                var_id = len(self.variable_names)
                self.variable_names.append(f"{fs.name}/{var}")
                mu = train[:, :, v].mean()
                sigma = train[:, :, v].std().clamp_min(1e-12)
                means.append(float(mu))
                stds.append(float(sigma))
                for split, traj in idx.items():
                    x = fs.data[traj][:, :, v].flatten(0, 1).unsqueeze(1)  # [n, 1, H, W]
                    n = x.shape[0]
                    parts[split].append((x, torch.full((n, 1), float(mu)), torch.full((n, 1), float(sigma)),
                                         torch.full((n,), var_id)))
        self._stats = (means, stds)
        for split, chunks in parts.items():
            self.splits[split] = FieldSamples(*(torch.cat(c) for c in zip(*chunks, strict=False)))
        if len(self.splits["train"]) < self.batch_size:
            raise ValueError(f"the train split has {len(self.splits['train'])} samples, fewer than "
                             f"data.batch_size={self.batch_size}")

    def make_train_sampler(self) -> EpochShuffleSampler:
        return EpochShuffleSampler(len(self.splits["train"]), self.seed)

    @property
    def metadata(self) -> DataMetadata:
        """Each sample is standardized by its (dataset, variable) statistics from the train split."""
        mean, std = self._stats
        return DataMetadata(kind=self.adapter.kind, normalization="standardize", variables=list(self.variable_names),
                            mean=list(mean), std=list(std))
