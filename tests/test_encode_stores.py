"""encode.py for field, EEG and image tokenizers: a token store per split (memory-mapped ids of the smallest dtype,
an index of what each row is, meta.json), ids equal to load_tokenizer(ckpt).encode on the same inputs, reuse, atomic
writes, two processes writing one store equal to one process's, and errors that name the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import lit_modules.encoding as encoding
from datamodules.token_store import SplitStore, file_sha256
from encode import encode
from tests.helpers import ROOT, describe
from tokenizers import load_tokenizer

EXPERIMENTS = [e for e in ("phaedra", "fsq", "eeg", "eeg_film", "svqvae") if describe(e)["cpu"]]


def encode_cfg(ckpt, out_dir, data_dir, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="encode",
            overrides=[
                f"ckpt={ckpt}",
                f"out_dir={out_dir}",
                f"paths.data_dir={data_dir}",
                f"paths.output_dir={out_dir}",
                "batch_size=64",
                *overrides,
            ],
        )


def expected_ids(tokenizer, datamodule, dataset) -> dict[str, torch.Tensor]:
    """load_tokenizer(ckpt).encode on all of a split's samples in one call."""
    model_input = datamodule.adapter.unpack(dataset.__getitems__(list(range(len(dataset)))))
    with torch.no_grad():
        return tokenizer.encode(model_input.x, **model_input.cond)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_split_is_a_store_of_the_tokenizers_ids(experiment, experiment_run, tmp_path, data_dir, caplog):
    run = experiment_run(experiment)
    # the embedded EEG's train split is ~10⁵ patches: its val and test splits show the same at a tenth of the time
    splits = ["val", "test"] if describe(experiment)["kind"] == "eeg" else ["train", "val", "test"]
    cfg = encode_cfg(run.last_ckpt, tmp_path / "tokens", data_dir, f"splits=[{','.join(splits)}]")
    stores = encode(cfg)
    assert set(stores) == set(splits)
    tokenizer = load_tokenizer(run.last_ckpt)
    datamodule = run.datamodule
    for split, path in stores.items():
        assert path == tmp_path / "tokens" / split
        store = SplitStore.open(path)
        meta = json.loads((path / "meta.json").read_text())
        assert meta["streams"] == dict(tokenizer.streams) and meta["split"] == split
        assert meta["tokenizer"]["sha256"] == file_sha256(run.last_ckpt)
        dataset, index, _ = datamodule.encode_set(split)
        assert np.array_equal(store.index, index) and len(store) == len(dataset)
        expected = expected_ids(tokenizer, datamodule, dataset)
        for stream, vocab in tokenizer.streams.items():
            ids = np.load(path / f"{stream}.npy", mmap_mode="r")  # numpy alone reads it
            assert isinstance(ids, np.memmap) and ids.dtype == (np.uint8 if vocab <= 256 else np.uint16)
            assert ids.shape == tuple(expected[stream].shape)
            # batches of 16 against one call of every sample: the same ids but where a value lies on a rounding tie
            # of the quantizer within float32 error (a handful in 10⁴)
            mismatch = (torch.from_numpy(np.asarray(ids, np.int64)) != expected[stream]).float().mean()
            assert mismatch <= 1e-3, (stream, float(mismatch))
    caplog.clear()
    mtimes = {p: (p / "meta.json").stat().st_mtime_ns for p in stores.values()}
    with caplog.at_level("INFO", logger="scitok.encode"):
        again = encode(cfg)
    assert again == stores and {p: (p / "meta.json").stat().st_mtime_ns for p in again.values()} == mtimes
    assert sum("reusing the token store" in r.message for r in caplog.records) == len(splits)


def test_field_index_says_what_each_row_is(experiment_run, tmp_path, data_dir):
    run = experiment_run("phaedra")
    path = encode(encode_cfg(run.last_ckpt, tmp_path / "tokens", data_dir, "splits=[val]"))["val"]
    store = SplitStore.open(path)
    samples = run.datamodule.splits["val"]
    assert store.meta["index_columns"] == ["dataset", "variable", "trajectory", "time"]
    row = len(store) // 2
    k, traj, t, var = samples.rows[row].tolist()
    assert (store.index["dataset"][row], store.index["trajectory"][row], store.index["time"][row]) == (k, traj, t)
    tokenizer = load_tokenizer(run.last_ckpt)
    snapshot = samples.arrays[k].read(np.array([traj]), np.array([t]), np.array([var]))
    v = int(store.index["variable"][row])
    x = (torch.from_numpy(snapshot)[:, None] - tokenizer.metadata.mean[v]) / tokenizer.metadata.std[v]
    with torch.no_grad():
        ids = tokenizer.encode(x.float())
    for stream, expected in ids.items():
        assert (np.asarray(store.tokens[stream][row], np.int64) == expected[0].numpy()).mean() > 0.99


