"""`quadratic`: worker r minimizes f_r(x) = 1/2 (x - b_r)^T A (x - b_r), with noisy gradients.

A = diag(a_1..a_d) with eigenvalues log-spaced in [mu, L]; b_r = b + zeta * e_r, where b and
e_r ~ N(0, I) are drawn from the run seed: `zeta` controls heterogeneity (zeta = 0: identical
objectives). A "batch" is a noise vector z ~ N(0, sigma^2 I / batch_size), and the training loss
is f_r(x) + z.x, so the stochastic gradient is A(x - b_r) + z. The global objective
f(x) = mean_r f_r(x) is minimized at x* = mean_r b_r; `evaluate` returns f(x) - f(x*) in float64.
Runs in float64 by default, which makes it the workhorse of exact-equivalence tests.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from .base import BatchSampler, Task, TaskParams, worker_seed


class QuadraticParams(TaskParams):
    """Parameters of `quadratic`."""

    dim: int = Field(32, ge=1)
    mu: float = Field(0.1, gt=0.0, description="smallest curvature")
    L: float = Field(1.0, gt=0.0, description="largest curvature")
    zeta: float = Field(1.0, ge=0.0, description="heterogeneity: spread of the workers' optima")
    sigma: float = Field(0.1, ge=0.0, description="gradient noise standard deviation (batch size 1)")
    dtype: Literal["float32", "float64"] = "float64"


class Point(nn.Module):
    """A model that is just a point x in R^d."""

    def __init__(self, dim: int, dtype: torch.dtype):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(dim, dtype=dtype))


class Quadratic(Task):
    name = "quadratic"
    Params = QuadraticParams
    description = "synthetic quadratics with controllable heterogeneity (fast, float64)"

    def __init__(self, params: QuadraticParams, world_size: int, seed: int):
        super().__init__(params, world_size, seed)
        if params.L < params.mu:
            raise ValueError(f"quadratic needs L >= mu, got L={params.L}, mu={params.mu}")
        g = torch.Generator().manual_seed(worker_seed(seed, 0, 5))
        d = params.dim
        self.a = torch.logspace(torch.log10(torch.tensor(params.mu)), torch.log10(torch.tensor(params.L)), d, dtype=torch.float64)
        b = torch.randn(d, generator=g, dtype=torch.float64)
        self.b = torch.stack([b + params.zeta * torch.randn(d, generator=g, dtype=torch.float64) for _ in range(world_size)])
        self.x_star = self.b.mean(0)
        self.f_star = self._f(self.x_star)

    def _f(self, x: torch.Tensor) -> float:
        diff = x.double()[None, :] - self.b  # (n, d)
        return float(0.5 * (diff.pow(2) * self.a).sum(1).mean())

    def build_model(self) -> nn.Module:
        return Point(self.params.dim, getattr(torch, self.params.dtype))

    def sampler(self, rank: int, batch_size: int) -> BatchSampler:
        dt = getattr(torch, self.params.dtype)
        b_r, a = self.b[rank].to(dt), self.a.to(dt)
        scale = self.params.sigma / batch_size**0.5

        def draw(gen: torch.Generator):
            z = torch.randn(self.params.dim, generator=gen, dtype=torch.float64).to(dt) * scale
            return a, b_r, z

        return BatchSampler(draw, worker_seed(self.seed, rank, 6))

    def loss(self, model, batch):
        a, b_r, z = batch
        diff = model.x - b_r
        return 0.5 * (a * diff * diff).sum() + (z * model.x).sum()

    @torch.no_grad()
    def evaluate(self, model) -> float:
        return self._f(model.x.detach().cpu()) - self.f_star
