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

Sharded groups (``cluster.group_shard``): instead of DDP, the group's model is sharded over its k
members with FSDP2 (``fully_shard`` on the whole model, over a device mesh of the group's process
group): member j holds shard j of every parameter (dim-0 chunks), the forward all-gathers them and
the backward reduce-scatters the gradients' mean. The algorithm's parameters are the member's local
shards (`local_params`), so its state (DiLoCo's phi and outer momentum, Local SGD's last average)
is sharded too, and an all-reduce of the member's whole flat shard goes straight across groups to
member j of the others (no slicing, no regathering: the same arithmetic per element as one
all-reduce over R workers). The counters book the group's bytes, the whole model's. Evaluation
runs on every member of group 0 (the sharded forward is a collective of the group). Checkpoints
are sharded (``train.checkpoint_format: sharded``): every member writes its own shard of every
state (`local_tree`; worker key ``{g}m{j}``) and turns it back into DTensors on resume
(`dtensor_tree`), on the same layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .base import Work, local_tensor, tensor_nbytes
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
    shard: tuple[int, int] | None = None  # sharded groups (`shard_in_group`): parameters of the model, of this member's shard

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


def check_shardable(model: torch.nn.Module) -> None:
    """Refuse, before work, what sharded groups do not carry: floating-point buffers (BatchNorm
    statistics are averaged as whole tensors, a member would hold them whole while its parameters
    are shards)."""
    floats = [name for name, b in model.named_buffers() if b.is_floating_point()]
    if floats:
        raise ValueError(f"cluster.group_shard: the model has floating-point buffers ({', '.join(floats[:3])}"
                         f"{', ...' if len(floats) > 3 else ''}), which sharded groups do not average; use "
                         "cluster.group_shard: false (DDP inside the group)")


def shard_in_group(model: torch.nn.Module, group: ReplicaGroup) -> None:
    """Shard `model` in place over `group`'s members with FSDP2's ``fully_shard`` (before its
    optimizer is built: the parameters become DTensors); notes in ``group.shard`` (parameters of the
    whole model, of this member's shard) for the communicator's byte count."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device.type if params else "cpu"
    fully_shard(model, mesh=DeviceMesh.from_group(group.pg, device))
    group.shard = (sum(p.numel() for p in params), sum(t.numel() for t in local_params(model)))


def local_params(model: torch.nn.Module) -> list[torch.Tensor]:
    """The trainable parameters as this process holds them: a sharded parameter's local shard (a
    view of its storage: writing it writes the parameter), a plain parameter itself."""
    with torch.no_grad():
        return [local_tensor(p) for p in model.parameters() if p.requires_grad]


def local_tree(obj: Any) -> Any:
    """`obj` (a nested state: dicts, lists, tensors) with every DTensor replaced by its local shard:
    what one member of a sharded group saves (its own part of the model and optimizer state)."""
    if isinstance(obj, torch.Tensor):
        return local_tensor(obj)
    if isinstance(obj, dict):
        return {k: local_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(local_tree(v) for v in obj)
    return obj


class ParamLike:
    """A template for `dtensor_tree`: the per-parameter state of an optimizer (exp_avg, momentum
    buffers...), whose tensors of the parameter's local shape become DTensors like the parameter."""

    def __init__(self, param: torch.Tensor):
        self.param = param


def _as_dtensor(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if tuple(local.shape) != tuple(like.to_local().shape):
        raise ValueError(f"a saved shard of shape {tuple(local.shape)} does not fit this member's "
                         f"{tuple(like.to_local().shape)} (the group layout changed)")
    return DTensor.from_local(local.to(like.device), like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


def dtensor_tree(obj: Any, like: Any) -> Any:
    """The inverse of `local_tree`: where `like` (this process's current state, of the same
    structure) holds a DTensor, `obj`'s local shard becomes a DTensor of the same mesh, placements
    and global shape (a `ParamLike`: every tensor of the parameter's local shape)."""
    if isinstance(like, ParamLike):
        shape = tuple(like.param.to_local().shape) if hasattr(like.param, "to_local") else None
        return {k: _as_dtensor(v, like.param) if shape is not None and isinstance(v, torch.Tensor) and
                tuple(v.shape) == shape and v.dim() > 0 else v for k, v in obj.items()}
    if hasattr(like, "to_local") and isinstance(like, torch.Tensor):
        return _as_dtensor(obj, like)
    if isinstance(obj, dict) and isinstance(like, dict):
        return {k: dtensor_tree(v, like[k]) if k in like else v for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and isinstance(like, (list, tuple)) and len(obj) == len(like):
        return type(obj)(dtensor_tree(v, w) for v, w in zip(obj, like))
    return obj


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
        if self.replica_group.shard is not None:
            return self._shard_all_reduce(tensor, op, async_op)
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

    def _shard_all_reduce(self, tensor, op, async_op):
        """Sharded groups: this member's whole shard, across groups with member j of the others."""
        full, local = self.replica_group.shard
        if tensor.numel() != local:
            raise RuntimeError(f"a sharded replica group all-reduces whole shards ({local} values), got {tensor.numel()} "
                               "(cluster.group_shard carries algorithms that exchange the whole parameter vector)")
        self._record("all_reduce", full * tensor.element_size())  # the group's cross-group bytes: one model

        def after() -> None:
            if op == "mean":
                tensor.div_(self.world_size)

        return self._run(lambda a: dist.all_reduce(tensor, dist.ReduceOp.SUM, group=self.group, async_op=a), async_op, after)

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
