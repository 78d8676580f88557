"""The Well's HDF5 layout, read as `the_well`'s WellDataset reads it, one 2-D snapshot at a time.

A Well file (https://polymathic-ai.org/the_well/data_format/) holds, besides `dimensions`, `scalars` and
`boundary_conditions`, three groups of fields, each listing its members in the attribute `field_names`:
    t0_fields/<f>   scalar fields   [n_traj, n_t, H, W]
    t1_fields/<f>   vector fields   [n_traj, n_t, H, W, 2]      -> variables f_x, f_y
    t2_fields/<f>   tensor fields   [n_traj, n_t, H, W, 2, 2]   -> f_xx, f_xy, f_yx, f_yy
The attributes of a field say which leading axes it has: `sample_varying` (the trajectory axis), `time_varying`
(the time axis) and `dim_varying` (one flag per spatial axis; an axis it does not vary along has size 1 and is
broadcast, as WellDataset tiles it). Component names join the spatial dimension names of
`dimensions.attrs["spatial_dims"]`, in itertools.product order, as WellDataset names its channels. Time-constant
fields (an obstacle mask, a geometry) are not snapshots of the dynamics: they are listed in `WellFile.constants`
and skipped.

Files without these attributes (a user's own `t0_fields/<name> [n_traj, n_t, H, W]`) read as sample- and
time-varying fields on axes named x, y.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GROUPS = ("t0_fields", "t1_fields", "t2_fields")  # index = tensor order
SPLIT_FOLDERS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}


def text(value) -> str:
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def texts(values) -> list[str]:
    return [text(v) for v in np.atleast_1d(values)]


@dataclass(frozen=True)
class WellVariable:
    """One variable: a scalar field, or one component of a vector or tensor field."""

    name: str  # "pressure", "velocity_x", "stress_xy"
    group: str  # "t0_fields", "t1_fields", "t2_fields"
    field: str  # the dataset under the group: "velocity"
    component: tuple[int, ...]  # () for t0; (0,) = x; (0, 1) = xy
    sample_varying: bool
    dim_varying: tuple[bool, bool]

    def selection(self, traj: int, t: int) -> tuple:
        """The dataset index of snapshot (traj, t): [traj] [t] [H] [W] [component], the trajectory axis only when
        the field has one."""
        return ((traj,) if self.sample_varying else ()) + (t, slice(None), slice(None)) + self.component

    def read(self, h5, traj: int, t: int, out: np.ndarray) -> None:
        """Snapshot (traj, t) into `out` [H, W]; a spatial axis the field does not vary along (stored with size 1)
        is broadcast."""
        ds = h5[self.group][self.field]
        if all(self.dim_varying):  # one read straight into the batch buffer
            ds.read_direct(out, self.selection(traj, t))
        else:
            out[...] = np.broadcast_to(ds[self.selection(traj, t)], out.shape)


@dataclass
class WellFile:
    """What one file holds: its trajectories, times, snapshot size and the variables asked for."""

    path: Path
    dataset_name: str | None  # the root attribute, when the file has one
    variables: list[WellVariable]
    constants: list[str]  # time-constant fields, skipped
    n_traj: int
    n_t: int
    hw: tuple[int, int]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]


def split_folders(root: Path) -> dict[str, Path] | None:
    """The `train/ valid/ test/` folders of a Well dataset under `root` or `root/data` (The Well:
    datasets/<name>/data/{train,valid,test}), or None when there are none. Some but not all of them is an error:
    re-splitting all files by trajectory would mix the dataset's own test set into training."""
    for base in (root, root / "data"):
        found = {
            split: next((base / n for n in names if (base / n).is_dir()), None)
            for split, names in SPLIT_FOLDERS.items()
        }
        present = [p.name for p in found.values() if p is not None]
        if len(present) == 3:
            return found
        if present:
            missing = [SPLIT_FOLDERS[s][0] for s, p in found.items() if p is None]
            raise ValueError(
                f"{base} has the split folders {present} but no {missing}: a Well dataset has train/ valid/ test/; "
                f"add the missing one, or set data.source.splits=trajectories to re-split every file by trajectory"
            )
    return None


def _field_names(group) -> list[str]:
    """The members of a field group in the order of its `field_names` attribute (else sorted, as h5py lists them)."""
    if "field_names" in group.attrs:
        return texts(group.attrs["field_names"])
    return sorted(group.keys())


