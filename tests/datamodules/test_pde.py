import math

import pytest
import torch

from datamodules import pde
from datamodules.sources import EmbeddedFields


def kinetic_energy(w: torch.Tensor) -> torch.Tensor:
    """½∫|u|² = ½ Σ_k |ω̂_k|²/k² (up to a constant factor) for vorticity w: [..., n, n]."""
    n = w.shape[-1]
    kx, ky = pde.wavenumbers(n, 2 * math.pi)
    k2 = kx**2 + ky**2
    w_hat = torch.fft.rfft2(w.double())
    weight = torch.where(k2 > 0, 1 / k2, 0.0) * torch.where(kx > 0, 2.0, 1.0)  # rfft: count ±kx once each
    return 0.5 * (w_hat.abs() ** 2 * weight).sum(dim=(-2, -1))


def test_navier_stokes_conserves_mean_vorticity_and_dissipates_energy():
    w = pde.navier_stokes(3, 32, 6, torch.Generator().manual_seed(0))[:, :, 0]
    assert w.shape == (3, 6, 32, 32) and torch.isfinite(w).all()
    mean = w.double().mean(dim=(-2, -1))
    assert mean.abs().max() < 1e-6
    energy = kinetic_energy(w)
    assert (energy[:, 1:] < energy[:, :-1]).all()  # unforced: decays monotonically
    assert (energy[:, -1] > 0.3 * energy[:, 0]).all()  # ... but slowly at ν = 5e-3
    assert (w[:, -1] - w[:, 0]).abs().mean() > 0.1  # the flow actually evolves


def test_gray_scott_stays_in_the_physical_range_and_forms_patterns():
    uv = pde.gray_scott(3, 32, 4, torch.Generator().manual_seed(0))
    assert uv.shape == (3, 4, 2, 32, 32) and torch.isfinite(uv).all()
    assert uv.min() > -0.1 and uv.max() < 1.1
    assert uv[:, -1, 1].std(dim=(-2, -1)).min() > 1e-3  # v is not uniform: a pattern exists


def test_acoustic_wave_conserves_energy():
    n = 32
    p, p_t = pde.acoustic_wave(2, n, 5, torch.Generator().manual_seed(0), t_end=2.0)
    kx, ky = pde.wavenumbers(n, 2 * math.pi)
    rfft_weight = torch.where(kx > 0, 2.0, 1.0)
    grad_sq = ((kx**2 + ky**2) * torch.fft.rfft2(p[:, :, 0].double()).abs() ** 2 * rfft_weight).sum((-2, -1))
    kin = (torch.fft.rfft2(p_t[:, :, 0].double()).abs() ** 2 * rfft_weight).sum((-2, -1))
    energy = 0.5 * (kin + grad_sq)
    assert torch.allclose(energy, energy[:, :1].expand_as(energy), rtol=1e-4)
    assert (p[:, -1] - p[:, 0]).abs().max() > 0.01


def test_the_embedded_fields_equal_their_stored_checksum():
    """The data a seed stands for must not change with the solvers' code (speed-ups, refactors): sums of a small
    configuration, recorded from these solvers (2026-11-23), to float32 storage rounding."""
    fields = EmbeddedFields(resolution=32, n_traj=4, n_frames=5, seed=3).generate()
    stored = {
        "navier_stokes": (-2.4855617084540427e-06, 93527.66119449763, -4.506463281359089),
        "gray_scott": (16801.277988963906, 12998.30810500537, 8402.553425472186),
        "acoustic_wave": (1.9980106859946427, 46.18848119451522, 38.124348314267074),
    }
    for name, (total, energy, weighted) in stored.items():
        v = fields[name].double()
        ramp = torch.linspace(0, 1, v.numel(), dtype=torch.float64).view(v.shape)
        scale = float(v.abs().sum())  # float32 storage rounds each value by 2^-24 relative
        assert float(v.sum()) == pytest.approx(total, abs=1e-6 * scale), name
        assert float((v**2).sum()) == pytest.approx(energy, rel=1e-6), name
        assert float((v * ramp).sum()) == pytest.approx(weighted, abs=1e-6 * scale), name
