"""The base of parameter-server algorithms: rank 0 is a server, ranks 1..n are workers.

There is no barrier: each worker pulls a round from the server, computes at its own pace and
pushes its result; the server takes arrivals one at a time (on the simulator in virtual-time
order, `Communicator.recv_any`). The loop is `async_loop.train_async`::

    worker:  assignment = pull()          # Assignment(steps, progress); steps 0: stop
             steps x [backward; step()]
             push(steps, loss_sum, finite)  # Report header + the algorithm's payload (d floats)
    server:  report = receive()            # the next arrival, applied by the subclass
             assign(worker, steps, progress)

Messages are a typed header (`Assignment` down, `Report` up; float64 on the wire, its size
fixed per algorithm) followed by one flat payload of the parameters' size. Subclasses say what
the payload is (`payload`), how the server applies it (`apply`), and how long a round is
(`round_length`). Server and workers each hold only their own state, and no step has one
consistent state of all of them: such runs are not checkpointable (``checkpointable = False``,
refused by the config before training).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any, ClassVar

import torch

from .base import Algorithm
from .flat import flatten, unflatten_into

SERVER = 0


@dataclass(frozen=True)
class Assignment:
    """Server -> worker: the next round's inner steps (0: stop) and the global step (steps handed
    out so far / n) at which it was assigned (the worker's lr schedule reads it)."""

    steps: int
    progress: float

    SIZE: ClassVar[int] = 2

    def tensor(self) -> torch.Tensor:
        return torch.tensor([self.steps, self.progress], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Assignment:
        return cls(int(t[0]), float(t[1]))


@dataclass(frozen=True)
class Report:
    """Worker -> server, before the payload: the round's steps, loss sum, compute seconds, whether
    every loss was finite, the worker's byte counters so far, and (algorithms whose server steps
    with the worker's learning rates) the lr of each of its param groups."""

    steps: int
    loss_sum: float
    compute_s: float
    finite: bool
    bytes_sent: int
    bytes_received: int
    lrs: tuple[float, ...] = ()

    FIXED: ClassVar[int] = 6  # float64 slots before the learning rates

    def tensor(self) -> torch.Tensor:
        *head, lrs = astuple(self)
        head[3] = 0.0 if self.finite else 1.0
        return torch.tensor([*head, *lrs], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Report:
        v = t.tolist()
        return cls(int(v[0]), v[1], v[2], v[3] == 0, int(v[4]), int(v[5]), tuple(v[cls.FIXED:]))


class ParameterServerAlgorithm(Algorithm):
    """Rank 0 the server (holds x in ``self.params``), ranks 1..n the workers."""

    checkpointable = False
    timing_dependent = "its server takes the workers' messages in arrival order (recv_any), which depends on timing"
    sends_lrs: ClassVar[bool] = False  # the Report carries the worker's learning rates

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_workers = self.comm.world_size - 1
        if self.n_workers < 1:
            raise ValueError(f"{self.name} needs a server and at least one worker (world size >= 2)")
        self.n_groups = len(self.optimizer.param_groups)
        self._flat = flatten([p.detach() for p in self.params])  # receive buffer
        if self.comm.rank == SERVER:
            self.version = 0  # server updates so far
            self.pulled_at: dict[int, int] = {}  # worker -> version it last pulled
            self.arrivals = {w: 0 for w in range(1, self.n_workers + 1)}  # per worker: results applied
        else:
            self.global_params = [p.detach().clone() for p in self.params]
            self._compute0 = 0.0

    # ------------------------------------------------------------------ worker
    def pull(self) -> tuple[int, float]:
        """Worker: receive the next round's length and start point; returns (steps, global step)."""
        head = torch.zeros(Assignment.SIZE, dtype=torch.float64)
        self.comm.recv(head, SERVER)
        a = Assignment.from_tensor(head)
        if a.steps:
            self.comm.recv(self._flat, SERVER)
            unflatten_into(self._flat, self.params)
            unflatten_into(self._flat, self.global_params)
            self._compute0 = self.comm.stats.compute_time_s
        return a.steps, a.progress

    def push(self, steps: int, loss_sum: float, finite: bool) -> None:
        """Worker: send the round's `Report` and its payload to the server."""
        st = self.comm.stats
        lrs = tuple(g["lr"] for g in self.optimizer.param_groups) if self.sends_lrs else ()
        report = Report(steps, loss_sum, st.compute_time_s - self._compute0, finite, st.bytes_sent, st.bytes_received, lrs)
        payload = self.payload()
        self.comm.send(report.tensor(), SERVER)
        self.comm.send(payload, SERVER)

    def payload(self) -> torch.Tensor:
        """What this worker's round produced (a flat buffer of the parameters' size)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ server
    def round_length(self, worker: int) -> int:
        """Inner steps of `worker`'s next round."""
        raise NotImplementedError

    def assign(self, worker: int, steps: int, progress: float) -> None:
        """Server: send `worker` its next round (steps = 0: stop) and, if any, the current x."""
        self.comm.send(Assignment(steps, progress).tensor(), worker)
        if steps:
            self.pulled_at[worker] = self.version
            self.comm.send(flatten([p.detach() for p in self.params]), worker)

    def receive(self) -> dict[str, Any]:
        """Server: take the next arrival, apply it (`apply`); returns what the worker reported."""
        head = torch.zeros(Report.FIXED + (self.n_groups if self.sends_lrs else 0), dtype=torch.float64)
        worker = self.comm.recv_any(head)
        self.comm.recv(self._flat, worker)
        report = Report.from_tensor(head)
        staleness = self.version - self.pulled_at.get(worker, 0)
        self.arrivals[worker] += 1
        self.apply(worker, report, self._flat, staleness)
        return {"worker": worker, "steps": report.steps, "loss_sum": report.loss_sum, "finite": report.finite,
                "bytes_sent": report.bytes_sent, "bytes_received": report.bytes_received, "staleness": staleness}

    def apply(self, worker: int, report: Report, payload: torch.Tensor, staleness: int) -> None:
        """Server: update x (``self.params``) with `worker`'s `payload`; count ``self.version``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError(f"{self.name} runs cannot be checkpointed (checkpointable = False)")
