import hashlib
import re

import h5py
import numpy as np
import pytest
import torch

from datamodules.common import EpochShuffleSampler, cache_key, split_indices
from datamodules.fields import FieldDataModule
from datamodules.sources import EmbeddedFields, HDF5Fields, NpyFields


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("embedded")
    dm = FieldDataModule(EmbeddedFields(resolution=32, n_traj=5, n_frames=3), data_dir=data_dir, batch_size=4)
    dm.prepare_data()
    dm.setup()
    return dm


def test_embedded_cache_is_written_atomically_and_reused(embedded):
    files = sorted(p.name for p in embedded.data_dir.iterdir() if p.is_file())
    assert len(files) == 1 and files[0].startswith("embedded_fields_") and files[0].endswith(".pt")
    stamp = (embedded.data_dir / files[0]).stat().st_mtime_ns
    embedded.source.prepare(embedded.data_dir)
    assert (embedded.data_dir / files[0]).stat().st_mtime_ns == stamp


def test_cache_key_is_the_sha256_of_the_canonical_json():
    obj = {"b": [1, 2.5, None], "a": "µ"}
    canonical = '{"a":"µ","b":[1,2.5,null]}'
    assert cache_key(obj) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert cache_key({"a": "µ", "b": [1, 2.5, None]}, n=64) == hashlib.sha256(canonical.encode()).hexdigest()
    assert cache_key(obj) != cache_key({**obj, "b": [1, 2.5]})


def test_batch_dict_shapes_and_normalization(embedded):
    batch = next(iter(embedded.train_dataloader()))
    assert batch["field_variables_in"].shape == (4, 1, 32, 32)
    assert batch["field_variables_in_mean"].shape == batch["field_variables_in_std"].shape == (4, 1)
    x = (batch["field_variables_out"] - batch["field_variables_in_mean"][..., None, None]) / batch[
        "field_variables_in_std"
    ][..., None, None]
    assert torch.allclose(x, batch["field_variables_in"])
    assert embedded.metadata.variables == [
        "navier_stokes/vorticity",
        "gray_scott/u",
        "gray_scott/v",
        "acoustic_wave/pressure",
    ]


def test_split_is_by_trajectory_and_statistics_come_from_train_only(embedded):
    fs = {f.name: f for f in embedded.source.load(embedded.data_dir)}
    ns = fs["navier_stokes"].data[:, :, 0]  # [5, 3, 32, 32]
    frames = {}
    for split, ds in embedded.splits.items():
        batch = ds.__getitems__(list(range(len(ds))))
        frames[split] = batch["field_variables_out"][batch["variable_id"] == 0][:, 0]
    found = {}
    for split, x in frames.items():
        trajs = {int(((ns - f).abs().flatten(-2).amax(-1) == 0).nonzero()[0, 0]) for f in x}
        found[split] = trajs
    assert len(frames["train"]) == 3 * len(found["train"])  # whole trajectories only
    assert not (found["train"] & found["val"]) and not (found["train"] & found["test"])
    assert not (found["val"] & found["test"])
    train = ns[sorted(found["train"])].double()
    assert embedded.metadata.mean[0] == pytest.approx(float(train.mean()), rel=1e-6, abs=1e-9)
    assert embedded.metadata.std[0] == pytest.approx(float(train.std()), rel=1e-6)


def test_train_order_depends_on_seed_and_epoch_only():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    b.set_epoch(1)
    assert list(a) == list(b)
    b.resume(epoch=1, n_done=20)  # a run resumed after 20 samples of epoch 1 sees the rest, once
    assert list(b) == list(a)[20:]
    assert list(b) == list(a)
    b.resume(epoch=0, n_done=20)  # a stale resume point for another epoch is ignored
    assert list(b) == list(a)


def test_hdf5_in_the_wells_layout(tmp_path):
    path = tmp_path / "run.hdf5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("t0_fields/density", data=rng.normal(size=(4, 3, 16, 8)).astype(np.float32))
        f.create_dataset("t0_fields/pressure", data=rng.normal(size=(4, 3, 16, 8)).astype(np.float32) + 5)
    dm = FieldDataModule(HDF5Fields(str(path)), data_dir=tmp_path, batch_size=2)
    dm.prepare_data()
    dm.setup()
    assert dm.metadata.variables == ["run/density", "run/pressure"]
    assert dm.metadata.mean[1] == pytest.approx(5, abs=0.3)
    assert len(dm.splits["train"]) == 2 * 3 * 2
    assert next(iter(dm.val_dataloader()))["field_variables_in"].shape[1:] == (1, 16, 8)


