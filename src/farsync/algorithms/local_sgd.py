"""`local-sgd`: Local SGD / FedAvg (Stich 2019; McMahan et al. 2017), with optional post-local phase.

Each worker takes H = `sync_every` local steps (or H from the QSR rule, `sync_schedule.py`) of its inner optimizer; then the parameters are
averaged::

    theta_i = InnerOpt.step(theta_i, grad f_i(theta_i))          # every step
    if t % H == 0:  theta_i = (1/n) * sum_j theta_j             # all_reduce(mean)

Options: ``reset_inner_state`` clears the inner optimizer's state after each averaging;
``ddp_steps`` = S runs synchronous DDP (gradient averaging) for the first S steps, Local SGD after
(post-local SGD, Lin et al. 2020). The evaluation point is the last averaged model, with the
buffers averaged at that synchronization (`replicas.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pydantic import Field

from .base import CollectiveAlgorithm, flatten, swapped_params, unflatten_into
from .options import Compressible, Periodic


class LocalSGDOptions(Periodic, Compressible):
    reset_inner_state: bool = Field(False, description="clear inner optimizer state after each averaging")
    ddp_steps: int = Field(0, ge=0, description="post-local SGD: synchronous DDP for the first S steps")


class LocalSGD(CollectiveAlgorithm):
    grad_scaler_ok = True  # .grad is read only by the inner optimizer step (fp16: microbatch.py)
    one_worker_is_inner = True
    name = "local-sgd"
    summary = "average parameters every H local steps (FedAvg / post-local SGD)"
    Options = LocalSGDOptions

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """One all-reduce of the parameters per round of H steps (no DDP phase, a fixed H)."""
        b = cls._plain_payload(model, options)
        if b is None or options.ddp_steps or not isinstance(options.sync_every, int):
            return None
        return [("all_reduce", b)] * (steps // options.sync_every)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.averaged = [p.detach().clone() for p in self.params]

    def _step(self) -> None:
        if self.local_step < self.options.ddp_steps:
            self.comm.begin_sync()
            self._average_gradients()
            if self.comm.commit():  # torchft: an uncommitted step is skipped
                self._optimizer_step()
                self.buffers.broadcast_from_rank0()
            with torch.no_grad():
                for a, p in zip(self.averaged, self.params):
                    a.copy_(p)
            return
        self._optimizer_step()
        if self._sync_due():
            self.comm.begin_sync()  # torchft: the quorum; a replica coming back heals here
            if not self.reducer.compressed:
                flat = self._mean(flatten([p.detach() for p in self.params]))
            else:  # compress the update since the last average, not the parameters
                last = flatten(self.averaged)
                flat = last + self._mean(flatten([p.detach() for p in self.params]) - last)
            self.buffers.average()
            if not self.comm.commit():  # torchft: a round not committed keeps the local parameters
                return
            unflatten_into(flat, self.params)
            unflatten_into(flat, self.averaged)
            if self.options.reset_inner_state:
                self.optimizer.state.clear()

    @contextmanager
    def eval_params(self) -> Iterator[torch.nn.Module]:
        with swapped_params(self.params, self.averaged), self.buffers.at_last_sync():
            yield self.model

    def state_dict(self):
        return {**super().state_dict(), "averaged": [a.clone() for a in self.averaged]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        for a, s in zip(self.averaged, state["averaged"]):
            a.copy_(s)
