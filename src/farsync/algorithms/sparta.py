"""`sparta`: SPARTA, sparse parameter averaging (Beton, Baioumy, van der Ouderaa, Reed, Howes, Cheema, Vrabie: "Improving the Efficiency of Distributed Training using Sparse Parameter Averaging", OpenReview stFPf3gzq1, 2025, no arXiv id found; public code used as a reference: EXO Gym, github.com/exo-explore/gym, exogym/strategy/sparta.py and sparta_diloco.py).

State per worker: local params theta_i (they drift apart between the entries averaged), the inner
optimizer's state, and with ``diloco_every`` = H > 0 the global params phi and the outer
optimizer's state over phi. Every inner step t (0-based), on every worker::

    theta_i = InnerOpt.step(theta_i, grad f_i(theta_i))     # the local step
    S_t     = indices(index_seed, t)                         # the same k entries on every worker
    theta_i[S_t] = (1/n) * sum_j theta_j[S_t]                # all_reduce(mean) of k values, one flat buffer
    if H and (t + 1) % H == 0:                               # SPARTA + DiLoCo (EXO Gym's SPARTADiLoCo)
        delta   = (1/n) * sum_j (phi - theta_j)              # all_reduce(mean) of the pseudo-gradient
        phi     = OuterOpt.step(phi, grad=delta)             # default SGD lr 0.7, Nesterov 0.9
        theta_i = phi

Options: ``fraction`` p (EXO Gym's ``p_sparta``, default 0.005); ``index`` the rule of S_t over the
d entries of the flattened parameters: ``random`` (default: k = max(1, round(p d)) entries
uniformly without replacement, redrawn every step), ``bernoulli`` (EXO Gym's default
RandomIndexSelector: each entry with probability p, so k varies), ``shuffled-sequential``
(EXO Gym's ShuffledSequentialIndexSelector: one permutation drawn once, cut into m = ceil(1/p)
contiguous chunks of d // m or d // m + 1 entries, chunk t % m at step t) and ``partitioned``
(EXO Gym's PartitionedIndexSelector: every cycle of m steps a fresh random partition into m parts,
part t % m at step t); ``diloco_every`` H (0: off); ``outer`` (used only with H > 0);
``evaluate``; ``index_seed`` (default: the run's seed, ``torch.initial_seed()`` when the algorithm
is built: the loop seeds torch with ``seed`` first; a hand-written loop must seed every worker
alike or give ``index_seed``). The index streams are ``torch.Generator`` s keyed by (seed, rule, t)
or (seed, rule, cycle), so no index travels and a resumed run draws the same indices.
Reductions (tests/test_sparta.py): one worker is its inner optimizer, bit for bit; p = 1 (every
rule) is Local SGD with H = 1 (every-step parameter averaging), bit for bit, bytes and simulated
time included; p = 0 with H > 0 is DiLoCo, bit for bit; a plain loop over entries (the test's
reference) gives the same parameters exactly.
Deviations: EXO Gym draws each rank's mask, broadcasts rank 0's bool mask and all-reduces every
parameter tensor separately; here the indices come from the shared seed (no index bytes) and the
k values of all tensors go in one flat buffer (one message, one latency), the selection being
over the flattened parameter vector rather than per tensor (a tensor's share of S_t is p in
expectation, not exactly). ``random`` draws exactly k entries (EXO Gym's Bernoulli mask is
``bernoulli``). ``shuffled-sequential`` uses min(ceil(1/p), d) chunks, so no step is empty (EXO
Gym: ceil(1/p) chunks, some empty when d < 1/p). EXO Gym's DiLoCo averages the models and steps
phi on rank 0 once its 0-based step counter is a positive multiple of H (after steps H + 1,
2H + 1, ...) and skips it with one node; here phi steps after steps H, 2H, ... (farsync's DiLoCo
rounds) on every worker and with any number of workers. The averaging is synchronous: the paper's
asynchronous variant (stale entries, averaging overlapped with the next steps) is not built. The
paper's own rule beyond EXO Gym's code (its exact index rule, p values per experiment) is
unverified: its text could not be read here, only summaries (mwolf.dev, blog.exolabs.net/day-12).
Evaluation point: with H > 0, phi (as DiLoCo, buffers as of the last outer step); otherwise
``evaluate: average`` (default; EXO Gym's "global" loss) the mean of the workers' models, gathered
over the control plane (not counted, as the decentralized algorithms' average model; computed as
theta_0 + (1/n) sum_j (theta_j - theta_0), so identical replicas give theta_0 exactly) with rank
0's buffers, or ``evaluate: local`` rank 0's own model (EXO Gym's "local" loss). Floating-point
buffers (BatchNorm) stay each worker's own except at an outer step, where they are averaged.
Bytes per worker per step: a ring all-reduce of k values, 2 (n - 1)/n * 4k for fp32 (plus the
whole model every H steps with DiLoCo); ``declared_calls`` lists them for every rule but
``bernoulli``. The k values are described to the clock as a payload of the whole parameter vector
(as Local SGD's), so p = 1 is timed as Local SGD with H = 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..topology import splitmix64, step_generator
from .base import (CollectiveAlgorithm, evaluation_point, flatten, swapped_params,
                   unflatten_into)
from .diloco import outer_round
from .options import EveryStep, OuterOptimized

INDEX_RULES = ("random", "bernoulli", "shuffled-sequential", "partitioned")
_SALT = {rule: i + 1 for i, rule in enumerate(INDEX_RULES)}  # one independent stream per rule
_M64 = (1 << 64) - 1


class SPARTAOptions(EveryStep, OuterOptimized):
    """fraction (p), index (the rule of S_t), diloco_every (H, 0: off), outer (with H > 0), evaluate, index_seed."""

    fraction: float = Field(0.005, ge=0.0, le=1.0, description="p: fraction of the parameter entries averaged every "
                            "step (EXO Gym's p_sparta; 0 only with diloco_every > 0)")
    index: Literal["random", "bernoulli", "shuffled-sequential", "partitioned"] = Field(
        "random", description="rule of the averaged entries: random (exactly k = max(1, round(p d)) per step), "
                              "bernoulli (each entry w.p. p), shuffled-sequential or partitioned (ceil(1/p) parts in turn)")
    diloco_every: int = Field(0, ge=0, description="H: an outer DiLoCo step every H inner steps (0: off; EXO Gym's SPARTA+DiLoCo)")
    evaluate: Literal["average", "local"] = Field(
        "average", description="evaluation point without DiLoCo: the workers' mean model (control plane) or rank 0's own")
    index_seed: int | None = Field(None, ge=0, description="seed of the shared index stream (none: the run's seed)")

    @model_validator(mode="after")
    def _communicates(self):
        if self.fraction == 0 and self.diloco_every == 0:
            raise ValueError("fraction 0 without diloco_every never communicates (the workers would train apart): "
                             "give fraction > 0, or diloco_every > 0 for DiLoCo")
        return self


def parts(fraction: float, d: int) -> int:
    """m: the number of chunks / parts of the cyclic rules, min(ceil(1/p), d) (1/p rounded to 1e-9 first)."""
    return max(1, min(math.ceil(round(1.0 / fraction, 9)), d))


def random_k(fraction: float, d: int) -> int:
    """k of the ``random`` rule: round(p d), at least 1 when p > 0."""
    return 0 if fraction == 0 else min(d, max(1, math.floor(fraction * d + 0.5)))


def part_size(d: int, m: int, c: int) -> int:
    """Entries in chunk / part c of m over d entries: d // m, plus 1 for the first d % m."""
    return d // m + (1 if c < d % m else 0)


