"""Pseudo-spectral 2-D solvers on the periodic square [0, L)², batched over trajectories (torch, fp64).

Each solver returns snapshots `[n_traj, n_frames, n_vars, n, n]` (float32) and is deterministic for
a given torch.Generator.
- navier_stokes: incompressible vorticity ω_t + u·∇ω = ν∇²ω, u = ∇⊥ψ, ∇²ψ = −ω; unforced, so the
  mean vorticity is conserved and kinetic energy decays. ν = 5e-3 keeps the run resolved at 64²: the
  enstrophy spectrum falls off over the last resolved shells instead of piling up at the cutoff
  (ν = 1e-3 does pile up there: under-resolved data). Exact viscous decay split around (Strang) an RK4
  step of advection, 2/3-rule dealiasing.
- gray_scott: u_t = D_u∇²u − uv² + F(1−u), v_t = D_v∇²v + uv² − (F+k)v with (F, k) drawn per
  trajectory from the classic pattern regimes; diffusion implicit, reaction explicit.
- acoustic_wave: p_tt = c²∇²p from Gaussian pulses at rest, solved exactly per Fourier mode, so
  the wave energy ½∫(p_t² + c²|∇p|²) is conserved.
"""

from __future__ import annotations

import math

import torch

# (F, k) pattern regimes (Pearson 1993; The Well's gray_scott set): spots, maze, worms, spirals, gliders.
# Each keeps a pattern alive from our initial squares at 32² and 64² (bubbles, F=0.098, dies out).
GRAY_SCOTT_REGIMES = [(0.030, 0.062), (0.029, 0.057), (0.058, 0.065), (0.018, 0.051), (0.014, 0.054)]


def wavenumbers(n: int, length: float) -> tuple[torch.Tensor, torch.Tensor]:
    """kx, ky: [n, n//2+1] angular wavenumbers matching torch.fft.rfft2 on an n×n grid."""
    k = torch.fft.fftfreq(n, d=length / n, dtype=torch.float64) * 2 * math.pi
    kr = torch.fft.rfftfreq(n, d=length / n, dtype=torch.float64) * 2 * math.pi
    ky, kx = torch.meshgrid(k, kr, indexing="ij")
    return kx, ky


def random_field(n_traj: int, n: int, peak_k: float, gen: torch.Generator) -> torch.Tensor:
    """Zero-mean Gaussian random field [n_traj, n, n] with energy spectrum ∝ k⁴ exp(−(k/peak_k)²)·2, unit std."""
    kx, ky = wavenumbers(n, 2 * math.pi)
    k = torch.sqrt(kx**2 + ky**2)
    amp = k**2 * torch.exp(-((k / peak_k) ** 2))
    noise = torch.randn(n_traj, n, n, generator=gen, dtype=torch.float64)
    f = torch.fft.irfft2(torch.fft.rfft2(noise) * amp, s=(n, n))
    f = f - f.mean(dim=(-2, -1), keepdim=True)
    return f / f.std(dim=(-2, -1), keepdim=True)


