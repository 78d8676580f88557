"""The Well's layout read as the_well's WellDataset reads it: every t0, t1 and t2 field (one variable per component),
time-constant fields skipped with a log line, a dataset's train/ valid/ test/ folders as the splits, variables named
`<dataset_name>/<field>`; and a train.py run on a Well dataset with pressure ≈ 1e5 Pa."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
import torch

from datamodules.fields import FieldDataModule
from datamodules.sources import HDF5Fields, NpyFields
from datamodules.well import GROUPS
from datamodules.well_example import write_well_dataset

SPLIT_DIRS = {"train": "train", "val": "valid", "test": "test"}


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """incompressible_flow in The Well's layout: 16², 6 trajectories (4 / 1 / 1) of 4 snapshots."""
    root = tmp_path_factory.mktemp("well") / "incompressible_flow"
    write_well_dataset(root, resolution=16, n_traj=6, n_frames=4)
    return root


def well_snapshots(folder, n_t):
    """{(trajectory within the folder, time): [H, W, C] of the time-varying fields} and the constant fields, read
    by the_well's WellDataset (one input step, one output step: window w holds times w and w + 1)."""
    WellDataset = pytest.importorskip("the_well.data").WellDataset
    ds = WellDataset(path=str(folder), n_steps_input=1, n_steps_output=1, use_normalization=False)
    windows = n_t - 1
    out = {}
    for index in range(len(ds)):
        sample = ds[index]
        traj, w = divmod(index, windows)
        out[traj, w] = sample["input_fields"][0]
        out[traj, w + 1] = sample["output_fields"][0]
    return out, ds.metadata


def check_against_the_well(dm: FieldDataModule, root, dataset_name: str) -> None:
    """Every sample of every split equals WellDataset's value of the same (trajectory, time, field), bit for bit."""
    for split, folder in SPLIT_DIRS.items():
        samples = dm.splits[split]
        first_traj = int(samples.rows[:, 1].min())
        array = samples.arrays[0]
        expected, meta = well_snapshots(root / "data" / folder, array.shape[1])
        names = [n for order in range(3) for n in meta.field_names[order]]
        assert dm.variable_names == [f"{dataset_name}/{n}" for n in names]
        batch = samples.__getitems__(list(range(len(samples))))
        for row, got in zip(samples.rows.tolist(), batch["field_variables_out"][:, 0], strict=True):
            _, traj, t, var = row
            assert torch.equal(got, expected[traj - first_traj, t][..., var]), (split, row)


def test_a_well_dataset_is_read_as_welldataset_reads_it(flow, tmp_path, caplog):
    """Pressure (t0) and velocity_x / _y (t1, trailing component axis) equal WellDataset's channels; the
    time-constant initial_vorticity is skipped with a log line naming it; the folders are the splits."""
    dm = FieldDataModule(HDF5Fields(str(flow)), data_dir=tmp_path, batch_size=2)
    with caplog.at_level(logging.INFO, logger="datamodules.sources"):
        dm.setup()
    assert "skipping the time-constant fields ['initial_vorticity']" in caplog.text
    assert dm.variable_names == [f"incompressible_flow/{v}" for v in ("pressure", "velocity_x", "velocity_y")]
    trajs = {s: sorted(set(ds.rows[:, 1].tolist())) for s, ds in dm.splits.items()}
    assert trajs == {"train": [0, 1, 2, 3], "val": [4], "test": [5]}  # the files of train/, valid/, test/
    check_against_the_well(dm, flow, "incompressible_flow")
    assert 101325 - 100 < dm.metadata.mean[0] < 101325 + 100  # physical units, standardized per variable
    # the same dataset found from its data/ folder; re-split by trajectory only on request
    assert FieldDataModule(HDF5Fields(str(flow / "data")), data_dir=tmp_path).setup() is None
    resplit = FieldDataModule(HDF5Fields(str(flow), splits="trajectories"), data_dir=tmp_path, batch_size=2, seed=3)
    resplit.setup()
    trajs = {s: sorted(set(ds.rows[:, 1].tolist())) for s, ds in resplit.splits.items()}
    assert sorted(sum(trajs.values(), [])) == list(range(6)) and trajs["val"] != [4]


