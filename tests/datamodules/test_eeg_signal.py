import numpy as np
import pytest

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


def test_resample_changes_length_and_keeps_a_slow_sine():
    t = np.arange(256 * 4) / 256
    x = np.sin(2 * np.pi * 5 * t)[None]
    for rate in (128, 512):
        y = resample(x, 256, rate)
        assert y.shape == (1, len(t) * rate // 256)
        ty = np.arange(y.shape[1]) / rate
        inner = slice(rate // 4, -rate // 4)  # away from the edge transients
        assert np.abs(y[0, inner] - np.sin(2 * np.pi * 5 * ty[inner])).max() < 0.02
    assert resample(x, 256, 256).shape == x.shape
    with pytest.raises(ValueError, match="positive"):
        resample(x, 256, 0)


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
