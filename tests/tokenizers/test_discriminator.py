import pytest
import torch

from tokenizers.discriminator import PatchGAN


def test_patchgan_scores_patches_and_refuses_tiny_crops():
    d = PatchGAN(3, ch=8, n_layers=3)
    assert d(torch.rand(2, 3, 64, 48)).shape == (2, 1, 6, 4)
    with pytest.raises(ValueError, match="H, W >= 32"):
        d(torch.rand(2, 3, 16, 64))
