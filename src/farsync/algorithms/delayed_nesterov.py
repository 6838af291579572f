"""Delayed Nesterov (DN): the asynchronous server's outer optimizer (Liu et al., arXiv 2401.09135).

Each arriving pseudo-gradient g (as ``.grad``) is one ``step()``. With momentum buffer m, an
accumulator B and period N (about the number of workers)::

    B += g;  a += 1
    if a % N != 0:  p -= lr * g / N                    # plain step, momentum untouched
    else:           m = beta * m + B / N
                    p -= lr * (g / N + beta * m)
                    B = 0

Over N arrivals this is exactly one Nesterov step (torch.optim.SGD with ``nesterov=True``) on the
mean of the N pseudo-gradients: the momentum moves once per N arrivals, so a stale pseudo-gradient
is not amplified N times by it, and the plain steps keep the parameters fresh in between. With
N = 1 it is Nesterov on every arrival. This is the rule in our spec (a re-implementation citing the
paper's Algorithm 3); we checked the N-arrivals identity, not the authors' code.
"""

from __future__ import annotations

import torch


class DelayedNesterov(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.7, momentum: float = 0.9, period: int = 1):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not (isinstance(period, int) and period >= 1):
            raise ValueError(f"period must be an integer >= 1, got {period!r}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "period": period})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, n = group["lr"], group["momentum"], group["period"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["arrivals"] = 0
                    state["momentum_buffer"] = torch.zeros_like(p)
                    state["accumulator"] = torch.zeros_like(p)
                state["arrivals"] += 1
                state["accumulator"].add_(g)
                if state["arrivals"] % n:
                    p.add_(g, alpha=-lr / n)
                else:
                    m = state["momentum_buffer"]
                    m.mul_(beta).add_(state["accumulator"], alpha=1 / n)
                    p.add_((g / n).add_(m, alpha=beta), alpha=-lr)  # torch.optim.SGD's arithmetic when N = 1
                    state["accumulator"].zero_()
        return loss
