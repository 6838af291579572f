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
from pydantic import Field, model_validator

from .delayed_nesterov import DelayedNesterov
from .options import OuterOptimized, Periodic
from .server import ParameterServerAlgorithm
from .base import pseudo_gradient, outer_step


class ServerRoundsOptions(Periodic, OuterOptimized):
    """Rounds of ``sync_every`` local steps (an integer: QSR is for local-sgd and diloco), an outer optimizer on the server."""

    @model_validator(mode="after")
    def _integer_rounds(self):
        if not isinstance(self.sync_every, int):
            raise ValueError("needs an integer sync_every (QSR is for local-sgd and diloco)")
        return self


class AsyncOptions(ServerRoundsOptions):
    dylu: bool = Field(True, description="dynamic local updates: H_w = floor(v_w / v_max * H)")
    period: int | None = Field(None, ge=1, description="delayed Nesterov's N (default: the number of workers; 1: Nesterov per arrival)")


class AsyncLocalSGD(ParameterServerAlgorithm):
    grad_scaler_ok = True  # .grad is read only by the inner optimizer step (fp16: microbatch.py)
    name = "async-local-sgd"
    summary = "parameter server (rank 0), workers push pseudo-gradients when done; delayed Nesterov, DyLU"
    Options = AsyncOptions
    no_compress = "sends pseudo-gradients uncompressed"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.comm.rank == 0:
            self.outer_optimizer = self._build_server_optimizer(self.options.outer)
            self.step_time: dict[int, float] = {}  # worker -> latest seconds per inner step

    def _build_server_optimizer(self, outer: Any) -> torch.optim.Optimizer:
        period = self.options.period
        if isinstance(outer, dict) and outer.get("name") == "sgd" and outer.get("nesterov"):
            return DelayedNesterov(self.params, lr=outer["lr"], momentum=outer.get("momentum", 0.0), period=period or self.n_workers)
        if period is not None:
            raise ValueError("period (delayed Nesterov) needs outer: {name: sgd, nesterov: true, ...}")
        return self.build_outer(self.params, outer)

    # ------------------------------------------------------------------ worker
    def _step(self) -> None:
        self._optimizer_step()

    def payload(self) -> torch.Tensor:
        """This round's pseudo-gradient phi - theta."""
        return pseudo_gradient(self.global_params, self.params)

    # ------------------------------------------------------------------ server
    def round_length(self, worker: int) -> int:
        """H_w: the configured H, or with DyLU H scaled by the worker's speed relative to the fastest."""
        H = self.sync_every
        if not self.options.dylu or worker not in self.step_time or self.step_time[worker] <= 0:
            return H
        fastest = min(self.step_time.values())
        return max(1, math.floor(H * fastest / self.step_time[worker] + 1e-9))

    def apply(self, worker, report, payload, staleness) -> None:
        """phi = OuterOpt.step(phi, grad=Delta), on every arrival."""
        outer_step(self.outer_optimizer, self.params, payload)
        if report.steps:
            self.step_time[worker] = report.compute_s / report.steps
        self.version += 1
