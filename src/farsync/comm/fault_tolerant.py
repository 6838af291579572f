"""The torchft backend (``cluster.backend: torchft``): a `Communicator` over torchft's Manager.

Each worker is a replica group (one process here: ``cluster.group_size`` 1) with its own
`torchft.Manager` and fault-tolerant gloo process group; a Lighthouse (started by `farsync launch`)
forms a quorum of the live replicas at every synchronization. A synchronization is a round::

    comm.begin_sync()    # Manager.start_quorum() (synchronous): the live replicas agree; rank and
                         # world size are this quorum's; a replica behind the quorum's step heals:
                         # the registered shared state of a live peer is loaded into it
    comm.all_reduce(x)   # Manager.allreduce of [w x, w]: a SUM, then / sum(w) for a mean
    comm.all_gather(xs, x)  # Manager.allreduce (SUM, uint8) of n slots + n flags: slot r = rank r's
                         # bytes, flag 1 if it counts; comm.gathered_from() the ranks that count
    comm.commit()        # Manager.should_commit(): False if a peer failed during the round

The algorithm applies the round's result only if `commit` is True (ddp, local-sgd, diloco and
streaming-diloco do; Streaming DiLoCo's round spans the tau inner steps its all-reduce overlaps;
the round of eager-diloco, delayed-diloco and streaming-diloco with overlap: eager / eager-2 spans
the inner steps up to the next synchronization: it opens where the all-reduce starts and commits at
the next synchronization, just before the next round opens; the result is applied there, or kept
until its fragment's turn - `eager_diloco.py`; decoupled-momentum's round is its step: it
all-gathers, commits, and only then changes its momentum and the model - `demo.py`).

- Weights: w = 0 for a replica that healed at this round's quorum (its own contribution was computed
  on the state it had before the heal, work nobody should count), 1 otherwise. So the mean is
  over the replicas that did the round's work (torchft's AVG would divide by every participant).
- Rank and world size: ``Manager.participating_rank()`` and ``num_participants()`` of the
  current quorum (the fault-tolerant process group's own rank is always 0); before the first
  quorum the replica id and the configured number of replicas.
- All-gather (torchft 0.2.0's Manager fault-tolerates only all-reduce): one all-reduce (SUM) of a
  zero uint8 buffer with a slot per participant (slot r = participating rank r, the bytes of its
  tensor) and a flag per slot; a replica writes its slot and flag 1, or nothing if it healed at
  this round's quorum (weight 0, as above). Exact for any dtype (each slot has one writer);
  ``gathered_from()`` gives the ranks whose flag is 1, and an algorithm drops the other entries
  (the simulator's and torch's all-gathers: every rank). It is booked as the all-reduce of n x B
  bytes it is: 2(n-1) B per replica, about twice a real ring all-gather's (n-1) B.
- Only all-reduces and all-gathers, and only between `begin_sync` and `commit`: the other
  collectives and a call outside a round raise (the algorithms accepted here make none). The
  control plane is this replica's alone: every replica logs and evaluates for itself (`ft_worker.py`).
- Faults for tests (``FARSYNC_FAULT``): ``ID:STEP`` kills replica ID (SIGKILL, as ``kill -9``) at
  the start of inner step STEP, between synchronizations: an all-reduce it still has in flight
  (eager-diloco's, Streaming DiLoCo's) is first waited for on its side, else the kill would race
  with that ring; ``ID:STEP:allreduce`` kills it during the all-reduce (or all-gather) of that
  step's synchronization, after the peers entered it. A replacement process (torchrun restarted it) is
  never killed again.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch

from .base import Communicator, WallClock, Work, cpu_clone, tensor_nbytes, wire_bytes
from .faults import FAULT_ENV

# every data-plane call an all-reduce (or an all-gather built from one) inside a round (eager's round
# spans two synchronizations)
FT_ALGORITHMS = ("ddp", "local-sgd", "diloco", "streaming-diloco", "eager-diloco", "delayed-diloco",
                 "decoupled-momentum")
FT_REFUSED = {  # why the others are not run on torchft (config.py refuses them before any work)
    "speculative-diloco": "its tentative proxy rebuilds the others' sum as M x mean(t-1), wrong when the quorum "
                          "changed (not adapted yet; eager-diloco and delayed-diloco are)",
}


class _FTWork(Work):
    """A fault-tolerant all-reduce in flight: ``wait()`` waits for the Manager's work (which never
    raises: an error makes `commit` False) and then writes the sum or mean into the tensor."""

    def __init__(self, comm: FTCommunicator, work: Any, finish: Any):
        self._comm, self._work, self._finish, self._done = comm, work, finish, False

    def wait(self) -> None:
        if self._done:
            return
        t0 = time.perf_counter()
        self._work.wait()
        self._finish()
        self._done = True
        self._comm._book_blocked(time.perf_counter() - t0)

    def is_completed(self) -> bool:
        return self._done

    def settle(self) -> None:
        """Wait for the transport only (`commit` and the injected fault need the ring done, not
        the result written: that stays for the algorithm's ``wait()``)."""
        if not self._done:
            self._work.wait()


def parse_ft_fault(value: str | None) -> tuple[int, int, str] | None:
    """(replica, step, when) from ``ID:STEP`` or ``ID:STEP:allreduce``; None if unset."""
    if not value:
        return None
    parts = value.split(":")
    when = parts.pop() if len(parts) == 3 else "step"
    try:
        replica, step = (int(x) for x in parts)
    except ValueError:
        raise ValueError(f"{FAULT_ENV} must look like ID:STEP or ID:STEP:allreduce (e.g. 2:7), got {value!r}") from None
    if when not in ("step", "allreduce") or replica < 0 or step < 1:
        raise ValueError(f"{FAULT_ENV} needs ID >= 0, STEP >= 1 and an optional ':allreduce', got {value!r}")
    return replica, step, when


class FTCommunicator(WallClock, Communicator):
    """One replica group's communicator on a torchft `manager` (built by `ft_worker.py`)."""

    def __init__(self, manager: Any, replica: int, replicas: int, fault: tuple[int, int, str] | None = None):
        self.manager = manager
        self.replica = replica  # the stable replica-group id (its data shard, its log)
        self.rank, self.world_size = replica, replicas  # until the first quorum
        self.fault = fault if fault is not None and fault[0] == replica else None
        self._start_clock()
        self._in_round = False
        self._healed = False  # this round's quorum loaded a peer's state into this replica
        self.heals: list[int] = []  # the committed step at each heal
        self.participants = 0  # replicas in the last quorum
        self.rounds: list[tuple[float, int, int, bool]] = []  # (unix time of the commit, committed step, participants, committed)
        self.step = 0  # the inner step in progress
        self._fns: tuple[Any, Any] | None = None
        self._in_flight: list[_FTWork] = []  # this round's all-reduces started async: `commit` waits for them
        self.killed_at_path = None  # where `_die` notes the time (set by ft_worker)
        self._registered = False
        self._gathered: list[int] | None = None  # `gathered_from` of the last all-gather

    # ------------------------------------------------------------------ rounds
    def register_state(self, save, load) -> None:
        self._fns = (save, load)

    def begin_step(self, step: int) -> None:
        self.step = step
        if self.fault is not None and self.fault[1:] == (step, "step"):
            for work in self._in_flight:  # between synchronizations: this replica's part of a ring in flight is done
                work.settle()
            self._die()

    def begin_sync(self) -> None:
        if self._fns is None:
            raise RuntimeError("torchft: nothing registered the shared state (Communicator.register_state) "
                               "that a replica coming back heals from")
        if not self._registered:  # the latest registration (the loop's, with the LR schedule) is the one served
            save, load = self._fns
            # a copy: the HTTP transport serves it by reference while training goes on
            self.manager.register_state_dict_fn("farsync", self._load, lambda: cpu_clone(save()))
            self._registered = True
        self._healed, self._in_flight = False, []
        t0 = time.perf_counter()
        self.manager.start_quorum()  # synchronous (use_async_quorum=False): a heal is applied before it returns
        self._book_blocked(time.perf_counter() - t0)
        rank = self.manager.participating_rank()
        self.rank = rank if rank is not None else self.replica
        self.world_size = self.participants = self.manager.num_participants()
        self._in_round = True

    def _load(self, state: Any) -> None:
        self._fns[1](state)
        self._healed = True
        self.heals.append(self.manager.current_step())

    def commit(self) -> bool:
        if not self._in_round:
            raise RuntimeError("torchft: commit() without begin_sync()")
        self._in_round = False
        t0 = time.perf_counter()
        for work in self._in_flight:  # a round's all-reduces end before it commits (should_commit does not wait)
            work.settle()
        self._in_flight = []
        ok = self.manager.should_commit()
        self._book_blocked(time.perf_counter() - t0)
        self.rounds.append((time.time(), self.manager.current_step(), self.participants, ok))
        return ok

    def _die(self) -> None:
        """The injected fault: note the time and the committed step (``killed_at`` in the replica's
        directory, for the recovery benchmark) and SIGKILL this process."""
        if self.killed_at_path is not None:
            self.killed_at_path.write_text(f"{time.time()!r} {self.manager.current_step()}")
        os.kill(os.getpid(), signal.SIGKILL)

    @property
    def committed_step(self) -> int:
        """Rounds committed by the quorums this replica took part in (or healed into)."""
        return self.manager.current_step()

    # ------------------------------------------------------------------ the data plane
    def all_reduce(self, tensor, op="sum", async_op=False):
        self._check_op(op)
        if not self._in_round:
            raise RuntimeError("torchft: an all-reduce outside a synchronization (begin_sync ... commit); "
                               f"on cluster.backend: torchft only {', '.join(FT_ALGORITHMS)} are supported")
        w = 0.0 if self._healed else 1.0
        buf = torch.empty(tensor.numel() + 1, dtype=tensor.dtype, device=tensor.device)
        self._stats.record(*wire_bytes("all_reduce", tensor_nbytes(buf), self.world_size, self.rank), tensor_nbytes(buf))
        buf[:-1].copy_(tensor.reshape(-1)).mul_(w)
        buf[-1] = w
        if self.fault is not None and self.fault[1:] == (self.step, "allreduce"):
            self._die()  # in the quorum, the peers' ring waits for this replica: it dies there
        def finish() -> None:
            total = buf[:-1].view_as(tensor)
            if op == "mean" and float(buf[-1]) > 0:
                total = total / buf[-1]
            tensor.copy_(total)

        return self._sum(buf, finish, async_op)

    def _sum(self, buf: torch.Tensor, finish: Any, async_op: bool) -> Work | None:
        """The Manager's fault-tolerant SUM of `buf`; `finish` writes the result where it belongs."""
        from torch.distributed import ReduceOp

        work = _FTWork(self, self.manager.allreduce(buf, reduce_op=ReduceOp.SUM), finish)
        if async_op:
            self._in_flight.append(work)
            return work
        work.wait()
        return None

    def all_gather(self, tensor_list, tensor, async_op=False):
        """An all-gather as one fault-tolerant all-reduce (torchft 0.2.0's Manager has no other):
        a zero uint8 buffer of n slots (n = this quorum's participants, slot r = participating
        rank r, each the bytes of `tensor`) and n flags; this replica writes its bytes into its slot
        and its flag 1, or leaves both zero if it healed at this round's quorum (weight 0, as in
        `all_reduce`). After the SUM slot i holds rank i's bytes exactly (one non-zero writer per
        slot: no carry, any dtype bit for bit) and `gathered_from` the ranks whose flag is 1.
        Booked as what it is, the all-reduce of n x B + n bytes: 2(n-1) B per replica, about twice
        a ring all-gather's (n-1) B (a ring all-reduce is a reduce-scatter plus an all-gather of
        the whole n x B buffer)."""
        if not self._in_round:
            raise RuntimeError("torchft: an all-gather outside a synchronization (begin_sync ... commit); "
                               f"on cluster.backend: torchft only {', '.join(FT_ALGORITHMS)} are supported")

        n = self.world_size
        if len(tensor_list) != n:
            raise ValueError(f"torchft: all_gather needs {n} output tensors (this quorum's participants), got {len(tensor_list)}")
        src = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        size = src.numel()
        buf = torch.zeros(n * size + n, dtype=torch.uint8, device=tensor.device)
        self._stats.record(*wire_bytes("all_reduce", tensor_nbytes(buf), n, self.rank), tensor_nbytes(buf))
        if not self._healed:
            buf[self.rank * size : (self.rank + 1) * size].copy_(src)
            buf[n * size + self.rank] = 1
        self._gathered = None  # until this gather's result is written
        if self.fault is not None and self.fault[1:] == (self.step, "allreduce"):
            self._die()  # in the quorum, the peers' ring waits for this replica: it dies there

        def finish() -> None:
            for i, out in enumerate(tensor_list):
                out.copy_(buf[i * size : (i + 1) * size].view(tensor.dtype).view_as(out))
            self._gathered = [i for i in range(n) if int(buf[n * size + i]) == 1]

        return self._sum(buf, finish, async_op)

    def gathered_from(self) -> list[int]:
        """The ranks whose entries of the last all-gather carry work: every participant but one
        that healed at this round's quorum (read after the gather completed; only meaningful if the
        round commits: a failed all-reduce leaves the buffer undefined)."""
        if self._gathered is None:
            raise RuntimeError("torchft: gathered_from() before an all-gather completed")
        return self._gathered

    def _unsupported(self, what: str):
        raise RuntimeError(f"torchft: {what} is not fault-tolerant here; cluster.backend: torchft runs "
                           f"{', '.join(FT_ALGORITHMS)} (every data-plane call an all-reduce, or an "
                           "all-gather built from one)")

    def all_to_all(self, output_list, input_list, async_op=False):
        self._unsupported("all_to_all")

    def broadcast(self, tensor, src, async_op=False):
        self._unsupported("broadcast")

    def send(self, tensor, dst):
        self._unsupported("send")

    def recv(self, tensor, src):
        self._unsupported("recv")

    def isend(self, tensor, dst):
        self._unsupported("isend")

    def irecv(self, tensor, src):
        self._unsupported("irecv")

    def barrier(self):
        self._unsupported("barrier")

    # ------------------------------------------------------------------ control plane: this replica's own
    def all_gather_object(self, obj):
        return [obj]

    def gather_object(self, obj, dst=0):
        return [obj]

    def scatter_object(self, objs, src=0):
        return objs[0] if objs else None

    def broadcast_state(self, tensors, src=0):
        """Nothing: every replica builds the same initial model from the run's seed (init_sync off)."""
