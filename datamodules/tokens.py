"""Token sequences for the downstream transformer, read from the token stores of encode.py
(datamodules/token_store.py): field pairs (field_tokens.py), EEG channels (eeg_tokens.py), galaxies
(galaxy_tokens.py). A transformer never encodes: `python train.py experiment=phaedra`, `python encode.py ckpt=...`,
then `python train.py experiment=field_transformer data.store=<encode.py's out_dir>`.

Every datamodule here gives batches {"ids", "types": int64 [B, L], "valid": bool [B, L]} and, where it needs them,
"positions" (int64 [B, L] position ids) and "target" (bool [B, L]: the tokens the loss scores; default `valid`).
After setup it has `vocab`, `code_vectors` ({"<modality>/<stream>": [V, D]}), `max_len` (the position table the
transformer needs), and, where predictions have a data space, `evaluation_inputs()`: what the transformer module's
evaluator (model.evaluator) needs to decode predicted tokens and compare them with the true data of the rows.

Split, normalization, grid, the rows' index and the tokenizer (for its code vectors and decoder) come from the store
and the checkpoint its meta.json names (sha256-checked); nothing is copied into the transformer's config.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from datamodules.common import EpochShuffleSampler, SplitDataModule
from datamodules.token_store import SplitStore, open_store, store_tokenizer, stored_data
from models.vocab import Vocabulary
from tokenizers.base import DataMetadata

log = logging.getLogger("scitok")

MODALITIES = ("image", "catalog", "spectrum")  # sequence order


class Layout:
    """The fixed token layout of one kind of sequence: types, positions and which tokens the loss scores [L]."""

    def __init__(self, types: list[int], positions: list[int], target: list[bool]):
        self.types, self.positions = torch.tensor(types), torch.tensor(positions)
        self.target = torch.tensor(target)


class Truth:
    """The true data of a store's rows: truth[rows] = batch[key] of the dataset the rows were encoded from (its
    encode_set), read when asked for; rows int64 [n] -> [n, ...]."""

    def __init__(self, dataset, key: str):
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.dataset.__getitems__(torch.as_tensor(rows).tolist())[self.key]


class StoreSequences(SplitDataModule):
    """What the field and EEG sequence datamodules share: the store's splits (open_store: one of `KINDS`, refused by
    name otherwise), its tokenizer (store_tokenizer), the vocabulary and code vectors of its streams under
    `MODALITY`, and the true data of its val/test rows for the evaluator (`truth`)."""

    KINDS: dict[str, str] = {}  # data kind -> the experiment that trains a tokenizer of it
    MODALITY = ""
    context_slots = 0  # aligned context ids per position in the batches ("context": [B, L, slots]); 0: none
    causal = True  # False: the sequences are read by an encoder (every position attends to every other)
    conditions = 0  # condition ids per sequence ("condition": [B]) take values < conditions; 0: none

    def __init__(self, store: str | None, batch_size: int, eval_batch_size: int, seed: int, num_workers: int):
        super().__init__(None, batch_size, eval_batch_size, (0.8, 0.1, 0.1), seed, num_workers)
        self.store = store
        self.stores: dict[str, SplitStore] = {}
        self.tokenizer: torch.nn.Module | None = None
        self.vocab: Vocabulary | None = None
        self.code_vectors: dict[str, torch.Tensor] = {}
        self.max_len = 0

    def open(self) -> dict:
        """Open the store and its tokenizer; returns the train split's meta."""
        self.stores = open_store(self.store, self.KINDS)
        meta = self.stores["train"].meta
        self.tokenizer = store_tokenizer(meta, self.store)
        if list(self.tokenizer.streams) != list(meta["streams"]):
            raise ValueError(
                f"data.store={self.store}: streams {list(meta['streams'])}, its tokenizer has "
                f"{list(self.tokenizer.streams)}"
            )
        self.vocab = Vocabulary.from_streams({self.MODALITY: dict(meta["streams"])})
        self.code_vectors = {
            f"{self.MODALITY}/{s}": self.tokenizer.code_vectors(s).detach().float() for s in self.tokenizer.streams
        }
        return meta

    def truth(self, key: str, splits: Sequence[str] = ("val", "test")) -> dict[str, Truth]:
        """{split: the true data (batch key `key`) of the split's store rows}, from the data the store was encoded
        from (its recorded data config), refused where those data have changed since."""
        data = stored_data(self.stores["train"].meta, self.store)
        data.use_statistics(self.normalization)
        out = {}
        for split in splits:
            dataset, index, about = data.encode_set(split)
            store = self.stores[split]
            if about != store.meta["data"] or not np.array_equal(index, store.index):
                raise ValueError(
                    f"{store.path}: the data it was encoded from have changed since (files, split or rows differ): "
                    f"encode again (python encode.py ckpt={store.meta['tokenizer']['checkpoint']})"
                )
            out[split] = Truth(dataset, key)
        return out

    def evaluation_inputs(self) -> dict:
        """Keyword arguments of the transformer module's evaluator (model.evaluator), after setup."""
        raise NotImplementedError(f"{type(self).__name__} has no data space to evaluate predictions in")

    @property
    def metadata(self) -> None:
        return None  # no tokenizer is trained on token sequences: `normalization` holds the data's statistics

    @property
    def normalization(self) -> DataMetadata:
        """The statistics the store was encoded with (encode.py normalize=checkpoint: the tokenizer's; data: the
        data's own train split's), after setup: what the true data are read and de-normalized with."""
        return DataMetadata.from_dict(self.stores["train"].meta["normalization"])

    def make_train_sampler(self) -> EpochShuffleSampler:
        return EpochShuffleSampler(len(self.splits["train"]), self.seed)
