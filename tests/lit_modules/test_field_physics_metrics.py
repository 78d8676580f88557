"""The Phaedra paper's physics metrics (lit_modules/metrics.py) against loops written here from their definitions,
closed forms, and FieldErrors' per-group means of them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_modules.metrics import (
    FieldErrors,
    local_variance_error,
    spectral_coherence_min,
    spectral_energy_fidelity,
)

EPS = torch.finfo(torch.float64).eps
# r = x: every quantity is formed identically for x and r, so only a final ratio rounds: a few eps of 1 (or of 100)
SAME = 8 * EPS
# the hand loops sum the same float64 terms in another order: a relative error of (terms summed) · eps at most,
# here ≤ 81 terms per window or spectrum on 9×9 fields, amplified ≤ 10× by the cancellations of a variance
HAND = 81 * 10 * EPS


def field_pair(n: int = 2, size: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, size, size, generator=gen, dtype=torch.float64) + 0.3
    return x, x + 0.4 * torch.randn(n, size, size, generator=gen, dtype=torch.float64)


def hand_local_variance_error(x: np.ndarray, r: np.ndarray) -> float:
    dv, vx = [], []
    for i in range(x.shape[0] - 6):
        for j in range(x.shape[1] - 6):
            wx, wr = x[i : i + 7, j : j + 7], r[i : i + 7, j : j + 7]
            dv.append(abs(np.var(wx) - np.var(wr)))
            vx.append(np.var(wx))
    return 100 * max(dv) / max(vx)


def hand_coherence_min(x: np.ndarray, r: np.ndarray, threshold: float = 1e-4) -> float:
    X, R = np.fft.fft2(x), np.fft.fft2(r)
    H, W = x.shape
    s = {"xx": np.zeros((H, W)), "rr": np.zeros((H, W)), "xr": np.zeros((H, W), complex)}
    for ky in range(H):
        for kx in range(W):
            for qy in range(ky - 3, ky + 4):  # the 7×7 box, wavenumber indices outside the grid count as 0
                for qx in range(kx - 3, kx + 4):
                    if 0 <= qy < H and 0 <= qx < W:
                        s["xx"][ky, kx] += abs(X[qy, qx]) ** 2 / 49
                        s["rr"][ky, kx] += abs(R[qy, qx]) ** 2 / 49
                        s["xr"][ky, kx] += X[qy, qx] * np.conj(R[qy, qx]) / 49
    gamma = np.abs(s["xr"]) ** 2 / (s["xx"] * s["rr"])
    return float(gamma[s["xx"] > threshold * s["xx"].max()].min())


def hand_radial_spectrum(x: np.ndarray) -> dict[int, float]:
    F = np.fft.fft2(x) / x.size  # norm="forward"
    H, W = x.shape
    P: dict[int, float] = {}
    for iy, ky in enumerate(np.fft.fftfreq(H) * H):
        for ix, kx in enumerate(np.fft.fftfreq(W) * W):
            k = int(round(math.sqrt(ky**2 + kx**2)))
            P[k] = P.get(k, 0.0) + abs(F[iy, ix]) ** 2
    return P


def hand_energy_fidelity(x: np.ndarray, r: np.ndarray) -> float:
    px, pr = hand_radial_spectrum(x), hand_radial_spectrum(r)
    return 100 * sum(min(px[k], pr.get(k, 0.0)) for k in px) / sum(px.values())


@pytest.mark.parametrize("size", [9, 8])
def test_each_function_matches_a_hand_computation(size):
    x, r = field_pair(2, size)
    got = {
        "lv": local_variance_error(x, r),
        "coh": spectral_coherence_min(x, r),
        "fid": spectral_energy_fidelity(x, r),
    }
    for b in range(2):
        xb, rb = x[b].numpy(), r[b].numpy()
        assert float(got["lv"][b]) == pytest.approx(hand_local_variance_error(xb, rb), rel=HAND)
        assert float(got["coh"][b]) == pytest.approx(hand_coherence_min(xb, rb), rel=HAND)
        assert float(got["fid"][b]) == pytest.approx(hand_energy_fidelity(xb, rb), rel=HAND)
    assert 0 < float(got["coh"].min()) < 0.99 and float(got["fid"].max()) < 99.9  # a non-trivial case


def test_perfect_reconstruction_gives_0_1_100():
    x, _ = field_pair(3, 12)
    assert torch.equal(local_variance_error(x, x), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(spectral_coherence_min(x, x), torch.ones(3, dtype=torch.float64), rtol=0, atol=SAME)
    assert torch.allclose(spectral_energy_fidelity(x, x), torch.full((3,), 100.0, dtype=torch.float64), atol=100 * SAME)


def test_closed_forms_of_scaled_reconstructions():
    x, _ = field_pair(3, 12)
    full = lambda v: torch.full((3,), v, dtype=torch.float64)  # noqa: E731
    # var(x/2) = var(x)/4 in every window: max |Δvar| / max var = 3/4; power spectrum ×1/4
    assert torch.allclose(local_variance_error(x, 0.5 * x), full(75.0), atol=100 * HAND)
    assert torch.allclose(spectral_energy_fidelity(x, 0.5 * x), full(25.0), atol=100 * HAND)
    assert torch.allclose(spectral_coherence_min(x, 0.5 * x), full(1.0), atol=HAND)
    # energy fidelity counts missing energy only: min(P, 4P) = P; the local variance error counts the excess
    assert torch.allclose(spectral_energy_fidelity(x, 2 * x), full(100.0), atol=100 * HAND)
    assert torch.allclose(local_variance_error(x, 2 * x), full(300.0), atol=100 * HAND)
    assert torch.allclose(local_variance_error(x, x + 7.0), full(0.0), atol=100 * HAND)  # variances ignore offsets


def cosine(n: int, k: int) -> torch.Tensor:
    """[n, n]: cos(2π k i / n) along the first axis: fft2 nonzero only at (±k, 0), each n²/2."""
    i = torch.arange(n, dtype=torch.float64)
    return torch.cos(2 * math.pi * k * i / n)[:, None].expand(n, n)


def test_coherence_of_an_offset_reconstruction_in_closed_form():
    """x = cos(2π·3i/16) has power at (±3, 0) only; r = x + c adds R(0, 0) = c·16². The boxes that hold (3, 0)
    and (0, 0) (not (−3, 0) = index 13: zero padding is not circular) have S_xr = S_xx = a²/49 and
    S_rr = (a² + (c·16²)²)/49, a = 16²/2, so γ_min = 1 / (1 + 4c²); every other kept box has γ = 1."""
    x = cosine(16, 3)
    for c in (0.5, 2.0):
        assert float(spectral_coherence_min(x, x + c)) == pytest.approx(1 / (1 + 4 * c**2), rel=HAND)
        assert float(spectral_coherence_min(x + c, x + c)) == pytest.approx(1.0, abs=SAME)


def test_energy_fidelity_of_a_missing_mode_in_closed_form():
    """x = cos(k=3) + ½cos(k=5), r = cos(k=3): P_x(3) = 2·(½)² = ½, P_x(5) = 2·(¼)² = ⅛, so 100·½/(⅝) = 80;
    an added constant only adds energy at k = 0, where x has none: 100."""
    x, r = cosine(16, 3) + 0.5 * cosine(16, 5), cosine(16, 3)
    assert float(spectral_energy_fidelity(x, r)) == pytest.approx(80.0, rel=HAND)
    assert float(spectral_energy_fidelity(r, r + 3.0)) == pytest.approx(100.0, rel=HAND)


@pytest.mark.parametrize("metric", [local_variance_error, spectral_coherence_min, spectral_energy_fidelity])
def test_a_samples_value_does_not_depend_on_its_batch_neighbours(metric):
    x, r = field_pair(4, 10)
    batched = metric(x, r)
    other_x, other_r = x.clone(), r.clone()
    other_x[1:] *= 50.0  # neighbours with other scales and offsets
    other_r[1:] += 9.0
    assert float(metric(other_x, other_r)[0]) == pytest.approx(float(batched[0]), rel=HAND)
    for b in range(4):
        assert float(metric(x[b : b + 1], r[b : b + 1])[0]) == pytest.approx(float(batched[b]), rel=HAND)
    assert metric(x[:, None], r[:, None]).shape == (4, 1)  # [B, C, H, W] -> [B, C]


def test_field_errors_reports_the_per_group_means_of_the_functions_on_normalized_fields():
    gen = torch.Generator().manual_seed(1)
    mean = torch.tensor([[1e5], [3.0], [-2.0], [1e5], [0.0]], dtype=torch.float64)
    sigma = torch.tensor([[40.0], [2.0], [0.5], [40.0], [1.0]], dtype=torch.float64)
    z = torch.randn(5, 1, 12, 12, generator=gen, dtype=torch.float64)
    z_hat = z + 0.3 * torch.randn(5, 1, 12, 12, generator=gen, dtype=torch.float64)
    z[4], z_hat[4] = 0.7, 0.1  # a flat target: left out of the means, as for psnr/ssim
    target, pred = (
        z * sigma[..., None, None] + mean[..., None, None],
        z_hat * sigma[..., None, None] + mean[..., None, None],
    )
    group = torch.tensor([0, 1, 0, 1, 1])
    metric = FieldErrors(groups=2)
    metric.update(pred[:3], target[:3], sigma[:3], group[:3], mean=mean[:3])  # two batches
    metric.update(pred[3:], target[3:], sigma[3:], group[3:], mean=mean[3:])
    per_group, overall = metric.compute_groups(), metric.compute()
    zn, zn_hat = (
        (target - mean[..., None, None]) / sigma[..., None, None],
        (pred - mean[..., None, None]) / sigma[..., None, None],
    )
    functions = {
        "local_var_err": local_variance_error,
        "spectral_coherence_min": spectral_coherence_min,
        "spectral_energy_fidelity": spectral_energy_fidelity,
    }
    for name, fn in functions.items():
        each = fn(zn[:4, 0], zn_hat[:4, 0])  # the non-flat samples
        for g, members in ((0, [0, 2]), (1, [1, 3])):
            assert float(per_group[g][name]) == pytest.approx(float(each[members].mean()), rel=HAND), (name, g)
        assert float(overall[name]) == pytest.approx(float(each.mean()), rel=HAND), name
    assert int(metric.n_fields.sum()) == 4 and int(metric.n_flat.sum()) == 1


def test_field_errors_without_mean_judges_the_field_divided_by_sigma_only():
    """mean None = 0: a field at 1e5 then has its spectra dominated by k = 0 (why the adapter passes the mean)."""
    x, r = field_pair(2, 12)
    sigma = torch.ones(2, 1, dtype=torch.float64)
    with_offset, centred = FieldErrors(), FieldErrors()
    with_offset.update(r[:, None] + 1e5, x[:, None] + 1e5, sigma)
    centred.update(r[:, None] + 1e5, x[:, None] + 1e5, sigma, mean=torch.full((2, 1), 1e5, dtype=torch.float64))
    raw, fair = with_offset.compute(), centred.compute()
    expected = spectral_coherence_min(x + 1e5, r + 1e5).mean()
    assert float(raw["spectral_coherence_min"]) == pytest.approx(float(expected), rel=HAND)
    assert float(raw["spectral_coherence_min"]) > float(fair["spectral_coherence_min"])  # the offset hides errors
    assert float(raw["spectral_energy_fidelity"]) > float(fair["spectral_energy_fidelity"])
    # the local variance ignores offsets either way, up to float64's rounding of values near 1e5 (δ = 1e5·eps
    # each): window variances of fields |z| < 5 move by < 20δ, and the error, 100·max|Δv|/max v, max v > 0.5, by
    # < 100·(2·20δ/0.5 + 20δ/0.5·3) < 2e4·δ
    assert float(raw["local_var_err"]) == pytest.approx(float(fair["local_var_err"]), abs=2e4 * 1e5 * EPS)


def test_field_errors_keeps_its_other_keys_and_skips_fields_smaller_than_the_window():
    x, r = field_pair(2, 6)
    metric = FieldErrors()
    metric.update(r[:, None], x[:, None], torch.ones(2, 1, dtype=torch.float64))
    out = metric.compute()
    assert {"nmae", "nrmse", "rel_l1", "rel_l2", "psnr", "ssim"} <= set(out)
    assert math.isfinite(float(out["psnr"])) and int(metric.n_fields.sum()) == 0
    assert all(math.isnan(float(out[k])) for k in ("local_var_err", "spectral_coherence_min"))
    with pytest.raises(ValueError, match="window"):
        local_variance_error(x, r)
