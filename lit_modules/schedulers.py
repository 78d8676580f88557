"""Learning-rate schedules as LambdaLR factories, stepped once per optimizer step.

Configs use them as `_partial_: true` and TokenizerModule calls them with the optimizer.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """Multiplier of the base LR: linear 0→1 over `warmup_steps`, then cosine 1→`min_ratio` at `total_steps`."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
        if total_steps <= 0:  # a run bounded by epochs (trainer.max_steps=-1): no warm-up length can help
            raise ValueError(
                f"warmup_cosine needs the run's length in optimizer steps, got scheduler.total_steps={total_steps} "
                f"(which follows trainer.max_steps): set trainer.max_steps > 0 (or scheduler.total_steps), or use "
                f"scheduler=constant"
            )
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"warmup_cosine needs 0 <= warmup_steps <= total_steps, got scheduler.warmup_steps={warmup_steps}, "
                f"scheduler.total_steps={total_steps} (which follows trainer.max_steps): lower "
                f"scheduler.warmup_steps for a short run"
            )
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Constant:
    """Multiplier 1, after an optional linear warm-up."""

    def __init__(self, warmup_steps: int = 0):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> LambdaLR:
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))


def constant(optimizer: Optimizer, warmup_steps: int = 0) -> LambdaLR:
    return LambdaLR(optimizer, Constant(warmup_steps))
