"""Polynomial-decay iterate averaging (Shamir & Zhang, 2013), the averaging DoG's authors use::

    xbar_t = (1 - w_t) xbar_{t-1} + w_t x_t,    w_t = (1 + gamma) / (t + gamma),  t = 1, 2, ...

after each base step (w_1 = 1: xbar_1 = x_1). gamma = 0 is the uniform average; larger gamma
forgets the early iterates faster (default 8). A wrapper like `GPA`: the parameters hold the
iterate x_t, the evaluation point (``eval()``, ``averaged()``) is xbar; one extra buffer.
"""

from __future__ import annotations

import torch

from .wrapper import OptimizerWrapper, check_range


class PolyAverage(OptimizerWrapper):
    def __init__(self, optimizer: torch.optim.Optimizer, gamma: float = 8.0):
        check_range("gamma", gamma, 0.0, float("inf"), False, True)
        super().__init__(optimizer, {"gamma": gamma, "average_step": 0})
        for group in self.param_groups:
            group["gamma"] = gamma

    def _after_base(self) -> None:
        for group in self.param_groups:
            group["average_step"] += 1
            t, gamma = group["average_step"], group["gamma"]
            params = self._params(group)
            for p in params:
                if "average" not in self.state[p]:
                    self.state[p]["average"] = p.detach().clone()
            if params:
                torch._foreach_lerp_([self.state[p]["average"] for p in params], params, (1 + gamma) / (t + gamma))

    def _to_eval_point(self, group: dict, p: torch.Tensor) -> None:
        if "average" in self.state[p]:
            p.copy_(self.state[p]["average"])
