import math

import pytest
import torch

from tokenizers.fsq import FSQ

MORPH = [5, 4, 4, 3, 3, 3, 2, 2]


def z_for_ids(fsq: FSQ, ids: torch.Tensor) -> torch.Tensor:
    """Pre-quantization inputs that land exactly on the grid points of `ids` (inverse of the bounding)."""
    k = fsq.ids_to_k(ids)
    return (torch.atanh((k + fsq._offset) / fsq._half) - fsq._shift) / fsq.gain


@pytest.mark.parametrize("levels", [[3], [2, 2], [5, 4, 3], MORPH])
def test_code_index_bijection_over_all_codes(levels):
    fsq = FSQ(levels, gain=10.0)
    ids = torch.arange(fsq.codebook_size)
    codes = fsq.all_codes()
    assert codes.shape == (math.prod(levels), len(levels))
    assert torch.unique(codes, dim=0).shape[0] == fsq.codebook_size  # injective id -> code
    q, back = fsq(z_for_ids(fsq, ids))
    assert torch.equal(back, ids)  # code -> id recovers every id
    assert torch.allclose(q, codes, atol=1e-6)
    assert codes.abs().max() <= 1 / fsq.gain + 1e-6


def test_index_formula_matches_spec():
    fsq = FSQ([5, 4, 3])
    k = torch.tensor([[-2.0, -2.0, -1.0], [2.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    # index = Σ (k_i + ⌊L_i/2⌋)·B_i with B = [1, 5, 20]
    expected = torch.tensor([0, 4 + 3 * 5 + 2 * 20, 2 + 3 * 5 + 1 * 20])
    assert torch.equal(fsq.k_to_ids(k), expected)


def test_corrected_fsq_reaches_all_1024_levels_and_paper_parity_1022():
    z = torch.linspace(-200, 200, 400_001).unsqueeze(-1)
    _, ids = FSQ([1024], gain=0.1)(z)
    assert torch.unique(ids).numel() == 1024
    _, ids_parity = FSQ([1024], gain=0.1, paper_parity=True)(z)
    assert torch.unique(ids_parity).numel() == 1022


@pytest.mark.parametrize("levels", [MORPH, [7, 6]])
def test_every_level_reachable_per_dimension(levels):
    fsq = FSQ(levels, gain=10.0)
    z = torch.linspace(-3, 3, 20_001).unsqueeze(-1).expand(-1, len(levels))
    q, _ = fsq(z)
    for d, L in enumerate(levels):
        assert torch.unique(q[:, d]).numel() == L


def test_straight_through_gradient_is_the_gradient_of_the_unrounded_code():
    fsq = FSQ([5, 4], gain=10.0)
    z = torch.randn(64, 2, dtype=torch.float32) * 0.1
    z1 = z.clone().requires_grad_(True)
    weights = torch.randn(64, 2)
    q, _ = fsq(z1)
    (q * weights).sum().backward()
    z2 = z.clone().requires_grad_(True)
    smooth = (torch.tanh(z2 * fsq.gain + fsq._shift) * fsq._half - fsq._offset) / fsq._half_width / fsq.gain
    (smooth * weights).sum().backward()
    assert torch.allclose(z1.grad, z2.grad, rtol=1e-5, atol=0)  # the same elementwise ops: rounding only
    assert z1.grad.abs().min() > 0


def test_quantization_runs_in_fp32_under_autocast():
    fsq = FSQ([1024], gain=0.1)
    z = torch.randn(4096, 1) * 10
    _, ids32 = fsq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q16, ids16 = fsq(z)
    assert q16.dtype == torch.float32
    assert torch.equal(ids16, ids32)
    assert torch.unique(ids16).numel() == torch.unique(ids32).numel()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="levels"):
        FSQ([5, 1])
    fsq = FSQ([5, 4])
    with pytest.raises(ValueError, match="last dimension 2"):
        fsq(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        fsq.ids_to_codes(torch.tensor([20]))
