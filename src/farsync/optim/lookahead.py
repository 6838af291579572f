"""Lookahead (Zhang, Lucas, Hinton & Ba, 2019): slow weights phi, fast weights theta (the
parameters, where the gradient is taken)::

    every step:       theta <- BaseStep(theta)
    every k steps:    phi <- phi + alpha (theta - phi);   theta <- phi

One extra buffer (phi, in the state_dict - a known bug class elsewhere); the step counter lives
in each group (``lookahead_step``). Evaluation point: phi. Reduction: alpha = 1 is the base
optimizer exactly. Ranges: k >= 1, alpha in (0, 1].
"""

from __future__ import annotations

import torch

from .wrapper import OptimizerWrapper, check_range


class Lookahead(OptimizerWrapper):
    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        check_range("alpha", alpha, 0.0, 1.0, True, False)
        super().__init__(optimizer, {"k": k, "alpha": alpha, "lookahead_step": 0})
        for group in self.param_groups:
            group["k"], group["alpha"] = k, alpha

    def _slow(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "slow" not in state:
            state["slow"] = p.detach().clone()
        return state["slow"]

    def _before_base(self) -> None:
        for group in self.param_groups:
            for p in self._params(group):
                self._slow(p)  # phi_0 = theta_0, before the first step moves theta

    def _after_base(self) -> None:
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["k"]:
                continue
            params = self._params(group)
            if params:
                slows = [self.state[p]["slow"] for p in params]
                torch._foreach_lerp_(slows, params, group["alpha"])
                torch._foreach_copy_(params, slows)

    def _to_eval_point(self, group: dict, p: torch.Tensor) -> None:
        if "slow" in self.state[p]:
            p.copy_(self.state[p]["slow"])
