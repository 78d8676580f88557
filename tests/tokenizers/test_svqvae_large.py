"""SVQVAE tiling on a 1024×1536 image with a trained model: no seams, tiling costs no accuracy, exact sizes.

The model is trained here briefly on crops of the bundled images (coffee held out) so that its reconstructions
are real ones: an untrained model's output is noise in which seams cannot be judged. Training on another CPU
ends in other weights (float32 sums in another order), so the assertions compare outputs of the one model
(blended tiles against the same tiles pasted side by side) or keep a wide margin.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datamodules.images import BUNDLED, BundledImages
from tokenizers.svqvae import SVQVAE
from tokenizers.tiling import overlap_add, seam_ratio

pytestmark = pytest.mark.slow
H, W, TILE, OVERLAP, STEPS = 1024, 1536, 256, 64, 600


@pytest.fixture(scope="module")
def trained() -> SVQVAE:
    torch.manual_seed(0)
    # the smallest model and run that reconstruct well: with fewer steps the error stays near the mean colour's,
    # with smaller crops the 256-pixel tiles are out of distribution
    model = SVQVAE(
        ch=8,
        ch_mult=[1, 2, 2, 4],
        num_res_blocks=1,
        z_channels=16,
        codebook_size=256,
        norm_groups=4,
        dead_code_interval=25,
    )
    images = [x for x, _ in BundledImages([b for b in BUNDLED if b != "coffee"]).load()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        crops = []
        for _ in range(16):
            im = images[int(torch.randint(len(images), (1,), generator=g))]
            top, left = (int(torch.randint(n - 64 + 1, (1,), generator=g)) for n in im.shape[1:])
            crops.append(im[:, top : top + 64, left : left + 64])
        x = torch.stack(crops)
        out = model(x)
        loss = F.mse_loss(out.recon, x) + sum(out.aux_losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def coffee() -> torch.Tensor:
    """skimage's coffee (400×600, not seen in training) resized to 1024×1536."""
    x = BundledImages(["coffee"]).load()[0][0][None]
    return F.interpolate(x, size=(H, W), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


@pytest.fixture(scope="module")
def outputs(trained, coffee):
    with torch.no_grad():
        tiled = trained.reconstruct_tiled(coffee, TILE, OVERLAP, scales=[0.25, 0.5, 1.0])
        pasted = overlap_add(lambda t: trained(t).recon, coffee, TILE, 0, 1.0)  # tiles side by side, no blending
    return tiled, pasted


def test_tiled_reconstruction_has_no_seams(outputs):
    tiled, pasted = outputs
    image = tiled[1.0][0]
    for dim in (-1, -2):  # columns, rows
        assert seam_ratio(pasted, TILE, 0, cell=8, dim=dim) > 2  # the metric sees the borders of pasted tiles
        assert seam_ratio(image, TILE, OVERLAP, cell=8, dim=dim) <= 1.25


def test_tiling_costs_no_accuracy_and_the_model_reconstructs(outputs, coffee):
    tiled, pasted = outputs
    error = (tiled[1.0][0] - coffee).abs().mean()
    assert error <= 1.1 * (pasted - coffee).abs().mean()  # blending overlapping tiles is no worse than pasting
    mean_colour_error = (coffee - coffee.mean(dim=(-2, -1), keepdim=True)).abs().mean()
    assert error < 0.75 * mean_colour_error  # a real reconstruction, not a blur of the mean colour


def test_every_scale_has_exactly_the_expected_size(outputs):
    tiled, _ = outputs
    for s, (image, tokens) in tiled.items():
        assert image.shape == (1, 3, round(H * s), round(W * s))
        assert tokens.shape == (1, round(H / 8 * s), round(W / 8 * s)) and tokens.dtype == torch.int64
