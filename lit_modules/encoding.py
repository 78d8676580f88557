"""Encoding a split through Lightning's predict loop (encode.py): the same `trainer=` configs that train spread it
over GPUs and nodes, and memory stays that of a batch at any data size.

Each rank encodes the samples rank, rank + world, … of the split (the datamodules' own sharding, no padding) and
writes their ids into its shard beside the store's folder; `merge_shards` (rank 0, after all ranks are done)
interleaves the shards into the split's store a chunk at a time. One process is the case world = 1. Shards and store
are written with positioned writes, not memory maps, so resident memory is a batch's at any size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from datamodules.adapters import BatchAdapter
from datamodules.common import batch_is_ready
from datamodules.token_store import NpyRows, SplitStoreWriter, id_dtype


class Rows(Dataset):
    """A split's samples with their position in the split: batch["row"] [B]."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        return {**self.dataset.__getitems__(idx), "row": torch.as_tensor(idx, dtype=torch.long)}


class EncodeData(L.LightningDataModule):
    """The predict loader of one split: this rank's share (rank, rank + world, …) in the split's order."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int = 0):
        super().__init__()
        self.dataset, self.batch_size, self.num_workers = Rows(dataset), batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=range(rank, len(self.dataset), world),
            collate_fn=batch_is_ready,
            num_workers=self.num_workers,
            persistent_workers=False,
        )


class EncodeModule(L.LightningModule):
    """predict_step: a batch -> {"row": [B], "tokens": {stream: ids [B, *grid]}} through the tokenizer (eval mode)."""

    def __init__(self, tokenizer: torch.nn.Module, adapter: BatchAdapter):
        super().__init__()
        self.tokenizer, self.adapter = tokenizer.eval(), adapter

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        model_input = self.adapter.unpack(batch)
        tokens = self.tokenizer.encode(model_input.x, **model_input.cond)
        return {"row": batch["row"], "tokens": tokens}


def shard_folder(store: Path) -> Path:
    """Where the ranks write their shards of the split store `store` (the same on every rank)."""
    return store.with_name(f".{store.name}.shards")


class ShardWriter(BasePredictionWriter):
    """Writes each predicted batch into this rank's shard: `<shards>/rank<r>-<stream>.npy` [rows of this rank,
    *grid], row i of rank r being the split's row r + i·world. A rank's batches are consecutive rows of its shard,
    written with positioned writes (token_store.NpyRows): the memory of a batch, any split size."""

    def __init__(self, shards: Path, n_rows: int, streams: dict[str, int], grids: dict[str, tuple[int, ...]]):
        super().__init__(write_interval="batch")
        self.shards, self.n_rows, self.streams, self.grids = shards, n_rows, streams, grids
        self.files: dict[str, NpyRows] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.rank, self.world = trainer.global_rank, trainer.world_size
        n_local = len(range(self.rank, self.n_rows, self.world))
        self.shards.mkdir(parents=True, exist_ok=True)
        self.files = {
            s: NpyRows(self.shards / f"rank{self.rank}-{s}.npy", id_dtype(v), (n_local, *self.grids[s]))
            for s, v in self.streams.items()
        }

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        local = ((prediction["row"] - self.rank) // self.world).cpu().numpy()
        if len(local) > 1 and not (np.diff(local) == 1).all():
            raise RuntimeError(f"rank {self.rank}: a batch of rows that do not follow each other ({local[:4]}…)")
        for s, ids in prediction["tokens"].items():
            self.files[s].write(int(local[0]), ids.cpu().numpy())

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}


def merge_shards(writer: SplitStoreWriter, shards: Path, world: int, chunk: int = 4096) -> None:
    """Interleave every rank's shard into the split's store (row r + i·world from row i of rank r), `chunk` rows of
    each rank at a time; then remove the shards."""
    n = writer.n_rows
    files = {(r, s): NpyRows(shards / f"rank{r}-{s}.npy") for r in range(world) for s in writer.streams}
    for start in range(0, n, chunk * world):  # final rows start … stop − 1: rows start/world … of every rank
        stop = min(n, start + chunk * world)
        block = {}
        for s in writer.streams:
            out = None
            for r in range(world):
                rows = range(start + r, stop, world)
                part = files[r, s].read(start // world, start // world + len(rows))
                if out is None:
                    out = np.empty((stop - start, *part.shape[1:]), part.dtype)
                out[r::world] = part
            block[s] = out
        writer.rows(start, block)
    for f in files.values():
        f.close()
    shutil.rmtree(shards)
