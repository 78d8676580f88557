"""encode.py: token stores of every split from the astro tokenizers — contents, reuse, and atomic writes."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import datamodules.token_store as token_store
from datamodules.token_store import TokenStore, file_sha256
from encode import encode
from tests.helpers import ROOT, SMALL_DATA, assert_same_ids_up_to_ties, describe, f32_tolerance, layer_depth
from tokenizers import load_tokenizer

EXPERIMENT = "astro_image"  # the one experiment whose checkpoint encode.py takes


def encode_cfg(ckpt, out_dir, data_dir):
    small = SMALL_DATA["datamodules.galaxies.EmbeddedGalaxies"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="encode",
            overrides=[
                f"ckpt={ckpt}",
                "data=galaxies",
                f"paths.output_dir={out_dir}",
                f"out_dir={out_dir}",
                f"paths.data_dir={data_dir}",
                *small,
                "spectra.codebook_size=64",
                "batch_size=16",
            ],
        )


def test_export_writes_every_split_and_reuses_it(experiment_run, tmp_path, data_dir, caplog):
    run = experiment_run(EXPERIMENT)
    cfg = encode_cfg(run.last_ckpt, tmp_path / "tokens", data_dir)
    stores = encode(cfg)
    assert set(stores) == {"train", "val", "test"}
    datamodule = run.datamodule
    image_tokenizer = load_tokenizer(run.last_ckpt)
    for split, path in stores.items():
        store = TokenStore.load(path)
        rows = datamodule.rows[split].numpy()
        assert np.array_equal(store.object_id, datamodule.table.object_id[rows])
        with torch.no_grad():
            objects = datamodule.splits[split]
            latents = image_tokenizer.encode_latents(objects.__getitems__(range(len(objects)))["image"])
            expected = image_tokenizer.quantize(latents)[0]
        # encode.py encodes in batches: the same ids but where a latent lies on a tie within float32 rounding
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        error = latents.shape[1] ** 0.5 * f32_tolerance(latents, layer_depth(image_tokenizer.encoder))
        codes = image_tokenizer.code_vectors("image")
        assert_same_ids_up_to_ties(torch.from_numpy(store.tokens["image"]), expected, vectors, codes, error)
        assert store.tokens["catalog"].shape == (len(rows), len(datamodule.table.catalog_columns))
        assert store.tokens["spectrum"].shape == (len(rows), 128 // cfg.spectra.patch)
        assert store.meta["vocab"] == {"image": 2048, "catalog": 1025, "spectrum": 64}
        assert store.meta["tokenizer_sha256"]["image"] == file_sha256(run.last_ckpt)
        assert all(store.present[name].all() for name in store.tokens)
        for name, ids in store.tokens.items():
            assert 0 <= ids.min() and ids.max() < store.meta["vocab"][name], name
    # the fitted scalar/spectrum tokenizers are ordinary checkpoints
    scalars = load_tokenizer(next((tmp_path / "tokens").glob("scalars-*.pt")))
    assert scalars.metadata.variables == datamodule.table.catalog_columns
    mtimes = {p: p.stat().st_mtime_ns for p in stores.values()}
    caplog.clear()
    with caplog.at_level("INFO", logger="scitok.encode"):
        again = encode(cfg)
    assert again == stores and {p: p.stat().st_mtime_ns for p in again.values()} == mtimes
    assert sum("reusing the token store" in r.message for r in caplog.records) == 3


def test_an_interrupted_export_leaves_no_store_that_is_read_later(experiment_run, tmp_path, data_dir, monkeypatch):
    run = experiment_run(EXPERIMENT)
    cfg = encode_cfg(run.last_ckpt, tmp_path / "tokens", data_dir)
    cfg.splits = ["val"]
    real_savez = np.savez

    def interrupted(f, **arrays):
        real_savez(f, object_id=arrays["object_id"])  # part of the file is written …
        raise KeyboardInterrupt("killed mid-write")  # … then the process dies

    monkeypatch.setattr(token_store.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        encode(cfg)
    assert not list((tmp_path / "tokens").glob("val-*.npz")) and not list((tmp_path / "tokens").glob(".*tmp*"))
    monkeypatch.setattr(token_store.np, "savez", real_savez)
    store = TokenStore.load(encode(cfg)["val"])  # the next run writes it whole
    assert len(store.object_id) == len(run.datamodule.rows["val"])


def test_export_errors_name_the_problem(experiment_run, tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="ckpt=.*nope.ckpt does not exist"):
        encode(encode_cfg(tmp_path / "nope.ckpt", tmp_path / "tokens", data_dir))
    other = next(e for e in ("phaedra", "eeg", "svqvae") if describe(e)["cpu"])  # another tokenizer's checkpoint
    with pytest.raises(ValueError, match=r"trained on \w+ data; the data config gives galaxy_images data"):
        encode(encode_cfg(experiment_run(other).last_ckpt, tmp_path / "tokens", data_dir))
    with pytest.raises(FileNotFoundError, match="encode.py writes it"):
        TokenStore.load(tmp_path / "missing.npz")
