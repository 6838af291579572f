"""`eager-diloco`, `delayed-diloco` and `speculative-diloco`: DiLoCo whose outer all-reduce overlaps a whole inner phase.

Kale, Douillard & Donchev, "Eager Updates for Overlapped Communication and Computation in DiLoCo"
(arXiv 2502.12996). In DiLoCo every worker blocks at the end of a round until the average of the
pseudo-gradients has arrived. Here the all-reduce of round t's pseudo-gradients is started at the
end of round t and only waited for at the end of round t + 1: it has H inner steps of compute to
hide behind (tau = H in Streaming DiLoCo's terms). M workers; s_m(t) is the point worker m starts
round t from, theta_m(t) its parameters after the round, Delta_m(t) its pseudo-gradient
(s_m(t) - theta_m(t) unless said otherwise) and mean(t) = (1/M) sum_m Delta_m(t). phi is the
outer optimizer's ("true") global model.

``delayed-diloco`` (the naive variant)::

    end of round t:  mean(t-1) = wait()                 # started at the end of round t-1
                     start all_reduce_mean(Delta_m(t))
                     phi = OuterOpt.step(phi, grad=mean(t-1))   # nothing to apply after round 1
                     theta_m = s_m(t+1) = phi

  i.e. DiLoCo with a one-round-delayed outer step: the next round starts from a point that lacks
  round t, and round t's average, taken from a point one outer step older, is applied one round
  late. All workers hold the same phi.

``eager-diloco``: the paper's eager updates (its Algorithm 3, as reconstructed in our spec
`outer-loop.md`, "Eager updates"; the paper's algorithm box could not be read with our tools).
Worker m keeps its own outer parameters phi_m and its own outer-optimizer state; at the end of
round t::

    Delta_m(t) = phi_m - theta_m(t)                      # from where this worker started the round
    mean(t-1)  = wait()                                  # the all-reduce started a round ago
    start all_reduce_mean(Delta_m(t))                    # waited for at the end of round t+1
    proxy_m(t) = (Delta_m(t) + M mean(t-1) - own_m(t-1)) / M
               = (1/M) [Delta_m(t) + sum_{m' != m} Delta_m'(t-1)]
    phi_m      = OuterOpt_m.step(phi_m, grad=proxy_m(t));  theta_m = phi_m     # committed

Nothing is rolled back: every contribution enters each worker's outer gradients exactly once (its
own at once, the others' one round late). With outer SGD without momentum (lr eta) that is
phi_m(t) = phi(0) - eta [sum_{s<t} mean(s) + Delta_m(t) / M] (tested). First round: mean(0) =
own(0) = 0, proxy = Delta_m(1) / M. own_m(t-1) is this worker's term as the others received it:
Delta_m(t-1) itself without compression; with a compressor the decoded C(Delta_m(t-1)) (EF's
residual included), so the proxy is built from exactly what was averaged and the own term enters
once, uncompressed. PowerSGD and EF21 / EControl have no such per-worker term and are refused.
Workers' phi_m differ slightly; the runner evaluates rank 0's.

``speculative-diloco``: farsync's own design, not in the paper (it was this module's default
``eager-diloco`` before, as ``proxy_step: tentative``). The same proxy only chooses where the next
round starts; the outer optimizer only ever steps with true averages::

    mean(t-1) = wait();  phi = OuterOpt.step(phi, grad=mean(t-1))      # the real step: phi(t-1)
    Delta_m(t) = phi - theta_m(t)          # measured against the true phi(t-1), not s_m(t)
    start all_reduce_mean(Delta_m(t))
    s_m(t+1) = OuterOpt.step on a copy of (phi, outer state) with proxy_m(t)   # copy discarded

Reductions (tested): with one worker the proxy is Delta(t) itself (M mean(t-1) - own(t-1) is
exactly 0), so ``eager-diloco`` and ``speculative-diloco`` are DiLoCo bit for bit, while
``delayed-diloco`` is DiLoCo with a one-round-delayed outer step for any M. Evaluation point:
s_m, the point the worker trains from (rank 0's in the runner); it includes the latest estimate.
Streaming DiLoCo runs the same eager rule per fragment (``overlap: eager``, streaming_diloco.py).

On ``cluster.backend: torchft`` (``eager-diloco`` and ``delayed-diloco``; comm/fault_tolerant.py)
a round spans two synchronizations: round t opens (``begin_sync``, the quorum) where its all-reduce
starts, at the end of inner round t, and commits where its result is applied, at the end of round
t + 1, just before round t + 1 opens::

    end of round t+1:  mean(t) = wait();  ok = commit()         # round t closes
                       begin_sync()                             # round t+1 opens: quorum, maybe a heal
                       start all_reduce(Delta_m(t+1)); outer step with mean(t) if ok

- M: the quorum's participants of the round being opened (``comm.world_size``), not the
  configured workers; a replica that heals there contributes weight 0 (the mean is over the
  replicas that did the round's work). When M changed since the round that arrives, or that round
  was discarded, the proxy is `counted_eager_proxy`: Delta_m(t)/M(t) + mean(t-1) -
  own_m(t-1)/M(t-1), each term at the weight it was applied with, so that with outer SGD
  phi_m(t) = phi(0) - eta [sum of the committed means + Delta_m(t)/M(t)] whatever the
  participants did. With a constant M it is the rule above bit for bit.
- A round not committed (a peer failed during it): nothing of mean(t-1) is applied, and eager
  withdraws the own term it applied a round ago (proxy = Delta_m(t)/M - own_m(t-1)/M(t-1)): that
  round's work is discarded on every survivor, its own share included, as DiLoCo discards an
  uncommitted round; every survivor's phi_m is again the committed history plus its own fresh
  term. ``delayed-diloco`` simply makes no outer step with it.
- Shared state (copied into a healing replica at the quorum, served by a live peer after it
  committed the previous round): the model (theta), the inner optimizer, phi_m and the outer
  optimizer's state, the start point, the round counters and local step, the in-flight terms
  (the committed mean(t-1) as ``pending_mean``, own_m(t-1) and its M). The healer thus makes
  exactly its source's outer step at that round (its own term of that round is its source's copy,
  weight 0 in the mean, and it withdraws it a round later like any own term). Per replica: the
  data position, the RNG, the counters. Replicas' phi_m differ by their fresh own terms (each
  evaluates and saves its own).
- The last round's all-reduce is started and never applied (as on the simulator): a run of R
  rounds commits R - 1. ``speculative-diloco`` is not run there (its proxy would need the
  others' sum of a round with another M).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..compress.collective import Pending
from .base import outer_step, pseudo_gradient, swapped_params
from .diloco import DiLoCo
from .eager import check_own_term_compressor, eager_proxy, own_as_received


def counted_eager_proxy(delta: torch.Tensor, n: int, mean_old: torch.Tensor | None, own_old: torch.Tensor | None,
                        n_old: int | None) -> torch.Tensor:
    """The eager proxy when the number of workers may change from round to round (torchft): n = M
    of this round (the quorum's participants), n_old = M of the round whose mean(t-1) arrives
    (when this worker applied its own term own_old / n_old), mean_old None for a round that was
    discarded. In general::

        proxy_m(t) = Delta_m(t) / n + [mean(t-1) if committed] - own_m(t-1) / n_old

    so that the sum of the outer gradients telescopes: sum_{s<t} mean(s) over the committed rounds
    + Delta_m(t) / n (phi_m(t) with outer SGD without momentum). Round 1 (nothing arrived, nothing
    applied: own_old None), and a committed round with n_old == n (always so on the simulator), are
    `eager_proxy` itself, bit for bit."""
    if own_old is None or (mean_old is not None and n_old in (None, n)):
        return eager_proxy(delta, mean_old, own_old, n)
    withdrawn = own_old / (n_old if n_old is not None else n)
    return delta / n + (mean_old - withdrawn if mean_old is not None else -withdrawn)


class DelayedDiLoCo(DiLoCo):
    name = "delayed-diloco"
    summary = "DiLoCo whose outer step applies the previous round's average (all-reduce overlaps a round)"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: Pending | None = None  # the all-reduce started at the end of the previous round
        self.own_prev: torch.Tensor | None = None  # Delta_m(t-1) (eager only)
        self.own_n: int | None = None  # M of round t-1: the world size when Delta_m(t-1) was applied (eager only)
        self.own_prev_n: int | None = None  # own_n of the round whose mean arrives, while a round's outer step is made
        self.start_point = [g.detach().clone() for g in self.global_params]  # s_m: where this round started

    def sync(self) -> None:
        self._close_round()  # round t-1: wait for mean(t-1) and commit it (torchft) or discard it
        self.comm.begin_sync()  # round t opens (torchft: the quorum; a replica coming back heals here)
        prev = self.pending.wait() if self.pending is not None else None  # mean(t-1), committed
        own_prev = self.own_prev  # Delta_m(t-1) as the others received it (eager's correction)
        self.own_prev_n = self.own_n  # and the M it was applied with (eager on torchft: counted_eager_proxy)
        delta = self._pseudo_gradient(prev)  # Delta_m(t)
        self.pending = self._start_mean(delta.clone())  # the reducer may overwrite its input
        self.own_prev, self.own_n = own_as_received(self.pending, delta), self.comm.world_size
        self._outer(delta, prev, own_prev)
        with torch.no_grad():
            for p, s in zip(self.params, self.start_point):
                p.copy_(s)
        self.buffers.average()  # blocking and small: buffers are not part of the overlapped exchange

    def _close_round(self) -> None:
        """The round of the all-reduce started a round ago ends where its result is applied:
        `commit` (torchft: it waits for the all-reduce first; elsewhere a no-op). Committed, the
        result stays in ``pending`` (a replica healing at the next quorum copies it); not committed
        (torchft: a peer failed during the round), ``pending`` is dropped and nothing of mean(t-1)
        is applied. ``own_prev`` is kept either way (eager: it is withdrawn from phi_m, see
        `counted_eager_proxy`)."""
        if self.pending is not None and not self.comm.commit():
            self.pending = None

    def _pseudo_gradient(self, prev: torch.Tensor | None) -> torch.Tensor:
        """This round's pseudo-gradient: from the point the round started at."""
        return pseudo_gradient(self.start_point, self.params)

    def _outer(self, delta: torch.Tensor, prev: torch.Tensor | None, own_prev: torch.Tensor | None) -> None:
        """Update phi (and the start point of the next round) at the end of a round."""
        if prev is not None:
            outer_step(self.outer_optimizer, self.global_params, prev)
        self._set_start(self.global_params)

    def _set_start(self, values) -> None:
        with torch.no_grad():
            for s, v in zip(self.start_point, values):
                s.copy_(v)

    @contextmanager
    def eval_params(self) -> Iterator[nn.Module]:
        with swapped_params(self.params, self.start_point), self.buffers.at_last_sync():
            yield self.model

    def state_dict(self):
        # A reduction in flight is waited for and its result saved (as Streaming DiLoCo does).
        mean = self.pending.wait().clone() if self.pending is not None else None
        own = self.own_prev.clone() if self.own_prev is not None else None
        return {**super().state_dict(), "pending_mean": mean, "own_prev": own, "own_n": self.own_n,
                "start_point": [s.clone() for s in self.start_point]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        mean = state["pending_mean"]
        self.pending = None if mean is None else Pending(lambda m=mean.clone(): m)
        self.own_prev = None if state["own_prev"] is None else state["own_prev"].clone()
        self.own_n = state.get("own_n")  # None (a checkpoint from before it was saved): the world size
        self._set_start(state["start_point"])


class _OwnTermCorrected(DelayedDiLoCo):
    """Delayed DiLoCo whose proxy corrects with this worker's own term as the others received it:
    a compressor must let it see that term (`eager.check_own_term_compressor`). Not registered."""

    @classmethod
    def check_compress(cls, compress):
        check_own_term_compressor(cls.name, compress)


class EagerDiLoCo(_OwnTermCorrected):
    name = "eager-diloco"
    summary = "DiLoCo with eager outer updates (Kale et al. 2025): own fresh pseudo-gradient + others' previous ones"

    def _outer(self, delta: torch.Tensor, prev: torch.Tensor | None, own_prev: torch.Tensor | None) -> None:
        """phi_m = OuterOpt_m(phi_m, proxy_m(t)); the next round starts from phi_m (committed)."""
        proxy = counted_eager_proxy(delta, self.comm.world_size, prev, own_prev, self.own_prev_n)
        outer_step(self.outer_optimizer, self.global_params, proxy)
        self._set_start(self.global_params)


class SpeculativeDiLoCo(_OwnTermCorrected):
    name = "speculative-diloco"
    summary = "farsync's own design (not the eager paper's): the proxy only picks the next start point"

    def _pseudo_gradient(self, prev: torch.Tensor | None) -> torch.Tensor:
        if prev is not None:  # first the real outer step with the average that just arrived
            outer_step(self.outer_optimizer, self.global_params, prev)
        return pseudo_gradient(self.global_params, self.params)  # then measured against the true phi

    def _outer(self, delta: torch.Tensor, prev: torch.Tensor | None, own_prev: torch.Tensor | None) -> None:
        """s_m(t+1) = OuterOpt.step on a copy of (phi, outer state) with proxy_m(t); copy discarded."""
        saved_state = copy.deepcopy(self.outer_optimizer.state_dict())
        saved_phi = [g.detach().clone() for g in self.global_params]
        outer_step(self.outer_optimizer, self.global_params, eager_proxy(delta, prev, own_prev, self.comm.world_size))
        self._set_start(self.global_params)
        with torch.no_grad():
            for g, s in zip(self.global_params, saved_phi):
                g.copy_(s)
        self.outer_optimizer.load_state_dict(saved_state)
