"""`eager-diloco` and `delayed-diloco`: DiLoCo whose outer all-reduce overlaps a whole inner phase.

Kale, Douillard & Donchev, "Eager Updates for Overlapped Communication and Computation in DiLoCo"
(arXiv 2502.12996). In DiLoCo every worker blocks at the end of a round until the average of the
pseudo-gradients has arrived. Here the all-reduce of round t's pseudo-gradients is started at the
end of round t and only waited for at the end of round t + 1: it has H inner steps of compute to
hide behind (tau = H in Streaming DiLoCo's terms). With M workers and Delta_m(t) = phi_m - theta_m
worker m's pseudo-gradient of round t (each worker keeps its own phi_m, see below):

``delayed-diloco`` (the naive variant)::

    end of round t:  mean(t-1) = wait()                     # started at the end of round t-1
                     start all_reduce_mean(Delta_m(t))
                     phi = OuterOpt.step(phi, grad=mean(t-1))  # nothing to apply after round 1
                     theta_m = phi

  i.e. DiLoCo with a one-round-delayed outer step: round t's own progress is dropped at the reset
  and reaches phi only at the end of round t + 1, as an outer gradient taken at a point two outer
  steps old. All workers hold the same phi.

``eager-diloco``::

    end of round t:  mean(t-1) = wait()                     # (1/M) sum_m' Delta_m'(t-1)
                     start all_reduce_mean(Delta_m(t))
                     proxy_m = (1/M) Delta_m(t) + (1/M) sum_{m' != m} Delta_m'(t-1)
                             = mean(t-1) + (Delta_m(t) - Delta_m(t-1)) / M
                     phi_m = OuterOpt.step(phi_m, grad=proxy_m)
                     theta_m = phi_m

  Each worker's own fresh pseudo-gradient stands in for the part of the average it cannot see
  yet; the others' round-t pseudo-gradients arrive one round later, so every Delta_m'(s) enters
  each worker's outer gradients exactly once - own at round s, others' at round s + 1 - and that
  delayed arrival is the correction. (With outer SGD without momentum the proxies telescope:
  phi_m(t) = phi(0) - lr * [sum_{s<t} mean(s) + Delta_m(t) / M].) The workers' phi_m differ by
  their latest own term only; the evaluation point is the local phi (rank 0's in the runner).

What was implemented, and what is ours: the proxy formula is the one in our spec
(`outer-loop.md`); we could not read the paper's algorithm box with our tools, so the exact
correction bookkeeping is our reading: the "correction" is the later arrival of the others'
pseudo-gradients, not a separate undo step. With one worker the proxy is Delta(t) itself, so
``eager-diloco`` with M = 1 is DiLoCo (up to rounding: mean(t-1) + (Delta(t) - Delta(t-1)) is
not bitwise Delta(t)), while ``delayed-diloco`` is DiLoCo with a one-round-delayed outer step for
any M. With a compressor the all-reduce averages C(Delta_m'); the own-term correction uses the
uncompressed Delta_m(t-1), so the telescoping then holds up to compression error.
"""

from __future__ import annotations

import torch

from ..compress.collective import Pending
from .base import outer_step, pseudo_gradient
from .diloco import DiLoCo


class DelayedDiLoCo(DiLoCo):
    name = "delayed-diloco"
    summary = "DiLoCo whose outer step applies the previous round's average (all-reduce overlaps a round)"
    eager = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: Pending | None = None  # the all-reduce started at the end of the previous round
        self.own_prev: torch.Tensor | None = None  # Delta_m(t-1) (eager only)

    def sync(self) -> None:
        delta = pseudo_gradient(self.global_params, self.params)  # Delta_m(t)
        prev = self.pending.wait() if self.pending is not None else None  # mean(t-1)
        self.pending = self.reducer.start(self.comm, delta.clone())  # the reducer may overwrite its input
        if self.eager:
            own_prev = self.own_prev if self.own_prev is not None else torch.zeros_like(delta)
            base = prev if prev is not None else torch.zeros_like(delta)
            outer_step(self.outer_optimizer, self.global_params, base + (delta - own_prev) / self.comm.world_size)
            self.own_prev = delta
        elif prev is not None:
            outer_step(self.outer_optimizer, self.global_params, prev)
        with torch.no_grad():
            for p, g in zip(self.params, self.global_params):
                p.copy_(g)

    def state_dict(self):
        # A reduction in flight is waited for and its result saved (as Streaming DiLoCo does).
        mean = self.pending.wait().clone() if self.pending is not None else None
        own = self.own_prev.clone() if self.own_prev is not None else None
        return {**super().state_dict(), "pending_mean": mean, "own_prev": own}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        mean = state["pending_mean"]
        self.pending = None if mean is None else Pending(lambda m=mean.clone(): m)
        self.own_prev = None if state["own_prev"] is None else state["own_prev"].clone()


class EagerDiLoCo(DelayedDiLoCo):
    name = "eager-diloco"
    summary = "DiLoCo with eager outer updates: own fresh pseudo-gradient + others' previous ones, overlapped"
    eager = True
