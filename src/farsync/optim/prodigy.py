"""Prodigy: Adam whose step size d lr learns d, an estimate of the distance to the solution
(Mishchenko, Defazio; arXiv 2306.06101; reference implementation: PyPI `prodigyopt` 1.1.2).

Step k with gradient g, initial parameters x0 and lr_k = lr (times Adam's bias correction
sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1)) with ``use_bias_correction``); d is the current estimate::

    r     <- beta3 r + (d/d0) d lr_k <g, x0 - x>         # the d numerator
    s     <- beta3 s + (d/d0) d lr_k g                    # (d/d0) d g with ``safeguard_warmup``
    d_hat  = d_coef r / ||s||_1
    d     <- d_hat the first time d_hat exceeds d0 (uncapped), then min(d_max, d growth_rate),
             d_max = max(d0, d_hat so far)
    m     <- beta1 m + (1 - beta1) d g
    v     <- beta2 v + (1 - beta2) d^2 g^2
    x     <- x - d lr_k m / (sqrt(v) + d' eps)            # d' the new d; decoupled decay x -= wd d lr_k x

beta3 defaults to sqrt(beta2). ``slice_p`` > 1 computes r and s on every slice_p-th entry only (an
approximation that saves memory). ``d_freeze_steps`` (an addition) stops adapting d after that many
steps: r, s and the statistics reduction are skipped from then on, Adam runs with the last d.

Reduced scalars (`GlobalStats`, one call per step while d adapts): this step's increment of r and
||s||_1; their ratio is what sets d, so averaging both over replicas gives every worker the same d.

Like the reference, d is one scalar for the whole model (kept, identical, in every param group) and
the weights (d/d0) d lr_k of r and s use the largest group lr. The reference only allows group lrs
equal to that maximum or 0; here a group's lr scales its own steps (lr 0: frozen, left out of the
statistics), which is the reference whenever its restriction holds (except that the reference
still applies decoupled weight decay to lr-0 groups, and, with beta1 = 0, moves them). Other
differences: the gradients are not modified in place by coupled weight decay, the reference's
``fsdp_in_use`` is replaced by ``reduce_stats``, and arguments after ``lr`` are keyword-only.
"""

from __future__ import annotations

import math

import torch

from .stats import GlobalStats
from .wrapper import check_range

INF = float("inf")


def check_freeze_steps(d_freeze_steps: int | None) -> None:
    if d_freeze_steps is not None and (isinstance(d_freeze_steps, bool) or not isinstance(d_freeze_steps, int) or d_freeze_steps < 0):
        raise ValueError(f"d_freeze_steps must be None or an integer >= 0, got {d_freeze_steps!r}")


def check_betas(betas) -> None:
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_range("betas[0]", betas[0], 0.0, 1.0, False, True)
    check_range("betas[1]", betas[1], 0.0, 1.0, False, True)


def adapting(group: dict) -> bool:
    """Whether d is still being adapted at this step (``d_freeze_steps`` not yet reached)."""
    return group["d_freeze_steps"] is None or group["k"] < group["d_freeze_steps"]


class Prodigy(GlobalStats, torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1.0, *, betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True, use_bias_correction: bool = False,
                 safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0, growth_rate: float = INF,
                 slice_p: int = 1, d_freeze_steps: int | None = None):
        check_range("lr", lr, 0.0, INF, True, True)
        check_betas(betas)
        if beta3 is not None:
            check_range("beta3", beta3, 0.0, 1.0, False, True)
        check_range("eps", eps, 0.0, INF, True, True)
        check_range("weight_decay", weight_decay, 0.0, INF, False, True)
        check_range("d0", d0, 0.0, INF, True, True)
        check_range("d_coef", d_coef, 0.0, INF, True, True)
        check_range("growth_rate", growth_rate, 1.0, INF, False, False)
        if isinstance(slice_p, bool) or not isinstance(slice_p, int) or slice_p < 1:
            raise ValueError(f"slice_p must be an integer >= 1, got {slice_p!r}")
        check_freeze_steps(d_freeze_steps)
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction, safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef,
                        growth_rate=growth_rate, slice_p=slice_p, d_freeze_steps=d_freeze_steps,
                        # the shared d and its statistics (identical in every group), and the step count
                        d=d0, d_max=d0, d_hat=0.0, d_numerator=0.0, d_denom=0.0, k=0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        first = self.param_groups[0]  # global settings and the shared d live here (and in every group)
        beta1, beta2 = first["betas"]
        beta3 = math.sqrt(beta2) if first["beta3"] is None else first["beta3"]
        k, d, d0 = first["k"], first["d"], first["d0"]
        bias = math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1)) if first["use_bias_correction"] else 1.0
        dlr = d * max(group["lr"] for group in self.param_groups) * bias
        adapt = adapting(first)

        numerator, s_norm = 0.0, 0.0  # this step's increment of r, and ||s||_1
        grads = {}
        for group in self.param_groups:
            decay, sp = group["weight_decay"], group["slice_p"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["s"] = torch.zeros_like(p.flatten()[::sp])
                    # an all-zero tensor (e.g. a bias) keeps a scalar 0 as x0, as the reference does
                    state["p0"] = p.flatten()[::sp].clone() if p.any() else torch.zeros((), dtype=p.dtype, device=p.device)
                    if beta1 > 0:
                        state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                grad = p.grad.add(p, alpha=decay) if decay != 0 and not group["decouple"] else p.grad
                grads[p] = grad
                if group["lr"] == 0:
                    continue
                if adapt:
                    g = grad.flatten()[::sp]
                    numerator = numerator + torch.dot(g, state["p0"] - p.flatten()[::sp]).double()
                    weight = d / d0 * (d if group["safeguard_warmup"] else dlr)
                    state["s"].mul_(beta3).add_(g, alpha=weight)
                    s_norm = s_norm + state["s"].abs().sum().double()
                if beta1 > 0:
                    state["exp_avg"].mul_(beta1).add_(grad, alpha=d * (1 - beta1))
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))

        if adapt:
            increment, s_norm = self._global(d / d0 * dlr * numerator, s_norm).tolist()
            if s_norm == 0:  # no gradient yet: nothing to estimate from (the reference skips the step too)
                return loss
            r = beta3 * first["d_numerator"] + increment
            d_hat = first["d_coef"] * r / s_norm
            d_new = max(d, d_hat) if d == d0 else d
            d_max = max(first["d_max"], d_hat)
            d_new = min(d_max, d_new * first["growth_rate"])
            stats = dict(d_numerator=r, d_denom=s_norm, d_hat=d_hat, d_max=d_max, d=d_new)
        else:
            d_new, stats = d, {}

        for group in self.param_groups:
            group.update(stats, k=k + 1)
            step = d * group["lr"] * bias
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                if step == 0:
                    continue
                denom = state["exp_avg_sq"].sqrt().add_(d_new * group["eps"])
                if group["weight_decay"] != 0 and group["decouple"]:
                    p.add_(p, alpha=-group["weight_decay"] * step)
                if beta1 > 0:
                    p.addcdiv_(state["exp_avg"], denom, value=-step)
                else:  # the reference scales this by the new d (Adam's m would hold the old one)
                    p.addcdiv_(grads[p], denom, value=-step * d_new)
        return loss
