"""Replica groups on the torch backend: each worker of the algorithm is a group of k processes.

The deployment DiLoCo is made for: a worker is a datacenter (or a multi-GPU host) that trains with
torch DDP on fast links inside, and the algorithm synchronizes across groups on slow links. With
``cluster.workers: R`` and ``cluster.group_size: k`` there are R x k processes; global rank
``g * k + j`` is member j of group g (torchrun ``--nnodes R --node-rank g --nproc-per-node k``).
Two families of process groups, made with ``dist.new_subgroups_by_enumeration``:

- inside group g: ranks ``g*k .. g*k + k-1``: torch DDP averages the gradients of every backward;
- across groups, for member j: ranks ``j, k + j, 2k + j, ...``: the algorithm's communicator.

The algorithm sees R workers (``rank = g``, ``world_size = R``) and runs unchanged. An all-reduce
of a flat buffer of N values is split in k slices of ceil(N / k): member j all-reduces slice j
with member j of the other groups, then the group all-gathers the slices back::

    x = [x_0 | x_1 | ... | x_{k-1}]       (zero-padded to k * ceil(N/k))
    x_j <- sum_g x_j^(g)   (/ R for a mean)  across groups, member j only
    x   <- all_gather_j(x_j)                   inside the group

so the bytes that cross groups are one model per group and the arithmetic of every element is
that of one all-reduce over R workers (bitwise, for the same summation order). Other collectives
(all_gather, all_to_all, broadcast: compressed payloads) cross groups on member 0 only and are
broadcast inside the group. Counters: every member books its group's cross-group bytes (one
model per all-reduce, as a simulated worker does); traffic inside the group is not counted. The
control plane (object gathers, metrics) runs on each member's cross-group group in parallel:
all members of a group hold the same state. Point-to-point calls are refused (`Config` refuses
algorithms that use them before any work).

Data: group g draws the batch of a worker with ``k x train.batch_size`` samples and member j
trains on slice j (`SliceSampler`), so R groups of k equal the simulator with R workers of batch
``k x b`` up to the rounding of DDP's gradient average (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .base import Work, tensor_nbytes
from .torch_dist import TorchCommunicator

P2P_REFUSED = ("point-to-point messages are not supported with cluster.group_size > 1 (replica groups run "
               "algorithms that use collectives only)")


@dataclass
class ReplicaGroup:
    """This process's place: member `rank` of group `index`, `size` members; `pg` is the group's
    own process group (DDP's), `cross` the process group of member `rank` of every group."""

    index: int
    rank: int
    size: int
    pg: Any
    cross: Any

    @property
    def root(self) -> int:
        """Global rank of the group's member 0."""
        return self.index * self.size

    def from_member0(self, obj: Any) -> Any:
        """Member 0's `obj` on every member (control plane, inside the group)."""
        box = [obj]
        dist.broadcast_object_list(box, self.root, group=self.pg)
        return box[0]


def init_replica_groups(group_size: int) -> ReplicaGroup:
    """Make the inside and across process groups (every process calls this, in the same order)."""
    world, me = dist.get_world_size(), dist.get_rank()
    if world % group_size:
        raise ValueError(f"{world} processes cannot form groups of cluster.group_size {group_size}")
    groups = world // group_size
    inside, _ = dist.new_subgroups_by_enumeration([[g * group_size + j for j in range(group_size)] for g in range(groups)])
    across, _ = dist.new_subgroups_by_enumeration([[g * group_size + j for g in range(groups)] for j in range(group_size)])
    return ReplicaGroup(me // group_size, me % group_size, group_size, inside, across)


class _Done(Work):
    def wait(self) -> None:
        return None

    def is_completed(self) -> bool:
        return True


class GroupedCommunicator(TorchCommunicator):
    """The algorithm's communicator for member j of group g: rank g of R workers (module docstring)."""

    def __init__(self, group: ReplicaGroup):
        super().__init__(group.cross)
        self.replica_group = group

    # ------------------------------------------------------------------ the sliced all-reduce
    def all_reduce(self, tensor, op="sum", async_op=False):
        self._check_op(op)
        self._record("all_reduce", tensor_nbytes(tensor))  # the group's cross-group bytes: the whole buffer
        k, j = self.replica_group.size, self.replica_group.rank
        flat = tensor.view(-1)
        n = flat.numel()
        c = math.ceil(n / k)
        if n == k * c:
            buf = flat
        else:
            buf = torch.zeros(k * c, dtype=flat.dtype, device=flat.device)
            buf[:n].copy_(flat)
        mine = buf[j * c:(j + 1) * c]

        def regather() -> None:
            if op == "mean":
                mine.div_(self.world_size)
            dist.all_gather(list(buf.split(c)), mine.clone(), group=self.replica_group.pg)
            if buf is not flat:
                flat.copy_(buf[:n])

        return self._run(lambda a: dist.all_reduce(mine, dist.ReduceOp.SUM, group=self.group, async_op=a), async_op, regather)

    # ------------------------------------------------------------------ member 0 crosses, the group receives
    def _from_member0(self, cross, outputs: list[torch.Tensor], async_op: bool) -> Work | None:
        if self.replica_group.rank == 0:
            self._run(lambda a: cross(), False)
        for t in outputs:
            dist.broadcast(t, self.replica_group.root, group=self.replica_group.pg)
        return _Done() if async_op else None

    def all_gather(self, tensor_list, tensor, async_op=False):
        self._record("all_gather", tensor_nbytes(tensor))
        return self._from_member0(lambda: dist.all_gather(tensor_list, tensor, group=self.group), tensor_list, async_op)

    def all_to_all(self, output_list, input_list, async_op=False):
        self._record("all_to_all", tensor_nbytes(input_list[0]))
        return self._from_member0(lambda: dist.all_to_all(output_list, input_list, group=self.group), output_list, async_op)

    def broadcast(self, tensor, src, async_op=False):
        self._record("broadcast", tensor_nbytes(tensor), src)
        return self._from_member0(lambda: dist.broadcast(tensor, self._g(src), group=self.group), [tensor], async_op)

    def send(self, tensor, dst):
        raise RuntimeError(P2P_REFUSED)

    recv = isend = irecv = send

    def recv_any(self, tensor):
        raise RuntimeError(P2P_REFUSED)

    # ------------------------------------------------------------------ control plane
    def gather_metrics(self, values):
        """The group's numbers first (loss: the mean over members, as over the group's whole
        batch; ``bad``: the first non-finite step of any member; ``stop``: any member's signal),
        then across groups."""
        members: list[Any] = [None] * self.replica_group.size
        dist.all_gather_object(members, dict(values), group=self.replica_group.pg)
        merged = dict(values)
        if "loss" in merged:
            merged["loss"] = sum(m["loss"] for m in members) / len(members)
        if "bad" in merged:
            merged["bad"] = min(m["bad"] for m in members)
        if "stop" in merged:
            merged["stop"] = max(m["stop"] for m in members)
        return self.all_gather_object(merged)


class SliceSampler:
    """Member j's part of its group's batch: rows ``j*b .. (j+1)*b`` (dim 0) of every tensor of the
    group's batch of k x b (the group's sampler state is this sampler's state)."""

    def __init__(self, inner, member: int, size: int):
        self.inner, self.member, self.size = inner, member, size

    def next_batch(self) -> Any:
        return _rows(self.inner.next_batch(), self.member, self.size)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def _rows(batch: Any, j: int, k: int) -> Any:
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0 or batch.shape[0] % k:
            raise ValueError(f"a batch tensor of shape {tuple(batch.shape)} cannot be split in {k} equal parts "
                             "along dim 0 (cluster.group_size)")
        b = batch.shape[0] // k
        return batch[j * b:(j + 1) * b]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_rows(x, j, k) for x in batch)
    return batch
