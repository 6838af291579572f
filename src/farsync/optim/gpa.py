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

``weighting="schedule-free"`` replaces the constant 1 - mu_x by Schedule-Free's time-varying
c_{t+1} = w_t / sum_{i<=t} w_i, w_t = (t+1)^r lr_max_t^p (lr_max_t: the largest lr so far; r = 0,
p = 2 by default), with mu_y as Schedule-Free's momentum beta (Defazio et al., arXiv 2405.15682).
Tested step for step (float64, 1e-10) against ``schedulefree.ScheduleFreeWrapper`` over SGD and
against ``schedulefree.AdamWScheduleFree`` (= GPA over AdamW with betas (0, beta2), whose
decoupled decay is applied at y as Schedule-Free AdamW's is). ScheduleFreeWrapper itself runs the
base step at z and keeps z in the base optimizer's state, which breaks lazily initialised bases
such as torch's Adam (KeyError 'exp_avg' on the first step, schedulefree 1.4.1); this wrapper has
its own state.
"""

from __future__ import annotations

import torch

from .wrapper import OptimizerWrapper, check_range


class GPA(OptimizerWrapper):
    def __init__(self, optimizer: torch.optim.Optimizer, mu_x: float = 0.9967, mu_y: float = 0.7,
                 weighting: str = "constant", r: float = 0.0, weight_lr_power: float = 2.0):
        check_range("mu_x", mu_x, 0.0, 1.0, False, True)
        check_range("mu_y", mu_y, 0.0, 1.0, True, False)
        if weighting not in ("constant", "schedule-free"):
            raise ValueError(f"weighting must be 'constant' or 'schedule-free', got {weighting!r}")
        if r < 0 or weight_lr_power < 0:
            raise ValueError(f"r and weight_lr_power must be >= 0, got r={r!r}, weight_lr_power={weight_lr_power!r}")
        super().__init__(optimizer, {"mu_x": mu_x, "mu_y": mu_y, "weighting": weighting, "r": r,
                                     "weight_lr_power": weight_lr_power, "sf_step": 0, "sf_weight_sum": 0.0, "sf_lr_max": 0.0})
        for group in self.param_groups:  # the caller's values win over a group's earlier ones
            group.update(mu_x=mu_x, mu_y=mu_y, weighting=weighting, r=r, weight_lr_power=weight_lr_power)

    @staticmethod
    def _c(group: dict) -> float:
        """1 - mu_x, or Schedule-Free's c_{t+1} = w_t / sum_{i<=t} w_i, w_t = (t+1)^r lr_max^p."""
        if group["weighting"] == "constant":
            return 1.0 - group["mu_x"]
        group["sf_lr_max"] = max(group["sf_lr_max"], float(group["lr"]))
        w = (group["sf_step"] + 1) ** group["r"] * group["sf_lr_max"] ** group["weight_lr_power"]
        group["sf_weight_sum"] += w
        group["sf_step"] += 1
        return w / group["sf_weight_sum"] if group["sf_weight_sum"] > 0 else 1.0

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
        # With p the parameters after the base step (= y_t - u) the update is, in four in-place
        # foreach passes (ys becomes u):  y_{t+1} = lerp(p, z_t, c) + (mu_y (1 - c) - c) u,
        # z_{t+1} = z_t - u  (the same as lerp(y_t, z_t, c) + (mu_y (1 - c) - 1) u).
        for group, ys in zip(self.param_groups, self._y):
            params = self._params(group)
            if not params:
                continue
            c, mu_y = self._c(group), group["mu_y"]
            zs = [self.state[p]["z"] for p in params]
            torch._foreach_sub_(ys, params)
            torch._foreach_lerp_(params, zs, c)
            torch._foreach_add_(params, ys, alpha=mu_y * (1.0 - c) - c)
            torch._foreach_sub_(zs, ys)
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
