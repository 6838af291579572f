"""EMA-Nesterov (Yau, Li, Glentis, Boreiko, Wai & Hong; arXiv 2605.25395): Nesterov's one-step
lookahead replaced by an EMA of the parameter updates::

    theta_tilde_t = theta_t + beta_t m_t                   # forward/backward here (the parameters)
    theta_{t+1}   = BaseStep(theta_tilde_t)                # any base optimizer, from theta_tilde
    m_{t+1}       = gamma m_t + (1 - gamma) (theta_{t+1} - theta_t)

beta_t = beta x lr_t / lr_max (lr_max: the largest learning rate of the group so far), and 0 for
the first ``warmup_steps`` steps and from step ``cooldown_start`` on (None: never). After
``step()`` the parameters already hold the next lookahead point theta_{t+1} + beta_{t+1} m_{t+1};
beta_{t+1} uses the learning rate current at that step() (an LR scheduler steps after it). One
extra buffer, m: theta = p - beta_used m is recovered from the parameters (beta_used is kept per
group), and m is updated in two in-place halves around the base step::

    before: m <- (gamma + (1 - gamma) beta_used) m - (1 - gamma) p
    after:  m <- m + (1 - gamma) p;   p <- p + beta_{t+1} m

Evaluation point: theta (not theta_tilde). Reductions (tests): beta = 0 is the base optimizer
exactly; gamma = 0 is the plain one-step lookahead theta_{t+1} + beta (theta_{t+1} - theta_t).
Ranges: gamma in [0, 1), beta >= 0, warmup_steps >= 0.
"""

from __future__ import annotations

import math

import torch

from .wrapper import OptimizerWrapper, check_range


class EMANesterov(OptimizerWrapper):
    def __init__(self, optimizer: torch.optim.Optimizer, beta: float = 0.5, gamma: float = 0.99,
                 warmup_steps: int = 0, cooldown_start: int | None = None):
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        check_range("gamma", gamma, 0.0, 1.0, False, True)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if cooldown_start is not None and (not isinstance(cooldown_start, int) or cooldown_start < warmup_steps):
            raise ValueError(f"cooldown_start must be None or an integer >= warmup_steps ({warmup_steps}), got {cooldown_start!r}")
        super().__init__(optimizer, {"beta": beta, "gamma": gamma, "warmup_steps": warmup_steps,
                                     "cooldown_start": cooldown_start, "ema_step": 0, "beta_used": 0.0, "lr_max": 0.0})
        for group in self.param_groups:
            group.update(beta=beta, gamma=gamma, warmup_steps=warmup_steps, cooldown_start=cooldown_start)

    def _m(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "m" not in state:
            state["m"] = torch.zeros_like(p)
        return state["m"]

    def _before_base(self) -> None:
        for group in self.param_groups:
            params = self._params(group)
            if params:
                gamma, b = group["gamma"], group["beta_used"]
                ms = [self._m(p) for p in params]
                torch._foreach_mul_(ms, gamma + (1.0 - gamma) * b)
                torch._foreach_add_(ms, params, alpha=-(1.0 - gamma))

    def _after_base(self) -> None:
        for group in self.param_groups:
            group["ema_step"] += 1
            group["lr_max"] = max(group["lr_max"], float(group["lr"]))
            t, start, end = group["ema_step"], group["warmup_steps"], group["cooldown_start"]
            on = t >= start and (end is None or t < end) and group["lr_max"] > 0
            b = group["beta"] * float(group["lr"]) / group["lr_max"] if on else 0.0
            params = self._params(group)
            if params:
                ms = [self.state[p]["m"] for p in params]
                torch._foreach_add_(ms, params, alpha=1.0 - group["gamma"])
                if b:
                    torch._foreach_add_(params, ms, alpha=b)
            group["beta_used"] = b

    def _to_eval_point(self, group: dict, p: torch.Tensor) -> None:
        if group["beta_used"] and "m" in self.state[p]:
            p.sub_(self.state[p]["m"], alpha=group["beta_used"])
