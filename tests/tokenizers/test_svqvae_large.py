"""SVQVAE tiling on a 1024×1536 image with a trained model: no seams, tiling costs no accuracy, exact sizes.

The model is tests/data/svqvae_tiny.pt (bench/make_test_checkpoints.py: trained on crops of the bundled images,
coffee held out), so its reconstructions are real ones (an untrained model's output is noise in which seams cannot
be judged) and its weights are the same on every CPU: only the rounding of this one inference differs. That rounding
moves each output value by at most the float32 bound of the decoder, which the error comparisons leave as margin,
and it may change the token of a cell whose two nearest codes are almost equally near, which the last test covers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datamodules.images import BundledImages
from tests.helpers import ROOT, f32_tolerance, layer_depth
from tokenizers.svqvae import SVQVAE
from tokenizers.tiling import overlap_add, seam_ratio

H, W, TILE, OVERLAP = 1024, 1536, 256, 64


@pytest.fixture(scope="module")
def model() -> SVQVAE:
    checkpoint = torch.load(ROOT / "tests" / "data" / "svqvae_tiny.pt", weights_only=True)
    model = SVQVAE(**checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


@pytest.fixture(scope="module")
def coffee() -> torch.Tensor:
    """skimage's coffee (400×600, not seen in training) resized to 1024×1536."""
    x = BundledImages(["coffee"]).load()[0][0][None]
    return F.interpolate(x, size=(H, W), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


@pytest.fixture(scope="module")
def outputs(model, coffee):
    with torch.no_grad():
        tiled = model.reconstruct_tiled(coffee, TILE, OVERLAP, scales=[0.25, 0.5, 1.0])
        pasted = overlap_add(lambda t: model(t).recon, coffee, TILE, 0, 1.0)  # tiles side by side, no blending
    return tiled, pasted


def decoder_rounding(model: SVQVAE, image: torch.Tensor) -> float:
    """Bound on how far another CPU's float32 rounding moves any value of an image decoded from the same tokens."""
    return f32_tolerance(image, layer_depth(model.decoder) + 1)  # + post_quant_conv


def assert_no_seams(image: torch.Tensor) -> None:
    for dim in (-1, -2):  # columns, rows
        assert seam_ratio(image, TILE, OVERLAP, cell=8, dim=dim) <= 1.25


def assert_accurate(model: SVQVAE, image: torch.Tensor, pasted: torch.Tensor, coffee: torch.Tensor) -> None:
    """Blending overlapping tiles is no worse than pasting them, and the model really reconstructs (not a blur of
    the mean colour); each mean error is taken at the end of its rounding bound that makes the check hardest."""
    error = (image - coffee).abs().mean() + decoder_rounding(model, image)
    pasted_error = (pasted - coffee).abs().mean() - f32_tolerance(pasted, layer_depth(model))
    assert error <= 1.1 * pasted_error
    mean_colour_error = (coffee - coffee.mean(dim=(-2, -1), keepdim=True)).abs().mean()
    assert error < 0.75 * mean_colour_error


def test_tiled_reconstruction_has_no_seams(outputs):
    tiled, pasted = outputs
    for dim in (-1, -2):
        assert seam_ratio(pasted, TILE, 0, cell=8, dim=dim) > 2  # the metric sees the borders of pasted tiles
    assert_no_seams(tiled[1.0][0])


def test_tiling_costs_no_accuracy_and_the_model_reconstructs(model, outputs, coffee):
    tiled, pasted = outputs
    assert_accurate(model, tiled[1.0][0], pasted, coffee)


def test_every_scale_has_exactly_the_expected_size(outputs):
    tiled, _ = outputs
    for s, (image, tokens) in tiled.items():
        assert image.shape == (1, 3, round(H * s), round(W * s))
        assert tokens.shape == (1, round(H / 8 * s), round(W / 8 * s)) and tokens.dtype == torch.int64


def test_the_judgements_hold_whichever_token_rounding_picks_for_a_near_tie(model, outputs, coffee):
    """Another CPU's rounding of the encoder may give a cell the runner-up code where the cosine gap between its two
    nearest codes is within that rounding: with every such cell switched to its runner-up, still no seams and the
    same accuracy."""
    _, pasted = outputs
    with torch.no_grad():
        latent = model.latent_tiled(coffee, TILE, OVERLAP)  # [1, D, h, w]
        z = latent.permute(0, 2, 3, 1)
        nearest = (F.normalize(z, dim=-1) @ model.vq.codes().T).topk(2)
        # |Δz| ≤ √D·tol, so |Δẑ| ≤ 2|Δz|/|z|; between unit codes c1, c2 the gap moves by |Δẑ·(c1 − c2)| ≤ 2|Δẑ|
        tol = f32_tolerance(latent, layer_depth(model.encoder) + 1)  # + quant_conv
        shift = 4 * z.shape[-1] ** 0.5 * tol / z.norm(dim=-1)
        near_tie = nearest.values[..., 0] - nearest.values[..., 1] <= shift
        ids = torch.where(near_tie, nearest.indices[..., 1], nearest.indices[..., 0])
        image = model.decode_tiled({"tokens": ids}, TILE, OVERLAP)
    assert near_tie.any()  # the bound reaches cells that can flip, so this checks something
    assert_no_seams(image)
    assert_accurate(model, image, pasted, coffee)
