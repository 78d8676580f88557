"""Token sequences for the downstream transformer, read from the token stores of encode.py
(datamodules/token_store.py): field pairs (field_tokens.py), EEG channels (eeg_tokens.py), galaxies (below; moving to
galaxy_tokens.py). A transformer never encodes: `python train.py experiment=phaedra`, `python encode.py ckpt=...`,
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

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.common import EpochShuffleSampler, SplitDataModule, TensorBatches
from datamodules.token_store import SplitStore, TokenStore, open_store, store_tokenizer, stored_data
from models.vocab import SPECIAL_TYPE, Vocabulary

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
        data.use_statistics(self.tokenizer.metadata)
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
        return None  # the tokenizer checkpoint holds the data's normalization

    def make_train_sampler(self) -> EpochShuffleSampler:
        return EpochShuffleSampler(len(self.splits["train"]), self.seed)


# ---------------------------------------------------------------------------------------------------------------
# Galaxies (moving to galaxy_tokens.py)


@dataclass
class Sequences:
    """ids, types: int64 [N, L]; valid: bool [N, L] (False = PAD, for the key-padding mask); object_id: [N]."""

    ids: torch.Tensor
    types: torch.Tensor
    valid: torch.Tensor
    object_id: np.ndarray


def galaxy_vocabulary(meta: dict) -> Vocabulary:
    """Streams in sequence order from a store's meta: image, one stream per catalog column, spectrum (those the
    store has)."""
    sizes = meta["vocab"]
    streams: dict[str, dict[str, int]] = {}
    if "image" in sizes:
        streams["image"] = {"image": sizes["image"]}
    if "catalog" in sizes:
        streams["catalog"] = {column: sizes["catalog"] for column in meta["catalog_columns"]}
    if "spectrum" in sizes:
        streams["spectrum"] = {"spectrum": sizes["spectrum"]}
    return Vocabulary.from_streams(streams)


def _block(store: TokenStore, vocab: Vocabulary, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ids and types [N, T_m] of one modality's tokens."""
    local = torch.from_numpy(np.asarray(store.tokens[modality])).long()
    if modality == "catalog":
        columns = store.meta["catalog_columns"]
        if local.shape[1] != len(columns):
            raise ValueError(f"token store: catalog tokens have {local.shape[1]} columns, meta names {len(columns)}")
        ranges = [vocab.range("catalog", c) for c in columns]
    else:
        ranges = [vocab.range(modality, modality)] * local.shape[1]
    starts = torch.tensor([r.start for r in ranges])
    sizes = torch.tensor([r.size for r in ranges])
    if local.numel() and (local.min() < 0 or (local >= sizes).any()):
        raise ValueError(f"token store: {modality} tokens outside their vocabulary (sizes {sizes.unique().tolist()})")
    types = torch.tensor([r.type_id for r in ranges])
    return local + starts, types.expand_as(local)


def galaxy_sequences(store: TokenStore, vocab: Vocabulary) -> Sequences:
    n = len(store.object_id)
    special = {name: vocab.special(name) for name in ("PAD", "BOS", "EOS", "SEP", "MISS")}

    def specials(name: str, type_id: int = SPECIAL_TYPE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.full((n, 1), special[name]), torch.full((n, 1), type_id), torch.ones(n, 1, dtype=torch.bool))

    parts = [specials("BOS")]
    modalities = [m for m in MODALITIES if m in store.tokens]
    for i, modality in enumerate(modalities):
        ids, types = _block(store, vocab, modality)
        present = torch.from_numpy(np.asarray(store.present.get(modality, np.ones(n, bool)))).bool()
        keep = present[:, None].expand_as(ids).clone()
        # a missing modality: its first slot becomes MISS (typed as the modality), the rest are dropped
        ids = torch.where(present[:, None], ids, ids.new_full((), special["MISS"]))
        keep[:, 0] = True
        parts.append((ids, types, keep))
        parts.append(specials("SEP" if i < len(modalities) - 1 else "EOS"))
    ids = torch.cat([p[0] for p in parts], 1)
    types = torch.cat([p[1] for p in parts], 1)
    keep = torch.cat([p[2] for p in parts], 1)
    # move the dropped slots to the end of each row (stable: the kept tokens keep their order), then PAD them
    order = torch.sort((~keep).long(), dim=1, stable=True).indices
    ids, types, valid = ids.gather(1, order), types.gather(1, order), keep.gather(1, order)
    ids = torch.where(valid, ids, special["PAD"])
    types = torch.where(valid, types, SPECIAL_TYPE)
    return Sequences(ids, types, valid, np.asarray(store.object_id))


