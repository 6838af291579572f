"""`fspda`: Fully Stochastic Primal-Dual Algorithm (Yau, Liu, Wai; arXiv 2410.18774).

Decentralized training as the constrained problem min sum_i f_i(x_i) s.t. x_i = x_j on the
edges, solved by a stochastic primal-dual (augmented Lagrangian) method in which both the graph
and the coordinates exchanged are random. At step t the active edges E_t come from the
topology (`cluster.topology`; typically time-varying, e.g. ``{name: one-edge, base: ...}`` or
``{name: bernoulli, ...}``; a static graph keeps every edge active). Both endpoints of an active
edge {i, j} draw the same random coordinate mask S_ij(t) (random-k: k = round(mask_fraction d)
coordinates, at least 1) from a generator that is a pure function of (mask_seed, t, min(i,j),
max(i,j)), so they agree without sending indices, and exchange only those coordinates of x^t.
With g_i = grad f_i(x_i^t; batch_i^t), worker i computes::

    D_i       = sum_{j: {i,j} in E_t} S_ij (x_i^t - x_j^t)
    x_i^{t+1} = x_i^t - alpha g_i - eta lam_i^t - gamma D_i
    lam_i^{t+1} = lam_i^t + beta D_i

D uses x^t on both sides, so sum_i D_i = 0 and sum_i lam_i = 0 at every step (exactly, up to
the rounding of the sums; the tests check 1e-12). A worker without an active edge has D_i = 0 and
takes a pure local step x_i - alpha g_i - eta lam_i: the asynchrony of the method. At a fixed
point D_i = 0 on every edge that is ever active (consensus on a connected union graph) and
g_i = -eta lam_i / alpha, which sums to zero: with exact gradients the models converge to the
optimum of (1/n) sum_i f_i without any bounded-heterogeneity assumption (DSGD stalls there).

Options: alpha is the inner optimizer's lr (plain SGD only, as in `gradient-tracking`: its step
computes x - lr g, LR schedules included); ``eta`` (dual step in the primal update), ``gamma``
(consensus step), ``beta`` (dual ascent step), ``mask_fraction`` (fraction of the coordinates an
edge exchanges, in (0, 1]) and ``mask_seed``. Paper's MNIST settings: alpha 1e-4, eta 1e-5,
gamma 0.5, beta 1, one of 45 edges per step, random-k 10% .. 0.01%.

Deviations from the authors' code (OscarYau525/FSPDA, pcode/optim/fspda.py): there the consensus
term is gamma/2 sum_j S_ij (x_i - x_j), eta follows the lr schedule (eta = lr * eta0/lr0) and the
dual update uses the already-updated x_i^{t+1} against the received x_j^t (so sum_i lam_i drifts);
here gamma multiplies D_i directly, eta is constant, and both updates use x^t (the spec's form).
The authors pick masks by a message from one endpoint; here they come from the shared seed.

Bytes per step per worker: for each active edge, k values of the parameters' dtype in each
direction (no indices: both endpoints know the mask). Gradient clipping, if set, clips g_i.
Evaluation: the average model; `consensus_error()` is (1/n) sum_i ||x_i - xbar||^2.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..topology import splitmix64, step_generator
from .base import flatten, unflatten_into
from .gossip import Decentralized, GraphOptions, PlainSGDInner, exchange_each

def edge_mask(seed: int, t: int, i: int, j: int, d: int, k: int) -> torch.Tensor:
    """S_ij(t): k sorted coordinates of 0..d-1, a pure function of (seed, t, {i, j})."""
    a, b = min(i, j), max(i, j)
    key = splitmix64(splitmix64(seed & ((1 << 64) - 1)) ^ ((a << 32) | b))
    if k >= d:
        return torch.arange(d)
    return torch.randperm(d, generator=step_generator(key, t))[:k].sort().values


class FSPDAOptions(GraphOptions):
    eta: float = Field(0.01, ge=0, description="weight of the dual variable in the primal step: x -= eta lam")
    gamma: float = Field(0.5, gt=0, le=1, description="consensus step: x -= gamma sum_j S_ij (x_i - x_j)")
    beta: float = Field(1.0, ge=0, description="dual ascent step: lam += beta sum_j S_ij (x_i - x_j)")
    mask_fraction: float = Field(1.0, gt=0, le=1, description="fraction of coordinates each active edge exchanges (random-k)")
    mask_seed: int = Field(0, ge=0, description="seed of the shared per-edge coordinate masks")


class FSPDA(PlainSGDInner, Decentralized):
    one_worker_is_inner = True
    name = "fspda"
    summary = "FSPDA: primal-dual on random edges with shared random coordinate masks (sparse, async)"
    Options = FSPDAOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        x = flatten([p.detach() for p in self.params])
        self.d = x.numel()
        self.k = max(1, min(self.d, int(round(self.options.mask_fraction * self.d))))
        self.dual = torch.zeros_like(x)  # lam_i

    def _step(self) -> None:
        t, o, rank = self.local_step, self.options, self.comm.rank
        self._local_grads()  # g_i in .grad, for the SGD step below
        x = flatten([p.detach() for p in self.params])  # x^t (a copy)
        masks = {j: edge_mask(o.mask_seed, t, rank, j, self.d, self.k).to(x.device) for j in self.peers(t)}
        got = exchange_each(self.comm, {j: x[m] for j, m in masks.items()})
        D = torch.zeros_like(x)
        for j in sorted(masks):
            D.index_add_(0, masks[j], x[masks[j]] - got[j])
        self.optimizer.step()  # plain SGD: x - alpha g
        new = flatten([p.detach() for p in self.params])
        new.add_(self.dual, alpha=-o.eta).add_(D, alpha=-o.gamma)
        unflatten_into(new, self.params)
        self.dual.add_(D, alpha=o.beta)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "dual": self.dual.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.dual = state["dual"].to(self.params[0].device)
