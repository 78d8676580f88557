from fractions import Fraction

import numpy as np
import pytest
from scipy.signal import resample_poly

from datamodules.eeg_signal import (
    cut_patches,
    exponential_moving_standardize,
    mostly_zero,
    patch_offsets,
    resample,
    robust_zscore,
)


def test_exponential_moving_standardize_matches_the_recursion():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(2, 50))
    f, eps = 0.1, 1e-4
    out = exponential_moving_standardize(x, factor=f, eps=eps)
    for c in range(2):
        m, v = x[c, 0], 0.0
        for t in range(50):
            m = f * x[c, t] + (1 - f) * m
            v = f * (x[c, t] - m) ** 2 + (1 - f) * v
            assert out[c, t] == pytest.approx((x[c, t] - m) / max(np.sqrt(v), eps), rel=1e-4, abs=1e-5)
    assert out[:, 0].tolist() == [0.0, 0.0]


def test_exponential_moving_standardize_removes_offset_and_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 20_000)) * np.array([[1.0], [50.0], [1e-3]]) + np.array([[0.0], [1e3], [-5.0]])
    out = exponential_moving_standardize(x)
    tail = out[:, 5000:]
    assert np.abs(tail.mean(axis=1)).max() < 0.1
    assert np.allclose(tail.std(axis=1), 1.0, atol=0.1)


def test_robust_zscore_ignores_outliers():
    rng = np.random.default_rng(2)
    x = rng.normal(10.0, 3.0, size=(1, 10_000))
    x[0, :50] = 1e6  # artefacts
    z = robust_zscore(x)
    assert np.median(z) == pytest.approx(0.0, abs=0.05)
    assert np.median(np.abs(z[0, 50:])) * 1.4826 == pytest.approx(1.0, abs=0.05)


def test_resample_changes_length_and_keeps_the_rate():
    x = np.sin(2 * np.pi * 5 * np.arange(256 * 4) / 256)[None]
    for rate in (128, 512):
        assert resample(x, 256, rate).shape == (1, x.shape[1] * rate // 256)
    assert resample(x, 256, 256).shape == x.shape
    assert resample(x[:, :1], 256, 512).shape == (1, 2)  # one sample: scipy's odd extension would crash on it
    with pytest.raises(ValueError, match="positive"):
        resample(x, 256, 0)


@pytest.mark.parametrize(
    ("from_hz", "to_hz", "freqs"),
    [(250, 500, (7,)), (500, 250, (7, 25)), (256, 250, (7, 31)), (250, 256, (7, 31))],
)
def test_resample_keeps_a_sine_to_the_ends(from_hz, to_hz, freqs):
    """The whole resampled row, ends included, matches the sine at the new sample times n / to_hz.

    1e-2: the anti-alias filter (firwin, Kaiser β = 5, ≈ 54 dB) ripples by ≈ 2e-3 in its passband, and at the ends
    the odd extension keeps value and slope but flips the curvature, an error growing as (f / from_hz)²: 31 Hz at 250 Hz
    leaves up to 0.17 at 250 → 500 (its last sample lies half an input sample past the recording), hence 7 Hz there.
    scipy's default zero padding misses the same bound (0.44 at 250 → 500, 0.014 at 250 → 256), so this test sees it.
    """
    phases = np.array([0.3, 1.1, 2.3, 4.0])  # the ends' values and slopes differ row to row
    rows = [(f, p) for f in freqs for p in phases]
    t = np.arange(4 * from_hz) / from_hz
    x = np.stack([np.sin(2 * np.pi * f * t + p) for f, p in rows])
    y = resample(x, from_hz, to_hz)
    ty = np.arange(y.shape[1]) / to_hz
    expected = np.stack([np.sin(2 * np.pi * f * ty + p) for f, p in rows])
    assert np.abs(y - expected).max() < 1e-2
    ratio = Fraction(to_hz, from_hz)
    zero_padded = resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)
    assert np.abs(zero_padded - expected).max() > 1e-2


def test_patches_are_whole_channel_major_and_padding_is_detected():
    x = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    offsets = patch_offsets(10, 4, 3)
    assert offsets.tolist() == [0, 3, 6]
    p = cut_patches(x, offsets, 4)
    assert p.shape == (6, 4)
    assert p[0].tolist() == [0, 1, 2, 3] and p[3].tolist() == [10, 11, 12, 13] and p[5].tolist() == [16, 17, 18, 19]
    assert patch_offsets(3, 4, 1).size == 0
    padded = np.array([[0, 0, 0, 1.0], [0, 1, 2, 3.0]])
    assert mostly_zero(padded).tolist() == [True, False]
