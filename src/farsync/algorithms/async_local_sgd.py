"""`async-local-sgd`: asynchronous Local-SGD with a parameter server (Liu et al., arXiv 2401.09135).

Rank 0 is the server and holds the global parameters phi; ranks 1..n are workers, each with its
own inner optimizer (state kept across rounds) and data shard (rank - 1). No barrier anywhere::

    worker w:  pull (H_w, phi) from the server            # H_w = 0: stop
               theta = phi; H_w inner steps
               push Delta_w = phi - theta (and its loss and compute time) to the server
    server:    on each arriving Delta (in arrival order):  phi = OuterOpt.step(phi, grad=Delta)
               then reply to that worker with its next H_w and the current phi

The outer optimizer is the config's ``outer``; the default (SGD with Nesterov momentum) is run
as Delayed Nesterov (`delayed_nesterov.py`) with period N = ``period`` (default: the number of
workers; N = 1 is Nesterov on every arrival), any other outer optimizer steps on every arrival.

Dynamic local updates (DyLU, ``dylu: true``): worker w's next round has
H_w = max(1, floor(v_w / v_max * H)) steps, v = speed = 1 / (its latest measured compute time
per inner step; on the simulator the time model's, on torch real time), v_max the fastest
worker's so far, so that rounds take about the same time. Before a worker has reported, H_w = H.

The run is one budget of inner steps, ``train.steps`` x n over all workers (the tokens of a
synchronous run of ``train.steps`` steps): the server hands out rounds until it is spent, the last
ones shortened to fit. A worker's inner learning rate for a round follows the schedule at the
global step when the round was assigned (steps handed out so far / n), constant within the round.

On the simulator the server takes arrivals in order of the workers' virtual send times
(`Communicator.recv_any`), so a run is deterministic; on torch.distributed (gloo) in real arrival
order. Pseudo-gradients are sent in full precision (no compression) and the run cannot be
checkpointed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..optim import default_outer
from .base import Algorithm, flatten, outer_step, pseudo_gradient, unflatten_into
from .delayed_nesterov import DelayedNesterov

SERVER = 0
# worker -> server: steps, loss sum, compute seconds, non-finite flag, bytes sent, bytes received
UP = 6
# server -> worker: steps (0 = stop), global step at assignment
DOWN = 2


class AsyncOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dylu: bool = Field(True, description="dynamic local updates: H_w = floor(v_w / v_max * H)")
    period: int | None = Field(None, ge=1, description="delayed Nesterov's N (default: the number of workers; 1: Nesterov per arrival)")


class AsyncLocalSGD(Algorithm):
    name = "async-local-sgd"
    summary = "parameter server (rank 0), workers push pseudo-gradients when done; delayed Nesterov, DyLU"
    uses_outer = True
    uses_sync_every = True
    server_based = True
    Options = AsyncOptions

    @classmethod
    def check_config(cls, inner, compress):
        if compress is not None:
            raise ValueError(f"{cls.name} sends pseudo-gradients uncompressed; remove algorithm.compress")

    @classmethod
    def check_options(cls, sync_every, options):
        if not isinstance(sync_every, int):
            raise ValueError(f"{cls.name} needs an integer sync_every (QSR is for local-sgd and diloco)")

    def __init__(self, *args, outer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_options(self.sync_every, self.options)
        self.n_workers = self.comm.world_size - 1
        if self.n_workers < 1:
            raise ValueError("async-local-sgd needs a server and at least one worker (world size >= 2)")
        self._flat = flatten([p.detach() for p in self.params])  # receive buffer
        if self.comm.rank == SERVER:
            self.outer_optimizer = self._build_server_optimizer(outer)
            self.step_time: dict[int, float] = {}  # worker -> latest seconds per inner step
            self.version = 0  # server updates so far
            self.pulled_at: dict[int, int] = {}  # worker -> version it last pulled
        else:
            self.global_params = [p.detach().clone() for p in self.params]
            self._compute0 = 0.0

    def _build_server_optimizer(self, outer: Any) -> torch.optim.Optimizer:
        outer = outer if outer is not None else default_outer()
        period = self.options.period
        if isinstance(outer, dict) and outer.get("name") == "sgd" and outer.get("nesterov"):
            return DelayedNesterov(self.params, lr=outer["lr"], momentum=outer.get("momentum", 0.0), period=period or self.n_workers)
        if period is not None:
            raise ValueError("period (delayed Nesterov) needs outer: {name: sgd, nesterov: true, ...}")
        return self.build_outer(self.params, outer)

    # ------------------------------------------------------------------ worker
    def _step(self) -> None:
        self._optimizer_step()

    def pull(self) -> tuple[int, float]:
        """Worker: receive the next round's length and start point; returns (steps, global step)."""
        head = torch.zeros(DOWN, dtype=torch.float64)
        self.comm.recv(head, SERVER)
        steps, progress = int(head[0]), float(head[1])
        if steps:
            self.comm.recv(self._flat, SERVER)
            unflatten_into(self._flat, self.params)
            unflatten_into(self._flat, self.global_params)
            self._compute0 = self.comm.stats.compute_time_s
        return steps, progress

    def push(self, steps: int, loss_sum: float, finite: bool) -> None:
        """Worker: send this round's pseudo-gradient phi - theta and its bookkeeping to the server."""
        st = self.comm.stats
        head = torch.tensor([steps, loss_sum, st.compute_time_s - self._compute0, 0.0 if finite else 1.0,
                             st.bytes_sent, st.bytes_received], dtype=torch.float64)
        delta = pseudo_gradient(self.global_params, self.params)
        self.comm.send(head, SERVER)
        self.comm.send(delta, SERVER)

    # ------------------------------------------------------------------ server
    def round_length(self, worker: int) -> int:
        """H_w: the configured H, or with DyLU H scaled by the worker's speed relative to the fastest."""
        H = self.sync_every
        if not self.options.dylu or worker not in self.step_time or self.step_time[worker] <= 0:
            return H
        fastest = min(self.step_time.values())
        return max(1, math.floor(H * fastest / self.step_time[worker] + 1e-9))

    def assign(self, worker: int, steps: int, progress: float) -> None:
        """Server: send `worker` its next round (steps = 0: stop) and, if any, the current phi."""
        self.comm.send(torch.tensor([steps, progress], dtype=torch.float64), worker)
        if steps:
            self.pulled_at[worker] = self.version
            self.comm.send(flatten([p.detach() for p in self.params]), worker)

    def receive(self) -> dict[str, Any]:
        """Server: take the next arriving pseudo-gradient, apply it; returns what the worker reported."""
        head = torch.zeros(UP, dtype=torch.float64)
        worker = self.comm.recv_any(head)
        self.comm.recv(self._flat, worker)
        outer_step(self.outer_optimizer, self.params, self._flat)
        steps = int(head[0])
        if steps:
            self.step_time[worker] = float(head[2]) / steps
        staleness = self.version - self.pulled_at.get(worker, 0)
        self.version += 1
        return self.report(worker, head, staleness)

    @staticmethod
    def report(worker: int, head: torch.Tensor, staleness: int) -> dict[str, Any]:
        """What `receive` returns: the worker's header (steps, loss sum, finite, its byte counters)."""
        return {"worker": worker, "steps": int(head[0]), "loss_sum": float(head[1]), "finite": head[3] == 0,
                "bytes_sent": int(head[4]), "bytes_received": int(head[5]), "staleness": staleness}

    def state_dict(self):
        raise NotImplementedError("async-local-sgd runs cannot be checkpointed")
