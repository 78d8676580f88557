"""What every SciTok datamodule shares: seeded splits, (seed, epoch) train orders that resume
mid-epoch exactly, in-memory datasets that build whole batches, and the loaders around them.

Every datamodule also states what its batches are, for the model that trains on them:
    adapter      the BatchAdapter of its batch format (datamodules/adapters.py), chosen by the data config
    metadata     DataMetadata (tokenizers/base.py): kind, normalization, variables, statistics, rates (after setup)
    example_batch(n)   n validation samples as one batch (after setup), to check a model against the data
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.adapters import BatchAdapter
from tokenizers.base import DataMetadata


def cache_key(obj: object, n: int = 16) -> str:
    """The name of a cache made from `obj` (plain JSON values: the settings and files it depends on): the first `n`
    hex digits of the sha256 of its canonical JSON (sorted keys, no spaces), equal across processes and runs."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def find_files(path: str | Path | None, extensions: Sequence[str], what: str) -> list[Path]:
    """The user's data files: `path` itself, or every file under the folder `path` whose suffix is one of
    `extensions` (recursive, sorted). Errors name `what` (the source) and the path."""
    if path is None or str(path) in ("", "None", "???"):
        raise ValueError(f"{what} needs a path: set data.source.path=/path/to/your/data")
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{what}: data path {root} does not exist")
    if not root.is_dir():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions)
    if not files:
        raise FileNotFoundError(f"{what}: no {'/'.join(extensions)} files under {root}")
    return files


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    if len(split) != 3 or abs(sum(split) - 1) > 1e-6 or min(split) < 0:
        raise ValueError(f"data.split must be three fractions (train, val, test) summing to 1, got {list(split)}")
    return tuple(split)


def check_batch_size(value: object, key: str) -> int:
    """A batch size from the config: a whole number ≥ 1 (torch's DataLoader would refuse 0 or −4 later, at the first
    batch, without the config key)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a whole number of samples ≥ 1, got {value!r}")
    return value


def split_indices(n: int, split: Sequence[float], seed: int) -> dict[str, torch.Tensor]:
    """A seeded permutation of range(n) cut into train/val/test (each of val and test gets at least one)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(split[1] * n))
    n_test = max(1, round(split[2] * n))
    n_train = n - n_val - n_test
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {name: idx.sort().values for name, idx in parts.items()}


