"""AdEMAMix (Pagliardini, Ablin & Grangier 2024): Adam with a second, slow gradient EMA mixed in.

Per parameter θ with gradient g at step t (1-based):
    m1 ← β1·m1 + (1−β1)·g                   fast EMA, bias corrected
    m2 ← β3(t)·m2 + (1−β3(t))·g             slow EMA, not bias corrected
    ν  ← β2·ν + (1−β2)·g²
    θ  ← θ − lr·[ (m1/(1−β1^t) + α(t)·m2) / (√(ν/(1−β2^t)) + ε) + wd·θ ]
Warm-ups (both reach their final value at T and stay there):
    α(t)  = α·min(t/T_α, 1)
    β3(t) = min(exp(ln β1·ln β3 / ((1−t/T_β3)·ln β3 + (t/T_β3)·ln β1)), β3)
            (the half-life of β3(t) grows linearly from β1's to β3's)

On a GPU the update runs on all tensors of a group at once (torch._foreach_*: one kernel launch per operation for
the whole list instead of one per parameter; the paper model has 344 tensors). On the CPU there are no launches to
save and the per-tensor loop is faster (its temporaries stay small): foreach=None picks by device, as torch's own
optimizers do; bench/bench_optimizer.py has the figures. Both paths are tested equal.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


def alpha_at(step: int, alpha: float, t_alpha: int) -> float:
    return alpha * min(step / t_alpha, 1.0) if t_alpha > 0 else alpha


def beta3_at(step: int, beta1: float, beta3: float, t_beta3: int) -> float:
    if t_beta3 <= 0 or step >= t_beta3:
        return beta3
    frac = step / t_beta3
    log_b1, log_b3 = math.log(beta1), math.log(beta3)
    return min(math.exp(log_b1 * log_b3 / ((1 - frac) * log_b3 + frac * log_b1)), beta3)


class AdEMAMix(Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int = 0,
        t_beta3: int = 0,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
    ):
        if not all(v >= 0 and math.isfinite(v) for v in (lr, eps, weight_decay)):  # nan fails `>= 0`
            raise ValueError(
                f"AdEMAMix: lr, eps and weight_decay must be finite and >= 0, got {lr}, {eps}, {weight_decay}"
            )
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdEMAMix: betas must be three values in [0, 1), got {betas}")
        defaults = dict(
            lr=lr, betas=tuple(betas), alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps, weight_decay=weight_decay
        )
        super().__init__(params, defaults)
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_step: dict[tuple, list[torch.Tensor]] = {}  # tensors that share step, device and dtype go together
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdEMAMix does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m1"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["m2"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["nu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                by_step.setdefault((state["step"], p.device, p.dtype), []).append(p)
            for (t, device, _), params in by_step.items():
                foreach = self.foreach if self.foreach is not None else device.type == "cuda"
                (self._update_foreach if foreach else self._update_each)(group, params, t)
        return loss

    def _coefficients(self, group: dict, t: int) -> tuple[float, ...]:
        beta1, beta2, beta3_final = group["betas"]
        return (
            beta1,
            beta2,
            beta3_at(t, beta1, beta3_final, group["t_beta3"]),
            alpha_at(t, group["alpha"], group["t_alpha"]),
        )

    def _update_each(self, group: dict, params: list[torch.Tensor], t: int) -> None:
        beta1, beta2, beta3, alpha = self._coefficients(group, t)
        for p in params:
            grad, state = p.grad, self.state[p]
            m1, m2, nu = state["m1"], state["m2"], state["nu"]
            m1.lerp_(grad, 1 - beta1)
            m2.lerp_(grad, 1 - beta3)
            nu.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (nu / (1 - beta2**t)).sqrt_().add_(group["eps"])
            update = (m1 / (1 - beta1**t)).add_(m2, alpha=alpha).div_(denom)
            if group["weight_decay"]:
                update.add_(p, alpha=group["weight_decay"])
            p.add_(update, alpha=-group["lr"])

    def _update_foreach(self, group: dict, params: list[torch.Tensor], t: int) -> None:
        beta1, beta2, beta3, alpha = self._coefficients(group, t)
        grads = [p.grad for p in params]
        m1, m2, nu = ([self.state[p][k] for p in params] for k in ("m1", "m2", "nu"))
        torch._foreach_lerp_(m1, grads, 1 - beta1)
        torch._foreach_lerp_(m2, grads, 1 - beta3)
        torch._foreach_mul_(nu, beta2)
        torch._foreach_addcmul_(nu, grads, grads, value=1 - beta2)
        denom = torch._foreach_div(nu, 1 - beta2**t)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(m1, 1 - beta1**t)
        torch._foreach_add_(update, m2, alpha=alpha)
        torch._foreach_div_(update, denom)
        if group["weight_decay"]:
            torch._foreach_add_(update, params, alpha=group["weight_decay"])
        torch._foreach_add_(params, update, alpha=-group["lr"])
