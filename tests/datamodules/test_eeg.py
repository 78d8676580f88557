from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.eeg import AeonNeuroEEG, EEGDataModule, EEGFiles, EpochCropSampler, Recording


class ListSource:
    """Recordings given in memory (what AeonNeuroEEG / EEGFiles produce)."""

    def __init__(self, recordings):
        self.given = recordings

    def load(self):
        return self.given


def recordings(n: int = 10, channels: int = 3, seconds: float = 2.0, sfreq: float = 256.0):
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sfreq)) / sfreq
    return [
        Recording(
            (np.sin(2 * np.pi * (5 + i) * t) * (1 + i) + rng.normal(size=(channels, len(t))) * 0.1).astype(np.float32),
            sfreq,
            f"rec{i}",
        )
        for i in range(n)
    ]


def test_split_by_recording_fixed_eval_patches_and_batches():
    dm = EEGDataModule(ListSource(recordings()), patch_len=64, batch_size=8, eval_batch_size=16)
    dm.setup()
    train, val = dm.splits["train"], dm.splits["val"]
    assert len(train.starts) == 8 * 3  # 8 train recordings × 3 channels, one row each at one rate
    assert len(val) == 1 * 3 * (512 // 64)  # one val recording, consecutive non-overlapping patches
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 64) and batch["sfreq"].tolist() == [256.0] * 8
    first = next(iter(dm.val_dataloader()))["x"]
    assert torch.equal(first, next(iter(dm.val_dataloader()))["x"])  # validation order is fixed
    # robust z-score per channel: median 0, MAD·1.4826 = 1 on each val row
    row = val.__getitems__(range(8))["x"].flatten()
    assert float(row.median()) == pytest.approx(0.0, abs=0.1)


def test_every_rate_gets_its_rows_and_patches_carry_their_rate():
    dm = EEGDataModule(ListSource(recordings()), patch_len=64, rates=[128.0, 256.0, 512.0], batch_size=8)
    dm.setup()
    train = dm.splits["train"]
    assert sorted(set(train.sfreq.tolist())) == [128.0, 256.0, 512.0]
    lengths = {float(f): int(n) for f, n in zip(train.sfreq, train.lengths, strict=True)}
    assert lengths == {128.0: 256, 256.0: 512, 512.0: 1024}  # 2 s at each rate
    val = dm.splits["val"]
    rate_ids = [[128.0, 256.0, 512.0].index(f) for f in val.sfreq.tolist()]
    assert torch.equal(val.rate_id, torch.tensor(rate_ids))