class GalaxyTokenDataModule(SplitDataModule):
    """Galaxy token sequences from the stores `encode.py` wrote into `store_dir` (its latest.json names one store per
    split). Batches: {"ids", "types": int64 [B, L], "valid": bool [B, L]}. After setup: `vocab` (Vocabulary),
    `code_vectors` ({"<modality>/<stream>": [V, D]} from the tokenizer checkpoints the stores record), `max_len`."""

    # what each modality's checkpoint must hold, and the streams whose code vectors it gives
    EXPECTED = {"image": "GalaxyImageTokenizer", "scalars": "ScalarQuantileTokenizer", "spectra": "SpectrumTokenizer"}

    def __init__(
        self,
        store_dir: str = "data/tokens",
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(None, batch_size, eval_batch_size, (0.8, 0.1, 0.1), seed, num_workers)
        self.store_dir = Path(store_dir)
        self.vocab: Vocabulary | None = None
        self.code_vectors: dict[str, torch.Tensor] = {}
        self.max_len = 0
        self.evaluator = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        index = self.store_dir / "latest.json"
        if not index.is_file():
            raise FileNotFoundError(
                f"no token stores in {self.store_dir} ({index.name} is missing): run "
                f"`python encode.py ckpt=<an experiment=astro_image checkpoint>` first, or "
                f"point data.store_dir at its out_dir"
            )
        paths = json.loads(index.read_text())
        missing = [s for s in ("train", "val", "test") if s not in paths]
        if missing:
            raise ValueError(f"{index}: no store for split(s) {missing}; encode.py writes train, val and test")
        stores = {split: TokenStore.load(paths[split]) for split in ("train", "val", "test")}
        self.vocab = galaxy_vocabulary(stores["train"].meta)
        for split, store in stores.items():
            if galaxy_vocabulary(store.meta) != self.vocab:
                raise ValueError(f"{paths[split]}: its tokenizers' vocabularies differ from the train store's")
        self.code_vectors = self._code_vectors(stores["train"].meta)
        sequences = {split: galaxy_sequences(store, self.vocab) for split, store in stores.items()}
        self.max_len = sequences["train"].ids.shape[1]
        self.splits = {split: TensorBatches(ids=s.ids, types=s.types, valid=s.valid) for split, s in sequences.items()}

    def _code_vectors(self, meta: dict) -> dict[str, torch.Tensor]:
        from tokenizers import load_tokenizer

        out = {}
        for name, path in meta["tokenizers"].items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"token store: the {name} tokenizer checkpoint {path} it was made with is gone")
            tokenizer = load_tokenizer(path)
            if type(tokenizer).__name__ != self.EXPECTED[name]:
                raise ValueError(
                    f"token store: the {name} checkpoint {path} holds a {type(tokenizer).__name__}; "
                    f"expected a {self.EXPECTED[name]}"
                )
            modality = {"image": "image", "scalars": "catalog", "spectra": "spectrum"}[name]
            for stream in tokenizer.streams:
                out[f"{modality}/{stream}"] = tokenizer.code_vectors(stream).detach().float().cpu()
        return out

    @property
    def metadata(self) -> None:
        return None  # tokens carry no data normalization; the tokenizers' checkpoints have theirs

    def make_train_sampler(self) -> EpochShuffleSampler:
        return EpochShuffleSampler(len(self.splits["train"]), self.seed)
