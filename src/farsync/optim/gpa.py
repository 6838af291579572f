"""GPA - Generalized Primal Averaging (Defazio, Mishchenko, Raman, Shi, Xiao; arXiv 2512.17131).

With base direction d (one step of ANY base optimizer: z - lr d), gradient point y, base iterate z
and evaluation point x::

    y_t     = mu_y x_t + (1 - mu_y) z_t          # the gradient is taken here (the parameters hold y)
    z_{t+1} = z_t - lr d(y_t)                     # the base optimizer's step
    x_{t+1} = mu_x x_t + (1 - mu_x) z_{t+1}       # an EMA of z: the evaluation point

In place (one extra buffer, z; u = lr d = y_t - (y after the base step), c = 1 - mu_x)::

    y <- lerp(y_t, z_t, c) + (mu_y (1 - c) - 1) u;   z <- z_t - u
    eval: x = lerp(y, z, 1 - 1/mu_y)                 train: y = lerp(x, z, 1 - mu_y)

The base optimizer runs on the parameters (at y), so its weight decay acts at y. ``step()`` holds a
transient copy of y to read u off the base step. Reductions (tests): mu_x = 0 is the base
optimizer; SGD with mu_y = 1, mu_x = b, lr / (1 - b) is heavy-ball momentum b; mu_x = mu_y = b,
lr / (1 - b) is Nesterov momentum b; `GPAReference` is the three-sequence form above.
Ranges: mu_y in (0, 1], mu_x in [0, 1). Paper defaults: mu_x = 0.9967, mu_y = 0.7.
"""

from __future__ import annotations

import torch

from .wrapper import OptimizerWrapper, check_range


class GPA(OptimizerWrapper):
    def __init__(self, optimizer: torch.optim.Optimizer, mu_x: float = 0.9967, mu_y: float = 0.7):
        check_range("mu_x", mu_x, 0.0, 1.0, False, True)
        check_range("mu_y", mu_y, 0.0, 1.0, True, False)
        super().__init__(optimizer, {"mu_x": mu_x, "mu_y": mu_y})
        for group in self.param_groups:  # the caller's values win over a group's earlier ones
            group["mu_x"], group["mu_y"] = mu_x, mu_y

    def _z(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "z" not in state:
            state["z"] = p.detach().clone()  # x_0 = y_0 = z_0
        return state["z"]

    def _before_base(self) -> None:
        self._y = []
        for group in self.param_groups:
            params = self._params(group)
            for p in params:
                self._z(p)  # z_0 = x_0 = y_0, before the first base step moves the parameters
            self._y.append([p.detach().clone() for p in params])

    def _after_base(self) -> None:
        for group, ys in zip(self.param_groups, self._y):
            c, mu_y = 1.0 - group["mu_x"], group["mu_y"]
            for p, y in zip(self._params(group), ys):
                z = self._z(p)
                u = y - p  # lr d, read off the base step
                y.lerp_(z, c).add_(u, alpha=mu_y * (1.0 - c) - 1.0)
                z.sub_(u)
                p.copy_(y)
        self._y = None

    def _to_eval_point(self, group: dict, p: torch.Tensor) -> None:
        if "z" in self.state[p]:
            p.lerp_(self.state[p]["z"], 1.0 - 1.0 / group["mu_y"])


class GPAReference:
    """GPA with explicit x, y, z lists (tests only): the parameters hold y; the base optimizer
    steps them to read lr d(y), then x, y, z follow the three-sequence definition."""

    def __init__(self, optimizer: torch.optim.Optimizer, mu_x: float, mu_y: float):
        self.base, self.mu_x, self.mu_y = optimizer, mu_x, mu_y
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.x = [p.detach().clone() for p in self.params]
        self.z = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        y = [p.detach().clone() for p in self.params]
        self.base.step()
        for i, p in enumerate(self.params):
            u = y[i] - p
            self.z[i] = self.z[i] - u
            self.x[i] = self.mu_x * self.x[i] + (1 - self.mu_x) * self.z[i]
            p.copy_(self.mu_y * self.x[i] + (1 - self.mu_y) * self.z[i])
