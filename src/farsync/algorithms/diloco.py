"""`diloco`: DiLoCo (Douillard et al., arXiv 2311.08105).

State per worker: local params theta_i, the inner optimizer's state (kept across rounds), the
global params phi (identical on all workers) and the outer optimizer's state over phi. Every
H = `sync_every` inner steps (or H from the QSR rule, `sync_schedule.py`)::

    delta_i = phi - theta_i                       # pseudo-gradient (points downhill)
    delta   = (1/n) * sum_i delta_i               # all_reduce(mean) of one flat buffer
    phi     = OuterOpt.step(phi, grad=delta)      # default SGD, lr 0.7, Nesterov momentum 0.9
    theta_i = phi

Any torch optimizer can be inner or outer (`farsync.optim.OPTIMIZERS`). Reductions: n=1, H=1,
outer SGD lr=1 without momentum equals the plain inner optimizer; H=1 with outer SGD lr=1 and
inner SGD equals DDP with SGD (both up to floating-point rounding of phi - (phi - theta)).
Evaluation point: phi, with the buffers (BatchNorm statistics) averaged at the last outer step
(`replicas.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .base import CollectiveAlgorithm, evaluation_point, outer_step, pseudo_gradient, swapped_params
from .options import Compressible, OuterOptimized, Periodic


def outer_round(algo: CollectiveAlgorithm) -> None:
    """One outer step of `algo` (its ``params``, ``global_params``, ``outer_optimizer``): average the
    pseudo-gradients, step phi, reset theta to phi. A round that is not committed (torchft: a peer
    failed during it) leaves phi as it was: its inner steps are discarded, theta is reset to phi all
    the same (as torchft's DiLoCo)."""
    algo.comm.begin_sync()  # torchft: the quorum; a replica coming back heals here
    delta = algo._mean(pseudo_gradient(algo.global_params, algo.params))  # through the compressor, if any
    algo.buffers.average()
    if algo.comm.commit():
        outer_step(algo.outer_optimizer, algo.global_params, delta)
    with torch.no_grad():
        for p, g in zip(algo.params, algo.global_params):
            p.copy_(g)


class DiLoCoOptions(Periodic, OuterOptimized, Compressible):
    """sync_every (H), outer, compress (of the pseudo-gradient)."""


class DiLoCo(CollectiveAlgorithm):
    grad_scaler_ok = True  # .grad is read only by the inner optimizer step (fp16: microbatch.py)
    name = "diloco"
    summary = "inner optimizer for H steps, outer optimizer on the averaged pseudo-gradient"
    Options = DiLoCoOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        outer = self.options.outer
        self.global_params = [nn.Parameter(p.detach().clone(), requires_grad=False) for p in self.params]
        self.outer_optimizer = self.build_outer(self.global_params, outer)

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """One all-reduce of the pseudo-gradient per round of H steps (a fixed H)."""
        b = cls._plain_payload(model, options)
        if b is None or not isinstance(options.sync_every, int):
            return None
        return [("all_reduce", b)] * (steps // options.sync_every)

    def _step(self) -> None:
        self._optimizer_step()
        if self._sync_due():
            self.sync()

    def sync(self) -> None:
        outer_round(self)

    @contextmanager
    def eval_params(self) -> Iterator[nn.Module]:
        with evaluation_point([self.outer_optimizer]):  # an averaging outer optimizer (e.g. GPA) is evaluated at its x
            values = [g.detach().clone() for g in self.global_params]
        with swapped_params(self.params, values), self.buffers.at_last_sync():
            yield self.model

    def state_dict(self):
        return {
            **super().state_dict(),
            "global_params": [g.detach().clone() for g in self.global_params],
            "outer_optimizer": self.outer_optimizer.state_dict(),
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            for g, s in zip(self.global_params, state["global_params"]):
                g.copy_(s)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
