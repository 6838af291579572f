"""DoG and DoWG: step sizes from the distance travelled, no learning rate to tune.

DoG, "Distance over Gradients" (Ivgi, Hinder & Carmon, 2023, arXiv 2302.12022), per param group::

    rbar_t = max(rbar_{t-1}, ||x_t - x_0||)     rbar_0 = r_eps = reps_rel * (1 + ||x_0||)
    G_t    = G_{t-1} + ||g_t||^2                G_0 = ||g_0||^2 + eps
    x_{t+1} = x_t - lr * rbar_t / sqrt(G_t) * g_t            (lr = c in the paper; keep 1)

(at t = 0 the distance term is not taken: eta_0 = lr * r_eps / sqrt(G_0)), as in the authors'
package `dog-optimizer`, which the tests match step for step. ``init_eta`` replaces the first
step size. The authors pair DoG with polynomial-decay iterate averaging: wrap it,
``{name: poly-average, base: {name: dog}, gamma: 8}`` (`PolyAverage`).

DoWG, "Distance over Weighted Gradients" (Khaled, Mishchenko & Jin, 2023, arXiv 2305.16284)::

    rbar_t = max(rbar_{t-1}, ||x_t - x_0||)     rbar_{-1} = r_eps
    v_t    = v_{t-1} + rbar_t^2 ||g_t||^2
    x_{t+1} = x_t - lr * rbar_t^2 / (sqrt(v_t) + eps) * g_t

(no public reference package; r_eps defaults to DoG's 1e-6 (1 + ||x_0||), the paper leaves it
to the user). Weight decay (L2) is added to the gradient before the statistics, as in DoG's
package.

Scalars averaged over workers (`GlobalStats`): per group ``||x_t - x_0||^2`` and ``||g_t||^2``.
Parameters without a gradient do not move, but count in ``||x - x_0||``.
"""

from __future__ import annotations

import math

import torch

from .stats import GlobalStats, total


class _DistanceOverGradients(GlobalStats, torch.optim.Optimizer):
    def __init__(self, params, lr: float, reps_rel: float, weight_decay: float, eps: float, extra: dict):
        if not lr > 0:
            raise ValueError(f"lr must be > 0 (keep the default 1.0), got {lr!r}")
        if not reps_rel > 0:
            raise ValueError(f"reps_rel must be > 0 (r_eps = reps_rel * (1 + ||x_0||); suggested 1e-6), got {reps_rel!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        super().__init__(params, dict(lr=lr, reps_rel=reps_rel, weight_decay=weight_decay, eps=eps, step=0, **extra))

    def _grads(self, group: dict) -> list[torch.Tensor | None]:
        wd = group["weight_decay"]
        return [None if p.grad is None else (p.grad + wd * p if wd else p.grad) for p in group["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stats, grads = [], []
        for group in self.param_groups:
            for p in group["params"]:
                if "x0" not in self.state[p]:
                    self.state[p]["x0"] = p.detach().clone()
            g = self._grads(group)
            grads.append(g)
            dist2 = total([(p - self.state[p]["x0"]).pow(2).sum() for p in group["params"]])
            gnorm2 = total([x.pow(2).sum() for x in g if x is not None])
            stats += [dist2, gnorm2]
        stats = self._global(*stats).tolist()
        for i, (group, g) in enumerate(zip(self.param_groups, grads)):
            if group["step"] == 0:
                x0 = math.sqrt(sum(float(p.pow(2).sum()) for p in group["params"]))
                group["rbar"] = group["reps_rel"] * (1 + x0)
            else:
                group["rbar"] = max(group["rbar"], math.sqrt(stats[2 * i]))
            eta = self._eta(group, stats[2 * i + 1])
            group["eta"] = eta
            group["step"] += 1
            for p, d in zip(group["params"], g):
                if d is not None:
                    p.add_(d, alpha=-eta)
        return loss


class DoG(_DistanceOverGradients):
    """DoG (module docstring); ``lr`` is the paper's c (keep 1), ``init_eta`` the first step."""

    def __init__(self, params, lr: float = 1.0, reps_rel: float = 1e-6, weight_decay: float = 0.0, eps: float = 1e-8,
                 init_eta: float | None = None):
        if init_eta is not None and not init_eta > 0:
            raise ValueError(f"init_eta must be > 0 or None, got {init_eta!r}")
        super().__init__(params, lr, reps_rel, weight_decay, eps, {"init_eta": init_eta, "G": 0.0})
        if init_eta is not None:  # as the authors' package: r_eps = 0, the first step is init_eta
            for group in self.param_groups:
                group["reps_rel"] = 0.0

    def _eta(self, group: dict, gnorm2: float) -> float:
        first = group["step"] == 0
        group["G"] = gnorm2 + group["eps"] if first else group["G"] + gnorm2
        if group["G"] <= 0:
            raise ValueError("DoG: the sum of squared gradient norms is 0 (set eps > 0)")
        if first and group["init_eta"] is not None:
            return group["init_eta"]
        return group["lr"] * group["rbar"] / math.sqrt(group["G"])


class DoWG(_DistanceOverGradients):
    """DoWG (module docstring); ``lr`` scales the step (keep 1)."""

    def __init__(self, params, lr: float = 1.0, reps_rel: float = 1e-6, weight_decay: float = 0.0, eps: float = 1e-8):
        super().__init__(params, lr, reps_rel, weight_decay, eps, {"v": 0.0})

    def _eta(self, group: dict, gnorm2: float) -> float:
        r2 = group["rbar"] ** 2
        group["v"] += r2 * gnorm2
        return group["lr"] * r2 / (math.sqrt(group["v"]) + group["eps"])
