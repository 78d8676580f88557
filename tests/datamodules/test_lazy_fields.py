"""Users' field files read lazily: a folder of HDF5 files is one dataset, snapshots are read when a batch asks for
them (equal to reading the whole file), the statistics are streamed and cached, workers give the same batches, and
broken files are named at setup."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

import datamodules.fields as fields_module
from datamodules.common import split_indices
from datamodules.fields import FieldDataModule, welford_merge
from datamodules.sources import HDF5Fields, NpyFields


def write_h5(path, n_traj=4, n_t=3, hw=(8, 6), seed=0, names=("u", "v")):
    rng = np.random.default_rng(seed)
    data = {n: (rng.normal(size=(n_traj, n_t, *hw)) * (i + 1) + i).astype(np.float32) for i, n in enumerate(names)}
    with h5py.File(path, "w") as f:
        for n, a in data.items():
            f.create_dataset(f"t0_fields/{n}", data=a, chunks=(1, 1, *hw))
    return data


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "gray_scott"
    root.mkdir()
    parts = [write_h5(root / f"part{i}.hdf5", n_traj=n, seed=i) for i, n in enumerate((3, 2, 4))]
    whole = {n: np.concatenate([p[n] for p in parts]) for n in ("u", "v")}  # [9, 3, 8, 6]
    return root, whole


def test_a_folder_of_hdf5_files_is_one_dataset_read_lazily(folder, tmp_path):
    root, whole = folder
    dm = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path, batch_size=2)
    dm.setup()
    assert dm.metadata.variables == ["gray_scott/u", "gray_scott/v"]
    assert sum(len(ds) for ds in dm.splits.values()) == 9 * 3 * 2
    split = split_indices(9, dm.split, dm.seed)
    for name, ds in dm.splits.items():  # every sample equals the snapshot it names, across file boundaries
        batch = ds.__getitems__(list(range(len(ds))))
        rows = ds.rows
        expected = np.stack([whole["uv"[v]][traj, t] for _, traj, t, v in rows.tolist()])
        assert torch.equal(batch["field_variables_out"][:, 0], torch.from_numpy(expected))
        assert set(rows[:, 1].tolist()) == set(split[name].tolist())
    # statistics: the train trajectories of the whole folder, equal to a float64 computation over them
    train = whole["v"][split["train"].numpy()].astype(np.float64)
    assert dm.metadata.mean[1] == pytest.approx(train.mean(), rel=1e-12)
    assert dm.metadata.std[1] == pytest.approx(train.std(ddof=1), rel=1e-12)


def test_welford_merge_equals_the_two_pass_statistics():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=1000)
    acc = (0, 0.0, 0.0)
    for part in np.array_split(x, 7):
        acc = welford_merge(acc, (part.size, part.mean(), ((part - part.mean()) ** 2).sum()))
    assert acc[0] == 1000 and acc[1] == pytest.approx(x.mean(), rel=1e-13)
    assert acc[2] / 999 == pytest.approx(x.var(ddof=1), rel=1e-12)


def test_statistics_are_cached_by_file_and_modification_time(folder, tmp_path, monkeypatch):
    root, _ = folder
    first = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path, batch_size=2)
    first.setup()
    (cache,) = (tmp_path / "stats").glob("fields-*.json")
    assert json.loads(cache.read_text())["mean"] == first.metadata.mean

    def no_pass(*args, **kwargs):
        raise AssertionError("the statistics were computed again")

    monkeypatch.setattr(fields_module, "frame_statistics", no_pass)
    again = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path, batch_size=2)
    again.setup()  # from the cache
    assert again.metadata.mean == first.metadata.mean
    stat = (root / "part1.hdf5").stat()  # the file changed (a new modification time): the cache no longer applies
    os.utime(root / "part1.hdf5", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="computed again"):
        FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path, batch_size=2).setup()


@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): every write, rename or mkdir under `folder` raises EROFS, as on a read-only mount (chmod
    does not stop root, who runs these tests in CI containers)."""
    import builtins
    import errno
    import io
    import pathlib

    folders = []

    def guard(path, what):
        if any(pathlib.Path(os.path.abspath(path)).is_relative_to(f) for f in folders):
            raise OSError(errno.EROFS, f"Read-only file system ({what})", str(path))

    real_open, real_replace, real_mkdir = builtins.open, os.replace, pathlib.Path.mkdir

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, str | os.PathLike) and any(c in mode for c in "wax+"):
            guard(file, "open")
        return real_open(file, mode, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        guard(dst, "rename")
        return real_replace(src, dst, *args, **kwargs)

    def mkdir(self, *args, **kwargs):
        guard(self, "mkdir")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)  # pathlib opens files through io.open
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    return lambda folder: folders.append(pathlib.Path(folder).resolve())


