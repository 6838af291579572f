"""The torch.distributed backend: a `Communicator` over a process group (gloo on CPU, NCCL on GPU).

Each call maps 1:1 onto ``torch.distributed``: all_reduce (mean = SUM then divide by the world
size, the same arithmetic as the simulator; gloo has no AVG), all_gather, broadcast, send/recv,
isend/irecv, barrier; ``async_op=True`` returns the process group's work handle (wrapped so that
a mean is divided after ``wait()``). Bytes are accounted with the same wire model as the simulator
(`wire_bytes`), so both backends report identical byte counts for the same program.

Time is real: ``compute()`` books the wall time since the previous mark as compute; blocking calls
and ``wait()`` book their duration as blocked time; ``clock_s`` is the wall time since start (plus
the clock of a checkpoint after a resume).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from .base import Communicator, WallClock, Work, tensor_nbytes, wire_bytes


class _TorchWork(Work):
    def __init__(self, comm: TorchCommunicator, work, after=None):
        self._comm, self._work, self._after, self._done = comm, work, after, False

    def wait(self) -> None:
        if self._done:
            return
        t0 = time.perf_counter()
        self._work.wait()
        if self._after is not None:
            self._after()
        self._done = True
        self._comm._book_blocked(time.perf_counter() - t0)

    def is_completed(self) -> bool:
        return self._done or self._work.is_completed()


class TorchCommunicator(WallClock, Communicator):
    """A worker of a torch.distributed process group (the default group unless `group` is given)."""

    def __init__(self, group=None):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call init_process_group first (e.g. under torchrun)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._start_clock()

    def _g(self, rank: int) -> int:
        """The global rank of `rank` of this communicator's group (what torch.distributed's src/dst take)."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    # ------------------------------------------------------------------ accounting
    def _record(self, kind: str, nbytes: int, src: int = 0) -> None:
        sent, received = wire_bytes(kind, nbytes, self.world_size, self.rank, src)
        self._stats.record(sent, received, nbytes)

    def _run(self, fn, async_op: bool, after=None) -> Work | None:
        t0 = time.perf_counter()
        work = fn(async_op)
        if async_op:
            return _TorchWork(self, work, after)
        if after is not None:
            after()
        self._book_blocked(time.perf_counter() - t0)
        return None

    # ------------------------------------------------------------------ collectives
    def all_reduce(self, tensor, op="sum", async_op=False):
        self._check_op(op)
        self._record("all_reduce", tensor_nbytes(tensor))
        after = (lambda: tensor.div_(self.world_size)) if op == "mean" else None
        return self._run(lambda a: dist.all_reduce(tensor, dist.ReduceOp.SUM, group=self.group, async_op=a), async_op, after)

    def all_gather(self, tensor_list, tensor, async_op=False):
        self._record("all_gather", tensor_nbytes(tensor))
        return self._run(lambda a: dist.all_gather(tensor_list, tensor, group=self.group, async_op=a), async_op)

    def all_to_all(self, output_list, input_list, async_op=False):
        self._record("all_to_all", tensor_nbytes(input_list[0]))
        return self._run(lambda a: dist.all_to_all(output_list, input_list, group=self.group, async_op=a), async_op)

    def broadcast(self, tensor, src, async_op=False):
        self._record("broadcast", tensor_nbytes(tensor), src)
        return self._run(lambda a: dist.broadcast(tensor, self._g(src), group=self.group, async_op=a), async_op)

    def send(self, tensor, dst):
        self._record("send", tensor_nbytes(tensor))
        self._run(lambda a: dist.send(tensor, self._g(dst), group=self.group), False)

    def recv(self, tensor, src):
        self._record("recv", tensor_nbytes(tensor))
        self._run(lambda a: dist.recv(tensor, self._g(src), group=self.group), False)

    def recv_any(self, tensor):
        if dist.get_backend(self.group) != "gloo":
            raise RuntimeError(f"receive from any source needs the gloo backend (this group uses {dist.get_backend(self.group)})")
        self._record("recv", tensor_nbytes(tensor))
        t0 = time.perf_counter()
        src = dist.recv(tensor, None, group=self.group)
        self._book_blocked(time.perf_counter() - t0)
        return int(src) if self.group is None else dist.get_group_rank(self.group, int(src))

    def isend(self, tensor, dst):
        self._record("send", tensor_nbytes(tensor))
        return _TorchWork(self, dist.isend(tensor, self._g(dst), group=self.group))

    def irecv(self, tensor, src):
        self._record("recv", tensor_nbytes(tensor))
        return _TorchWork(self, dist.irecv(tensor, self._g(src), group=self.group))

    def barrier(self):
        self._record("barrier", 0)
        self._run(lambda a: dist.barrier(group=self.group), False)

    # ------------------------------------------------------------------ control plane
    def all_gather_object(self, obj):
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast_state(self, tensors, src=0):
        for t in tensors:  # dist.broadcast, not counted: setup traffic (the control plane)
            with torch.no_grad():
                dist.broadcast(t.data, self._g(src), group=self.group)

    def gather_object(self, obj, dst=0):
        out = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=self._g(dst), group=self.group)
        return out

    def scatter_object(self, objs, src=0):
        out = [None]
        dist.scatter_object_list(out, objs if self.rank == src else None, src=self._g(src), group=self.group)
        return out[0]