def test_the_wells_own_dummy_files(tmp_path, caplog):
    """the_well's dummy file (2 trajectories, a vector field and a time-constant t0 field) in train/ valid/ test/."""
    dummy = pytest.importorskip("the_well.utils.dummy_data")
    root = tmp_path / "dummy"
    for folder in SPLIT_DIRS.values():
        (root / "data" / folder).mkdir(parents=True)
        dummy.write_dummy_data(str(root / "data" / folder / "dummy.hdf5"))
    dm = FieldDataModule(HDF5Fields(str(root)), data_dir=tmp_path, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="datamodules.sources"):
        dm.setup()
    assert "['constant_field']" in caplog.text
    assert dm.variable_names == ["dummy_dataset/field_x", "dummy_dataset/field_y"]
    check_against_the_well(dm, root, "dummy_dataset")


def write_fields(path, fields: dict[str, dict], n_traj=3, n_t=3, hw=(8, 6), constant=None) -> None:
    """A file with The Well's metadata and the given `{group: {name: (array, sample_varying, dim_varying)}}`."""
    with h5py.File(path, "w") as f:
        f.attrs.update(dataset_name="handmade", grid_type="cartesian", n_spatial_dims=2, n_trajectories=n_traj)
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        for key, n in (("time", n_t), ("x", hw[0]), ("y", hw[1])):
            dims.create_dataset(key, data=np.arange(n, dtype=np.float32)).attrs["sample_varying"] = False
        f.create_group("boundary_conditions")
        f.create_group("scalars").attrs["field_names"] = []
        for group in GROUPS:
            members = fields.get(group, {})
            g = f.create_group(group)
            g.attrs["field_names"] = list(members)
            for name, (values, sample_varying, dim_varying) in members.items():
                ds = g.create_dataset(name, data=values)
                ds.attrs.update(dim_varying=dim_varying, sample_varying=sample_varying, time_varying=True)


def test_tensor_fields_and_broadcast_axes_are_read_as_welldataset_reads_them(tmp_path):
    """A t2 field becomes f_xx, f_xy, f_yx, f_yy; a field constant along y (stored with size 1) is broadcast; a
    field without a trajectory axis is the same for every trajectory: all equal to WellDataset's channels."""
    rng = np.random.default_rng(0)
    fields = {
        "t0_fields": {
            "density": (rng.normal(size=(3, 3, 8, 6)).astype(np.float32), True, [True, True]),
            "profile": (rng.normal(size=(3, 3, 8, 1)).astype(np.float32), True, [True, False]),
            "forcing": (rng.normal(size=(3, 8, 6)).astype(np.float32), False, [True, True]),
        },
        "t2_fields": {"stress": (rng.normal(size=(3, 3, 8, 6, 2, 2)).astype(np.float32), True, [True, True])},
    }
    for folder in SPLIT_DIRS.values():
        (tmp_path / "data" / folder).mkdir(parents=True)
        write_fields(tmp_path / "data" / folder / "part.hdf5", fields)
    dm = FieldDataModule(HDF5Fields(str(tmp_path)), data_dir=tmp_path, batch_size=2)
    dm.setup()
    expected = [*("density", "profile", "forcing"), *(f"stress_{c}" for c in ("xx", "xy", "yx", "yy"))]
    assert dm.variable_names == [f"handmade/{v}" for v in expected]
    check_against_the_well(dm, tmp_path, "handmade")
    stress = fields["t2_fields"]["stress"][0]
    train = dm.splits["train"]
    rows = train.rows.tolist()
    i = rows.index([0, 1, 2, dm.variable_names.index("handmade/stress_yx")])
    assert torch.equal(train[i]["field_variables_out"][0], torch.from_numpy(stress[1, 2, :, :, 1, 0]))


