import math

import pytest
import torch

from lit_modules.ademamix import AdEMAMix, alpha_at, beta3_at


def test_two_steps_match_a_hand_computation():
    b1, b2, b3, alpha, lr, eps, wd, T = 0.5, 0.9, 0.99, 2.0, 0.1, 1e-8, 0.01, 4
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = AdEMAMix([p], lr=lr, betas=(b1, b2, b3), alpha=alpha, t_alpha=T, t_beta3=T, eps=eps, weight_decay=wd)
    theta = [1.0, -2.0]
    m1 = [0.0, 0.0]
    m2 = [0.0, 0.0]
    nu = [0.0, 0.0]
    grads = [[0.3, -1.0], [-0.2, 0.5]]
    for t, g in enumerate(grads, start=1):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        a_t = alpha * t / T
        # β3 warm-up: half-life grows linearly from β1's to β3's
        f = t / T
        b3_t = math.exp(math.log(b1) * math.log(b3) / ((1 - f) * math.log(b3) + f * math.log(b1)))
        for i in range(2):
            m1[i] = b1 * m1[i] + (1 - b1) * g[i]
            m2[i] = b3_t * m2[i] + (1 - b3_t) * g[i]
            nu[i] = b2 * nu[i] + (1 - b2) * g[i] ** 2
            upd = (m1[i] / (1 - b1**t) + a_t * m2[i]) / (math.sqrt(nu[i] / (1 - b2**t)) + eps)
            theta[i] -= lr * (upd + wd * theta[i])
        assert p.detach().tolist() == pytest.approx(theta, rel=1e-12)


def test_warmups_reach_their_final_values():
    assert alpha_at(0, 2.0, 250) == 0.0 and alpha_at(125, 2.0, 250) == 1.0 and alpha_at(1000, 2.0, 250) == 2.0
    assert beta3_at(0, 0.5, 0.99, 250) == pytest.approx(0.5)
    assert beta3_at(250, 0.5, 0.99, 250) == 0.99 and beta3_at(10, 0.5, 0.99, 0) == 0.99
    half_life = lambda b: math.log(0.5) / math.log(b)  # noqa: E731
    mid = half_life(beta3_at(125, 0.5, 0.99, 250))
    assert mid == pytest.approx((half_life(0.5) + half_life(0.99)) / 2, rel=1e-9)


def test_invalid_betas_raise():
    with pytest.raises(ValueError, match="betas"):
        AdEMAMix([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 0.999))


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -1e-3])
def test_a_learning_rate_that_is_not_finite_and_positive_is_refused(lr):
    with pytest.raises(ValueError, match=f"lr, eps and weight_decay must be finite and >= 0, got {lr}"):
        AdEMAMix([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_the_multi_tensor_update_equals_the_per_tensor_one():
    """Several steps, weight decay, two parameter groups, warm-ups, and a parameter that skips a step (its own
    step count): foreach=True and foreach=False give the same weights and state to float32 rounding."""
    torch.manual_seed(0)
    shapes = [(16, 8), (8,), (3, 4, 5), (7,)]
    start = [torch.randn(s) for s in shapes]
    runs = {}
    for foreach in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = AdEMAMix(
            [{"params": params[:2]}, {"params": params[2:], "lr": 3e-3, "weight_decay": 0.0}],
            lr=1e-2,
            alpha=4.0,
            t_alpha=5,
            t_beta3=5,
            weight_decay=0.1,
            foreach=foreach,
        )
        gen = torch.Generator().manual_seed(1)
        for step in range(8):
            for i, p in enumerate(params):
                p.grad = None if (i == 3 and step == 2) else torch.randn(p.shape, generator=gen)
            opt.step()
        runs[foreach] = (params, opt)
    (fast, opt_fast), (slow, opt_slow) = runs[True], runs[False]
    for a, b in zip(fast, slow, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=64 * torch.finfo(torch.float32).eps * float(b.abs().max()))
        for key in ("m1", "m2", "nu"):
            assert torch.allclose(opt_fast.state[a][key], opt_slow.state[b][key], rtol=1e-6, atol=1e-12)
    assert opt_fast.state[fast[3]]["step"] == 7 and opt_fast.state[fast[0]]["step"] == 8
    assert not torch.equal(fast[0], start[0])
