"""Galaxy token sequences for the transformer: layout, fixed type ids with missing modalities, padding; read from a
token store in encode.py's format."""

import numpy as np
import pytest
import torch

from datamodules.galaxy_tokens import GalaxyTokenDataModule, galaxy_sequences, galaxy_vocabulary
from datamodules.token_store import SplitStore, SplitStoreWriter
from models import SPECIALS


def store_of_three(path) -> SplitStore:
    """Object 10 has every modality, 11 no spectrum, 12 no catalog; 4 image, 2 catalog, 3 spectrum tokens."""
    tokens = {
        "image": np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]),
        "catalog": np.array([[0, 1024], [5, 6], [0, 0]]),
        "spectrum": np.array([[1, 2, 3], [0, 0, 0], [4, 5, 6]]),
    }
    streams = {"image": 16, "catalog": 1025, "spectrum": 8}
    index = np.zeros(3, [("object_id", "i8"), ("has_catalog", "?"), ("has_spectrum", "?")])
    index["object_id"] = [10, 11, 12]
    index["has_catalog"] = [True, True, False]
    index["has_spectrum"] = [True, False, True]
    with SplitStoreWriter(path, 3, streams, {s: ids.shape[1:] for s, ids in tokens.items()}) as writer:
        writer.rows(0, tokens)
        writer.commit(index, {"kind": "galaxy_images", "streams": streams, "catalog_columns": ["mag_r", "redshift"]})
    return SplitStore.open(path)


def test_sequences_follow_the_layout_and_keep_type_ids_fixed_when_a_modality_is_missing(tmp_path):
    store = store_of_three(tmp_path / "train")
    vocab = galaxy_vocabulary(store.meta)
    assert [f"{r.modality}/{r.stream}" for r in vocab.ranges] == [
        "image/image",
        "catalog/mag_r",
        "catalog/redshift",
        "spectrum/spectrum",
    ]
    seqs = galaxy_sequences(store, vocab)
    BOS, EOS, SEP, MISS, PAD = (SPECIALS.index(s) for s in ("BOS", "EOS", "SEP", "MISS", "PAD"))
    image, mag_r, redshift, spectrum = vocab.ranges
    assert seqs.ids.shape == (3, 1 + 4 + 1 + 2 + 1 + 3 + 1)
    full = [
        BOS,
        *(image.start + np.arange(4)),
        SEP,
        mag_r.start,
        redshift.start + 1024,
        SEP,
        *(spectrum.start + np.array([1, 2, 3])),
        EOS,
    ]
    assert seqs.ids[0].tolist() == full and seqs.valid[0].all()
    assert seqs.types[0].tolist() == [0, 1, 1, 1, 1, 0, 2, 3, 0, 4, 4, 4, 0]
    # no spectrum: one MISS typed as the spectrum, then EOS, then padding
    assert seqs.ids[1, 9:].tolist() == [MISS, EOS, PAD, PAD] and seqs.types[1, 9].item() == spectrum.type_id
    assert seqs.valid[1].tolist() == [True] * 11 + [False] * 2
    # no catalog: MISS typed as the catalog's first column; the spectrum keeps its type id
    assert seqs.ids[2, 6].item() == MISS and seqs.types[2, 6].item() == mag_r.type_id
    assert seqs.types[2, 8:11].tolist() == [spectrum.type_id] * 3
    for row in range(3):  # every token's type is the type of its id (MISS: of the modality it stands for)
        ids, types, valid = seqs.ids[row], seqs.types[row], seqs.valid[row]
        regular = valid & (ids != MISS)
        assert torch.equal(vocab.type_of(ids[regular]), types[regular])
    assert seqs.object_id.tolist() == [10, 11, 12]


def test_tokens_outside_their_vocabulary_are_refused(tmp_path):
    store_of_three(tmp_path / "train")
    ids = np.load(tmp_path / "train" / "image.npy", mmap_mode="r+")  # a store changed after encode.py wrote it
    ids[0, 0] = 16
    ids.flush()
    del ids
    store = SplitStore.open(tmp_path / "train")
    with pytest.raises(ValueError, match="image.npy: image tokens outside their vocabulary"):
        galaxy_sequences(store, galaxy_vocabulary(store.meta))


def test_a_missing_store_names_the_three_commands(tmp_path):
    with pytest.raises(ValueError, match="data.store is not set"):
        GalaxyTokenDataModule(store=None).setup()
    hint = r"python train.py experiment=astro_image.*python encode.py ckpt=.*data.store="
    with pytest.raises(FileNotFoundError, match=rf"data.store={tmp_path} has no token store .*{hint}"):
        GalaxyTokenDataModule(store=str(tmp_path)).setup()
