"""`streaming-diloco`: Streaming DiLoCo (Douillard et al., arXiv 2501.18512).

DiLoCo with the parameters split into F fragments (`fragments.py`) that synchronize in turn, each
with its own outer optimizer and global copy phi_f, and whose all-reduce overlaps tau inner steps.
With S = H / F (``sync_every`` must be a multiple of F) and delay tau < S, the k-th
synchronization (k = 1, 2, ...) belongs to fragment f = (k - 1) mod F, so every fragment syncs
every H steps, fragment f first at step (f + 1) S::

    after inner step kS - tau:  delta_f = phi_f - theta_f          # taken now, then
                                start reduce(delta_f)              # non-blocking (compressed if configured)
    after inner step kS:        delta = wait()                     # mean over workers
                                phi_f = OuterOpt_f.step(phi_f, grad=delta)
                                theta_f = alpha * theta_f + (1 - alpha) * phi_f

theta_f on the last line is the local fragment after step kS: the tau steps taken while the
all-reduce was in flight survive only through alpha (alpha = 0 replaces them). The inner
optimizer's state is never reset. These are the semantics of torchft's ``DiLoCo``
(``fragment_sync_delay`` = tau, ``fragment_update_alpha`` = alpha), which our spec confirmed by
running it. Reduction: F = 1, tau = 0, alpha = 0 is ``diloco`` exactly. Evaluation point: phi.
A fragment's round that is not committed (torchft: a peer failed during it) leaves phi_f as it was;
theta_f is mixed with it all the same.

``overlap: eager`` - the eager-updates paper's "Streaming DiLoCo with 1-outer-step overlap"
(Kale, Douillard, Donchev, arXiv 2502.12996; `eager.py`): fragment f's all-reduce overlaps a whole
round of that fragment (H steps, beyond tau < S), and phi_f is stepped with the per-fragment eager
proxy, each worker keeping its own phi_f and outer state. After inner step kS, f = (k - 1) mod F::

    delta_f,m   = phi_f,m - theta_f                    # this worker's pseudo-gradient of round t
    mean_f(t-1) = wait()                               # started H steps ago (nothing in round 1)
    start reduce(delta_f,m)
    phi_f,m     = OuterOpt_f.step(phi_f,m, grad=(delta_f,m + M mean_f(t-1) - own_f,m(t-1)) / M)
    theta_f     = phi_f,m

``overlap: eager-2`` ("2-outer-steps eager"; the paper's exact formula is not known to us, this is
ours): the all-reduce overlaps two rounds and the others' terms are two rounds old, proxy =
(delta_f,m(t) + M mean_f(t-2) - own_f,m(t-2)) / M, so each contribution still enters exactly once.
Both need delay 0 and alpha 0. Reductions (tested): F = 1 with overlap eager is ``eager-diloco``
bit for bit; one worker is DiLoCo. On torchft (as ``eager-diloco``, eager_diloco.py) the round of
an all-reduce opens where it starts and closes (waited for, committed or discarded) at the next
synchronization, whichever fragment that is, before the next round opens; a committed mean waits
in ``inflight`` until its fragment applies it (``lag`` rounds of the fragment later), a discarded
one is None there (nothing applied, the own term withdrawn); M is the quorum's participants of
each all-reduce's round, kept beside its own term (`counted_eager_proxy`). With F > 1 the
all-reduce's transport is thus waited for (by the commit) after S = H / F inner steps on torchft,
not H; on the simulator commit is a no-op and the clock waits only where the fragment applies it.

Low-precision exchange: ``compress: {name: int4, ...}`` etc., one reducer (and error-feedback
state) per fragment; contributions are decoded and summed in fp32. A compressed
``collective: reduce_scatter`` or PowerSGD does not overlap (it completes when started).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..compress import PowerSGD
from ..compress.collective import Pending
from .base import CollectiveAlgorithm, evaluation_point, outer_step, pseudo_gradient, swapped_params
from .options import Compressible, OuterOptimized, Periodic
from .eager import check_own_term_compressor, own_as_received
from .eager_diloco import counted_eager_proxy
from .fragments import split_into_fragments


class StreamingOptions(Periodic, OuterOptimized, Compressible):
    fragments: int | list[list[str]] = Field(
        1, description="F: fragments, synced in turn (sync_every must be a multiple of F); or F lists of module names, "
        "e.g. [[transformer.h.0, transformer.h.2], [transformer.h.1, transformer.h.3, wte]], every parameter in exactly one")
    delay: int = Field(0, ge=0, description="tau: inner steps between starting a fragment's all-reduce and applying it (< sync_every/F)")
    alpha: float = Field(0.0, ge=0.0, le=1.0, description="on arrival theta = alpha * theta_local + (1 - alpha) * phi")
    fragment_rule: Literal["strided", "contiguous"] = Field("strided", description="how parameters are split (fragments.py)")
    overlap: Literal["tau", "eager", "eager-2"] = Field(
        "tau", description="tau: the all-reduce overlaps `delay` steps (torchft); eager: a whole round of the fragment, "
        "with the eager proxy (Kale et al. 2025); eager-2: two rounds")

    @property
    def n_fragments(self) -> int:
        return self.fragments if isinstance(self.fragments, int) else len(self.fragments)

    @model_validator(mode="after")
    def _rounds(self):
        if self.n_fragments < 1:
            raise ValueError(f"fragments must be >= 1 (or a non-empty list of module-name lists), got {self.fragments!r}")
        every = self.sync_every
        if not isinstance(every, int):
            raise ValueError("streaming-diloco needs an integer sync_every (QSR is for local-sgd and diloco)")
        if every % self.n_fragments:
            raise ValueError(f"sync_every ({every}) must be a multiple of fragments ({self.n_fragments})")
        if self.overlap != "tau":
            if self.delay or self.alpha:
                raise ValueError(f"overlap: {self.overlap} overlaps whole rounds of a fragment; delay and alpha apply to "
                                 f"overlap: tau only (got delay={self.delay}, alpha={self.alpha})")
            if self.compress is not None:
                check_own_term_compressor(f"streaming-diloco with overlap: {self.overlap}", self.compress)
        elif self.delay >= every // self.n_fragments:
            raise ValueError(f"delay must be < sync_every / fragments = {every // self.n_fragments}, got {self.delay} "
                             "(overlap: eager overlaps a whole round)")
        return self


class StreamingDiLoCo(CollectiveAlgorithm):
    grad_scaler_ok = True  # .grad is read only by the inner optimizer step (fp16: microbatch.py)
    name = "streaming-diloco"
    summary = "DiLoCo with fragments synced in turn, overlapped all-reduce (tau), mixing alpha"
    Options = StreamingOptions

    @classmethod
    def check_compress(cls, compress):
        if isinstance(compress, PowerSGD) or (isinstance(compress, dict) and compress.get("name") == "powersgd"):
            raise ValueError("streaming-diloco does not support compress: powersgd (its plan is per model, not per fragment)")

    @classmethod
    def check_model(cls, model, options):
        params = [p for p in model.parameters() if p.requires_grad]
        split_into_fragments(model, params, options.fragments, options.fragment_rule)

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """Fragment (k - 1) mod F's all-reduce starts after step k S - tau (S = H / F)."""
        if cls._plain_payload(model, options) is None:
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        frags = split_into_fragments(model, params, options.fragments, options.fragment_rule)
        size = [sum(params[i].numel() * params[i].element_size() for i in f) for f in frags]
        period = options.sync_every // options.n_fragments
        return [("all_reduce", size[(k - 1) % len(frags)]) for k in range(1, (steps + options.delay) // period + 1)]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.options
        self.period = self.sync_every // o.n_fragments  # S
        if isinstance(self.reducer, PowerSGD):
            raise ValueError("streaming-diloco does not support compress: powersgd (its plan is per model, not per fragment)")
        outer = o.outer
        self.fragments = split_into_fragments(self.model, self.params, o.fragments, o.fragment_rule)
        self.global_params = [nn.Parameter(p.detach().clone(), requires_grad=False) for p in self.params]
        self.outer_optimizers = [self.build_outer([self.global_params[i] for i in frag], outer) for frag in self.fragments]
        self.reducers = [self.reducer] + [copy.deepcopy(self.reducer) for _ in self.fragments[1:]]
        self.pending: tuple[int, int, Pending] | None = None  # (fragment, step to apply at, reduction)
        self.lag = {"tau": 0, "eager": 1, "eager-2": 2}[o.overlap]  # rounds an eager all-reduce overlaps
        # eager: (reduction - None if its round was discarded -, own term, M of its round) per fragment
        self.inflight: list[list[tuple[Pending | None, torch.Tensor, int]]] = [[] for _ in self.fragments]
        self._open_round: tuple[int, int] | None = None  # eager: (fragment, index in inflight) of the round not closed yet

    def _step(self) -> None:
        self._optimizer_step()
        t = self.local_step + 1  # inner steps done, this one included
        if self.lag:
            if t % self.period == 0:
                self._eager_sync(fragment=(t // self.period - 1) % len(self.fragments))
            return
        if (t + self.options.delay) % self.period == 0:
            k = (t + self.options.delay) // self.period
            self._start(fragment=(k - 1) % len(self.fragments), apply_at=k * self.period)
        if self.pending is not None and self.pending[1] == t:
            self._apply()

    def _start(self, fragment: int, apply_at: int) -> None:
        self.comm.begin_sync()  # torchft: the quorum of this fragment's round; a replica coming back heals here
        frag = self.fragments[fragment]
        delta = pseudo_gradient([self.global_params[i] for i in frag], [self.params[i] for i in frag])
        self.pending = (fragment, apply_at, self._start_mean(delta, frag, self.reducers[fragment]))

    def _apply(self) -> None:
        fragment, _, reduction = self.pending
        self.pending = None
        frag = self.fragments[fragment]
        mean = reduction.wait()
        if self.comm.commit():  # torchft: a round not committed leaves phi_f as it was
            outer_step(self.outer_optimizers[fragment], [self.global_params[i] for i in frag], mean)
        alpha = self.options.alpha
        with torch.no_grad():
            for i in frag:
                p, g = self.params[i], self.global_params[i]
                p.copy_(g if alpha == 0 else torch.lerp(g, p, alpha))
        if fragment == len(self.fragments) - 1:  # once per round: buffers are averaged whole (replicas.py)
            self.buffers.average()

    def _eager_sync(self, fragment: int) -> None:
        """Eager overlap of fragment f (module docstring): wait for the average started `lag`
        rounds ago, start this round's, and step phi_f with the eager proxy (committed). The
        round (torchft) of the all-reduce started at the previous synchronization closes first."""
        self._close_eager_round()
        self.comm.begin_sync()  # torchft: this all-reduce's round opens; a replica coming back heals here
        frag = self.fragments[fragment]
        phi = [self.global_params[i] for i in frag]
        queue = self.inflight[fragment]
        old = queue.pop(0) if len(queue) == self.lag else None
        mean_old = old[0].wait() if old is not None and old[0] is not None else None  # mean_f(t - lag); None: discarded
        delta = pseudo_gradient(phi, [self.params[i] for i in frag])  # Delta_f,m(t)
        pending = self._start_mean(delta.clone(), frag, self.reducers[fragment])  # the reducer may overwrite its input
        n = self.comm.world_size
        queue.append((pending, own_as_received(pending, delta), n))
        self._open_round = (fragment, len(queue) - 1)
        own_old, n_old = (old[1], old[2]) if old is not None else (None, None)
        proxy = counted_eager_proxy(delta, n, mean_old, own_old, n_old)
        outer_step(self.outer_optimizers[fragment], phi, proxy)
        with torch.no_grad():
            for i in frag:
                self.params[i].copy_(self.global_params[i])
        if fragment == len(self.fragments) - 1:  # once per round: buffers are averaged whole (replicas.py)
            self.buffers.average()

    def _close_eager_round(self) -> None:
        """The round of the all-reduce started at the previous synchronization (eager overlap):
        `commit` it (torchft: commit waits for the all-reduce's transport; elsewhere a no-op, so
        the simulator's clock still waits for it only when its fragment applies it); not committed
        (torchft: a peer failed during it), its entry's reduction is dropped (None): nothing of that
        mean is applied when its turn comes, and the own term is withdrawn then
        (`counted_eager_proxy`). Committed, it waits in ``inflight`` until it is applied, `lag`
        rounds of its fragment later."""
        if self._open_round is None:
            return
        fragment, index = self._open_round
        self._open_round = None
        _, own, n = self.inflight[fragment][index]
        if not self.comm.commit():
            self.inflight[fragment][index] = (None, own, n)

    @contextmanager
    def eval_params(self) -> Iterator[nn.Module]:
        with evaluation_point(self.outer_optimizers):  # an averaging outer optimizer (e.g. GPA) is evaluated at its x
            values = [g.detach().clone() for g in self.global_params]
        with swapped_params(self.params, values), self.buffers.at_last_sync():
            yield self.model

    # ------------------------------------------------------------------ state
    def state_dict(self):
        pending = None
        if self.pending is not None:  # a reduction in flight is waited for; its result is saved
            fragment, apply_at, reduction = self.pending
            pending = {"fragment": fragment, "apply_at": apply_at, "mean": reduction.wait().clone()}
        # eager: reductions in flight are waited for first (that also settles their compressor state)
        inflight = [[{"mean": None if p is None else p.wait().clone(), "own": own.clone(), "n": n} for p, own, n in queue]
                    for queue in self.inflight]
        return {
            **super().state_dict(),
            "global_params": [g.detach().clone() for g in self.global_params],
            "outer_optimizers": [opt.state_dict() for opt in self.outer_optimizers],
            "fragment_reducers": [r.state_dict() for r in self.reducers[1:]],  # reducers[0] is saved as "reducer"
            "pending": pending,
            "inflight": inflight,
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            for g, s in zip(self.global_params, state["global_params"]):
                g.copy_(s)
        for opt, s in zip(self.outer_optimizers, state["outer_optimizers"]):
            opt.load_state_dict(s)
        for r, s in zip(self.reducers[1:], state["fragment_reducers"]):
            r.load_state_dict(s)
        p = state["pending"]
        if p is not None:
            mean = p["mean"].clone()
            self.pending = (p["fragment"], p["apply_at"], Pending(lambda: mean))
        self.inflight = [[(None if e["mean"] is None else Pending(lambda m=e["mean"].clone(): m), e["own"].clone(),
                           e.get("n", self.comm.world_size)) for e in queue]
                         for queue in state.get("inflight", [[] for _ in self.fragments])]
