"""Per-channel normalization, resampling and patching of EEG recordings (numpy/scipy, vectorized).

Every function takes one recording `x: [C, T]` (channels × samples) and works on all channels at once.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.signal import lfilter, resample_poly


def exponential_moving_standardize(x: np.ndarray, factor: float = 1e-3, eps: float = 1e-4) -> np.ndarray:
    """Causal standardization with exponential moving mean and variance, per channel:

        m_t = f·x_t + (1−f)·m_{t−1},  v_t = f·(x_t − m_t)² + (1−f)·v_{t−1},  out_t = (x_t − m_t) / max(√v_t, eps)

    with m_0 = x_0 and v_0 = 0 (so out_0 = 0). Both recursions run as one IIR filter (scipy lfilter).
    """
    x = np.asarray(x, dtype=np.float64)
    b, a = [factor], [1.0, -(1.0 - factor)]
    # state chosen so the first output equals x_0: m_0 = f·x_0 + (1−f)·m_{-1} with m_{-1} = x_0
    mean, _ = lfilter(b, a, x, axis=-1, zi=(1.0 - factor) * x[:, :1])
    var, _ = lfilter(b, a, (x - mean) ** 2, axis=-1, zi=np.zeros((x.shape[0], 1)))
    return ((x - mean) / np.maximum(np.sqrt(var), eps)).astype(np.float32)


def robust_zscore(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(x − median) / (1.4826·MAD) per channel over the whole recording (MAD·1.4826 = σ for Gaussian data)."""
    x = np.asarray(x, dtype=np.float64)
    median = np.median(x, axis=-1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(x - median), axis=-1, keepdims=True)
    return ((x - median) / np.maximum(mad, eps)).astype(np.float32)


def resample(x: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """Polyphase resampling (anti-aliased) of [C, T] from `from_hz` to `to_hz` along time; output sample n lies at
    t = n / to_hz (the first at t = 0, as the input's)."""
    if from_hz <= 0 or to_hz <= 0:
        raise ValueError(f"sampling rates must be positive, got {from_hz} -> {to_hz}")
    ratio = Fraction(to_hz / from_hz).limit_denominator(1000)
    if ratio == 1:
        return np.asarray(x, dtype=np.float32)
    # The filter reaches 10 or more input samples past each end. scipy's default zero padding pulls the ends towards 0;
    # an odd extension (antireflect: x[-k] = 2·x[0] − x[k]) keeps value and slope there: the least edge error of
    # scipy's padtypes (line, smooth, mean, reflect ...) on sines and sines on a trend. It crashes (SIGFPE) at T = 1.
    padtype = "antireflect" if np.shape(x)[-1] > 1 else "edge"
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=-1, padtype=padtype).astype(np.float32)


def patch_offsets(n_samples: int, patch_len: int, stride: int) -> np.ndarray:
    """Start offsets of every whole patch of `patch_len` samples, `stride` apart, within n_samples."""
    if patch_len <= 0 or stride <= 0:
        raise ValueError(f"patch_len and stride must be positive, got {patch_len}, {stride}")
    if n_samples < patch_len:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_samples - patch_len + 1, stride, dtype=np.int64)


def cut_patches(x: np.ndarray, offsets: np.ndarray, patch_len: int) -> np.ndarray:
    """[C, T] and offsets [N] -> patches [C·N, patch_len], channel-major (channel c's patches are contiguous)."""
    index = offsets[:, None] + np.arange(patch_len)[None, :]  # [N, P]
    return np.asarray(x)[:, index].reshape(-1, patch_len)


def zero_fraction(patches: np.ndarray, atol: float = 1e-8) -> np.ndarray:
    """[N, P] -> float [N]: the fraction of each patch's samples that are (padding) zeros."""
    return (np.abs(patches) <= atol).mean(axis=-1)


def mostly_zero(patches: np.ndarray, max_zero_fraction: float = 0.5, atol: float = 1e-8) -> np.ndarray:
    """[N, P] -> bool [N]: True where more than `max_zero_fraction` of the samples are (padding) zeros."""
    return zero_fraction(patches, atol) > max_zero_fraction