def test_two_processes_write_the_store_of_one(experiment_run, tmp_path, data_dir):
    """trainer=ddp_cpu: two processes encode their shares into one store, equal to the one-process store."""
    run = experiment_run("phaedra")
    one = encode(encode_cfg(run.last_ckpt, tmp_path / "one", data_dir, "splits=[val]"))["val"]
    two = encode(
        encode_cfg(
            run.last_ckpt, tmp_path / "two", data_dir, "splits=[val]", "trainer=ddp_cpu", "trainer.strategy=ddp_spawn"
        )
    )["val"]
    a, b = SplitStore.open(one), SplitStore.open(two)
    assert np.array_equal(a.index, b.index)
    for stream in a.tokens:
        assert np.array_equal(a.tokens[stream], b.tokens[stream])
    assert not list(tmp_path.glob("*/.*"))  # no shard or temporary folder left


def test_an_interrupted_export_leaves_no_store(experiment_run, tmp_path, data_dir, monkeypatch):
    run = experiment_run("phaedra")
    cfg = encode_cfg(run.last_ckpt, tmp_path / "tokens", data_dir, "splits=[val]")
    real = encoding.ShardWriter.write_on_batch_end

    def killed(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise OSError("the disk died mid-export")

    monkeypatch.setattr(encoding.ShardWriter, "write_on_batch_end", killed)
    with pytest.raises(OSError, match="disk died"):
        encode(cfg)
    assert not (tmp_path / "tokens").exists() or not list((tmp_path / "tokens").iterdir())  # no store, no shards
    monkeypatch.setattr(encoding.ShardWriter, "write_on_batch_end", real)
    store = SplitStore.open(encode(cfg)["val"])  # the next run writes it whole
    assert len(store) == len(run.datamodule.splits["val"])
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == ["val"]


def test_export_errors_name_the_problem(experiment_run, tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="ckpt=.*nope.ckpt does not exist"):
        encode(encode_cfg(tmp_path / "nope.ckpt", tmp_path / "tokens", data_dir))
    run = experiment_run("phaedra")
    with pytest.raises(ValueError, match=r"PhaedraTokenizer trained on fields data; the data config gives eeg data"):
        encode(encode_cfg(run.last_ckpt, tmp_path / "tokens", data_dir, "data=eeg"))
    with pytest.raises(ValueError, match=r"splits: unknown \['valid'\]"):
        encode(encode_cfg(run.last_ckpt, tmp_path / "tokens", data_dir, "splits=[valid]"))
    with pytest.raises(FileNotFoundError, match="is not a token store"):
        SplitStore.open(tmp_path)


def test_released_weights_encode_with_the_datas_own_statistics_and_the_store_says_so(tmp_path, data_dir):
    """Released Phaedra weights carry no statistics: normalize=checkpoint is refused with the hint, normalize=data
    normalizes with the data's train split, and the store records those statistics (the transformer reads with them)."""
    from tokenizers import load_released, save_tokenizer

    released = ROOT / "tests" / "data" / "released" / "phaedra_small"
    tok = load_released("phaedra", released / "model.safetensors", released / "config.json")
    ckpt = save_tokenizer(tok, tok.spec, tok.metadata, tmp_path / "phaedra.ckpt")
    with pytest.raises(ValueError, match=r"normalize=checkpoint with ckpt=.*phaedra\.ckpt.*normalize=data"):
        encode(encode_cfg(ckpt, tmp_path / "refused", data_dir, "data=fields", "splits=[test]"))
    assert not (tmp_path / "refused" / "test").exists()
    stores = encode(encode_cfg(ckpt, tmp_path / "tokens", data_dir, "data=fields", "normalize=data", "splits=[test]"))
    store = SplitStore.open(stores["test"])
    datamodule = instantiate(encode_cfg(ckpt, tmp_path / "x", data_dir, "data=fields").data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    stats = datamodule.metadata
    assert (
        store.meta["normalization"]["variables"] == stats.variables and store.meta["normalization"]["std"] == stats.std
    )
    dataset, _, _ = datamodule.encode_set("test")
    expected = expected_ids(load_tokenizer(ckpt), datamodule, dataset)
    for stream, ids in expected.items():  # batches against one call: equal but at float32 rounding ties (see above)
        stored = torch.from_numpy(np.load(stores["test"] / f"{stream}.npy").astype(np.int64))
        assert stored.shape == ids.shape and (stored != ids).float().mean() <= 1e-3
