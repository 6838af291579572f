"""The `Communicator` interface that every algorithm is written against.

Algorithms are SPMD: every worker runs the same code and talks to the others only through a
Communicator. Its collectives mirror ``torch.distributed`` one to one (same names, same in-place
semantics, ``async_op=True`` returns a handle with ``.wait()``), so a backend over a real process
group is a thin adapter. Every call records the bytes it puts on the wire (see `wire_bytes`).
"""

from __future__ import annotations

import abc
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch

REDUCE_OPS = ("sum", "mean")


@dataclass
class CommStats:
    """Per-worker counters. Times are in (virtual or real) seconds, bytes are wire bytes."""

    bytes_sent: int = 0
    bytes_received: int = 0
    payload_bytes: int = 0  # sum of the nbytes of the tensors handed to collectives
    peak_bytes_per_sync: int = 0  # most bytes this worker sent in a single communication call
    n_calls: int = 0
    compute_time_s: float = 0.0
    blocked_time_s: float = 0.0  # time spent waiting for communication to finish
    clock_s: float = 0.0  # this worker's wall clock (virtual on the simulator)

    def record(self, sent: int, received: int, payload: int) -> None:
        self.bytes_sent += sent
        self.bytes_received += received
        self.payload_bytes += payload
        self.peak_bytes_per_sync = max(self.peak_bytes_per_sync, sent)
        self.n_calls += 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view of its storage: writing it writes the DTensor), any other tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def wire_bytes(kind: str, nbytes: int, world_size: int, rank: int, src: int = 0) -> tuple[int, int]:
    """(bytes sent, bytes received) by `rank` for one call, under the stated algorithms.

    - all_reduce, ring (reduce-scatter + all-gather): each worker sends and receives
      2(n-1)/n * B.
    - all_gather, ring, B = one worker's contribution: each sends and receives (n-1) * B.
    - all_to_all, B = one of a worker's n chunks: each sends and receives (n-1) * B (its own
      chunk stays local).
    - broadcast, pipelined chain from `src`: every worker but the last in the chain sends B,
      every worker but `src` receives B.
    - send / recv: B on the sending / receiving side.
    """
    n = world_size
    if n <= 1 and kind in ("all_reduce", "all_gather", "all_to_all", "broadcast"):
        return 0, 0
    if kind == "all_reduce":
        b = (2 * (n - 1) * nbytes) // n
        return b, b
    if kind in ("all_gather", "all_to_all"):
        b = (n - 1) * nbytes
        return b, b
    if kind == "broadcast":
        pos = (rank - src) % n  # position in the chain
        return (nbytes if pos < n - 1 else 0), (nbytes if pos > 0 else 0)
    if kind == "send":
        return nbytes, 0
    if kind == "recv":
        return 0, nbytes
    if kind == "barrier":
        return 0, 0
    raise ValueError(f"unknown communication kind {kind!r}")


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Work(abc.ABC):
    """Handle of a non-blocking call, as returned by ``torch.distributed`` with async_op=True."""

    @abc.abstractmethod
    def wait(self) -> None:
        """Block until the call has finished; afterwards its output tensors may be read."""

    @abc.abstractmethod
    def is_completed(self) -> bool:
        """True when waiting would not block."""


