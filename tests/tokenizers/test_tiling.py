import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_same_ids_up_to_ties, f32_tolerance, layer_depth
from tokenizers.svqvae import SVQVAE
from tokenizers.tiling import axis_weights, overlap_add, seam_ratio, tile_starts


def small_model() -> SVQVAE:
    torch.manual_seed(0)
    return SVQVAE(ch=32, ch_mult=[1, 2, 2, 4], z_channels=32, codebook_size=512).eval()


def smooth_image(h: int, w: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    waves = [0.5 + 0.3 * torch.sin(2 * math.pi * (k + 1) * x) * torch.cos(2 * math.pi * (k + 2) * y) for k in range(3)]
    return torch.stack(waves)[None]


def test_tiles_cover_exactly_and_weights_never_vanish():
    assert tile_starts(100, 40, 10) == [0, 30, 60]
    assert tile_starts(40, 40, 10) == [0] and tile_starts(10, 40, 10) == [0]
    for start, length in ((0, 100), (30, 100), (60, 100)):
        w = axis_weights(40, start, length, 10, torch.device("cpu"))
        assert w.min() > 0 and w.max() == 1
    assert axis_weights(40, 0, 100, 10, torch.device("cpu"))[0] == 1  # image border: full weight
    # across a shared overlap the two tiles' weights add up to one (up to the 1e-3 floor at tile edges)
    a = axis_weights(40, 0, 100, 10, torch.device("cpu"))[-10:]
    b = axis_weights(40, 30, 100, 10, torch.device("cpu"))[:10]
    assert torch.allclose(a + b, torch.ones(10), atol=1.1e-3)
    assert a[-1] < 0.01 and b[0] < 0.01  # a tile's own edge hardly counts where a neighbour covers it


def test_overlap_add_of_the_identity_is_exact():
    x = torch.rand(1, 2, 70, 130)
    assert torch.allclose(overlap_add(lambda t: t, x, 32, 8, 1.0), x, atol=1e-6)
    assert overlap_add(lambda t: t[..., ::4, ::4], torch.rand(1, 2, 72, 132), 32, 8, 0.25).shape == (1, 2, 18, 33)


def test_tiled_equals_untiled_when_the_image_fits_one_tile():
    model, x = small_model(), smooth_image(64, 64)
    with torch.no_grad():
        tokens = model.encode_tiled(x, tile_size=64, overlap=16)
        latent = model.latent(x).permute(0, 2, 3, 1).reshape(-1, model.vq.dim)
        # the cosine codebook compares unit vectors: a latent's error shrinks by its norm when normalized
        error = 2 * latent.shape[1] ** 0.5 * f32_tolerance(latent, layer_depth(model.encoder) + 1)
        error = error / float(latent.norm(dim=1).min())
        unit, reference = F.normalize(latent, dim=1), model.encode(x)["tokens"]
        assert_same_ids_up_to_ties(tokens["tokens"], reference, unit, model.vq.codes(), error)
        recon = model(x).recon
        # the same computation on a tile view: other kernels may sum in another order, nothing more
        error = (model.decode_tiled(tokens, 64, 16) - recon).abs().max()
    assert error <= f32_tolerance(recon, layer_depth(model.decoder))


def box_blur(t: torch.Tensor) -> torch.Tensor:
    """A conv with zero padding: darkens tile edges, the artefact that makes seams when tiles are pasted."""
    return torch.nn.functional.conv2d(t, torch.ones(3, 1, 7, 7) / 49, padding=3, groups=3)


def test_blending_removes_the_seams_that_pasting_tiles_makes():
    x = smooth_image(200, 328)
    pasted = overlap_add(box_blur, x, 64, 0, 1.0)
    blended = overlap_add(box_blur, x, 64, 16, 1.0)
    assert seam_ratio(pasted, 64, 0) > 2  # the metric sees pasted tiles
    assert seam_ratio(blended, 64, 16) <= 1.2 and seam_ratio(blended, 64, 16, dim=-2) <= 1.2
    assert torch.allclose(blended, box_blur(x), atol=2e-3)  # and match the operator applied to the whole image


def test_exact_sizes_at_every_scale():
    model, x = small_model(), smooth_image(200, 328)
    with torch.no_grad():
        out = model.reconstruct_tiled(x, tile_size=64, overlap=16, scales=[0.25, 0.5, 1.0])
    for s, (image, tokens) in out.items():
        assert image.shape[-2:] == (round(200 * s), round(328 * s))
        assert tokens.shape[-2:] == (max(1, round(25 * s)), max(1, round(41 * s)))


def test_images_smaller_than_a_tile_and_odd_sizes():
    model = small_model()
    with torch.no_grad():
        for h, w in ((5, 7), (33, 61)):
            image, tokens = model.reconstruct_tiled(torch.rand(2, 3, h, w), 64, 16)[1.0]
            assert image.shape == (2, 3, h, w) and tokens.shape == (2, math.ceil(h / 8), math.ceil(w / 8))


def test_bad_tiling_arguments_are_clear_errors():
    model, x = small_model(), torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="tile > overlap"):
        model.encode_tiled(x, tile_size=64, overlap=64)
    with pytest.raises(ValueError, match="multiples of the downsampling factor 8"):
        model.encode_tiled(x, tile_size=60, overlap=16)
    with pytest.raises(ValueError, match="multiples of the downsampling factor 8"):
        model.decode_tiled({"tokens": torch.zeros(1, 8, 8, dtype=torch.long)}, tile_size=64, overlap=12)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.encode_tiled(torch.rand(1, 1, 64, 64), 64, 16)