def stream(seed: int, rule: str) -> int:
    return splitmix64((seed & _M64) ^ _SALT[rule])


class IndexStream:
    """S_t for every step t: sorted int64 indices into the d flattened entries, a pure function of
    (seed, rule, p, d, t), so every worker (and a resumed run) draws the same ones."""

    def __init__(self, rule: str, fraction: float, d: int, seed: int):
        self.rule, self.p, self.d, self.key = rule, fraction, d, stream(seed, rule)
        self.m = parts(fraction, d) if fraction > 0 else 1
        self._perm: tuple[int, torch.Tensor] | None = None  # (cycle, permutation) of the cyclic rules

    def size(self, t: int) -> int | None:
        """|S_t| without drawing it (None for ``bernoulli``, whose size is random)."""
        if self.p == 0:
            return 0
        if self.rule == "random":
            return random_k(self.p, self.d)
        if self.rule == "bernoulli":
            return None
        return part_size(self.d, self.m, t % self.m)

    def __call__(self, t: int) -> torch.Tensor:
        d, p = self.d, self.p
        if p == 0:
            return torch.empty(0, dtype=torch.int64)
        if p == 1:
            return torch.arange(d)
        if self.rule == "random":
            return torch.randperm(d, generator=step_generator(self.key, t))[: random_k(p, d)].sort().values
        if self.rule == "bernoulli":
            return torch.nonzero(torch.rand(d, generator=step_generator(self.key, t)) < p).reshape(-1)
        cycle = 0 if self.rule == "shuffled-sequential" else t // self.m  # one permutation, or one per cycle
        if self._perm is None or self._perm[0] != cycle:
            self._perm = (cycle, torch.randperm(d, generator=step_generator(self.key, cycle)))
        perm, c = self._perm[1], t % self.m
        if self.rule == "partitioned":  # part c: the entries at positions = c (mod m) of the permutation
            return perm[c :: self.m].sort().values
        start = c * (d // self.m) + min(c, d % self.m)
        return perm[start : start + part_size(d, self.m, c)].sort().values


class SPARTA(CollectiveAlgorithm):
    grad_scaler_ok = True  # .grad is read only by the inner optimizer step (fp16: microbatch.py)
    one_worker_is_inner = True
    name = "sparta"
    summary = "every step, average a shared-seed random subset of the parameters (SPARTA; + DiLoCo with diloco_every)"
    Options = SPARTAOptions
    no_compress = "averages its k chosen entries exactly (no compress); lower the fraction to send less"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.options
        self.d = sum(self._sizes)
        seed = torch.initial_seed() if o.index_seed is None else o.index_seed
        self.indices = IndexStream(o.index, o.fraction, self.d, seed)
        self._offsets = torch.tensor([0, *torch.tensor(self._sizes).cumsum(0).tolist()], dtype=torch.int64)
        self._average: list[torch.Tensor] | None = None  # the mean model gathered at `_average_key`
        self._average_key: tuple[int, bool] | None = None  # (local step, at the inner optimizer's evaluation point)
        self._consensus_error = 0.0
        if o.diloco_every:
            self.global_params = [nn.Parameter(p.detach().clone(), requires_grad=False) for p in self.params]
            self.outer_optimizer = self.build_outer(self.global_params, o.outer)

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """One all-reduce of |S_t| values per step (none where S_t is empty) and, with DiLoCo, one
        of the whole model every H steps; None for ``bernoulli`` (|S_t| is random)."""
        b = cls._plain_payload(model, options)
        if b is None or options.index == "bernoulli":
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        d = sum(p.numel() for p in params)
        stream_ = IndexStream(options.index, options.fraction, d, 0)  # sizes do not depend on the seed
        elem, H = params[0].element_size(), options.diloco_every
        calls = []
        for t in range(steps):
            k = stream_.size(t)
            if k:
                calls.append(("all_reduce", k * elem))
            if H and (t + 1) % H == 0:
                calls.append(("all_reduce", b))
        return calls

    # ------------------------------------------------------------------ the step
    def _step(self) -> None:
        self._optimizer_step()
        idx = self.indices(self.local_step)
        if idx.numel():
            self._average_entries(idx)
        H = self.options.diloco_every
        if H and (self.local_step + 1) % H == 0:
            self._outer_sync()

    def _segments(self, idx: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """(parameter j, its local flat indices) for every parameter that S_t touches (idx sorted)."""
        cuts = torch.searchsorted(idx, self._offsets).tolist()
        dev = self.params[0].device
        return [(j, (idx[cuts[j]:cuts[j + 1]] - int(self._offsets[j])).to(dev))
                for j in range(len(self.params)) if cuts[j + 1] > cuts[j]]

    def _average_entries(self, idx: torch.Tensor) -> None:
        """theta[S_t] <- the workers' mean of theta[S_t]: one flat buffer of |S_t| values."""
        if idx.numel() == self.d:  # every entry: the parameters as one flat buffer (as Local SGD)
            unflatten_into(self._mean(flatten([p.detach() for p in self.params])), self.params)
            return
        segs = self._segments(idx)
        buf = torch.cat([self.params[j].detach().reshape(-1).index_select(0, s) for j, s in segs])
        mean = self._mean(buf)  # described as the whole vector's payload (the chosen entries are spread over it)
        offset = 0
        with torch.no_grad():
            for j, s in segs:
                self.params[j].view(-1).index_copy_(0, s, mean[offset : offset + s.numel()])
                offset += s.numel()

    def _outer_sync(self) -> None:
        """DiLoCo's outer step (`diloco.outer_round`): average phi - theta_i, step phi, theta_i = phi."""
        outer_round(self)

    # ------------------------------------------------------------------ evaluation and metrics
    def _gather_average(self, at_eval_point: bool) -> None:
        """Collective (control plane): the workers' mean model and their consensus error (once per
        step and point: every rank takes the same branch)."""
        key = (self.local_step, at_eval_point)
        if self._average_key == key:
            return
        x = flatten([p.detach() for p in self.params])
        xs = [t.to(x.device) for t in self.comm.all_gather_object(x.cpu())] if self.comm.world_size > 1 else [x]
        drift = torch.zeros_like(x)
        for t in xs[1:]:
            drift += t - xs[0]
        avg = xs[0] + drift / len(xs)  # theta_0 exactly when the replicas agree
        self._consensus_error = sum(float((t - avg).double().pow(2).sum()) for t in xs) / len(xs)
        self._average = [torch.empty_like(p) for p in self.params]
        unflatten_into(avg, self._average)
        self._average_key = key

    def log_metrics(self, rows: list[dict[str, float]]) -> dict[str, float]:
        """Consensus error (1/n) sum_i ||theta_i - mean||^2 of the local models (collective; without DiLoCo)."""
        if self.options.diloco_every or self.comm.world_size == 1:
            return {}
        self._gather_average(False)
        return {"consensus_error": self._consensus_error}

    @contextmanager
    def eval_params(self) -> Iterator[nn.Module]:
        if self.options.diloco_every:  # phi, as DiLoCo
            with evaluation_point([self.outer_optimizer]):
                values = [g.detach().clone() for g in self.global_params]
            with swapped_params(self.params, values), self.buffers.at_last_sync():
                yield self.model
            return
        with evaluation_point([self.optimizer]):
            if self.options.evaluate == "local" or self.comm.world_size == 1:
                yield self.model
                return
            self._gather_average(True)
            with swapped_params(self.params, self._average):
                yield self.model

    # ------------------------------------------------------------------ state
    def state_dict(self):
        state = super().state_dict()
        if self.options.diloco_every:
            state["global_params"] = [g.detach().clone() for g in self.global_params]
            state["outer_optimizer"] = self.outer_optimizer.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.options.diloco_every:
            with torch.no_grad():
                for g, s in zip(self.global_params, state["global_params"]):
                    g.copy_(s)
            self.outer_optimizer.load_state_dict(state["outer_optimizer"])
