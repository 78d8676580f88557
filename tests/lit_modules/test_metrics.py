import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from lit_modules.metrics import CodebookUsage, FieldErrors, ssim_shifted

# SSIM runs in float32 on data shifted and scaled to ~[0, 1]: a rounding there (2^-23 of the unit range) over
# SSIM's smallest denominator C2 = 0.03² bounds each pixel's error, hence the mean's
SSIM_TOL = 2**-23 / 0.03**2  # 9.3e-5
OFFSETS = (0.0, 10.0, 1e3, 1e5)  # × the sample's range


def test_field_errors_match_a_hand_computation_over_two_batches():
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        target = torch.randn(3, 1, 16, 16, generator=gen) * 2 + 1
        pred = target + 0.1 * torch.randn(3, 1, 16, 16, generator=gen)
        sigma = torch.tensor([[2.0], [0.5], [1.0]])
        batches.append((pred, target, sigma))
    metric = FieldErrors()
    for b in batches:
        metric.update(*b)
    got = {k: float(v) for k, v in metric.compute().items()}

    p = np.concatenate([b[0].numpy() for b in batches]).astype(np.float64)
    t = np.concatenate([b[1].numpy() for b in batches]).astype(np.float64)
    s = np.concatenate([b[2].numpy() for b in batches]).astype(np.float64)[:, :, None, None]
    e = p - t
    assert got["nmae"] == pytest.approx(100 * np.mean(np.abs(e) / s), rel=1e-9)
    assert got["nrmse"] == pytest.approx(100 * np.sqrt(np.mean((e / s) ** 2)), rel=1e-9)
    assert got["rel_l1"] == pytest.approx(100 * np.abs(e).sum() / np.abs(t).sum(), rel=1e-9)
    assert got["rel_l2"] == pytest.approx(100 * np.sqrt((e**2).sum() / (t**2).sum()), rel=1e-9)
    psnr = [10 * math.log10((ti.max() - ti.min()) ** 2 / np.mean(ei**2)) for ti, ei in zip(t, e, strict=True)]
    assert got["psnr"] == pytest.approx(np.mean(psnr), rel=1e-9)
    ssim = [  # both shifted by the target's minimum (ssim_shifted)
        float(
            structural_similarity_index_measure(
                torch.tensor(pi[None] - ti.min()), torch.tensor(ti[None] - ti.min()), data_range=float(np.ptp(ti))
            )
        )
        for pi, ti in zip(p, t, strict=True)
    ]
    assert got["ssim"] == pytest.approx(np.mean(ssim), abs=SSIM_TOL)


