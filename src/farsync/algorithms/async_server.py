"""Parameter-server algorithms beside `async-local-sgd`: `asgd`, `dude-asgd` and `fedbuff`.

All three run on `async_loop.train_async` like `async-local-sgd` (rank 0 is the server holding x,
ranks 1..n are workers with shards 0..n-1 and speeds ``cluster.speeds``; no barrier) and reuse its
worker/server plumbing (`pull`, `assign`, the token budget of ``train.steps`` x n inner steps, the
virtual-time arrival order of `Communicator.recv_any` on the simulator, no checkpoints).

``asgd`` - vanilla asynchronous SGD (the baseline; e.g. Lian et al. 2015, Mishchenko et al. 2022)::

    worker i:  pull x;  g = grad f_i(x; xi)  (one mini-batch);  push g
    server:    on arrival of (i, g):  x <- x - lr g;  send x back to worker i

``dude-asgd`` - dual-delayed asynchronous SGD (Wang, Sun, Wai, Zhang, arXiv 2405.16966). The
server keeps the latest gradient G_i of every worker and their mean G_bar = (1/n) sum_i G_i, so
every step uses a (stale) gradient of every worker's objective and heterogeneity cancels::

    server:    on arrival of (i, g):  G_bar <- G_bar + (g - G_i) / n;  G_i <- g
                                      x <- x - lr G_bar;  send x back to worker i

O(d) work per arrival. G_i = 0 until worker i's first gradient arrives (``average_over: all``,
the spec's rule, so early steps are shrunk by (workers seen) / n); ``average_over: reported``
divides by the number of workers that have reported instead (G_bar = mean over the buffer's
filled rows). We could read only the paper's abstract here, not its initialisation; both choices
are documented deviations to check against the paper. G_bar is kept as a float64 running sum
S = sum_i G_i (G_bar = S / m), re-summed exactly from the buffer every n arrivals so rounding
cannot drift (amortised O(d)); with one worker that makes G_bar = g exactly, so ``dude-asgd`` ==
``asgd`` == single-worker SGD bit for bit (tests/test_async_server.py). Server memory: the n x d
buffer G (parameter dtype) plus d float64 for S.

In both, the "lr x direction" step is the config's ``algorithm.inner`` optimizer stepping on the
server with ``.grad`` = g (asgd) or G_bar (dude-asgd): with ``{name: sgd}`` exactly the rules
above; Adam etc. give their adaptive variants (optimizers that need the loss or a closure are
refused). Its learning rate follows ``train.lr_schedule`` at the global step when the worker's
round was assigned: the worker reports the learning rates the loop set for it, and the server
steps with those. Each worker round is one inner step (no ``sync_every``), so the budget is
``train.steps`` x n gradients. Per arrival: worker -> server one gradient (d floats) plus a
(6 + param groups)-float64 header, server -> worker x (d floats) plus a 2-float64 header.

``fedbuff`` - buffered asynchronous aggregation (Nguyen et al., "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022)::

    worker i:  pull (x, version v_i);  Q = sync_every local steps from x -> y;  push Delta = x - y
    server:    on arrival:  tau = version - v_i;  B <- B + s(tau) Delta,  s(tau) = (1 + tau)^-p
               (p = ``staleness_power``, default 1/2: the paper's 1/sqrt(1 + tau));  k <- k + 1
               if k == K (``buffer_size``, default n):  x <- OuterOpt.step(x, grad = B / K);  B, k <- 0;
                                             version <- version + 1
               reply to worker i with the current x

Delta is DiLoCo's pseudo-gradient (it points downhill), so ``outer: {name: sgd, lr: eta_g}`` is
FedBuff's server step x <- x - eta_g B / K; any outer optimizer config works (applied once per
K arrivals, as DiLoCo's outer step; the default is the config's, SGD lr 0.7 with Nesterov momentum 0.9).
Workers keep their inner optimizer state across rounds (as async-local-sgd and DiLoCo do).
Reductions (tested): one worker, K = 1 (tau is always 0, s = 1) is DiLoCo with one worker and the
same outer optimizer, bit for bit; with outer SGD lr 1 that is local training up to the rounding
of x - (x - y). ``updates`` in the metrics counts server steps (arrivals / K). Deltas still in the
buffer when the budget runs out (fewer than K) are never applied, as in FedBuff, whose server only
steps on a full buffer; their tokens are counted. Bytes as async-local-sgd: d floats each way per
round plus small float64 headers.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from .async_local_sgd import AsyncLocalSGD, ServerRoundsOptions
from .base import flatten, outer_step
from .options import EveryStep
from .server import SERVER, ParameterServerAlgorithm, Report


def _refuse_loss_closure_optimizers(name: str, inner: dict[str, Any]) -> None:
    from ..optim import WRAPPERS, config_step_needs

    if inner.get("name") in WRAPPERS:
        raise ValueError(f"{name} steps algorithm.inner on the server and evaluates x itself; "
                         "averaging / lookahead wrappers are not supported")
    needs = config_step_needs(inner)
    if needs:
        raise ValueError(f"{name} steps algorithm.inner on the server, which has no loss or closure; "
                         f"{inner.get('name')!r} needs {', '.join(needs)}")


class DuDeOptions(EveryStep):
    average_over: Literal["all", "reported"] = Field(
        "all", description="G_bar = sum_i G_i / n (G_i = 0 before worker i reports), or / the number of workers that have reported")


class ASGD(ParameterServerAlgorithm):
    one_worker_is_inner = True

    name = "asgd"
    summary = "parameter server (rank 0); each worker pushes one gradient, the server steps x -= lr g and sends x back"
    Options = EveryStep
    no_compress = "sends gradients uncompressed"
    sends_lrs = True

    @classmethod
    def check_inner(cls, inner):
        _refuse_loss_closure_optimizers(cls.name, inner)

    # ------------------------------------------------------------------ worker
    def _step(self) -> None:
        """Keep this step's gradient (clipped if configured); the worker's parameters do not move."""
        self._grad = flatten([g.detach() for g in self._local_grads()])

    def payload(self) -> torch.Tensor:
        """The gradient at the pulled x (the Report carries the learning rates set for this round)."""
        return self._grad

    # ------------------------------------------------------------------ server
    def round_length(self, worker: int) -> int:
        return 1

    def _aggregate(self, worker: int, g: torch.Tensor) -> torch.Tensor:
        """The direction the server steps along on the arrival of `g` from `worker`."""
        return g

    def apply(self, worker: int, report: Report, payload: torch.Tensor, staleness: int) -> None:
        """The inner optimizer steps on the server along `_aggregate`'s direction, at the worker's lrs."""
        direction = self._aggregate(worker, payload)
        groups = self.optimizer.param_groups
        base_lrs = [g["lr"] for g in groups]
        for g, lr in zip(groups, report.lrs):
            g["lr"] = lr
        try:
            outer_step(self.optimizer, self.params, direction)
        finally:
            for g, lr in zip(groups, base_lrs):
                g["lr"] = lr
        self.version += 1


class DuDeASGD(ASGD):

    name = "dude-asgd"
    summary = "parameter server keeps every worker's latest gradient; on each arrival x -= lr mean_i G_i (Wang et al. 2024)"
    Options = DuDeOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.comm.rank == SERVER:
            d = self._flat.numel()
            self.G = torch.zeros(self.n_workers, d, dtype=self._flat.dtype, device=self._flat.device)  # latest g_i
            self.G_sum = torch.zeros(d, dtype=torch.float64, device=self._flat.device)  # S = sum_i G_i
            self.reported = torch.zeros(self.n_workers, dtype=torch.bool)
            self._events = 0

    def _aggregate(self, worker: int, g: torch.Tensor) -> torch.Tensor:
        i = worker - 1
        self.G_sum += g.double() - self.G[i].double()  # S <- S + g - G_i: O(d)
        self.G[i].copy_(g)
        self.reported[i] = True
        self._events += 1
        if self._events % self.n_workers == 0:  # exact re-sum every n arrivals: no drift, amortised O(d)
            self.G_sum = self.G.double().sum(0)
        return self.G_bar().to(g.dtype)

    def G_bar(self) -> torch.Tensor:
        """The running mean (float64): S / n, or S / (workers reported) with ``average_over: reported``."""
        m = self.n_workers if self.options.average_over == "all" else max(int(self.reported.sum()), 1)
        return self.G_sum / m


class FedBuffOptions(ServerRoundsOptions):
    buffer_size: int | None = Field(None, ge=1, description="K: deltas buffered per server step (default: the number of workers)")
    staleness_power: float = Field(0.5, ge=0.0, description="p in the staleness weight (1 + tau)^-p (0: no weighting)")


class FedBuff(ParameterServerAlgorithm):

    name = "fedbuff"
    summary = "parameter server buffers K staleness-weighted pseudo-gradients of Q local steps, then one outer step (Nguyen et al. 2022)"
    Options = FedBuffOptions
    no_compress = "sends pseudo-gradients uncompressed"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.comm.rank == SERVER:
            self.outer_optimizer = self.build_outer(self.params, self.options.outer)
            self.buffer_size = self.options.buffer_size or self.n_workers  # K
            self.buffer = torch.zeros_like(self._flat)
            self.buffered = 0

    _step = AsyncLocalSGD._step
    payload = AsyncLocalSGD.payload

    def round_length(self, worker: int) -> int:
        return self.sync_every

    def staleness_weight(self, tau: int) -> float:
        """s(tau) = (1 + tau)^-p (p = 1/2: FedBuff's 1/sqrt(1 + tau))."""
        return (1.0 + tau) ** -self.options.staleness_power

    def apply(self, worker: int, report: Report, payload: torch.Tensor, staleness: int) -> None:
        """B += s(tau) Delta; every K arrivals one outer step with B / K."""
        s = self.staleness_weight(staleness)
        self.buffer.add_(payload if s == 1.0 else payload * s)
        self.buffered += 1
        K = self.buffer_size
        if self.buffered == K:
            outer_step(self.outer_optimizer, self.params, self.buffer if K == 1 else self.buffer / K)
            self.buffer.zero_()
            self.buffered = 0
            self.version += 1


__all__ = ["ASGD", "DuDeASGD", "FedBuff"]
