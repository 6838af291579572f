"""Stochastic Polyak step sizes: SPS_max and MoMo. Both need the mini-batch loss.

SPS_max (Loizou, Vaswani, Laradji & Lacoste-Julien, 2021, arXiv 2002.10542)::

    gamma_k = min( (f_i(x_k) - f_i^*) / (c ||g_k||^2),  gamma_b );   x_{k+1} = x_k - gamma_k g_k

with c = 0.5 by default, gamma_b = ``lr`` (per param group) and f_i^* the optimal value of the
mini-batch loss: ``f_star`` (default 0, exact for interpolating models; a lower bound otherwise)
or per batch, ``step(loss=..., f_star=...)`` (SPS*, e.g. a teacher's loss). If the loss is
already below f_i^*, the step is 0. The norm is over all parameters.

MoMo (Schaipp, Ohana, Eickenberg, Defazio & Gower, 2023, arXiv 2305.07583), the SGD-momentum
form, as in the authors' package ``momo-opt`` (which the tests match step for step)::

    d_k   = beta d_{k-1} + (1 - beta) g_k                       (momentum; d_1 = g_1)
    fbar  = beta fbar + (1 - beta) f_i(x_k);  gbar = beta gbar + (1 - beta) <g_k, x_k>
    h     = fbar + <d_k, x_k> - gbar                              (model value at x_k)
    tau_k = min( lr / rho_k,  [h - rho_k lb]_+ / ||d_k||^2 )
    x_{k+1} = (x_k - tau_k d_k) / (1 + lr * weight_decay)

(rho_k = 1 - beta^k with ``bias_correction``, else 1; with weight decay h uses (1 + lr wd)
factors; ``use_fstar`` estimates the lower bound lb online.)

Scalars averaged over workers (`GlobalStats`): SPS ``f_i(x) - f_i^*`` and ``||g||^2``; MoMo
the loss and the sums <x, d>, gbar, ||d||^2.
"""

from __future__ import annotations

import torch

from .stats import GlobalStats, total


def _loss_value(loss, name: str) -> torch.Tensor | float:
    """The loss as a float64 0-d tensor on its device (no host sync: `_global` copies it to the
    host with the other statistics) or a float."""
    if loss is None:
        raise ValueError(f"{name}.step needs the mini-batch loss: step(loss=loss) or step(closure)")
    return loss.detach().reshape(()).double() if torch.is_tensor(loss) else float(loss)


def _check(name: str, value: float, ok: bool, rng: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rng}, got {value!r}")


class SPS(GlobalStats, torch.optim.Optimizer):
    """SPS_max (module docstring); ``lr`` is the upper bound gamma_b."""

    step_needs = ("loss",)

    def __init__(self, params, lr: float = 1.0, c: float = 0.5, f_star: float = 0.0):
        _check("lr", lr, lr > 0, "> 0 (the step-size bound gamma_b)")
        _check("c", c, c > 0, "> 0")
        super().__init__(params, dict(lr=lr, c=c, f_star=f_star))

    @torch.no_grad()
    def step(self, closure=None, loss=None, f_star: float | None = None):
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        value = _loss_value(loss, "SPS")
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        f_star = self.param_groups[0]["f_star"] if f_star is None else f_star
        gap, g2 = self._global(value - f_star, total([p.grad.pow(2).sum() for p in params])).tolist()
        for group in self.param_groups:
            gamma = 0.0 if g2 == 0 else min(max(gap, 0.0) / (group["c"] * g2), group["lr"])
            group["gamma"] = gamma
            ps = [p for p in group["params"] if p.grad is not None]
            if ps and gamma:
                torch._foreach_add_(ps, [p.grad for p in ps], alpha=-gamma)
        return loss


class MoMo(GlobalStats, torch.optim.Optimizer):
    """MoMo (module docstring). Defaults as the authors' package: lr 1, beta 0.9, lb 0."""

    step_needs = ("loss",)

    def __init__(self, params, lr: float = 1.0, weight_decay: float = 0.0, beta: float = 0.9, lb: float = 0.0,
                 bias_correction: bool = False, use_fstar: bool = False):
        _check("lr", lr, lr > 0, "> 0")
        _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        _check("beta", beta, 0 <= beta < 1, "in [0, 1)")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.beta, self.bias_correction, self.use_fstar = beta, bias_correction, use_fstar
        self.param_groups[0].update(momo_step=0, loss_avg=0.0, lb=lb, initial_lb=lb)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        value = _loss_value(loss, "MoMo")
        shared, beta = self.param_groups[0], self.beta
        shared["momo_step"] += 1
        k = shared["momo_step"]
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if "grad_avg" not in state:  # first step: averages start at the first gradient (0 with bias correction)
                first = not self.bias_correction
                state["grad_avg"] = p.grad.detach().clone() if first else torch.zeros_like(p)
                state["grad_dot_w"] = torch.sum(p * p.grad) if first else torch.zeros((), dtype=p.dtype, device=p.device)
            state["grad_avg"].mul_(beta).add_(p.grad, alpha=1 - beta)
            state["grad_dot_w"].mul_(beta).add_(torch.sum(p * p.grad), alpha=1 - beta)
        dot = total([torch.sum(p * self.state[p]["grad_avg"]) for p in params])
        gbar = total([self.state[p]["grad_dot_w"].reshape(()) for p in params])
        norm = total([self.state[p]["grad_avg"].pow(2).sum() for p in params])
        value, dot, gbar, norm = self._global(value, dot, gbar, norm).tolist()
        if k == 1:
            shared["loss_avg"] = 0.0 if self.bias_correction else value
        shared["loss_avg"] = beta * shared["loss_avg"] + (1 - beta) * value
        rho = 1 - beta**k if self.bias_correction else 1.0
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            scale = 1 + lr * wd
            if self.use_fstar:
                cap = scale * shared["loss_avg"] + dot - scale * gbar
                if cap < scale * rho * shared["lb"]:
                    shared["lb"] = max(cap / (2 * scale * rho), shared["initial_lb"])
            nom = scale * (shared["loss_avg"] - rho * shared["lb"]) + dot - scale * gbar
            tau = 0.0 if norm == 0 else min(lr / rho, max(nom, 0.0) / norm)
            if self.use_fstar:
                h = shared["loss_avg"] + dot - gbar
                shared["lb"] = max((h - 0.5 * tau * norm) / rho, shared["initial_lb"])
            group["tau"] = tau
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.add_(self.state[p]["grad_avg"], alpha=-tau)
                if wd > 0:
                    p.div_(scale)
        return loss
