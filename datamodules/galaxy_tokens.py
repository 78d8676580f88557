"""Galaxy token sequences for the downstream transformer, read from the token store of
`python encode.py ckpt=<astro_image checkpoint>` (datamodules/token_store.py: image.npy, catalog.npy, spectrum.npy,
index.npy with object_id, has_catalog, has_spectrum):

    vocab = galaxy_vocabulary(store.meta)           # from the vocabulary sizes and catalog columns the store records
    seqs = galaxy_sequences(store, vocab)           # ids, types, valid: [N, L]

One galaxy: [BOS] image tokens [SEP] one token per catalog column [SEP] spectrum tokens [EOS], then PAD. A missing
modality (the index's has_<modality> is False) is one MISS token typed as that modality, so every other token keeps
its type id. The split is the store's; the code vectors come from the three tokenizer checkpoints meta.json names
(sha256-checked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from datamodules.common import TensorBatches
from datamodules.token_store import SplitStore, open_store, store_tokenizer
from datamodules.tokens import StoreSequences
from models.vocab import SPECIAL_TYPE, Vocabulary

MODALITIES = ("image", "catalog", "spectrum")  # sequence order
KINDS = {"galaxy_images": "astro_image"}  # the store's kind -> the experiment that trains its image tokenizer
# meta.json "tokenizers": name -> (the class its checkpoint must hold, the modality whose code vectors it gives)
TOKENIZERS = {
    "image": ("GalaxyImageTokenizer", "image"),
    "scalars": ("ScalarQuantileTokenizer", "catalog"),
    "spectra": ("SpectrumTokenizer", "spectrum"),
}


@dataclass
class Sequences:
    """ids, types: int64 [N, L]; valid: bool [N, L] (False = PAD, for the key-padding mask); object_id: [N]."""

    ids: torch.Tensor
    types: torch.Tensor
    valid: torch.Tensor
    object_id: np.ndarray


def galaxy_vocabulary(meta: dict) -> Vocabulary:
    """Streams in sequence order from a store's meta.json: image, one stream per catalog column, spectrum (those the
    store has)."""
    sizes = meta["streams"]
    streams: dict[str, dict[str, int]] = {}
    if "image" in sizes:
        streams["image"] = {"image": sizes["image"]}
    if "catalog" in sizes:
        streams["catalog"] = {column: sizes["catalog"] for column in meta["catalog_columns"]}
    if "spectrum" in sizes:
        streams["spectrum"] = {"spectrum": sizes["spectrum"]}
    return Vocabulary.from_streams(streams)


def _block(store: SplitStore, vocab: Vocabulary, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ids and types [N, T_m] of one modality's tokens."""
    local = torch.from_numpy(np.asarray(store.tokens[modality], np.int64))
    if modality == "catalog":
        columns = store.meta["catalog_columns"]
        if local.shape[1] != len(columns):
            raise ValueError(
                f"{store.path}/catalog.npy: {local.shape[1]} columns of tokens, meta.json names {len(columns)}"
            )
        ranges = [vocab.range("catalog", c) for c in columns]
    else:
        ranges = [vocab.range(modality, modality)] * local.shape[1]
    starts = torch.tensor([r.start for r in ranges])
    sizes = torch.tensor([r.size for r in ranges])
    if local.numel() and (local.min() < 0 or (local >= sizes).any()):
        raise ValueError(
            f"{store.path}/{modality}.npy: {modality} tokens outside their vocabulary (sizes {sizes.unique().tolist()})"
        )
    types = torch.tensor([r.type_id for r in ranges])
    return local + starts, types.expand_as(local)


def galaxy_sequences(store: SplitStore, vocab: Vocabulary) -> Sequences:
    """One sequence per row of the store (layout in the module docstring); which modalities an object has is the
    index's has_catalog / has_spectrum (an image always)."""
    n = len(store)
    special = {name: vocab.special(name) for name in ("PAD", "BOS", "EOS", "SEP", "MISS")}

    def specials(name: str, type_id: int = SPECIAL_TYPE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.full((n, 1), special[name]), torch.full((n, 1), type_id), torch.ones(n, 1, dtype=torch.bool))

    parts = [specials("BOS")]
    modalities = [m for m in MODALITIES if m in store.tokens]
    for i, modality in enumerate(modalities):
        ids, types = _block(store, vocab, modality)
        has = f"has_{modality}"
        present = np.asarray(store.index[has]) if has in store.index.dtype.names else np.ones(n, bool)
        present = torch.from_numpy(present.astype(bool))
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
    return Sequences(ids, types, valid, np.asarray(store.index["object_id"]))


class GalaxyTokenDataModule(StoreSequences):
    """Galaxy token sequences from the token store `store` (encode.py's out_dir of an astro_image checkpoint: its
    train/, val/ and test/ splits; a store of another kind is refused by name). Batches: {"ids", "types": int64
    [B, L], "valid": bool [B, L]}. After setup: `vocab` (Vocabulary), `code_vectors` ({"<modality>/<stream>":
    [V, D]} from the tokenizer checkpoints the store names), `max_len`. Galaxy predictions are judged in token space
    only (no evaluation_inputs)."""

    KINDS = KINDS

    def __init__(
        self,
        store: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(store, batch_size, eval_batch_size, seed, num_workers)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.stores = stores = open_store(self.store, KINDS)
        meta = stores["train"].meta
        self.vocab = galaxy_vocabulary(meta)
        for store in stores.values():
            if galaxy_vocabulary(store.meta) != self.vocab:
                raise ValueError(f"{store.path}: its streams or catalog columns differ from the train split's")
        self.code_vectors = self._code_vectors(meta)
        sequences = {split: galaxy_sequences(store, self.vocab) for split, store in stores.items()}
        self.max_len = sequences["train"].ids.shape[1]
        self.splits = {split: TensorBatches(ids=s.ids, types=s.types, valid=s.valid) for split, s in sequences.items()}

    def _code_vectors(self, meta: dict) -> dict[str, torch.Tensor]:
        """Each stream's code vectors from the checkpoints meta.json `tokenizers` names (store_tokenizer: present and
        unchanged), each refused unless it holds the expected tokenizer class and the vocabulary the store has."""
        where = f"data.store={self.store}"
        recorded = meta.get("tokenizers")
        if not isinstance(recorded, dict) or "image" not in recorded:
            raise ValueError(f"{where}: meta.json names no galaxy tokenizers (image, scalars, spectra): encode again")
        out = {}
        for name, about in recorded.items():
            if name not in TOKENIZERS:
                raise ValueError(f"{where}: meta.json names an unknown tokenizer {name!r}; known: {list(TOKENIZERS)}")
            expected, modality = TOKENIZERS[name]
            tokenizer = store_tokenizer({"tokenizer": about}, where)
            if type(tokenizer).__name__ != expected:
                raise ValueError(
                    f"{where}: the {name} checkpoint {about['checkpoint']} holds a {type(tokenizer).__name__}; "
                    f"expected a {expected}"
                )
            size = meta["streams"].get(modality)
            for stream, vocabulary in tokenizer.streams.items():
                if vocabulary != size:
                    raise ValueError(
                        f"{where}: the {modality} stream has {size} ids, its {expected} {vocabulary} ({stream})"
                    )
                out[f"{modality}/{stream}"] = tokenizer.code_vectors(stream).detach().float().cpu()
        return out