def navier_stokes(
    n_traj: int,
    n: int,
    n_frames: int,
    gen: torch.Generator,
    viscosity: float = 5e-3,
    t_end: float = 8.0,
    dt: float = 0.02,
    peak_k: float = 4.0,
) -> torch.Tensor:
    kx, ky = wavenumbers(n, 2 * math.pi)
    k2 = kx**2 + ky**2
    inv_k2 = torch.where(k2 > 0, 1.0 / k2, 0.0)
    kmax = n // 2
    dealias = ((kx.abs() < 2 / 3 * kmax) & (ky.abs() < 2 / 3 * kmax)).to(torch.float64)
    decay_half = torch.exp(-viscosity * k2 * dt / 2)

    def advection(w_hat: torch.Tensor) -> torch.Tensor:
        psi_hat = w_hat * inv_k2
        u = torch.fft.irfft2(1j * ky * psi_hat, s=(n, n))
        v = torch.fft.irfft2(-1j * kx * psi_hat, s=(n, n))
        wx = torch.fft.irfft2(1j * kx * w_hat, s=(n, n))
        wy = torch.fft.irfft2(1j * ky * w_hat, s=(n, n))
        return -torch.fft.rfft2(u * wx + v * wy) * dealias

    w_hat = torch.fft.rfft2(random_field(n_traj, n, peak_k, gen) * 3.0)
    steps = round(t_end / dt)
    save_every = max(1, steps // n_frames)
    frames = []
    for step in range(save_every * n_frames):
        if step % save_every == 0:
            frames.append(torch.fft.irfft2(w_hat, s=(n, n)))
        w_hat = w_hat * decay_half
        k1 = advection(w_hat)
        k2_ = advection(w_hat + 0.5 * dt * k1)
        k3 = advection(w_hat + 0.5 * dt * k2_)
        k4 = advection(w_hat + dt * k3)
        w_hat = (w_hat + dt / 6 * (k1 + 2 * k2_ + 2 * k3 + k4)) * decay_half
    return torch.stack(frames, dim=1).unsqueeze(2).float()


def gray_scott(
    n_traj: int,
    n: int,
    n_frames: int,
    gen: torch.Generator,
    length: float = 1.0,
    d_u: float = 2e-5,
    d_v: float = 1e-5,
    dt: float = 1.0,
    t_start: float = 1000.0,
    t_end: float = 4000.0,
) -> torch.Tensor:
    kx, ky = wavenumbers(n, length)
    k2 = kx**2 + ky**2
    implicit_u, implicit_v = 1 / (1 + dt * d_u * k2), 1 / (1 + dt * d_v * k2)
    regime = torch.randint(len(GRAY_SCOTT_REGIMES), (n_traj,), generator=gen)
    F_, k_ = (
        torch.tensor([GRAY_SCOTT_REGIMES[i][j] for i in regime], dtype=torch.float64).view(-1, 1, 1) for j in range(2)
    )
    u = torch.ones(n_traj, n, n, dtype=torch.float64)
    v = torch.zeros(n_traj, n, n, dtype=torch.float64)
    side = max(2, n // 10)
    for b in range(n_traj):  # a few seeded square perturbations per trajectory
        for _ in range(int(torch.randint(3, 8, (1,), generator=gen))):
            i, j = torch.randint(0, n - side, (2,), generator=gen).tolist()
            u[b, i : i + side, j : j + side] = 0.5
            v[b, i : i + side, j : j + side] = 0.25
    u += 0.02 * torch.randn(u.shape, generator=gen, dtype=torch.float64)
    v += 0.02 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
    start, steps = round(t_start / dt), round(t_end / dt)
    save_every = max(1, (steps - start) // n_frames)
    frames = []
    for step in range(start + save_every * n_frames):
        if step >= start and (step - start) % save_every == 0:
            frames.append(torch.stack([u, v], dim=1))
        uvv = u * v * v
        u_new = torch.fft.irfft2(torch.fft.rfft2(u + dt * (-uvv + F_ * (1 - u))) * implicit_u, s=(n, n))
        v = torch.fft.irfft2(torch.fft.rfft2(v + dt * (uvv - (F_ + k_) * v)) * implicit_v, s=(n, n))
        u = u_new
    return torch.stack(frames, dim=1).float()


def acoustic_wave(
    n_traj: int,
    n: int,
    n_frames: int,
    gen: torch.Generator,
    speed: float = 1.0,
    t_end: float = 3.0,
    max_pulses: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (p, p_t), each [n_traj, n_frames, 1, n, n]; only p is used as data."""
    x = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    yy, xx = torch.meshgrid(x, x, indexing="ij")
    p0 = torch.zeros(n_traj, n, n, dtype=torch.float64)
    for b in range(n_traj):
        for _ in range(int(torch.randint(1, max_pulses + 1, (1,), generator=gen))):
            u = torch.rand(3, generator=gen, dtype=torch.float64)  # centre x, centre y, amplitude in [-1, 1)
            cx, cy, amp = (u * torch.tensor([2 * math.pi, 2 * math.pi, 2]) - torch.tensor([0, 0, 1])).tolist()
            width = 0.15 + 0.35 * float(torch.rand(1, generator=gen))
            dx = torch.remainder(xx - cx + math.pi, 2 * math.pi) - math.pi
            dy = torch.remainder(yy - cy + math.pi, 2 * math.pi) - math.pi
            p0[b] += amp * torch.exp(-(dx**2 + dy**2) / (2 * width**2))
    kx, ky = wavenumbers(n, 2 * math.pi)
    omega = speed * torch.sqrt(kx**2 + ky**2)
    p0_hat = torch.fft.rfft2(p0)
    times = torch.linspace(0, t_end, n_frames, dtype=torch.float64).view(-1, 1, 1)
    p = torch.stack([torch.fft.irfft2(p0_hat * torch.cos(omega * t), s=(n, n)) for t in times], 1)
    p_t = torch.stack([torch.fft.irfft2(-p0_hat * omega * torch.sin(omega * t), s=(n, n)) for t in times], 1)
    return p.unsqueeze(2).float(), p_t.unsqueeze(2).float()
