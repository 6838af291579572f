"""Identical replicas: every worker starts from the same model, and the policy for buffers.

**Initial state.** `farsync.wrap` (and so the runner) copies rank 0's parameters and buffers into
every worker's model before the algorithm makes its own copies (DiLoCo's phi, ...), as torch DDP's
constructor and torchft's Manager do. This is setup, sent over the control plane
(`Communicator.broadcast_state`) and not counted in bytes or simulated time. ``init="check"``
opts out of the copy and only checks: the run fails before its first step, naming the first
tensor and the ranks that differ.

**Buffers** (BatchNorm running statistics and any other ``register_buffer``), by family:

- gradient averaging (``ddp``, ``decoupled-momentum``; ``local-sgd`` in its DDP phase): rank
  0's buffers are copied to every worker after each step (a counted broadcast, as torch DDP's
  ``broadcast_buffers=True`` does at each forward), so all replicas hold rank 0's;
- parameter averaging (``local-sgd``, ``diloco``, ``streaming-diloco`` (once per round, with its
  last fragment), ``eager-diloco``, ``delayed-diloco``): the floating-point buffers are averaged
  over workers (a counted mean all-reduce) at every synchronization, and the evaluated model
  holds the buffers as of the last synchronization, as its parameters are those of the last
  outer step; integer buffers (``num_batches_tracked``) stay local (they are equal anyway);
- decentralized and parameter-server algorithms: buffers stay each worker's own; the evaluated
  model (rank 0's, or the average model of a decentralized run) uses rank 0's buffers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from ..comm import Communicator
from ..comm.base import local_tensor
from .flat import copy_into, unflatten_into

InitMode = Literal["broadcast", "check"]
INIT_MODES = ("broadcast", "check")


def model_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of `model`, by name, in a fixed order (a sharded parameter: this
    process's shard, a view of its storage)."""
    with torch.no_grad():
        params = [(n, local_tensor(p)) for n, p in model.named_parameters()]
    return [*params, *model.named_buffers()]


def replicate_initial_state(model: nn.Module, comm: Communicator, init: InitMode = "broadcast") -> None:
    """Make `model` identical on every worker (``broadcast``) or check that it is (``check``)."""
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {', '.join(INIT_MODES)}, got {init!r}")
    if comm.world_size == 1:
        return
    state = model_state(model)
    if init == "broadcast":
        comm.broadcast_state([t for _, t in state], src=0)
        return
    digests = comm.all_gather_object([_digest(t) for _, t in state])
    for i, (name, _) in enumerate(state):
        differ = [r for r in range(comm.world_size) if digests[r][i] != digests[0][i]]
        if differ:
            raise ValueError(f"init='check': the workers' initial models differ: {name!r} on rank(s) "
                             f"{', '.join(map(str, differ))} is not rank 0's. Seed the model identically on every "
                             "worker, or let farsync copy rank 0's (init='broadcast', the default)")


def _digest(t: torch.Tensor) -> str:
    data = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()


class Buffers:
    """A model's buffers and the algorithm-side operations of the policy above."""

    def __init__(self, model: nn.Module, comm: Communicator):
        self.comm = comm
        self.all = list(model.buffers())
        self.floating = [b for b in self.all if b.is_floating_point()]
        self.synced: list[torch.Tensor] | None = None  # floating buffers as of the last averaging

    def broadcast_from_rank0(self) -> None:
        """Every worker takes rank 0's buffers (counted: one broadcast per dtype)."""
        if self.comm.world_size == 1:
            return
        for group in _by_dtype(self.all):
            flat = torch.cat([b.reshape(-1) for b in group])
            self.comm.broadcast(flat, src=0)
            unflatten_into(flat, group)

    def average(self) -> None:
        """Average the floating-point buffers over workers (counted: one mean all-reduce per
        dtype) and remember them as the evaluated buffers."""
        if not self.floating:
            return
        if self.comm.world_size > 1:
            for group in _by_dtype(self.floating):
                flat = torch.cat([b.reshape(-1) for b in group])
                self.comm.all_reduce(flat, op="mean")
                unflatten_into(flat, group)
        self.synced = [b.detach().clone() for b in self.floating]

    @contextmanager
    def at_last_sync(self) -> Iterator[None]:
        """Temporarily put the buffers of the last averaging into the model (no-op before it)."""
        if self.synced is None:
            yield
            return
        saved = [b.detach().clone() for b in self.floating]
        copy_into(self.floating, self.synced)
        try:
            yield
        finally:
            copy_into(self.floating, saved)

    def state_dict(self) -> dict:
        return {"synced": None if self.synced is None else [b.clone() for b in self.synced]}

    def load_state_dict(self, state: dict | None) -> None:
        synced = (state or {}).get("synced")
        self.synced = None if synced is None else [b.clone() for b in synced]


def _by_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())
