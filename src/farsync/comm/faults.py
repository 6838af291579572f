"""Fault injection for tests and benchmarks: a `Communicator` wrapper that kills one worker.

The training loops know nothing of it. The runner wraps each rank's communicator with
`from_env` (a no-op unless ``FARSYNC_FAULT=RANK:STEP`` is set: the variable crosses into the
processes of ``farsync launch``), and the loop marks the start of every inner step with
``comm.begin_step(step)``; the wrapper makes worker RANK die there, before step STEP computes or
sends anything:

- on the simulator it raises `InjectedFault` (the run fails, its summary names the fault);
- on torch.distributed (``hard_kill``) the process exits at once with status 17, without cleanup,
  as a crashed node would.

A resumed run (its first step is not 1) and a process restarted by torchrun
(``TORCHELASTIC_RESTART_COUNT`` > 0) are never killed again, so crash + resume can be tested.
"""

from __future__ import annotations

import os

from .base import Communicator, CommunicatorWrapper

FAULT_ENV = "FARSYNC_FAULT"  # "RANK:STEP": that worker dies at the start of that step (testing)


class InjectedFault(RuntimeError):
    """Raised on the simulated backend where an injected fault kills a worker."""


def parse_fault(value: str | None) -> tuple[int, int] | None:
    """(rank, step) from ``RANK:STEP``; None if unset; ValueError naming the value otherwise."""
    if not value:
        return None
    try:
        rank, step = (int(x) for x in value.split(":"))
    except ValueError:
        raise ValueError(f"{FAULT_ENV} must look like RANK:STEP (e.g. 1:5), got {value!r}") from None
    if rank < 0 or step < 1:
        raise ValueError(f"{FAULT_ENV} needs RANK >= 0 and STEP >= 1, got {value!r}")
    return rank, step


class FaultInjector(CommunicatorWrapper):
    """Kills worker `rank` at the start of inner step `step` (see the module docstring)."""

    def __init__(self, inner: Communicator, rank: int, step: int, hard_kill: bool = False):
        super().__init__(inner)
        self.fault_rank, self.fault_step, self.hard_kill = rank, step, hard_kill
        self.armed: bool | None = None  # decided at the first step: a resumed run is not killed

    def begin_step(self, step: int) -> None:
        if self.armed is None:
            self.armed = step == 1
        if self.armed and step == self.fault_step and self.rank == self.fault_rank:
            if self.hard_kill:
                os._exit(17)  # a worker process dies without cleanup
            raise InjectedFault(f"{FAULT_ENV}: rank {self.rank} killed at step {step}")
        self.inner.begin_step(step)


def from_env(comm: Communicator, hard_kill: bool = False) -> Communicator:
    """`comm` wrapped in a `FaultInjector` if ``FARSYNC_FAULT`` asks for one (and this process
    was not restarted by torchrun), else `comm` itself."""
    fault = parse_fault(os.environ.get(FAULT_ENV))
    if fault is None or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return comm
    return FaultInjector(comm, *fault, hard_kill=hard_kill)