class Communicator(abc.ABC):
    """Collectives, point-to-point messages and a clock, for one worker (rank)."""

    rank: int
    world_size: int

    # --- collectives (in place, like torch.distributed) ---
    @abc.abstractmethod
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", async_op: bool = False) -> Work | None:
        """Replace `tensor` on every rank by the sum (or mean) over ranks."""

    @abc.abstractmethod
    def all_gather(
        self, tensor_list: list[torch.Tensor], tensor: torch.Tensor, async_op: bool = False
    ) -> Work | None:
        """Fill ``tensor_list[r]`` with rank r's `tensor` (all the same shape and dtype)."""

    def gathered_from(self) -> list[int]:
        """The ranks whose entries of the last (completed) `all_gather` carry work, in rank order:
        every rank by default (simulator, torch.distributed). On torchft a replica that healed at
        the round's quorum sends nothing (its entry is zeros, `comm/fault_tolerant.py`); an
        algorithm that combines gathered entries keeps only these."""
        return list(range(self.world_size))

    @abc.abstractmethod
    def all_to_all(
        self, output_list: list[torch.Tensor], input_list: list[torch.Tensor], async_op: bool = False
    ) -> Work | None:
        """Send ``input_list[j]`` to rank j; ``output_list[r]`` receives rank r's ``input_list[rank]``.

        All chunks have one shape and dtype.
        """

    @abc.abstractmethod
    def broadcast(self, tensor: torch.Tensor, src: int, async_op: bool = False) -> Work | None:
        """Copy rank `src`'s `tensor` into `tensor` on every rank."""

    @abc.abstractmethod
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """Blocking send to `dst` (matched with a ``recv`` on `dst`, in call order)."""

    @abc.abstractmethod
    def recv(self, tensor: torch.Tensor, src: int) -> None:
        """Blocking receive from `src` into `tensor`."""

    def recv_any(self, tensor: torch.Tensor) -> int:
        """Blocking receive of the next message from any rank into `tensor`; returns the sender.

        On the simulator "next" is the earliest send in virtual time (deterministic); on
        torch.distributed it is whichever arrives first (gloo only).
        """
        raise NotImplementedError(f"{type(self).__name__} has no receive from any source")

    @abc.abstractmethod
    def isend(self, tensor: torch.Tensor, dst: int) -> Work:
        """Non-blocking send."""

    @abc.abstractmethod
    def irecv(self, tensor: torch.Tensor, src: int) -> Work:
        """Non-blocking receive."""

    @abc.abstractmethod
    def barrier(self) -> None:
        """Wait until every rank has reached the barrier."""

    # --- time and accounting ---
    @abc.abstractmethod
    def compute(self, steps: float = 1.0) -> None:
        """Mark that this worker finished `steps` inner steps of compute since the last mark.

        On the simulator this advances the virtual clock by the time model's step time; on a
        real backend it records the elapsed wall time as compute.
        """

    def payload(self, spans: tuple[tuple[float, float], ...]):
        """Context: the calls inside carry the parameters at `spans` (fractions of the parameter
        vector in model order; `timing.spans_of`) of the step just computed - a gradient or a
        pseudo-gradient. A description, not a command: the simulator's clock releases such a
        payload in buckets during that step's backward (`timing.py`); other backends ignore it."""
        return nullcontext()

    def begin_step(self, step: int) -> None:
        """The training loop starts inner step `step` (1-based). Nothing by default; a wrapper
        may act on it (`faults.FaultInjector`), and the simulator's churn reads it."""

    def end_step(self, step: int) -> None:
        """`Algorithm.step` finished inner step `step`. Nothing by default; on the simulator with
        ``cluster.churn`` a returning worker heals here (`churn.py`)."""

    def begin_sync(self) -> None:
        """A synchronization starts: the data-plane calls up to `commit` are one round. Nothing by
        default; on torchft (`comm/torchft.py`) the replicas form a quorum here, rank and world
        size may change, and a replica coming back heals (its registered state is loaded)."""

    def commit(self) -> bool:
        """The round's calls are done: True if its result may be applied on this worker, False if
        it must be discarded (torchft: a peer failed during the round, or too few replicas).
        Always True by default."""
        return True

    def register_state(self, save: Any, load: Any) -> None:
        """The worker's shared state, as fault tolerance copies it into a returning replica:
        ``save()`` gives it, ``load(state)`` installs it (torchft's ``register_state_dict_fn``).
        Nothing by default; the simulator's churn uses it."""

    # --- control plane: logging and checkpoints; never counted in bytes or time ---
    @abc.abstractmethod
    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank gets the list of all ranks' (picklable) objects."""

    @abc.abstractmethod
    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Rank `dst` gets the list of all ranks' objects; the others get None."""

    @abc.abstractmethod
    def scatter_object(self, objs: list[Any] | None, src: int = 0) -> Any:
        """Rank r gets ``objs[r]`` from rank `src` (`objs` is ignored on other ranks)."""

    def broadcast_state(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Copy rank `src`'s `tensors` into every rank's, in place (setup: the initial model, as
        torch DDP's constructor broadcasts it; control plane, not counted)."""
        values = self.all_gather_object([t.detach().cpu() for t in tensors] if self.rank == src else None)[src]
        with torch.no_grad():
            for t, v in zip(tensors, values):
                t.copy_(v)

    def gather_metrics(self, values: dict[str, float]) -> list[dict[str, float]]:
        """All-gather a small dict of numbers for logging."""
        return self.all_gather_object(dict(values))

    def restore_stats(self, stats: dict[str, Any]) -> None:
        """Set this worker's counters (and clock) from a checkpoint."""
        for k, v in stats.items():
            setattr(self.stats, k, v)

    @property
    @abc.abstractmethod
    def stats(self) -> CommStats:
        """This worker's counters."""

    def _check_op(self, op: str) -> None:
        if op not in REDUCE_OPS:
            raise ValueError(f"unknown reduce op {op!r}; valid choices: {', '.join(REDUCE_OPS)}")


class WallClock:
    """Real time, for backends over real processes (mixed in before `Communicator`): ``compute()``
    books the wall time since the previous mark as compute, `_book_blocked` a call's duration as
    blocked time; ``clock_s`` is the wall time since start (plus a checkpoint's clock after a resume)."""

    def _start_clock(self) -> None:
        self._stats = CommStats()
        self._t0 = self._last_mark = time.perf_counter()
        self._clock_offset = 0.0

    def _book_blocked(self, seconds: float) -> None:
        self._stats.blocked_time_s += seconds
        self._last_mark = time.perf_counter()

    def compute(self, steps: float = 1.0) -> None:
        now = time.perf_counter()
        self._stats.compute_time_s += now - self._last_mark
        self._last_mark = now

    @property
    def stats(self) -> CommStats:
        self._stats.clock_s = self._clock_offset + time.perf_counter() - self._t0
        return self._stats

    def restore_stats(self, stats: dict[str, Any]) -> None:
        for k, v in stats.items():
            if k != "clock_s":
                setattr(self._stats, k, v)
        self._clock_offset = stats.get("clock_s", 0.0)
        self._t0 = self._last_mark = time.perf_counter()


def cpu_clone(obj: Any) -> Any:
    """A copy of `obj` with every tensor detached, on the CPU and cloned (dicts, lists, tuples
    walked): a state to send or save while training goes on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_clone(v) for v in obj)
    return obj


class CommunicatorWrapper(Communicator):
    """A communicator that forwards every call to `inner`; subclasses override what they change
    (fault injection, tracing) and algorithms cannot tell the difference."""

    def __init__(self, inner: Communicator):
        self.inner = inner
        self.rank, self.world_size = inner.rank, inner.world_size

    def all_reduce(self, tensor, op="sum", async_op=False):
        return self.inner.all_reduce(tensor, op, async_op)

    def all_gather(self, tensor_list, tensor, async_op=False):
        return self.inner.all_gather(tensor_list, tensor, async_op)

    def gathered_from(self):
        return self.inner.gathered_from()

    def all_to_all(self, output_list, input_list, async_op=False):
        return self.inner.all_to_all(output_list, input_list, async_op)

    def broadcast(self, tensor, src, async_op=False):
        return self.inner.broadcast(tensor, src, async_op)

    def send(self, tensor, dst):
        return self.inner.send(tensor, dst)

    def recv(self, tensor, src):
        return self.inner.recv(tensor, src)

    def recv_any(self, tensor):
        return self.inner.recv_any(tensor)

    def isend(self, tensor, dst):
        return self.inner.isend(tensor, dst)

    def irecv(self, tensor, src):
        return self.inner.irecv(tensor, src)

    def barrier(self):
        return self.inner.barrier()

    def compute(self, steps=1.0):
        return self.inner.compute(steps)

    def begin_step(self, step):
        return self.inner.begin_step(step)

    def end_step(self, step):
        return self.inner.end_step(step)

    def begin_sync(self):
        return self.inner.begin_sync()

    def commit(self):
        return self.inner.commit()

    def register_state(self, save, load):
        return self.inner.register_state(save, load)

    def payload(self, spans):
        return self.inner.payload(spans)

    def all_gather_object(self, obj):
        return self.inner.all_gather_object(obj)

    def gather_object(self, obj, dst=0):
        return self.inner.gather_object(obj, dst)

    def scatter_object(self, objs, src=0):
        return self.inner.scatter_object(objs, src)

    def broadcast_state(self, tensors, src=0):
        return self.inner.broadcast_state(tensors, src)

    def gather_metrics(self, values):
        return self.inner.gather_metrics(values)

    def restore_stats(self, stats):
        return self.inner.restore_stats(stats)

    @property
    def stats(self):
        return self.inner.stats
