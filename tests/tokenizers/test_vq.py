import math

import pytest
import torch
import torch.nn.functional as F

from tokenizers.vq import CosineVectorQuantizer


def test_nearest_code_matches_brute_force_cosine_search():
    torch.manual_seed(0)
    vq = CosineVectorQuantizer(codebook_size=64, dim=8)
    z = torch.randn(2, 5, 7, 8) * 3
    _, ids = vq(z)[:2]
    assert ids.shape == (2, 5, 7) and ids.dtype == torch.int64
    codes = vq.codebook.detach()
    for v, i in zip(z.reshape(-1, 8), ids.flatten(), strict=True):
        cos = [F.cosine_similarity(v, c, dim=0).item() for c in codes]
        assert int(i) == max(range(64), key=cos.__getitem__)


def test_straight_through_gradient_and_forward_value():
    torch.manual_seed(1)
    vq = CosineVectorQuantizer(codebook_size=16, dim=4)
    z = torch.randn(10, 4, requires_grad=True)
    w = torch.randn(10, 4)
    z_q, ids, _ = vq(z)
    assert torch.allclose(z_q, vq.codes()[ids], atol=1e-6)
    (z_q * w).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (F.normalize(z2, dim=-1) * w).sum().backward()  # the gradient of the normalised input, passed straight through
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)


def test_losses_match_a_hand_computation():
    vq = CosineVectorQuantizer(codebook_size=2, dim=2, beta=0.25)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    z = torch.tensor([[3.0, 1.0], [0.0, -1.0]])
    _, ids, losses = vq(z)
    assert ids.tolist() == [0, 0]  # (0,-1) is 90° from both codes: ties go to the first
    zn = z / z.norm(dim=-1, keepdim=True)
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = ((e - zn) ** 2).mean()
    assert float(losses["codebook"].detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float(losses["commitment"].detach()) == pytest.approx(0.25 * float(expected), rel=1e-6)
    assert set(losses) == {"codebook", "commitment"}


def test_entropy_term_rewards_confident_and_diverse_assignments():
    vq = CosineVectorQuantizer(codebook_size=4, dim=2, entropy_weight=1.0, entropy_temperature=0.01)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    diverse = vq(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))[2]["entropy"]
    collapsed = vq(torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, -0.01], [1.0, 0.02]]))[2]["entropy"]
    assert float(diverse) == pytest.approx(-math.log(4), abs=1e-3)  # 0 per-vector entropy − log K
    assert float(diverse) < float(collapsed)


@pytest.mark.parametrize(("interval", "expected_used"), [(0, 3), (1, 8)])
def test_dead_codes_are_revived_from_current_inputs(interval, expected_used):
    torch.manual_seed(2)
    vq = CosineVectorQuantizer(codebook_size=8, dim=2, dead_code_interval=interval).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0.0]] * 8) + torch.randn(8, 2) * 1e-3)  # all codes in one direction
    z = torch.randn(256, 2)
    vq(z)  # with revival on, the 5 codes no input chose are moved onto inputs
    assert torch.unique(vq(z)[1]).numel() == expected_used
    vq.eval()
    hits = vq.hits.clone()
    vq(z)
    assert torch.equal(vq.hits, hits)  # no tracking in eval mode


def test_fp32_under_autocast_and_errors():
    vq = CosineVectorQuantizer(codebook_size=32, dim=4)
    z = torch.randn(6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, ids, _ = vq(z.bfloat16())
    assert z_q.dtype == torch.float32
    with pytest.raises(ValueError, match="last dimension 4"):
        vq(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        vq.ids_to_codes(torch.tensor([32]))
