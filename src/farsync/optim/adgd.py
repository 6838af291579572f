"""AdGD: adaptive gradient descent without descent (Malitsky & Mishchenko).

2020 rule (arXiv 1910.09529, Algorithm 1), theta_0 = +inf::

    lambda_k = min( sqrt(1 + theta_{k-1}) lambda_{k-1},  ||x_k - x_{k-1}|| / (2 ||g_k - g_{k-1}||) )
    theta_k  = lambda_k / lambda_{k-1};   x_{k+1} = x_k - lambda_k g_k

2023 rule (arXiv 2308.02261), with L_k = ||g_k - g_{k-1}|| / ||x_k - x_{k-1}||::

    lambda_k = min( sqrt(2/3 + theta_{k-1}) lambda_{k-1},  lambda_{k-1} / sqrt([2 lambda_{k-1}^2 L_k^2 - 1]_+) )

with theta_0 = 1/3 (our choice, unverified against the paper's text: the 2023 bound is infinite
whenever lambda_{k-1} L_k < 1/sqrt(2), so theta_0 = +inf would allow an infinite first step;
1/3 makes the first step keep lambda_0). The first step is x_1 = x_0 - lambda_0 g_0 with
``lr`` = lambda_0. When both bounds are infinite (no curvature seen and no growth limit),
lambda stays lambda_{k-1}.

The step size is one scalar for all parameters (norms over every param group; ``lr`` is only
lambda_0, taken from the first group). The method is deterministic: with mini-batches, g_k and
g_{k-1} must come from the same batch. ``same_batch=True`` makes ``step(closure)`` required:
AdGD moves the parameters back to x_{k-1}, calls the closure (which must recompute the loss and
``backward()`` on the current batch), reads g_{k-1}, and restores x_k and g_k. That costs one
extra forward and backward per step. Without it, g_{k-1} is the previous step's gradient (exact
for full-batch training).

Scalars averaged over workers (`GlobalStats`): ``||x_k - x_{k-1}||^2`` and
``||g_k - g_{k-1}||^2`` (with local mini-batches, the mean of the workers' squared differences,
an upper bound on the squared difference of the averaged gradients).
"""

from __future__ import annotations

import math

import torch

from .stats import GlobalStats, total

RULES = ("2020", "2023")


class AdGD(GlobalStats, torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-6, rule: str = "2020", same_batch: bool = False):
        if not lr > 0:
            raise ValueError(f"lr (the first step size lambda_0) must be > 0, got {lr!r}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        super().__init__(params, dict(lr=lr))
        self.rule, self.same_batch = rule, same_batch
        self.step_needs = ("closure",) if same_batch else ()
        shared = self.param_groups[0]
        shared.update(adgd_step=0, lam=lr, theta=math.inf if rule == "2020" else 1 / 3, smoothness=math.nan)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def _previous_gradients(self, params: list[torch.Tensor], closure) -> list[torch.Tensor]:
        """g_{k-1}: stored, or recomputed on the current batch at x_{k-1} through `closure`."""
        if not self.same_batch:
            return [self.state[p]["prev_grad"] for p in params]
        if closure is None:
            raise ValueError("AdGD(same_batch=True).step needs a closure that recomputes the loss and gradients on the current batch")
        x_k = [p.detach().clone() for p in params]
        g_k = [p.grad for p in params]
        for p in params:
            p.copy_(self.state[p]["prev_x"])
            p.grad = None
        with torch.enable_grad():
            closure()
        prev = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, x, g in zip(params, x_k, g_k):
            p.copy_(x)
            p.grad = g
        return prev

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None and not self.same_batch:
            with torch.enable_grad():
                loss = closure()
        shared = self.param_groups[0]
        params = self._params()
        if shared["adgd_step"] > 0:
            g_prev = self._previous_gradients(params, closure)
            dx2 = total([(p - self.state[p]["prev_x"]).pow(2).sum() for p in params])
            dg2 = total([(p.grad - gp).pow(2).sum() for p, gp in zip(params, g_prev)])
            dx2, dg2 = self._global(dx2, dg2).tolist()
            lam = self._next_lambda(shared, math.sqrt(dx2), math.sqrt(dg2))
            shared["theta"], shared["lam"] = lam / shared["lam"], lam
        shared["adgd_step"] += 1
        for p in params:
            self.state[p]["prev_x"] = p.detach().clone()
            if not self.same_batch:
                self.state[p]["prev_grad"] = p.grad.detach().clone()
        torch._foreach_add_(params, [p.grad for p in params], alpha=-shared["lam"])
        return loss

    def _next_lambda(self, shared: dict, dx: float, dg: float) -> float:
        lam, theta = shared["lam"], shared["theta"]
        smooth = dg / dx if dx > 0 else (math.inf if dg > 0 else 0.0)  # L_k
        shared["smoothness"] = smooth
        if self.rule == "2020":
            growth = math.sqrt(1 + theta) * lam
            curvature = math.inf if smooth == 0 else 1 / (2 * smooth)
        else:
            growth = math.sqrt(2 / 3 + theta) * lam
            excess = 2 * lam**2 * smooth**2 - 1
            curvature = lam / math.sqrt(excess) if excess > 0 else math.inf
        new = min(growth, curvature)
        return lam if math.isinf(new) else new
