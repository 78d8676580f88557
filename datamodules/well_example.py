"""A small dataset in The Well's exact layout, to try `data=fields_hdf5` without downloading one:

    python -m datamodules.well_example data/well_example
    python train.py experiment=phaedra data=fields_hdf5 data.source.path=data/well_example

Incompressible 2-D flow in physical units from the embedded Navier–Stokes solver (datamodules/pde.py): pressure
[Pa] around 101325 (t0 field), velocity [m/s] (t1 field: velocity_x, velocity_y), the initial vorticity as a
time-constant t0 field, and the scalars, dimensions and periodic boundary conditions a Well file carries. Written
as `<out>/data/{train,valid,test}/incompressible_flow_<split>.hdf5`, as The Well ships a dataset.

Velocity from the stream function (∇²ψ = −ω, u = ∂ψ/∂y, v = −∂ψ/∂x); pressure from the incompressible Poisson
equation ∇²p = −ρ(u_x² + 2 u_y v_x + v_y²), all spectrally on the periodic grid.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from datamodules import pde
from tokenizers.load import atomic_write

DATASET_NAME = "incompressible_flow"
RHO, U0, P0 = 1.2, 5.0, 101325.0  # air density [kg/m³], velocity scale [m/s], ambient pressure [Pa]


def flow_fields(vorticity: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """vorticity [..., n, n] (axis −2 = y, −1 = x, as pde.py) -> velocity [..., x, y, 2] in m/s and pressure
    [..., x, y] in Pa, axes in The Well's order (x first)."""
    n = vorticity.shape[-1]
    kx, ky = pde.wavenumbers(n, 2 * math.pi)
    k2 = kx**2 + ky**2
    inv_k2 = torch.where(k2 > 0, 1.0 / k2, 0.0)
    psi_hat = torch.fft.rfft2(vorticity.double()) * inv_k2
    u = torch.fft.irfft2(1j * ky * psi_hat, s=(n, n))
    v = torch.fft.irfft2(-1j * kx * psi_hat, s=(n, n))

    def d(f: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(1j * k * torch.fft.rfft2(f), s=(n, n))

    source = d(u, kx) ** 2 + 2 * d(u, ky) * d(v, kx) + d(v, ky) ** 2
    p = torch.fft.irfft2(torch.fft.rfft2(source) * inv_k2, s=(n, n))  # ∇²p' = −source (ρ U0² units)
    velocity = torch.stack([u, v], -1).transpose(-3, -2) * U0
    pressure = (P0 + RHO * U0**2 * p).transpose(-2, -1)
    return velocity.float().numpy(), pressure.float().numpy()


def write_well_file(path: Path, vorticity: torch.Tensor, t: np.ndarray, viscosity: float) -> None:
    """One file of `vorticity` [n_traj, n_t, n, n] trajectories, written to a temporary name and renamed."""
    import h5py

    velocity, pressure = flow_fields(vorticity)
    n_traj, n = vorticity.shape[0], vorticity.shape[-1]
    coords = np.linspace(0, 2 * math.pi, n, endpoint=False, dtype=np.float32)
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(
                dataset_name=DATASET_NAME,
                grid_type="cartesian",
                n_spatial_dims=2,
                n_trajectories=n_traj,
                simulation_parameters=["viscosity"],
                viscosity=viscosity,
            )
            dims = f.create_group("dimensions")
            dims.attrs["spatial_dims"] = ["x", "y"]
            for key, values in (("time", t.astype(np.float32)), ("x", coords), ("y", coords)):
                dims.create_dataset(key, data=values).attrs["sample_varying"] = False
            bcs = f.create_group("boundary_conditions")
            for axis in ("x", "y"):
                mask = np.zeros(n, bool)
                mask[[0, -1]] = True
                bc = bcs.create_group(f"{axis}_periodic")
                bc.attrs.update(associated_dims=[axis], associated_fields=[], bc_type="periodic")
                bc.attrs.update(sample_varying=False, time_varying=False)
                bc.create_dataset("mask", data=mask)
            scalars = f.create_group("scalars")
            scalars.attrs["field_names"] = ["viscosity"]
            scalars.create_dataset("viscosity", data=np.array(viscosity)).attrs.update(
                sample_varying=False, time_varying=False
            )
            fields = {
                "t0_fields": {
                    "pressure": (pressure, True),
                    "initial_vorticity": (vorticity[:, 0].transpose(-2, -1).numpy(), False),
                },
                "t1_fields": {"velocity": (velocity, True)},
                "t2_fields": {},
            }
            for group, members in fields.items():
                g = f.create_group(group)
                g.attrs["field_names"] = list(members)
                for name, (values, time_varying) in members.items():
                    chunks = (1, 1, n, n, *values.shape[4:]) if time_varying else None  # one snapshot per chunk
                    ds = g.create_dataset(name, data=values, chunks=chunks)
                    ds.attrs.update(dim_varying=[True, True], sample_varying=True, time_varying=time_varying)


def write_well_dataset(
    out: str | Path, resolution: int = 64, n_traj: int = 20, n_frames: int = 24, seed: int = 0
) -> dict[str, Path]:
    """<out>/data/{train,valid,test}/incompressible_flow_<split>.hdf5, trajectories split 80/10/10 (at least one
    each); returns the files by split."""
    if n_traj < 3:
        raise ValueError(f"--n-traj must be at least 3 (one per split), got {n_traj}")
    viscosity = 5e-3
    vorticity = pde.navier_stokes(
        n_traj, resolution, n_frames, torch.Generator().manual_seed(seed), viscosity=viscosity
    )[:, :, 0]
    n_val = n_test = max(1, round(0.1 * n_traj))
    parts = {"train": slice(0, n_traj - n_val - n_test), "valid": slice(n_traj - n_val - n_test, n_traj - n_test)}
    parts["test"] = slice(n_traj - n_test, n_traj)
    t = np.linspace(0, 8.0, n_frames, endpoint=False)
    files = {}
    for split, rows in parts.items():
        path = Path(out) / "data" / split / f"{DATASET_NAME}_{split}.hdf5"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_well_file(path, vorticity[rows], t, viscosity)
        files[split] = path
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write <out>/data/{train,valid,test}/*.hdf5 into")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--n-traj", type=int, default=20)
    parser.add_argument("--n-frames", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = write_well_dataset(args.out, args.resolution, args.n_traj, args.n_frames, args.seed)
    for split, path in files.items():
        print(f"{split:5s} {path}")


if __name__ == "__main__":
    main()
