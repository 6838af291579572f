"""`gradient-tracking`: DIGing / DSGT (Nedic, Olshevsky, Shi 2017; Pu & Nedic 2021).

Each worker keeps a tracker y_i of the average gradient. With g_i^t = grad f_i(x_i^t; batch_i^t)
and W(t) the step-t mixing matrix (`gossip.py`), step t on worker i is::

    y_i^t     = sum_j W(t-1)_ij y_j^{t-1} + g_i^t - g_i^{t-1}        (y_i^0 = g_i^0)
    x_i^{t+1} = sum_j W(t)_ij (x_j^t - lr y_j^t)

i.e. the spec's  x_i <- sum_j W_ij (x_j - lr y_j);  y_i <- sum_j W_ij y_j + g_i(new) - g_i(old).
Since W is doubly stochastic, mean_i y_i^t = mean_i g_i^t at every step (checked by the tests),
so the models move along the average gradient and, with exact gradients, converge to the
optimum of (1/n) sum_i f_i even when the f_i differ (DSGD stalls at a bias there).

One message per edge and step carries [x_j - lr y_j, y_j] (2d elements): W y^t is mixed now and
used at step t+1. Bytes per step per worker: 2 deg_i(t) d bytes_per_element.

The tracked direction replaces the gradient, so the inner optimizer must be plain SGD (no
momentum, no weight decay): its ``step()`` runs with ``.grad = y_i`` and computes x_i - lr y_i
(its lr, LR schedules included). Gradient clipping, if set, clips g_i before tracking. Parameters
whose ``.grad`` is None contribute zeros.
Evaluation: the average model; `consensus_error()` is (1/n) sum_i ||x_i - xbar||^2.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import flatten, unflatten_into
from .gossip import Decentralized, PlainSGDInner


class GradientTracking(PlainSGDInner, Decentralized):
    # one worker: y_t = y_(t-1) + g_t - g_(t-1), which is g_t only up to rounding (not declared)
    name = "gradient-tracking"
    summary = "gradient tracking (DIGing/DSGT): gossip models and a tracker of the mean gradient"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tracker: torch.Tensor | None = None  # y_i^t
        self.prev_grad: torch.Tensor | None = None  # g_i^t
        self.mixed_tracker: torch.Tensor | None = None  # sum_j W(t)_ij y_j^t, used at step t+1

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """One message of (parameters, tracker) to each neighbour per step."""
        b = cls._plain_payload(model, options)
        return None if b is None else [("send", 2 * b)] * (degree * steps)

    def _step(self) -> None:
        g = flatten([g.detach() for g in self._local_grads()])
        y = g.clone() if self.local_step == 0 else self.mixed_tracker + g - self.prev_grad
        unflatten_into(y, [p.grad for p in self.params])
        self.optimizer.step()  # plain SGD along the tracker: x - lr y
        d = g.numel()
        mixed = self.gossip(torch.cat([flatten([p.detach() for p in self.params]), y]), self.local_step)
        unflatten_into(mixed[:d], self.params)
        self.tracker, self.prev_grad, self.mixed_tracker = y, g, mixed[d:].clone()

    def state_dict(self) -> dict[str, Any]:
        bufs = {k: None if v is None else v.clone() for k, v in
                (("tracker", self.tracker), ("prev_grad", self.prev_grad), ("mixed_tracker", self.mixed_tracker))}
        return {**super().state_dict(), **bufs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        dev = self.params[0].device
        for k in ("tracker", "prev_grad", "mixed_tracker"):
            setattr(self, k, None if state[k] is None else state[k].to(dev))
