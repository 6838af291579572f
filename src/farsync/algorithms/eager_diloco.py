"""`eager-diloco` and `delayed-diloco`: DiLoCo whose outer all-reduce overlaps a whole inner phase.

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

``eager-diloco``: each worker estimates the average it cannot see yet with its own fresh
pseudo-gradient and the others' previous ones::

    proxy_m(t) = (1/M) Delta_m(t) + (1/M) sum_{m' != m} Delta_m'(t-1)
               = (Delta_m(t) + M mean(t-1) - Delta_m(t-1)) / M

  and ``proxy_step`` says what the proxy is used for:

  - ``tentative`` (default): only to choose where the next round starts. At the end of round t::

        mean(t-1) = wait();  phi = OuterOpt.step(phi, grad=mean(t-1))      # the real step: phi(t-1)
        Delta_m(t) = phi - theta_m(t)          # measured against the true phi(t-1), not s_m(t)
        start all_reduce_mean(Delta_m(t))
        s_m(t+1) = OuterOpt.step on a copy of (phi, outer state) with proxy_m(t)   # copy discarded

    The outer optimizer only ever sees true averages, each taken against the phi it is applied
    to, as in DiLoCo; the workers start each round from an estimate of DiLoCo's next phi instead
    of waiting for it. When mean(t) arrives a round later it replaces the proxy - the correction.
    If the estimate were exact (s_m(t+1) = phi(t)) this would be DiLoCo, step for step.
  - ``committed``: the outer optimizer steps with the proxy itself, phi_m = OuterOpt.step(phi_m,
    grad=proxy_m(t)), and s_m(t+1) = phi_m. Every Delta_m'(s) then enters each worker's outer
    gradients exactly once - its own at round s, the others' at round s + 1 - and that late
    arrival is the correction (with outer SGD without momentum:
    phi_m(t) = phi(0) - lr [sum_{s<t} mean(s) + Delta_m(t) / M]). Each worker keeps its own phi_m.

What was implemented, and what is ours: the proxy formula is the one in our spec
(`outer-loop.md`); we could not read the paper's algorithm box with our tools, so both readings
of "apply the proxy, correct when the true average arrives" are here and documented; the
benchmark (docs/benchmarks.md) measures both. With one worker the proxy is Delta(t) itself
(M mean(t-1) - Delta(t-1) is exactly 0), so ``eager-diloco`` is DiLoCo bit for bit (both
variants), while ``delayed-diloco`` is DiLoCo with a one-round-delayed outer step for any M. With a compressor the all-reduce averages C(Delta_m'); the own-term
correction subtracts the uncompressed Delta_m(t-1). Evaluation point: s_m, the point the worker
trains from (rank 0's in the runner); it includes the latest estimate.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..compress.collective import Pending
from .base import outer_step, pseudo_gradient, swapped_params
from .diloco import DiLoCo, DiLoCoOptions


class EagerOptions(DiLoCoOptions):
    proxy_step: Literal["tentative", "committed"] = Field(
        "tentative", description="tentative: the proxy only sets the next start point; committed: the outer optimizer steps with it")


class DelayedDiLoCo(DiLoCo):
    name = "delayed-diloco"
    summary = "DiLoCo whose outer step applies the previous round's average (all-reduce overlaps a round)"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: Pending | None = None  # the all-reduce started at the end of the previous round
        self.own_prev: torch.Tensor | None = None  # Delta_m(t-1) (eager only)
        self.start_point = [g.detach().clone() for g in self.global_params]  # s_m: where this round started

    def sync(self) -> None:
        prev = self.pending.wait() if self.pending is not None else None  # mean(t-1)
        delta = self._pseudo_gradient(prev)  # Delta_m(t)
        self.pending = self.reducer.start(self.comm, delta.clone())  # the reducer may overwrite its input
        self._outer(delta, prev)
        with torch.no_grad():
            for p, s in zip(self.params, self.start_point):
                p.copy_(s)
        self.buffers.average()  # blocking and small: buffers are not part of the overlapped exchange

    def _pseudo_gradient(self, prev: torch.Tensor | None) -> torch.Tensor:
        """This round's pseudo-gradient: from the point the round started at."""
        return pseudo_gradient(self.start_point, self.params)

    def _outer(self, delta: torch.Tensor, prev: torch.Tensor | None) -> None:
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
        return {**super().state_dict(), "pending_mean": mean, "own_prev": own,
                "start_point": [s.clone() for s in self.start_point]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        mean = state["pending_mean"]
        self.pending = None if mean is None else Pending(lambda m=mean.clone(): m)
        self.own_prev = None if state["own_prev"] is None else state["own_prev"].clone()
        self._set_start(state["start_point"])


class EagerDiLoCo(DelayedDiLoCo):
    name = "eager-diloco"
    summary = "DiLoCo with eager outer updates: own fresh pseudo-gradient + others' previous ones, overlapped"
    Options = EagerOptions

    def _pseudo_gradient(self, prev: torch.Tensor | None) -> torch.Tensor:
        if self.options.proxy_step == "committed":
            return super()._pseudo_gradient(prev)  # from s_m = phi_m
        if prev is not None:  # tentative: first the real outer step with the average that just arrived
            outer_step(self.outer_optimizer, self.global_params, prev)
        return pseudo_gradient(self.global_params, self.params)  # then measured against the true phi

    def _outer(self, delta: torch.Tensor, prev: torch.Tensor | None) -> None:
        n = self.comm.world_size
        others = n * prev - self.own_prev if prev is not None else torch.zeros_like(delta)
        proxy = (delta + others) / n
        self.own_prev = delta
        if self.options.proxy_step == "committed":
            outer_step(self.outer_optimizer, self.global_params, proxy)
            self._set_start(self.global_params)
            return
        saved_state = copy.deepcopy(self.outer_optimizer.state_dict())
        saved_phi = [g.detach().clone() for g in self.global_params]
        outer_step(self.outer_optimizer, self.global_params, proxy)  # tentative: kept as the start point only
        self._set_start(self.global_params)
        with torch.no_grad():
            for g, s in zip(self.global_params, saved_phi):
                g.copy_(s)
        self.outer_optimizer.load_state_dict(saved_state)