def test_train_crops_depend_on_seed_and_epoch_and_resume_mid_epoch():
    lengths = torch.tensor([100, 80, 64])
    a, b = EpochCropSampler(lengths, 64, 3, 100, seed=1), EpochCropSampler(lengths, 64, 3, 100, seed=1)
    assert list(a) == list(b) and len(list(a)) == 9
    crops = list(a)
    assert all(c % 100 + 64 <= int(lengths[c // 100]) for c in crops)  # every crop lies inside its row
    a.set_epoch(1)
    assert list(a) != crops
    b.set_epoch(1)
    b.resume(1, 4)
    assert list(b) == list(a)[4:]


def test_mostly_zero_rows_are_dropped_and_bad_data_is_named():
    recs = recordings()
    recs[0].data[1] = 0.0  # a flat (disconnected) channel
    dm = EEGDataModule(ListSource(recs), patch_len=64, batch_size=8, seed=0)
    dm.setup()
    total_rows = len(dm.splits["train"].starts) + len(dm.splits["val"]) // 8 + len(dm.splits["test"]) // 8
    assert total_rows == 10 * 3 - 1
    recs[3].data[0, 5] = np.nan
    with pytest.raises(ValueError, match=r"rec3: recording holds NaN/Inf"):
        EEGDataModule(ListSource(recs), patch_len=64).setup()
    with pytest.raises(ValueError, match="normalization"):
        EEGDataModule(ListSource(recs), normalization="zscore")
    with pytest.raises(ValueError, match="at least 3"):
        EEGDataModule(ListSource(recs[:2]), patch_len=64).setup()


def test_ems_normalization_is_selectable():
    dm = EEGDataModule(ListSource(recordings(seconds=20.0)), patch_len=64, normalization="ems", ems_factor=1e-2)
    dm.setup()
    val = dm.splits["val"]
    assert abs(float(val.__getitems__(range(len(val)))["x"].mean())) < 0.2


def write_edf(path: Path, data: np.ndarray, sfreq: int, labels: list[str]) -> None:
    """A minimal EDF file: 1-s records, 16-bit samples over ±1000 µV."""
    n_ch, n_samples = data.shape
    n_rec = n_samples // sfreq
    field = lambda values, width: "".join(str(v)[:width].ljust(width) for v in values)  # noqa: E731
    header = (
        field(["0"], 8)
        + field(["X X X X"], 80)
        + field(["Startdate X X X X"], 80)
        + "01.01.2001.00.00"
        + field([256 * (n_ch + 1)], 8)
        + field([""], 44)
        + field([n_rec], 8)
        + field([1], 8)
        + field([n_ch], 4)
    )
    header += field(labels, 16) + field([""] * n_ch, 80) + field(["uV"] * n_ch, 8) + field([-1000] * n_ch, 8)
    header += field([1000] * n_ch, 8) + field([-32768] * n_ch, 8) + field([32767] * n_ch, 8)
    header += field([""] * n_ch, 80) + field([sfreq] * n_ch, 8) + field([""] * n_ch, 32)
    digital = np.round((data * 1e6 + 1000) / 2000 * 65535 - 32768).clip(-32768, 32767).astype("<i2")
    records = digital[:, : n_rec * sfreq].reshape(n_ch, n_rec, sfreq).transpose(1, 0, 2)
    path.write_bytes(header.encode("ascii") + records.tobytes())


def test_users_edf_recordings_through_mne(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        volts = rng.normal(size=(2, 4 * 128)) * 20e-6  # 20 µV
        write_edf(tmp_path / f"sub{i}.edf", volts, 128, ["Cz", "Pz"])
    recs = EEGFiles(str(tmp_path)).load()
    assert len(recs) == 3 and recs[0].data.shape == (2, 512) and recs[0].sfreq == 128.0
    assert recs[0].origin.endswith("sub0.edf")
    dm = EEGDataModule(EEGFiles(str(tmp_path)), patch_len=64, rates=[128.0, 256.0], batch_size=4)
    dm.setup()
    assert next(iter(dm.train_dataloader()))["x"].shape == (4, 64)
    with pytest.raises(FileNotFoundError, match="does/not/exist"):
        EEGFiles("/does/not/exist").load()
    (tmp_path / "broken.edf").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"broken\.edf: not a readable EEG recording"):
        EEGFiles(str(tmp_path)).load()


def test_recording_files_are_preprocessed_once_to_a_mapped_cache_equal_to_the_in_memory_path(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "edf"
    folder.mkdir()
    for i in range(4):
        write_edf(folder / f"sub{i}.edf", rng.normal(size=(2, 6 * 128)) * 20e-6, 128, ["Cz", "Pz"])
    kw = dict(patch_len=64, rates=[128.0, 256.0], batch_size=4, eval_batch_size=8)
    lazy = EEGDataModule(EEGFiles(str(folder)), data_dir=str(tmp_path / "data"), **kw)
    lazy.setup()
    (rows,) = (tmp_path / "data" / "eeg").glob("rows-*.f32")
    assert isinstance(lazy.splits["train"].store.data(), np.memmap)
    in_memory = EEGDataModule(ListSource(EEGFiles(str(folder)).load()), **kw)  # recordings preloaded, no cache
    in_memory.setup()
    for split in ("train", "val"):
        loaders = [dm.train_dataloader() if split == "train" else dm.val_dataloader() for dm in (lazy, in_memory)]
        for a, b in zip(*loaders, strict=True):
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["sfreq"], b["sfreq"])
    # a second run reads the cache: no recording is opened
    import datamodules.eeg as eeg_module

    def unopened(*args, **kwargs):
        raise AssertionError("a recording was read again")

    monkeypatch.setattr(eeg_module, "MNERecording", unopened)
    again = EEGDataModule(EEGFiles(str(folder)), data_dir=str(tmp_path / "data"), **kw)
    again.setup()
    assert again.splits["val"].__getitems__([0, 1])["x"].shape == (2, 64)
    assert rows.stat().st_size == 4 * 2 * (6 * 128 + 6 * 256) * 4  # float32 rows at both rates
    monkeypatch.undo()
    (folder / "sub2.edf").write_bytes((folder / "sub2.edf").read_bytes()[:400])  # cut short
    with pytest.raises(ValueError, match=r"sub2\.edf: (not a readable EEG recording|channel 'Cz' cannot be read)"):
        EEGDataModule(EEGFiles(str(folder)), data_dir=str(tmp_path / "data"), **kw).setup()


def test_missing_mne_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mne(name, *args, **kwargs):
        if name == "mne":
            raise ImportError("No module named 'mne'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mne)
    with pytest.raises(ModuleNotFoundError, match="pip install mne"):
        EEGFiles("/anything").load()


def test_the_embedded_scp_set():
    recs = AeonNeuroEEG().load()
    assert len(recs) == 268 + 293 + 200 + 180 and {r.sfreq for r in recs} == {256.0}