def inspect(path: Path, wanted: list[str] | None = None) -> WellFile:
    """Describe and check one file without reading its data (except its last snapshots, to catch truncation).

    wanted: variable names ("velocity_x") or field names ("velocity": all its components), in the order to use;
    None: every time-varying field, t0 then t1 then t2, in the file's order. Errors name the file and the field."""
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e
    with h5:
        spatial = texts(h5["dimensions"].attrs["spatial_dims"]) if "dimensions" in h5 else ["x", "y"]
        n_dims = int(h5.attrs.get("n_spatial_dims", len(spatial)))
        if n_dims != 2 or len(spatial) != 2:
            raise ValueError(
                f"{path}: {n_dims}-D fields (spatial dims {spatial}); SciTok's field tokenizers take 2-D fields"
            )
        if not any(g in h5 for g in GROUPS):
            raise ValueError(
                f"{path}: no group t0_fields, t1_fields or t2_fields (The Well layout: t0_fields/<name> "
                "[n_traj, n_t, H, W], t1_fields/<name> [n_traj, n_t, H, W, 2], ...)"
            )
        variables, constants, datasets = [], [], {}
        for order, group in enumerate(GROUPS):
            if group not in h5:
                continue
            for field in _field_names(h5[group]):
                if field not in h5[group]:
                    raise ValueError(f"{path}: {group} lists {field!r} in field_names but holds no such dataset")
                ds = datasets[field] = h5[group][field]
                where = f"{path}: {group}/{field}"
                if ds.dtype.kind == "c":
                    raise ValueError(
                        f"{where} holds complex values ({ds.dtype}); SciTok's fields are real: store the real and "
                        "imaginary parts as two variables"
                    )
                if ds.dtype.kind not in "fiu":
                    raise ValueError(f"{where} holds {ds.dtype} values, not numbers")
                dims = tuple(bool(d) for d in np.atleast_1d(ds.attrs.get("dim_varying", (True, True))))
                for comp in itertools.product(range(2), repeat=order):
                    name = f"{field}_{''.join(spatial[i] for i in comp)}" if comp else field
                    if not bool(ds.attrs.get("time_varying", True)):
                        constants.append(name)
                    else:
                        sample = bool(ds.attrs.get("sample_varying", True))
                        variables.append(WellVariable(name, group, field, comp, sample, dims))
        if wanted is not None:
            variables = _pick(path, variables, constants, wanted)
        if not variables:
            raise ValueError(f"{path}: no time-varying fields (time-constant: {constants or 'none'})")
        ref = next((v for v in variables if v.sample_varying and all(v.dim_varying)), None)
        if ref is None or datasets[ref.field].ndim < 4:
            raise ValueError(
                f"{path}: no field of shape [n_traj, n_t, H, W] to take the trajectories and snapshot size from "
                f"(fields {[v.name for v in variables]})"
            )
        n_traj, n_t, h, w = datasets[ref.field].shape[:4]
        if "n_trajectories" in h5.attrs and int(h5.attrs["n_trajectories"]) != n_traj:
            raise ValueError(
                f"{path}: the attribute n_trajectories={int(h5.attrs['n_trajectories'])} but "
                f"{ref.group}/{ref.field} holds {n_traj} trajectories"
            )
        for v in variables:
            ds = datasets[v.field]
            expected = (
                ((n_traj,) if v.sample_varying else ())
                + (n_t,)
                + tuple(n if varying else 1 for n, varying in zip((h, w), v.dim_varying, strict=True))
                + (2,) * len(v.component)
            )
            if ds.shape != expected:
                axes = (
                    ["n_traj"] * v.sample_varying
                    + ["n_t"]
                    + [a if d else "1" for a, d in zip("HW", v.dim_varying, strict=True)]
                )
                raise ValueError(
                    f"{path}: {v.group}/{v.field} should be [{', '.join(axes + ['2'] * len(v.component))}] = "
                    f"{list(expected)} (as its attributes and {ref.group}/{ref.field} {[n_traj, n_t, h, w]} say), "
                    f"got shape {list(ds.shape)}"
                )
            if ds.size:
                try:
                    ds[v.selection(n_traj - 1, n_t - 1)]
                except OSError as e:
                    raise ValueError(
                        f"{path}: {v.group}/{v.field} cannot be read to its end ({e}): the file is truncated or corrupt"
                    ) from e
        name = text(h5.attrs["dataset_name"]) if "dataset_name" in h5.attrs else None
        return WellFile(path, name, variables, constants, n_traj, n_t, (h, w))


def _pick(path: Path, variables: list[WellVariable], constants: list[str], wanted: list[str]) -> list[WellVariable]:
    """The variables named in `wanted` (a field name stands for all its components), in that order."""
    picked = []
    for name in wanted:
        match = [v for v in variables if name in (v.name, v.field)]
        if not match:
            if any(c == name or c.startswith(f"{name}_") for c in constants):
                raise ValueError(
                    f"{path}: {name!r} is time-constant (the same for every snapshot); data.source.variables takes "
                    f"time-varying fields: {[v.name for v in variables]}"
                )
            raise ValueError(f"{path}: no field {name!r} (has {[v.name for v in variables]})")
        picked += [v for v in match if v not in picked]
    return picked