class EpochSampler(Sampler[int]):
    """Yields `epoch_order(generator)` with the generator seeded by (seed, epoch): identical across restarts.

    `resume(epoch, n_done)` makes the next pass over `epoch` start after its first n_done items, so a run
    resumed mid-epoch sees exactly what an uninterrupted run would.

    `shard(rank, world)` (DDP) keeps this process's share of every epoch: items rank, rank + world, … of the
    epoch order, cut to the same count on every rank (the ranks step together; at most world − 1 items of an epoch
    are left out, as DistributedSampler(drop_last=True) does). Together the ranks see every other item of the epoch
    exactly once, in the order one process would; resume counts items of this rank's share.
    """

    def __init__(self, seed: int):
        self.seed, self.epoch = seed, 0
        self.rank, self.world = 0, 1
        self._resume: tuple[int, int] | None = None

    def shard(self, rank: int, world: int) -> EpochSampler:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world size {world})")
        self.rank, self.world = rank, world
        return self

    def epoch_size(self) -> int:
        """Items in one epoch over all ranks."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.epoch_size() // self.world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, n_done: int) -> None:
        self._resume = (epoch, n_done)

    def epoch_order(self, gen: torch.Generator) -> list[int]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order(torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        if self.world > 1:
            order = order[self.rank :: self.world][: len(self)]
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] :]
        self._resume = None
        return iter(order)


class EpochShuffleSampler(EpochSampler):
    """A permutation of range(n) per epoch."""

    def __init__(self, n: int, seed: int):
        super().__init__(seed)
        self.n = n

    def epoch_order(self, gen: torch.Generator) -> list[int]:
        return torch.randperm(self.n, generator=gen).tolist()

    def epoch_size(self) -> int:
        return self.n


class TensorBatches(Dataset):
    """Equal-length tensors indexed together; `__getitems__` builds a batch dict by tensor indexing."""

    def __init__(self, **tensors: torch.Tensor):
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        i = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([idx]).items()}


def batch_is_ready(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """collate_fn for datasets whose __getitems__ already returns the batch."""
    return batch


def file_stamp(path: Path) -> dict:
    """What a cache keyed by a file remembers of it: its resolved path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class SplitDataModule(L.LightningDataModule):
    """Loaders over `self.splits` (train/val/test datasets with __getitems__, lazy or in memory) and an exactly
    resumable train order.

    Subclasses fill `self.splits` in setup() and implement `make_train_sampler()` and `metadata`.
    """

    def __init__(
        self,
        adapter: BatchAdapter,
        batch_size: int,
        eval_batch_size: int | None,
        split: Sequence[float],
        seed: int,
        num_workers: int,
    ):
        super().__init__()
        self.adapter = adapter
        self.batch_size = check_batch_size(batch_size, "data.batch_size")
        # null: evaluate in training batches
        self.eval_batch_size = (
            batch_size if eval_batch_size is None else check_batch_size(eval_batch_size, "data.eval_batch_size")
        )
        self.split, self.seed, self.num_workers = check_split(split), seed, num_workers
        self.splits: dict[str, Dataset] = {}
        self.train_sampler: EpochSampler | None = None
        self._resume_state: dict[str, int] | None = None

    def make_train_sampler(self) -> EpochSampler:
        raise NotImplementedError

    @property
    def metadata(self) -> DataMetadata:
        raise NotImplementedError

    def example_batch(self, n: int = 1) -> dict[str, torch.Tensor]:
        """The first n validation samples as one batch (after setup)."""
        if not self.splits:
            raise RuntimeError(f"{type(self).__name__}.example_batch needs setup() first")
        return self.splits["val"].__getitems__(list(range(min(n, len(self.splits["val"])))))

    def rank_and_world(self) -> tuple[int, int]:
        """(global rank, world size) of this process in the trainer's run; (0, 1) outside one."""
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        # our samplers shard by rank themselves (trainer.use_distributed_sampler is false): exact resume and
        # (seed, epoch) order under DDP, and validation without the padding of a DistributedSampler
        self.train_sampler = self.make_train_sampler().shard(*self.rank_and_world())
        if self._resume_state is not None:
            self.train_sampler.resume(self._resume_state["epoch"], self._resume_state["batches_done"] * self.batch_size)
            self._resume_state = None
        return DataLoader(
            self.splits["train"],
            batch_size=self.batch_size,
            sampler=self.train_sampler,
            drop_last=True,
            collate_fn=batch_is_ready,
            **self.worker_options(),
        )

    def eval_loader(self, split: str, batch_size: int | None = None, shard: bool = False) -> DataLoader:
        """The samples of `split` in their fixed order (also "train": stage-2 fits read it without shuffling).
        shard (DDP): only this process's share, samples rank, rank + world, …: each sample on exactly one rank and
        none repeated, so the metrics' states summed over ranks are those of the whole split."""
        dataset = self.splits[split]
        rank, world = self.rank_and_world() if shard else (0, 1)
        sampler = range(rank, len(dataset), world) if world > 1 else None
        return DataLoader(
            dataset,
            batch_size=batch_size or self.eval_batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=batch_is_ready,
            **self.worker_options(),
        )

    def worker_options(self) -> dict:
        """num_workers processes read batches ahead; they live as long as the loader (persistent: no restart at
        every epoch or validation), and pin memory when training on a GPU. The order comes from the sampler, in
        this process, so it does not depend on the number of workers, and neither does resume."""
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0, "pin_memory": on_gpu}

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("val", shard=True)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader("test", shard=True)

    def state_dict(self) -> dict[str, int]:
        """Where the train pass stands (Lightning's own count of batches done in this epoch), for exact resume."""
        if self.trainer is None or self.train_sampler is None:
            return {}
        return {
            "epoch": self.train_sampler.epoch,
            "batches_done": int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_state = dict(state) or None


def unit_ids(index: np.ndarray, columns: Sequence[str]) -> tuple[np.ndarray, int]:
    """index: [N] structured rows (a datamodule's encode_set, a token store's index.npy) -> (unit id of each row [N]
    int64, number of units): rows equal in every one of `columns` form one unit (a trajectory, a recording, a
    trajectory's variable), numbered in the sorted order of their values."""
    missing = [c for c in columns if c not in (index.dtype.names or ())]
    if missing:
        raise ValueError(f"the data's index has columns {index.dtype.names}, not the unit columns {missing}")
    if len(index) == 0:
        return np.zeros(0, np.int64), 0
    keys = np.stack([np.asarray(index[c]).astype(np.int64) for c in columns], axis=1)
    units, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), len(units)
