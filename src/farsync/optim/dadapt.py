"""D-Adaptation: SGD and Adam whose step size d lr learns d, a lower bound on the distance to the
solution (Defazio, Mishchenko; arXiv 2301.07733; reference implementation: PyPI `dadaptation` 3.2).

`DAdaptSGD` (dual averaging; momentum as averaging of the iterates). With g0 the first gradient
and lambda = d lr / ||g0||_2::

    num <- num + lambda <g, s>
    s   <- s + lambda g
    d   <- max(d, min(2 num / ||s||_2, d growth_rate))
    z    = x0 - s;   x <- momentum x + (1 - momentum) z

Weight decay is coupled (g += wd x), but ||g0|| is the norm of the raw first gradient (as in the
reference). Reduced scalars: ||g0||^2 at the first step (d cannot move then: s = 0 makes num 0),
afterwards this step's increment of num and ||s||_2^2.

`DAdaptAdam`. With lambda = d lr_k (lr_k: lr, times Adam's bias correction
sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1)) with ``use_bias_correction``), sqrt(beta2) = b and c the
group's ``layer_scale`` (default 1)::

    num <- b num + (1 - b) sum c lambda <g, s / (sqrt(v) + eps)>      (the old s and v)
    m   <- beta1 m + (1 - beta1) c lambda g
    v   <- beta2 v + (1 - beta2) g^2
    s   <- b s + (1 - b) lambda g
    d   <- max(d, min(num / ((1 - b) sum c ||s||_1), d growth_rate))
    x   <- x - m / (sqrt(v) + eps)                                     (decoupled decay: x -= wd lambda x)

Reduced scalars: this step's increment sum c lambda <g, s / (sqrt(v) + eps)> and sum c ||s||_1.

As in the reference, d is one scalar for the whole model (kept, identical, in every param group)
and lambda uses the largest group lr. The reference only allows group lrs equal to that maximum or
0; here a group with lr = rho * max lr takes rho times its steps (SGD: z = x0 - rho s, with rho in
num's term; Adam: rho multiplies c), and lr-0 groups are frozen and left out of the statistics,
which is the reference whenever its restriction holds (except that the reference's DAdaptAdam
still applies decoupled weight decay to lr-0 groups). Weight decay and momentum are read per group
(the reference's DAdaptSGD uses the first group's for all). Other differences: gradients are not
modified in place, no ``log_every`` logging, ``fsdp_in_use`` is replaced by ``reduce_stats``,
``d_freeze_steps`` (an addition) stops adapting d after that many steps (no statistics, no
reduction from then on), and arguments after ``lr`` are keyword-only. The reference's DAdaptSGD
raises ZeroDivisionError on an all-zero first gradient; here that step is skipped.
"""

from __future__ import annotations

import math

import torch

from .prodigy import INF, adapting, check_betas, check_freeze_steps
from .stats import GlobalStats
from .wrapper import check_range


def _check_common(lr: float, weight_decay: float, d0: float, growth_rate: float, d_freeze_steps: int | None) -> None:
    check_range("lr", lr, 0.0, INF, True, True)
    check_range("weight_decay", weight_decay, 0.0, INF, False, True)
    check_range("d0", d0, 0.0, INF, True, True)
    check_range("growth_rate", growth_rate, 1.0, INF, False, False)
    check_freeze_steps(d_freeze_steps)


