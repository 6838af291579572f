"""`dsgd`: decentralized SGD / D-PSGD (Lian et al. 2017) over a communication graph.

Every step t, worker i (neighbours N_i(t), mixing row W(t)_i; `gossip.py`)::

    order: cta (default, the spec's form: combine the current models, then take the local step)
        x_i <- sum_j W_ij x_j + (InnerOpt.step(x_i, g_i) - x_i)        = sum_j W_ij x_j - lr g_i  for SGD
    order: atc (adapt then combine: the local step first, then gossip the results)
        x_i <- sum_j W_ij InnerOpt.step(x_j, g_j)                      = sum_j W_ij (x_j - lr g_j) for SGD

with g_i = grad f_i(x_i; batch_i). In cta the models x_j are sent before the inner step and the
inner optimizer's update is added to the mixed model; in atc the updated models are sent.
Reductions: on the complete graph with W = 11^T/n, atc is DDP (every worker holds the same model);
cta keeps different local models whose average follows DDP's iterates when the gradients are
affine with a shared Hessian (quadratics). With a constant lr and heterogeneous f_i the local
models stall at a bias O(lr * zeta / rho) from the optimum (gradient tracking removes it).

Bytes per step per worker: deg_i(t) * d * bytes_per_element (one message per edge and direction).
Evaluation: the average model; `consensus_error()` is (1/n) sum_i ||x_i - xbar||^2.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import flatten, unflatten_into
from .gossip import Decentralized, GossipOptions


class DSGDOptions(GossipOptions):
    order: Literal["cta", "atc"] = Field(
        "cta", description="cta: x <- W x + local update (Lian et al.); atc: x <- W (local step of x)"
    )


class DSGD(Decentralized):
    grad_scaler_ok = True  # .grad is read only by the inner optimizer step (fp16: microbatch.py)
    one_worker_is_inner = True
    name = "dsgd"
    summary = "decentralized SGD: gossip with graph neighbours (cluster.topology), no all-reduce"
    Options = DSGDOptions

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """One message of the parameters to each neighbour per step."""
        b = cls._plain_payload(model, options)
        return None if b is None else [("send", b)] * (degree * steps)

    def _step(self) -> None:
        t = self.local_step
        if self.options.order == "atc":
            self._optimizer_step()
            unflatten_into(self.gossip(flatten([p.detach() for p in self.params]), t), self.params)
            return
        x = flatten([p.detach() for p in self.params])  # a copy: the models as they were sent
        mixed = self.gossip(x, t)
        self._optimizer_step()
        update = flatten([p.detach() for p in self.params]) - x
        unflatten_into(mixed + update, self.params)
