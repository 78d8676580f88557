"""encode.py on an astro_image checkpoint: a galaxy token store per split (image, catalog and spectrum ids of the three
tokenizers, memory-mapped; an index of the objects and the modalities they have; meta.json), reuse, atomic writes."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from datamodules.token_store import SplitStore, file_sha256
from encode import encode
from tests.helpers import ROOT, assert_same_ids_up_to_ties, describe, f32_tolerance, layer_depth
from tokenizers import load_tokenizer

EXPERIMENT = "astro_image"  # the tokenizer whose store holds several tokenizers' streams


def encode_cfg(ckpt, out_dir, data_dir, *overrides):
    """encode.py's config for `ckpt` on the data of its training run (for the debug runs: their small data sets),
    with a small spectrum codebook (galaxies)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="encode",
            overrides=[
                f"ckpt={ckpt}",
                f"paths.output_dir={out_dir}",
                f"out_dir={out_dir}",
                f"paths.data_dir={data_dir}",
                "spectra.codebook_size=64",
                "batch_size=16",
                *overrides,
            ],
        )


def split_objects(datamodule, split: str) -> dict[str, torch.Tensor]:
    """Every modality of a split's objects in one batch (the split's order)."""
    dataset, _, _ = datamodule.encode_set(split)
    return dataset.__getitems__(list(range(len(dataset))))


def test_export_writes_every_split_and_reuses_it(experiment_run, tmp_path, data_dir, caplog):
    run = experiment_run(EXPERIMENT)
    out = tmp_path / "tokens"
    cfg = encode_cfg(run.last_ckpt, out, data_dir)
    stores = encode(cfg)
    assert set(stores) == {"train", "val", "test"}
    datamodule = run.datamodule
    table = datamodule.table
    image_tokenizer = load_tokenizer(run.last_ckpt)
    for split, path in stores.items():
        assert path == out / split
        store = SplitStore.open(path)
        meta = json.loads((path / "meta.json").read_text())
        rows = datamodule.rows[split].numpy()
        assert store.meta["index_columns"] == ["object_id", "has_catalog", "has_spectrum"]
        assert np.array_equal(store.index["object_id"], table.object_id[rows])
        assert store.index["has_catalog"].all() and store.index["has_spectrum"].all()  # the embedded set has all
        assert meta["kind"] == "galaxy_images" and meta["split"] == split and meta["rows"] == len(rows)
        assert meta["streams"] == {"image": 2048, "catalog": 1025, "spectrum": 64}
        assert meta["tokenizer"]["class"] == "GalaxyImageTokenizer"
        assert meta["tokenizer"]["sha256"] == file_sha256(run.last_ckpt)
        assert set(meta["tokenizers"]) == {"image", "scalars", "spectra"}
        for about in meta["tokenizers"].values():
            assert about["sha256"] == file_sha256(about["checkpoint"])
        assert meta["catalog_columns"] == table.catalog_columns and meta["bands"] == table.bands
        assert meta["data_config"]["_target_"] == "datamodules.galaxies.GalaxyDataModule"
        ids = {s: np.load(path / f"{s}.npy", mmap_mode="r") for s in meta["streams"]}  # numpy alone reads them
        assert all(isinstance(a, np.memmap) for a in ids.values())
        assert ids["image"].dtype == ids["catalog"].dtype == np.uint16 and ids["spectrum"].dtype == np.uint8
        assert ids["catalog"].shape == (len(rows), len(table.catalog_columns))
        assert ids["spectrum"].shape == (len(rows), 128 // cfg.spectra.patch)
        for name, a in ids.items():
            assert a.max() < meta["streams"][name], name

        # the ids of each tokenizer's own encode on the same objects, all at once
        objects = split_objects(datamodule, split)
        scalars = load_tokenizer(meta["tokenizers"]["scalars"]["checkpoint"])
        spectra = load_tokenizer(meta["tokenizers"]["spectra"]["checkpoint"])
        with torch.no_grad():
            latents = image_tokenizer.encode_latents(objects["image"])
            expected_image = image_tokenizer.quantize(latents)[0]
            expected_catalog = torch.cat(list(scalars.encode(objects["catalog"]).values()), 1)
            expected_spectrum = spectra.encode(objects["spectrum"], objects["spectrum_ivar"])["spectrum"]
            features = (spectra.features(objects["spectrum"], objects["spectrum_ivar"]) - spectra.feature_mean) / (
                spectra.feature_std
            )
        assert np.array_equal(ids["catalog"], expected_catalog.numpy())  # bins: no float sums, no ties
        # encode.py encodes in batches: the same ids but where a vector lies on a tie within float32 rounding
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        error = latents.shape[1] ** 0.5 * f32_tolerance(latents, layer_depth(image_tokenizer.encoder))
        codes = image_tokenizer.code_vectors("image")
        got = {s: torch.from_numpy(a.astype(np.int64)) for s, a in ids.items()}
        assert_same_ids_up_to_ties(got["image"], expected_image, vectors, codes, error)
        vectors = features.flatten(0, 1)
        error = vectors.shape[1] ** 0.5 * f32_tolerance(vectors, 1)
        assert_same_ids_up_to_ties(got["spectrum"], expected_spectrum, vectors, spectra.codebook, error)
    # the fitted scalar/spectrum tokenizers are ordinary checkpoints beside the stores; no latest.json
    scalars = load_tokenizer(next(out.glob("scalars-*.pt")))
    assert scalars.metadata.variables == table.catalog_columns
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".pt")) == ["test", "train", "val"]
    mtimes = {p: (p / "meta.json").stat().st_mtime_ns for p in stores.values()}
    caplog.clear()
    with caplog.at_level("INFO", logger="scitok.encode"):
        again = encode(cfg)
    assert again == stores and {p: (p / "meta.json").stat().st_mtime_ns for p in again.values()} == mtimes
    assert sum("reusing the token store" in r.message for r in caplog.records) == 3
    assert sum("reusing the scalar tokenizer" in r.message for r in caplog.records) == 1


def test_an_interrupted_export_leaves_no_store_that_is_read_later(experiment_run, tmp_path, data_dir, monkeypatch):
    run = experiment_run(EXPERIMENT)
    out = tmp_path / "tokens"
    cfg = encode_cfg(run.last_ckpt, out, data_dir, "splits=[val]")
    real_save = np.save

    def interrupted(file, array, **kwargs):
        real_save(file, array[:1], **kwargs)  # part of the store is written …
        raise KeyboardInterrupt("killed mid-write")  # … then the process dies

    monkeypatch.setattr(np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        encode(cfg)
    monkeypatch.setattr(np, "save", real_save)
    assert not (out / "val").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert len(list(out.glob("*.pt"))) == 2  # killed after the fits: the fitted tokenizers are whole, and kept
    store = SplitStore.open(encode(cfg)["val"])  # the next run writes it whole
    assert len(store) == len(run.datamodule.rows["val"])


def test_export_errors_name_the_problem(experiment_run, tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="ckpt=.*nope.ckpt does not exist"):
        encode(encode_cfg(tmp_path / "nope.ckpt", tmp_path / "tokens", data_dir))
    other = next(e for e in ("phaedra", "eeg", "svqvae") if describe(e)["cpu"])  # another tokenizer's checkpoint
    with pytest.raises(ValueError, match=r"trained on \w+ data; the data config gives galaxy_images data"):
        encode(encode_cfg(experiment_run(other).last_ckpt, tmp_path / "tokens", data_dir, "data=galaxies"))
    with pytest.raises(FileNotFoundError, match="write it with python encode.py"):
        SplitStore.open(tmp_path / "tokens" / "train")
