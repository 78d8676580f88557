"""Astro tokenizers: preprocessing against hand computations, the K-means image codebook, quantile bins, spectra."""

import math

import numpy as np
import pytest
import torch

from tests.helpers import EPS32
from tokenizers.astro import (
    GalaxyImageTokenizer,
    ScalarQuantileTokenizer,
    SpectrumTokenizer,
    codebook_report,
    ellipse_weights,
    robust_arcsinh,
    strictly_increasing,
)
from tokenizers.base import check_tokenizer


def test_robust_arcsinh_matches_a_hand_computation_over_valid_pixels():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 8, 8, generator=g) * 5 + 2
    image[0, 1, 0, :3] = 0.0  # masked (zero) pixels
    image[1, 2, 4, 4] = float("nan")  # non-finite: invalid too
    out = robust_arcsinh(image)
    for b in range(2):
        for c in range(3):
            x = image[b, c].flatten().double().numpy()
            valid = np.isfinite(x) & (x != 0)
            v = np.sort(x[valid])
            median = v[(len(v) - 1) // 2]  # the lower median, as torch.median
            dev = np.sort(np.abs(v - median))
            mad = dev[(len(dev) - 1) // 2]
            expected = np.where(valid, np.arcsinh((np.nan_to_num(x) - median) / (3 * mad + 1e-6)), 0.0)
            got = out[b, c].flatten().double().numpy()
            np.testing.assert_allclose(got, expected, rtol=8 * EPS32, atol=8 * EPS32)
    assert out[0, 1, 0, 0] == 0 and out[1, 2, 4, 4] == 0


def test_ellipse_weights_match_a_hand_computation():
    # an ellipse at (x0, y0) = (10, 9), semi-axes 4·2 = 8 and 4·1 = 4, major axis at 90° (along +y, the rows)
    w = ellipse_weights(20, *(torch.tensor([v]) for v in (10.0, 9.0, 2.0, 1.0, math.pi / 2)), scale=4.0, outside=0.3)[
        0, 0
    ]
    assert w.shape == (20, 20)
    assert w[9, 10] == 1  # the centre (row y0, column x0)
    assert w[9 + 7, 10] == 1 and w[9 - 7, 10] == 1  # 7 pixels along the major axis (rows): inside
    assert w[9, 10 + 5] == pytest.approx(0.3) and w[9, 10 - 5] == pytest.approx(0.3)  # 5 across: outside
    assert w[9, 10 + 3] == 1
    rows, cols = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    inside = ((cols - 10) / 4) ** 2 + ((rows - 9) / 8) ** 2 <= 1  # the same ellipse written axis-aligned
    assert torch.equal(w == 1, inside)
    assert torch.equal(w.unique(), torch.tensor([0.3, 1.0]))


def fitted_image_tokenizer(bands: int = 3, size: int = 16, k: int = 64) -> tuple[GalaxyImageTokenizer, torch.Tensor]:
    torch.manual_seed(0)
    tokenizer = GalaxyImageTokenizer(bands=bands, latent_dim=2, channels=(8, 16), codebook_size=k, norm_groups=4).eval()
    x = torch.randn(6, bands, size, size)
    with torch.no_grad():
        z = tokenizer.encode_latents(x)
        tokenizer.fit_codebook(z.permute(0, 2, 3, 1).reshape(-1, 2), iters=10)
    return tokenizer, x


def test_image_tokens_are_the_brute_force_nearest_centroid_and_decode_matches_forward():
    tokenizer, x = fitted_image_tokenizer()
    check_tokenizer(tokenizer)
    with torch.no_grad():
        tokens = tokenizer.encode(x)["image"]
        z = tokenizer.encode_latents(x)
        vectors = z.permute(0, 2, 3, 1).reshape(-1, 2).double()
        d = torch.cdist(vectors, tokenizer.codebook.double())
        top2 = d.topk(2, largest=False).values
        clear = (top2[:, 1] - top2[:, 0]) > 1e-4 * (1 + top2[:, 0])  # ties within float32 rounding may go either way
        assert torch.equal(tokens.flatten()[clear], d.argmin(1)[clear])
        assert tokens.shape == (6, (16 // 4) ** 2) and tokens.dtype == torch.int64
        out = tokenizer(x)
        assert torch.equal(out.tokens["image"], tokens)
        torch.testing.assert_close(tokenizer.decode({"image": tokens}), out.recon)
    assert torch.equal(tokenizer.code_vectors("image"), tokenizer.codebook)


def test_image_tokenizer_refuses_tokens_before_its_codebook_and_names_bad_shapes():
    tokenizer = GalaxyImageTokenizer(bands=3, channels=(8, 16), codebook_size=16, norm_groups=4)
    x = torch.randn(2, 3, 16, 16)
    out = tokenizer(x)  # stage 1: continuous latents, no tokens
    assert out.tokens == {} and out.recon.shape == x.shape
    with pytest.raises(RuntimeError, match="codebook is not fitted"):
        tokenizer.encode(x)
    with pytest.raises(ValueError, match=r"\[B, 3, S, S\].*\(2, 4, 16, 16\)"):
        tokenizer(torch.randn(2, 4, 16, 16))


def test_codebook_report_matches_a_hand_count():
    ids = torch.tensor([0, 0, 1, 3])
    r = codebook_report(ids, 4, torch.tensor([1.0, 2.0, 3.0, 6.0]))
    entropy = -(0.5 * math.log2(0.5) + 2 * 0.25 * math.log2(0.25))
    assert r["used_codes"] == 3 and r["usage"] == 75
    assert r["entropy_bits"] == pytest.approx(entropy) and r["perplexity"] == pytest.approx(2**entropy)
    assert r["perplexity_over_k"] == pytest.approx(2**entropy / 4)
    assert r["top10_mass"] == pytest.approx(1.0) and r["quantization_mse"] == pytest.approx(3.0)


def test_quantile_edges_are_strictly_increasing_even_with_ties():
    assert torch.all(strictly_increasing(torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0])).diff() > 0)
    values = torch.cat([torch.zeros(500), torch.ones(300), torch.rand(200, generator=torch.Generator().manual_seed(0))])
    tokenizer = ScalarQuantileTokenizer(["flux"], bins=64).fit(values[:, None])
    assert torch.all(tokenizer.edges[0].diff() > 0)


def test_scalar_tokens_decode_within_one_bin_and_missing_values_are_miss():
    g = torch.Generator().manual_seed(0)
    train = torch.stack([torch.randn(5000, generator=g) * 2 + 18, torch.rand(5000, generator=g) * 0.5], 1)
    tokenizer = ScalarQuantileTokenizer(["mag_r", "redshift"], bins=1024).fit(train)
    check_tokenizer(tokenizer)
    test = torch.stack([torch.randn(400, generator=g) * 2 + 18, torch.rand(400, generator=g) * 0.5], 1)
    test[0, 0], test[1, 1], test[2, 0] = float("nan"), float("inf"), 1e6  # missing, non-finite, out of range
    in_range = (test >= tokenizer.edges[:, 0]) & (test <= tokenizer.edges[:, -1])
    tokens = tokenizer.encode(test)
    assert tokens["mag_r"][0, 0] == tokens["redshift"][1, 0] == 1024  # MISS is the last id
    assert tokens["mag_r"][2, 0] == 1023 and int(tokenizer.clipped[0]) >= 1  # clipped to the edge bin, counted
    decoded = tokenizer.decode(tokens)
    assert math.isnan(decoded[0, 0]) and math.isnan(decoded[1, 1])  # MISS decodes to NaN, not to a mean
    for c in range(2):
        ids = tokens[tokenizer.columns[c]][:, 0]
        ok = in_range[:, c] & (ids < 1024)
        width = (tokenizer.edges[c, 1:] - tokenizer.edges[c, :-1])[ids[ok]]
        assert torch.all((decoded[ok, c] - test[ok, c]).abs() <= width * (1 + 1e-5))
    vectors = tokenizer.code_vectors("redshift")
    assert vectors.shape == (1025, 2) and vectors[-1].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"\[B, 2\].*\(3, 3\)"):
        tokenizer.encode(torch.zeros(3, 3))


def test_spectrum_tokens_are_the_nearest_centroid_of_standardized_patch_features():
    g = torch.Generator().manual_seed(0)
    flux = torch.randn(40, 64, generator=g).cumsum(1) + 50
    ivar = torch.full_like(flux, 4.0)
    ivar[:, 10:12] = 0  # masked pixels
    tokenizer = SpectrumTokenizer(pixels=64, patch=4, codebook_size=32)
    tokenizer.fit(flux, ivar, iters=20)
    check_tokenizer(tokenizer)
    tokens = tokenizer.encode(flux, ivar)["spectrum"]
    assert tokens.shape == (40, 16)
    feats = ((tokenizer.features(flux, ivar) - tokenizer.feature_mean) / tokenizer.feature_std).flatten(0, 1)
    d = torch.cdist(feats.double(), tokenizer.codebook.double())
    top2 = d.topk(2, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4 * (1 + top2[:, 0])
    assert torch.equal(tokens.flatten()[clear], d.argmin(1)[clear])
    norm, precision = tokenizer.normalize(flux, ivar)
    assert norm.abs().max() <= 12 and torch.all(precision[:, 10:12] == 0)
    assert tokenizer.decode({"spectrum": tokens}).shape == (40, 64)
    with pytest.raises(ValueError, match=r"\[B, 64\]"):
        tokenizer.encode(flux[:, :32], ivar[:, :32])


def test_real_catalog_scalars_decode_within_one_bin_on_held_out_galaxies():
    """kcorrect's 10,000 SDSS galaxies: bins from 8,000, checked on the other 2,000 (missing values are MISS)."""
    from datamodules.galaxy_sim import CATALOG_COLUMNS, catalog_scalars, read_sdss_catalog

    values = torch.from_numpy(catalog_scalars(read_sdss_catalog()))
    order = torch.randperm(len(values), generator=torch.Generator().manual_seed(0))
    train, held_out = values[order[:8000]], values[order[8000:]]
    tokenizer = ScalarQuantileTokenizer(CATALOG_COLUMNS).fit(train)
    tokens = tokenizer.encode(held_out)
    decoded = tokenizer.decode(tokens)
    for c, name in enumerate(CATALOG_COLUMNS):
        ids, v = tokens[name][:, 0], held_out[:, c]
        assert torch.equal(ids == 1024, ~torch.isfinite(v)), name
        ok = torch.isfinite(v) & (v >= tokenizer.edges[c, 0]) & (v <= tokenizer.edges[c, -1])
        assert ok.float().mean() > 0.5, name
        width = (tokenizer.edges[c, 1:] - tokenizer.edges[c, :-1])[ids[ok]]
        assert torch.all((decoded[ok, c] - v[ok]).abs() <= width * (1 + 1e-5) + 1e-6), name