def test_a_read_only_data_dir_works(folder, tmp_path, read_only, caplog):
    """With its statistics cached, a read-only data dir is only read; without, the statistics are computed, used and
    not cached, with a warning naming the file."""
    root, _ = folder
    first = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path / "cached", batch_size=2)
    first.setup()
    read_only(tmp_path / "cached")
    read_only(tmp_path / "empty")
    with pytest.raises(OSError, match="Read-only"):  # the simulation holds
        (tmp_path / "cached" / "x").write_text("x")
    again = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path / "cached", batch_size=2)
    again.setup()
    assert again.metadata.mean == first.metadata.mean
    fresh = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path / "empty", batch_size=2)
    fresh.setup()
    assert fresh.metadata.mean == first.metadata.mean
    assert "not cached: " in caplog.text and "Read-only file system" in caplog.text
    assert not (tmp_path / "empty").exists()


def test_statistics_from_a_seeded_sample_of_the_train_snapshots(folder, tmp_path):
    root, whole = folder
    a = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path / "a", batch_size=2, stats_frames=4)
    b = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path / "b", batch_size=2, stats_frames=4)
    a.setup()
    b.setup()
    assert a.metadata.mean == b.metadata.mean  # seeded: the same sample
    full = whole["u"][split_indices(9, a.split, 0)["train"].numpy()]
    assert a.metadata.mean[0] != pytest.approx(full.astype(np.float64).mean(), rel=1e-9)  # a sample, not all
    assert abs(a.metadata.mean[0] - full.mean()) < 4 * full.std() / np.sqrt(4)  # but a fair one


def test_workers_give_the_batches_of_the_main_process(folder, tmp_path):
    root, _ = folder
    batches = {}
    for workers in (0, 2):
        dm = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path, batch_size=3, num_workers=workers)
        dm.setup()
        train = dm.train_dataloader()
        assert train.persistent_workers == (workers > 0)
        batches[workers] = [b["field_variables_in"] for b in train] + [
            b["field_variables_in"] for b in dm.val_dataloader()
        ]
    assert len(batches[0]) == len(batches[2]) > 2
    assert all(torch.equal(x, y) for x, y in zip(batches[0], batches[2], strict=True))


def test_npy_is_memory_mapped_and_equals_the_array(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    dm = FieldDataModule(NpyFields(str(tmp_path / "x.npy"), layout="NTHW"), data_dir=tmp_path, batch_size=2)
    dm.setup()
    arrays = dm.splits["train"].arrays[0]
    ds = dm.splits["val"]
    batch = ds.__getitems__(list(range(len(ds))))
    expected = np.stack([x[traj, t] for _, traj, t, _ in ds.rows.tolist()])
    assert torch.equal(batch["field_variables_out"][:, 0], torch.from_numpy(expected))
    assert isinstance(arrays._open_array, np.memmap)  # mapped, not read


def test_broken_files_are_named_at_setup(folder, tmp_path):
    root, _ = folder
    write_h5(root / "part3.hdf5", n_traj=2, hw=(8, 8), seed=3)  # changes shape halfway through the folder
    with pytest.raises(
        ValueError,
        match=r"part3.hdf5: variables \['u', 'v'\] of \[n_t, H, W\] \[3, 8, 8\], but "
        r".*part0.hdf5 \(the first file of the folder\) has .* \[3, 8, 6\]",
    ):
        FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path).setup()
    write_h5(root / "part3.hdf5", n_traj=2, seed=3, names=("u",))  # a variable missing
    with pytest.raises(ValueError, match=r"part3.hdf5: variables \['u'\]"):
        FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path).setup()
    with pytest.raises(ValueError, match=r"part3.hdf5: no field 'v' \(has \['u'\]\)"):
        FieldDataModule(HDF5Fields(str(root), variables=["u", "v"]), data_dir=tmp_path).setup()
    (root / "part3.hdf5").unlink()
    big = tmp_path / "big.hdf5"
    with h5py.File(big, "w") as f:  # contiguous data at the end of the file
        f.create_dataset("t0_fields/u", data=np.ones((4, 3, 64, 64), np.float32))
    big.write_bytes(big.read_bytes()[: big.stat().st_size * 2 // 3])
    with pytest.raises(ValueError, match=r"big.hdf5: (t0_fields/u cannot be read to its end|not a readable HDF5)"):
        FieldDataModule(HDF5Fields(str(big)), data_dir=tmp_path).setup()
    np.save(tmp_path / "cut.npy", np.ones((6, 16, 16), np.float32))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(cut.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut.npy: not a readable .npy/.npz file .* truncated"):
        FieldDataModule(NpyFields(str(cut)), data_dir=tmp_path).setup()