def test_seam_ratio_compares_tile_borders_with_interior_cell_boundaries():
    # a blocky image (cells of 8 pixels, steps of 1 between them), and the same with a step of 3 at every
    # border of 64-pixel tiles
    cells = torch.arange(40.0).repeat_interleave(8)[None, None, None, :] % 2
    seamed = cells + 3 * (torch.arange(320) // 64)
    assert seam_ratio(cells, 64, 0, cell=8) == pytest.approx(1.0)  # cell steps alone are no seam
    assert seam_ratio(cells, 64, 0, cell=1) > 5  # ... unless compared with the flat insides of cells
    assert seam_ratio(seamed, 64, 0, cell=8) == pytest.approx(2.0)  # border jumps |3 − 1| vs cell steps of 1
    with pytest.raises(ValueError, match="no tile borders"):
        seam_ratio(cells[..., :64], 64, 16)


def test_batched_channels_last_tiles_equal_tile_by_tile():
    """tile_batch tiles through the model at once, in channels_last, give the plain tile-by-tile result of the model
    on contiguous (NCHW) tiles (float32 rounding only): a conv net with per-sample GroupNorm, as encoder (scale 1/4)
    and as decoder-like map (scale 1), 2 images at once."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.GroupNorm(4, 8),
        torch.nn.SiLU(),
        torch.nn.Conv2d(8, 4, 3, padding=1),
    ).eval()
    down = torch.nn.Sequential(net, torch.nn.AvgPool2d(4))
    x = torch.rand(2, 3, 72, 136)
    seen = []
    overlap_add(lambda t: seen.append(t.is_contiguous(memory_format=torch.channels_last)) or t, x, 32, 8, 1.0)
    assert seen and all(seen)
    with torch.no_grad():
        for fn, scale in ((net, 1.0), (down, 0.25)):
            one = overlap_add(lambda t, fn=fn: fn(t.contiguous()), x, 32, 8, scale)  # NCHW, one tile at a time
            for tile_batch in (1, 2, 5, 64):
                many = overlap_add(fn, x, 32, 8, scale, tile_batch=tile_batch)
                assert torch.allclose(many, one, rtol=0, atol=f32_tolerance(one, 4))
    with pytest.raises(ValueError, match="tile_batch"):
        overlap_add(net, x, 32, 8, 1.0, tile_batch=0)
