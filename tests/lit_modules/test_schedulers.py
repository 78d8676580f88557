import math

import pytest
import torch

from lit_modules.schedulers import WarmupCosine, constant, warmup_cosine


def lrs(scheduler_fn, n: int, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = scheduler_fn(opt, **kw)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_values():
    values = lrs(warmup_cosine, 12, warmup_steps=2, total_steps=10, min_ratio=0.1)
    assert values[:2] == pytest.approx([0.5, 1.0])
    expected_mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8))
    assert values[6] == pytest.approx(expected_mid)
    assert values[10] == pytest.approx(0.1) and values[11] == pytest.approx(0.1)


def test_constant_with_warmup():
    assert lrs(constant, 5, warmup_steps=4) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lrs(constant, 3) == [1.0, 1.0, 1.0]


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="warmup_steps"):
        lrs(warmup_cosine, 1, warmup_steps=20, total_steps=10)


def test_a_warmup_longer_than_the_run_names_the_keys_to_change():
    with pytest.raises(
        ValueError,
        match=r"scheduler.warmup_steps=100, scheduler.total_steps=40 \(which follows "
        r"trainer.max_steps\)",
    ):
        WarmupCosine(100, 40)