def test_per_group_values_equal_the_metric_on_that_group_alone():
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(6, 1, 16, 16, generator=gen)
    pred = target + 0.2 * torch.randn(6, 1, 16, 16, generator=gen)
    sigma = torch.rand(6, 1, generator=gen) + 0.5
    group = torch.tensor([0, 1, 0, 2, 1, 0])
    grouped = FieldErrors(groups=4)
    grouped.update(pred, target, sigma, group)
    per_group = grouped.compute_groups()
    assert per_group[3] is None  # no sample of group 3
    for g in range(3):
        alone = FieldErrors()
        alone.update(pred[group == g], target[group == g], sigma[group == g])
        for k, v in alone.compute().items():
            assert float(per_group[g][k]) == pytest.approx(float(v), rel=1e-9), (g, k)
    overall = FieldErrors()
    overall.update(pred, target, sigma)
    assert float(grouped.compute()["nrmse"]) == pytest.approx(float(overall.compute()["nrmse"]), rel=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        grouped.update(pred, target, sigma, group + 3)


def test_perfect_reconstruction_and_reset():
    metric = FieldErrors()
    x = torch.rand(2, 1, 16, 16)
    metric.update(x, x, torch.ones(2, 1))
    out = metric.compute()
    assert out["nrmse"] == 0 and out["ssim"] == pytest.approx(1.0, abs=1e-6)
    metric.reset()
    assert int(metric.n_samples.sum()) == 0


def test_codebook_statistics_come_from_counts_summed_over_updates():
    metric = CodebookUsage(8)
    metric.update(torch.tensor([0, 0, 1]))
    metric.update(torch.tensor([[1, 2], [2, 2]]))
    counts = np.array([2, 2, 3, 0, 0, 0, 0, 0], dtype=np.float64)
    assert metric.counts[0].tolist() == counts.tolist()
    p = counts[counts > 0] / counts.sum()
    entropy = -(p * np.log2(p)).sum()
    out = metric.compute()
    assert float(out["usage"]) == pytest.approx(100 * 3 / 8)
    assert float(out["entropy_bits"]) == pytest.approx(entropy)
    assert float(out["perplexity"]) == pytest.approx(2**entropy)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        metric.update(torch.tensor([8]))


def test_codebook_statistics_per_group():
    metric = CodebookUsage(4, groups=3)
    ids = torch.tensor([[0, 1], [1, 1], [3, 3]])  # three samples of two tokens each
    metric.update(ids, group=torch.tensor([0, 0, 2]))
    assert metric.counts.tolist() == [[1, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]]
    per_group = metric.compute_groups()
    assert per_group[1] is None
    assert float(per_group[0]["usage"]) == 50.0 and float(per_group[2]["entropy_bits"]) == 0.0
    assert float(metric.compute()["usage"]) == 75.0


def test_constant_targets_are_left_out_of_psnr_and_ssim():
    metric = FieldErrors()
    x = torch.rand(2, 1, 16, 16)
    flat = torch.full((1, 1, 16, 16), 3.0)
    metric.update(torch.cat([x + 0.01, flat + 0.5]), torch.cat([x, flat]), torch.ones(3, 1))
    out = metric.compute()
    assert int(metric.n_flat.sum()) == 1 and int(metric.n_samples.sum()) == 2
    expected = np.mean([10 * math.log10(float(xi.max() - xi.min()) ** 2 / 1e-4) for xi in x])
    assert float(out["psnr"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["nrmse"]) > 10  # the flat sample's error still counts in the field errors


def ssim_1d_reference(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """1-D SSIM by hand: Gaussian window 11 (σ 1.5), ends reflect-padded by 5 so every sample is a centre."""
    x, y = np.pad(x, 5, mode="reflect"), np.pad(y, 5, mode="reflect")
    k = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    k /= k.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    win = lambda s: np.convolve(s, k[::-1], mode="valid")  # noqa: E731
    mx, my = win(x), win(y)
    vx, vy, cxy = win(x * x) - mx**2, win(y * y) - my**2, win(x * y) - mx * my
    return float(np.mean(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))))


def test_signal_errors_match_a_hand_computation():
    from lit_modules.metrics import EEG_BANDS_HZ, SignalErrors

    rng = np.random.default_rng(3)
    t = np.arange(256) / 256
    target = np.stack(
        [
            np.sin(2 * np.pi * 10 * t) + 0.3 * rng.normal(size=256),
            np.sin(2 * np.pi * 3 * t) * 2 + 0.1 * rng.normal(size=256),
        ]
    )
    pred = target + 0.2 * rng.normal(size=target.shape)
    sfreq = np.array([256.0, 128.0])
    metric = SignalErrors(groups=2)
    metric.update(torch.tensor(pred), torch.tensor(target), torch.tensor(sfreq), torch.tensor([0, 1]))
    got = {k: float(v) for k, v in metric.compute().items()}
    e = pred - target
    assert got["mse"] == pytest.approx(np.mean(e**2), rel=1e-9)
    assert got["mae"] == pytest.approx(np.mean(np.abs(e)), rel=1e-9)
    assert got["snr_db"] == pytest.approx(10 * np.log10((target**2).sum() / (e**2).sum()), rel=1e-9)
    ranges = target.max(1) - target.min(1)
    assert got["psnr"] == pytest.approx(np.mean(10 * np.log10(ranges**2 / (e**2).mean(1))), rel=1e-9)
    pearson = [np.corrcoef(p, x)[0, 1] for p, x in zip(pred, target, strict=True)]
    assert got["pearson"] == pytest.approx(np.mean(pearson), rel=1e-9)
    ssim = [ssim_1d_reference(p - x.min(), x - x.min(), r) for p, x, r in zip(pred, target, ranges, strict=True)]
    assert got["ssim"] == pytest.approx(np.mean(ssim), abs=SSIM_TOL)
    # alpha band (8-13 Hz) of the first patch at 256 Hz: bins 8..12; at 128 Hz the bin width is 0.5 Hz
    power = lambda s: np.abs(np.fft.rfft(s)) ** 2  # noqa: E731
    freqs = [np.fft.rfftfreq(256, 1 / f) for f in sfreq]
    lo, hi = EEG_BANDS_HZ["alpha"]
    band = [(f >= lo) & (f < hi) for f in freqs]
    err = sum(abs(power(p)[b].sum() - power(x)[b].sum()) for p, x, b in zip(pred, target, band, strict=True))
    ref = sum(power(x)[b].sum() for x, b in zip(target, band, strict=True))
    assert got["psd_err/alpha"] == pytest.approx(100 * err / ref, rel=1e-9)
    per_rate = metric.compute_groups()
    assert float(per_rate[1]["mse"]) == pytest.approx(np.mean(e[1] ** 2), rel=1e-9)


def test_image_errors_use_a_fixed_data_range_of_one():
    from lit_modules.metrics import ImageErrors

    gen = torch.Generator().manual_seed(4)
    target = torch.rand(3, 3, 16, 16, generator=gen)
    pred = (target + 0.05 * torch.randn(3, 3, 16, 16, generator=gen)).clamp(0, 1)
    metric = ImageErrors()
    metric.update(pred, target)
    got = {k: float(v) for k, v in metric.compute().items()}
    mse = ((pred.double() - target.double()) ** 2).flatten(1).mean(1)
    assert got["mse"] == pytest.approx(float(mse.mean()), rel=1e-9)
    assert got["psnr"] == pytest.approx(float((-10 * torch.log10(mse)).mean()), rel=1e-9)
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
    assert got["ssim"] == pytest.approx(float(ssim.mean()), abs=1e-6)


def smooth_field_pair(seed: int, n: int = 2, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 [n, 1, size, size] targets spanning exactly [0, 1] (smoothed noise) and noisy reconstructions."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(n, 1, size + 8, size + 8, generator=gen, dtype=torch.float64), 9, 1)
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    target = (x - lo) / (hi - lo)
    return target + 0.05 * torch.randn(target.shape, generator=gen, dtype=torch.float64), target


def field_ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    metric = FieldErrors()
    metric.update(pred, target, torch.ones(len(target), 1, dtype=target.dtype))
    return float(metric.compute()["ssim"])


def test_field_ssim_is_the_same_for_any_offset():
    """Offsets 0, 10, 1e3, 1e5 × the range (float64 data, so the offset data are exact): the same SSIM, that of
    the float64 reference on the offset-free data (issue 23: unshifted, a field at 1e3 × its range gave −135)."""
    pred, target = smooth_field_pair(5)
    reference = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none").mean()
    assert 0.5 < float(reference) < 1
    for k in OFFSETS:
        assert field_ssim(pred + k, target + k) == pytest.approx(float(reference), abs=SSIM_TOL), k
        scale = 40.0  # and a range other than 1: SSIM with L = R is scale-invariant
        assert field_ssim(scale * (pred + k), scale * (target + k)) == pytest.approx(float(reference), abs=SSIM_TOL)
        assert field_ssim(target + k, target + k) == pytest.approx(1.0, abs=1e-6), k


def test_field_ssim_of_a_pressure_field_near_101325_pa():
    """A float32 field of 101325 ± 40 Pa (as a datamodule gives it; issue 23 logged val/ssim −15.13): SSIM in
    [0, 1] and equal to that of the same field less 101325 (exact in float32), 1 against itself."""
    pred, target = smooth_field_pair(6)
    pressure_pred, pressure = (101325 + 80 * (pred - 0.5)).float(), (101325 + 80 * (target - 0.5)).float()
    got = field_ssim(pressure_pred, pressure)
    assert 0 <= got <= 1
    assert got == pytest.approx(field_ssim(pressure_pred - 101325, pressure - 101325), abs=SSIM_TOL)
    assert field_ssim(pressure, pressure) == pytest.approx(1.0, abs=1e-6)


def test_signal_ssim_is_the_same_for_any_offset():
    from lit_modules.metrics import SignalErrors

    rng = np.random.default_rng(7)
    target = np.cumsum(rng.normal(size=(3, 200)), -1)  # drifting patches
    pred = target + 0.3 * rng.normal(size=target.shape)
    ranges = np.ptp(target, -1, keepdims=True)
    reference = np.mean(
        [ssim_1d_reference(p - x.min(), x - x.min(), np.ptp(x)) for p, x in zip(pred, target, strict=True)]
    )
    for k in OFFSETS:
        metric = SignalErrors()
        metric.update(torch.tensor(pred + k * ranges), torch.tensor(target + k * ranges), torch.full((3,), 256.0))
        assert float(metric.compute()["ssim"]) == pytest.approx(reference, abs=SSIM_TOL), k


def test_field_ssim_equals_scikit_image():
    """scikit-image (gaussian_weights, σ 1.5, population covariance) drops a 5-pixel border; ours reflect-pads by 5
    and averages every pixel: equal on the interior, and equal overall when scikit-image gets the padded fields.
    Ours on a field offset by 1e3 × its range; scikit-image on the field with its minimum at 0."""
    from skimage.metrics import structural_similarity

    pred, target = smooth_field_pair(8, n=1)
    p, t = pred[0, 0].numpy(), target[0, 0].numpy()  # t spans [0, 1]
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    padded = structural_similarity(np.pad(p, 5, mode="reflect"), np.pad(t, 5, mode="reflect"), **kw)
    assert field_ssim(pred + 1e3, target + 1e3) == pytest.approx(padded, abs=SSIM_TOL)
    _, ssim_map = ssim_shifted(pred + 1e3, target + 1e3, torch.ones(1), return_full_image=True)
    assert float(ssim_map[..., 5:-5, 5:-5].mean()) == pytest.approx(structural_similarity(p, t, **kw), abs=SSIM_TOL)