def test_variables_a_field_stands_for_its_components(flow, tmp_path):
    dm = FieldDataModule(HDF5Fields(str(flow), variables=["velocity"]), data_dir=tmp_path, batch_size=2)
    dm.setup()
    assert dm.variable_names == ["incompressible_flow/velocity_x", "incompressible_flow/velocity_y"]
    dm = FieldDataModule(HDF5Fields(str(flow), variables=["velocity_y", "pressure"]), data_dir=tmp_path)
    dm.setup()
    assert dm.variable_names == ["incompressible_flow/velocity_y", "incompressible_flow/pressure"]
    with pytest.raises(ValueError, match=r"'initial_vorticity' is time-constant .* \['pressure', 'velocity_x'"):
        FieldDataModule(HDF5Fields(str(flow), variables=["initial_vorticity"]), data_dir=tmp_path).setup()
    with pytest.raises(ValueError, match=r"incompressible_flow_train.hdf5: no field 'density' \(has \['pressure'"):
        FieldDataModule(HDF5Fields(str(flow), variables=["density"]), data_dir=tmp_path).setup()


def test_split_folders_and_errors(flow, tmp_path):
    """Some but not all split folders, splits=folders without them, a 3-D dataset, a field of the wrong shape, too
    few trajectories: each error names the file or folder and what would work."""
    partial = tmp_path / "partial"
    for folder in ("train", "test"):
        (partial / folder).mkdir(parents=True)
        write_fields(
            partial / folder / "a.hdf5", {"t0_fields": {"u": (np.ones((3, 3, 8, 6), np.float32), True, [1, 1])}}
        )
    with pytest.raises(ValueError, match=r"partial has the split folders \['train', 'test'\] but no \['valid'\].*"):
        FieldDataModule(HDF5Fields(str(partial)), data_dir=tmp_path).prepare_data()
    plain = partial / "train"
    with pytest.raises(ValueError, match=r"splits=folders needs a Well dataset's train/ valid/ test/ folders under"):
        FieldDataModule(HDF5Fields(str(plain), splits="folders"), data_dir=tmp_path).prepare_data()
    with pytest.raises(ValueError, match="data.source.splits must be one of"):
        HDF5Fields(str(plain), splits="random")

    cube = tmp_path / "cube.hdf5"
    with h5py.File(cube, "w") as f:
        f.attrs["n_spatial_dims"] = 3
        f.create_group("dimensions").attrs["spatial_dims"] = ["x", "y", "z"]
    with pytest.raises(ValueError, match=r"cube.hdf5: 3-D fields .*take 2-D fields"):
        FieldDataModule(HDF5Fields(str(cube)), data_dir=tmp_path).setup()
    bad = tmp_path / "bad.hdf5"
    write_fields(bad, {"t1_fields": {"v": (np.ones((3, 3, 8, 6), np.float32), True, [1, 1])}})  # no component axis
    with pytest.raises(ValueError, match=r"bad.hdf5: t1_fields/v should be \[n_traj, n_t, H, W, 2\]"):
        FieldDataModule(HDF5Fields(str(bad)), data_dir=tmp_path).setup()

    two = tmp_path / "two.hdf5"
    write_fields(two, {"t0_fields": {"u": (np.ones((2, 3, 8, 6), np.float32), True, [1, 1])}}, n_traj=2)
    with pytest.raises(ValueError, match=r"two.hdf5: 2 trajectories .* at least 3; or give a Well dataset's folder"):
        FieldDataModule(HDF5Fields(str(two)), data_dir=tmp_path).setup()
    np.save(tmp_path / "two.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"at least 3; for independent snapshots set data.source.layout=NHW"):
        FieldDataModule(NpyFields(str(tmp_path / "two.npy"), layout="NTHW"), data_dir=tmp_path).setup()


def test_training_on_a_well_dataset_in_pascal(flow, make_cfg, tmp_path):
    """The issue's end-to-end check: pressure ≈ 1e5 Pa and both velocity components train, and SSIM lies in [0, 1]."""
    from train import train

    cfg = make_cfg(
        [
            "experiment=phaedra",
            "debug=fast",
            "logger=none",
            "data=fields_hdf5",
            f"data.source.path={flow}",
            "model.tokenizer.resolution=16",
        ],
        output_dir=tmp_path / "run",
    )
    train(cfg)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "completed"
    metrics = record["metrics"]
    for stage in ("val", "test"):  # every variable's samples fit in the 2 evaluation batches of debug=fast
        for variable in (
            "",
            "/incompressible_flow/pressure",
            "/incompressible_flow/velocity_x",
            "/incompressible_flow/velocity_y",
        ):
            assert 0 <= metrics[f"{stage}/ssim{variable}"] <= 1, (stage, variable, metrics)