def _closure(closure):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class DAdaptSGD(GlobalStats, torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1.0, *, momentum: float = 0.0, weight_decay: float = 0.0, d0: float = 1e-6,
                 growth_rate: float = INF, d_freeze_steps: int | None = None):
        _check_common(lr, weight_decay, d0, growth_rate, d_freeze_steps)
        check_range("momentum", momentum, 0.0, 1.0, False, True)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, d0=d0, growth_rate=growth_rate,
                        d_freeze_steps=d_freeze_steps, d=d0, numerator_weighted=0.0, g0_norm=0.0, k=0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure(closure)
        first = self.param_groups[0]
        k, d = first["k"], first["d"]
        lr = max(group["lr"] for group in self.param_groups)
        active = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]

        stats = {}
        if k == 0:  # the first gradient's norm fixes the scale of lambda
            g_sq = sum((p.grad.square().sum().double() for group, p in active if group["lr"] > 0), 0.0)
            (g_sq,) = self._global(g_sq).tolist()
            if g_sq == 0:
                return loss
            stats["g0_norm"] = math.sqrt(g_sq)
        dlr = d * lr / stats.get("g0_norm", first["g0_norm"])
        adapt = adapting(first) and k > 0

        numerator, s_sq = 0.0, 0.0  # this step's increment of num, and ||s||^2
        for group, p in active:
            state = self.state[p]
            if not state:
                state["z"], state["s"], state["x0"] = p.clone(), torch.zeros_like(p), p.clone()
            if group["lr"] == 0:
                continue
            grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] != 0 else p.grad
            if adapt:
                numerator = numerator + group["lr"] / lr * torch.dot(grad.flatten(), state["s"].flatten()).double()
            state["s"].add_(grad, alpha=dlr)
            if adapt:
                s_sq = s_sq + state["s"].square().sum().double()

        if adapt:
            increment, s_sq = self._global(dlr * numerator, s_sq).tolist()
            if s_sq == 0:  # no gradient: nothing to estimate from (the reference skips the step too)
                return loss
            num = first["numerator_weighted"] + increment
            stats.update(numerator_weighted=num, d=max(d, min(2 * num / math.sqrt(s_sq), d * first["growth_rate"])))

        for group in self.param_groups:
            group.update(stats, k=k + 1)
        for group, p in active:
            state = self.state[p]
            torch.sub(state["x0"], state["s"], alpha=group["lr"] / lr, out=state["z"])
            p.mul_(group["momentum"]).add_(state["z"], alpha=1 - group["momentum"])
        return loss


class DAdaptAdam(GlobalStats, torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1.0, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decouple: bool = False, use_bias_correction: bool = False, d0: float = 1e-6,
                 growth_rate: float = INF, d_freeze_steps: int | None = None):
        _check_common(lr, weight_decay, d0, growth_rate, d_freeze_steps)
        check_betas(betas)
        check_range("eps", eps, 0.0, INF, True, True)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction, d0=d0, growth_rate=growth_rate, layer_scale=1.0,
                        d_freeze_steps=d_freeze_steps, d=d0, numerator_weighted=0.0, k=0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure(closure)
        first = self.param_groups[0]
        beta1, beta2 = first["betas"]
        b = math.sqrt(beta2)
        k, d = first["k"], first["d"]
        lr = max(group["lr"] for group in self.param_groups)
        bias = math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1)) if first["use_bias_correction"] else 1.0
        dlr = d * lr * bias
        adapt = adapting(first)

        numerator, s_norm = 0.0, 0.0  # this step's increment sum c lambda <g, s/(sqrt(v)+eps)>, and sum c ||s||_1
        for group in self.param_groups:
            scale = group["layer_scale"] * group["lr"] / lr
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, s=torch.zeros_like(p), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                if group["lr"] == 0:
                    continue
                grad = p.grad.add(p, alpha=decay) if decay != 0 and not group["decouple"] else p.grad
                s, exp_avg, exp_avg_sq = state["s"], state["exp_avg"], state["exp_avg_sq"]
                if adapt:
                    denom = exp_avg_sq.sqrt().add_(group["eps"])
                    numerator = numerator + scale * torch.dot(grad.flatten(), s.div(denom).flatten()).double()
                exp_avg.mul_(beta1).add_(grad, alpha=scale * dlr * (1 - beta1))
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if adapt:
                    s.mul_(b).add_(grad, alpha=dlr * (1 - b))
                    s_norm = s_norm + scale * s.abs().sum().double()

        stats = {}
        if adapt:
            increment, s_norm = self._global(dlr * numerator, s_norm).tolist()
            if s_norm == 0:  # no gradient yet: nothing to estimate from (the reference skips the step too)
                return loss
            num = b * first["numerator_weighted"] + (1 - b) * increment
            stats.update(numerator_weighted=num, d=max(d, min(num / ((1 - b) * s_norm), d * first["growth_rate"])))

        for group in self.param_groups:
            group.update(stats, k=k + 1)
            step = dlr * group["lr"] / lr
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                if step == 0:
                    continue
                if group["weight_decay"] != 0 and group["decouple"]:
                    p.add_(p, alpha=-group["weight_decay"] * step)
                p.addcdiv_(state["exp_avg"], state["exp_avg_sq"].sqrt().add_(group["eps"]), value=-1)
        return loss
