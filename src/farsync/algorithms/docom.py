"""`docom-sgt`: DoCoM-SGT, compressed decentralized optimization with momentum and gradient
tracking (Yau & Wai, "DoCoM: Compressed Decentralized Optimization with Near-Optimal Sample
Complexity", TMLR 2023, arXiv 2202.00255).

Two CHOCO-style compressed gossips (`choco.py`), one of the model x and one of the gradient
tracker g, plus a STORM-type momentum estimator v. Spec rules (W: static mixing matrix, C: the
compressor of ``algorithm.compress``; hats are public copies, kept exactly by every neighbour)::

    x_hat <- x_hat + C(x - lr g - x_hat)
    x     <- x - lr g + gamma sum_j W_ij (x_hat_j - x_hat_i)
    v_new  = beta grad(x_new; xi) + (1 - beta) (v + grad(x_new; xi) - grad(x_old; xi))   (one sample xi)
    g_hat <- g_hat + C(g + v_new - v - g_hat)
    g     <- g + v_new - v + gamma sum_j W_ij (g_hat_j - g_hat_i)

Mapped onto the training loop (step t has the gradient at x^t on batch xi^t), worker i does::

    t = 0:  v = g = grad(x^0; xi^0)   (mean over b0 batches; x_hat = g_hat = 0, s_x = s_g = 0)
    t > 0:  v_new = beta grad(x^t; xi^t) + (1 - beta)(v + grad(x^t; xi^t) - grad(x^{t-1}; xi^t))
            g_half = g + v_new - v;  q_g = C(g_half - g_hat);  exchange q_g
            g_hat += q_g;  s_g += sum_j W_ij q_g,j;  g = g_half + gamma (s_g - g_hat);  v = v_new
    all t:  x_half = x^t - lr g (plain SGD with .grad = g: its lr and schedule)
            q_x = C(x_half - x_hat);  exchange q_x
            x_hat += q_x;  s_x += sum_j W_ij q_x,j;  x^{t+1} = x_half + gamma (s_x - x_hat)

i.e. the spec's iteration with the model update of iteration t moved to the end of step t (the
tracker update needs the gradient at the new point, which the loop computes at the next step).
This is also the order of the authors' code (OscarYau525/docom, pcode/optim/parallel_docom_v.py:
momentum, then tracker, then the model step with the new tracker). Deviations: the authors
pipeline the gossip (the correction uses the public copies of the previous round while the new
compressed messages are in flight); we follow the paper's/spec's unpipelined rules above.
The paper initialises g = v with a large batch: option ``b0`` (default 1) makes the training
loop average the gradients of b0 mini-batches before the first step (`initial_batches`; with your
own loop, do the same before the first ``step()``).

grad(x^{t-1}; xi^t) comes from the same-batch closure the training loop passes to
``Algorithm.step(loss, closure)``: the parameters are set to x^{t-1}, the closure recomputes the
loss and its gradients on the current batch, then parameters and gradients are restored (one
extra forward and backward per step; ``step()`` without a closure raises after the first step).
Gradient clipping, if set, clips each of the two gradients. With exact gradients (sigma = 0),
v_i = grad f_i(x_i) and the method is compressed gradient tracking.

Invariant: sum_i (s_g,i - g_hat_i) = 0 (W doubly stochastic), so mean_i g_i changes by
mean_i (v_new,i - v_i) and mean_i g_i = mean_i v_i at every step (tested). With heterogeneous f_i
and exact gradients the local models converge to the optimum of (1/n) sum_i f_i (CHOCO stalls).

Two messages per edge and step (tracker, then model; the model message depends on the gossiped
tracker), one at step 0. Bytes per step per worker: deg_i (|C(q_g)| + |C(q_x)|). Compressors:
as `choco-sgd` (any `farsync.compress` compressor without error feedback; none = exact). The
inner optimizer must be plain SGD (like `gradient-tracking`). Static graphs only.
Evaluation: the average model; `consensus_error()` is (1/n) sum_i ||x_i - xbar||^2.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator

from .base import flatten, unflatten_into
from .choco import CompressedGossip, check_unit_interval
from .gossip import GossipOptions, PlainSGDInner
from .options import Compressible

BUFFERS = ("x_hat", "s_x", "g_hat", "s_g", "v", "tracker", "x_prev")


class DoCoMOptions(GossipOptions, Compressible):
    gamma: float = Field(0.2, description="consensus step size gamma in (0, 1] (paper: 0.2)")
    beta: float = Field(0.1, description="momentum weight beta in (0, 1] (paper: 0.01-0.3; 1: no momentum)")
    b0: int = Field(1, ge=1, description="mini-batches averaged for the initial v = g (the paper's large first batch)")

    @field_validator("gamma", "beta")
    @classmethod
    def _unit(cls, v, info):
        return check_unit_interval(info.field_name, v)


class DoCoMSGT(PlainSGDInner, CompressedGossip):
    name = "docom-sgt"
    summary = "DoCoM-SGT: compressed gossip of models and gradient trackers with STORM momentum (algorithm.compress)"
    Options = DoCoMOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for k in BUFFERS:
            setattr(self, k, None)

    @property
    def initial_batches(self) -> int:
        return self.options.b0

    def _grad(self) -> torch.Tensor:
        """The current .grad as one flat buffer (missing: zeros; clipped if grad_clip is set)."""
        return flatten([g.detach() for g in self._local_grads()]).clone()

    @torch.no_grad()
    def _grad_at(self, x: torch.Tensor) -> torch.Tensor:
        """grad(x; current batch) through the same-batch closure; parameters and gradients restored."""
        if self._closure is None:
            raise ValueError("docom-sgt needs the gradient at the previous model on the current batch: call "
                             "step(loss, closure) with a closure that recomputes the loss and backward() on this batch")
        saved_x = flatten([p.detach() for p in self.params]).clone()
        saved_g = [p.grad for p in self.params]
        unflatten_into(x, self.params)
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            self._closure()
        g_old = self._grad()
        unflatten_into(saved_x, self.params)
        for p, g in zip(self.params, saved_g):
            p.grad = g
        return g_old

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """Uncompressed: to each neighbour, the model difference every step and the tracker's
        from the second step on."""
        b = cls._plain_payload(model, options)
        return None if b is None else [("send", b)] * (degree * (2 * steps - 1))

    def _step(self) -> None:
        grad = self._grad()
        x = flatten([p.detach() for p in self.params]).clone()
        if self.local_step == 0:
            self.v, self.tracker = grad.clone(), grad.clone()
            self.x_hat, self.s_x, self.g_hat, self.s_g = (torch.zeros_like(x) for _ in range(4))
        else:
            beta = self.options.beta
            v_new = beta * grad + (1 - beta) * (self.v + grad - self._grad_at(self.x_prev))
            half = self.tracker + v_new - self.v
            self.tracker = self.choco_gossip(half, self.g_hat, self.s_g, "g")
            self.v = v_new
        self.x_prev = x
        unflatten_into(self.tracker, [p.grad for p in self.params])
        self.optimizer.step()  # plain SGD along the tracker: x - lr g
        half = flatten([p.detach() for p in self.params])
        unflatten_into(self.choco_gossip(half, self.x_hat, self.s_x, "x"), self.params)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **{k: None if getattr(self, k) is None else getattr(self, k).clone() for k in BUFFERS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        dev = self.params[0].device
        for k in BUFFERS:
            setattr(self, k, None if state[k] is None else state[k].to(dev))