@pytest.mark.parametrize(
    ("shape", "layout", "n_vars"), [((6, 8, 8), "auto", 1), ((5, 3, 8, 8), "NTHW", 1), ((5, 2, 8, 8), "NCHW", 2)]
)
def test_npy_layouts(tmp_path, shape, layout, n_vars):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=shape).astype(np.float32))
    dm = FieldDataModule(NpyFields(str(path), layout=layout), data_dir=tmp_path, batch_size=1)
    dm.setup()
    assert len(dm.metadata.variables) == n_vars
    total = sum(len(ds) for ds in dm.splits.values())
    assert total == int(np.prod(shape[:-2]))


def test_npz_arrays_are_variables(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, u=np.ones((4, 8, 8), np.float32), v=np.zeros((4, 8, 8), np.float32) + 2)
    dm = FieldDataModule(NpyFields(str(path)), data_dir=tmp_path, batch_size=1)
    dm.setup()
    assert dm.metadata.variables == ["x/u", "x/v"]


def test_nan_in_a_data_file_names_file_variable_and_sample(tmp_path):
    split = split_indices(4, (0.8, 0.1, 0.1), seed=0)
    for name, traj in (("train", int(split["train"][1])), ("val", int(split["val"][0]))):
        x = np.zeros((4, 3, 8, 8), np.float32)
        x[traj, 1, 3, 3] = np.nan
        path = tmp_path / f"bad_{name}.hdf5"
        with h5py.File(path, "w") as f:
            f.create_dataset("t0_fields/vorticity", data=x)
        message = rf"bad_{name}\.hdf5: variable 'vorticity' holds NaN/Inf values at trajectory {traj}, time 1"
        with pytest.raises(ValueError, match=message):  # every split is read at setup when it is this small
            FieldDataModule(HDF5Fields(str(path)), data_dir=tmp_path, batch_size=2).setup()
    # beyond stats_frames snapshots per split, what the setup pass skipped is checked when a batch reads it
    val_traj, skipped = int(split["val"][0]), 0
    for t in range(8):  # a NaN at each time in turn: where the one sampled snapshot misses it, reading finds it
        x = np.zeros((4, 8, 8, 8), np.float32)
        x[val_traj, t, 3, 3] = np.nan
        with h5py.File(tmp_path / f"late{t}.hdf5", "w") as f:
            f.create_dataset("t0_fields/vorticity", data=x)
        dm = FieldDataModule(
            HDF5Fields(str(tmp_path / f"late{t}.hdf5")), data_dir=tmp_path / f"s{t}", batch_size=2, stats_frames=1
        )
        message = rf"late{t}\.hdf5: variable 'vorticity' holds NaN/Inf values at trajectory {val_traj}, time {t}"
        try:
            dm.setup()
        except ValueError as e:
            assert re.search(message, str(e))
            continue
        skipped += 1
        with pytest.raises(ValueError, match=message):
            list(dm.val_dataloader())
    assert skipped >= 6


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does/not/exist"):
        FieldDataModule(NpyFields("/does/not/exist.npy"), data_dir=tmp_path).prepare_data()
    np.save(tmp_path / "four.npy", np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="ambiguous.*layout"):
        FieldDataModule(NpyFields(str(tmp_path / "four.npy")), data_dir=tmp_path).setup()
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8), np.float32))
    with pytest.raises(ValueError, match="empty"):
        FieldDataModule(NpyFields(str(tmp_path / "empty.npy")), data_dir=tmp_path).setup()
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="junk.npy.*not a readable"):
        FieldDataModule(NpyFields(str(tmp_path / "junk.npy")), data_dir=tmp_path).setup()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk.h5.*not a readable HDF5"):
        FieldDataModule(HDF5Fields(str(tmp_path / "junk.h5")), data_dir=tmp_path).setup()
    with pytest.raises(ValueError, match="must be one .npy or .npz file"):
        FieldDataModule(NpyFields(str(tmp_path)), data_dir=tmp_path).setup()
    np.save(tmp_path / "two.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="at least 3"):
        FieldDataModule(NpyFields(str(tmp_path / "two.npy")), data_dir=tmp_path).setup()
    # a 2-D array: no layout would take it, so the message names the shapes that work, not the layout key
    np.save(tmp_path / "flat.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"flat.npy: expected a 3-D \[N, H, W\] or 4-D .* got shape \(8, 8\)"):
        FieldDataModule(NpyFields(str(tmp_path / "flat.npy")), data_dir=tmp_path).setup()
    # complex values are refused, not silently cut to their real part
    np.save(tmp_path / "complex.npy", np.ones((4, 8, 8), np.complex64))
    with pytest.raises(ValueError, match="complex.npy: complex values"):
        FieldDataModule(NpyFields(str(tmp_path / "complex.npy")), data_dir=tmp_path).setup()
    import h5py

    with h5py.File(tmp_path / "complex.h5", "w") as f:
        f["t0_fields/u"] = np.ones((3, 4, 8, 8), np.complex64)
    with pytest.raises(ValueError, match="complex.h5: t0_fields/u holds complex values"):
        FieldDataModule(HDF5Fields(str(tmp_path / "complex.h5")), data_dir=tmp_path).setup()
