"""`co2`: CO2, Local SGD whose outer all-reduce overlaps the next round (Sun et al., ICLR 2024, arXiv 2401.16265; public code: github.com/weigao266/fairscale-CO2, ``CO2DistributedDataParallel``, read as a reference).

M workers (the paper's G), tau = H = ``sync_every`` inner steps per round. x(t) is the global point every
worker starts round t from (identical on all workers), theta_i(t) worker i's parameters after the
round's H inner steps, Delta_i(t) = x(t) - theta_i(t) its pseudo-gradient and mean(t) =
(1/M) sum_i Delta_i(t). m is the outer momentum, beta its factor, alpha the outer lr (``outer``:
SGD, by default lr 1.0, momentum 0.5, no Nesterov), lambda the staleness gap penalty
(``gap_penalty``), phi the clipping threshold (``clip_threshold``, used when ``clip``). The
all-reduce of round t is started at the end of round t and waited for at the end of round t + 1
(the machinery of ``delayed-diloco``, eager_diloco.py). At the end of round t::

    mean(t-1) = wait()                           # the asynchronous all-reduce started a round ago
    start all_reduce_mean(Delta_i(t))            # waited for at the end of round t + 1
    m    = beta * m + mean(t-1) / lambda         # staleness gap penalty (first step, round 2: m = mean(1) / lambda)
    m    = clamp(m, -phi, phi)                   # outer momentum clipping, element-wise (if clip)
    x(t+1) = x(t) - alpha * m                    # Nesterov outer: x - alpha * (mean/lambda + beta * m)
    theta_i = x(t+1)                             # round t+1 starts there; nothing applied after round 1

Per worker: theta_i, the inner optimizer's state (kept across rounds), x and m (the outer SGD's
momentum buffer, identical on all workers), the start point, the pending mean.

Options: ``sync_every`` (tau), ``outer`` (the outer optimizer: any farsync optimizer config when
``clip`` is off, a partial config updates CO2's default; SGD with momentum > 0, no weight decay or
dampening when ``clip`` is on, since clipping acts on its momentum buffer), ``compress`` (of the
pseudo-gradient), ``gap_penalty`` (lambda >= 1, farsync's bound: a penalty shrinks the stale
average, the code takes any float; 1 = no penalty), ``clip`` and ``clip_threshold`` (phi > 0). Defaults are the public code's: lambda 1.0, clipping off, phi 1.0, outer lr 1.0,
momentum 0.5 (``CO2DistributedDataParallel.__init__``); its example script turns clipping on
with phi 1.0 and momentum 0.2 (co2_examples/run_co2_local.sh in weigao266/fairseq-CO2).

Reductions (tested): ``gap_penalty: 1`` and ``clip: false`` are ``delayed-diloco`` with the same
outer optimizer, bit for bit, for any M (with a Nesterov outer too); clipping that never binds is
the unclipped rule bit for bit (our clipped momentum step repeats torch SGD's arithmetic); a
power-of-two lambda is exactly the outer lr alpha / lambda (bit for bit). One worker: mean(t-1) is
its own Delta(t-1), so CO2 is not its inner optimizer but single-worker delayed DiLoCo; with H = 1,
outer SGD lr 1 without momentum and inner SGD it is SGD on one-step-stale gradients,
x(t+1) = x(t) - gamma grad f(x(t-1)) (up to rounding).

Deviations and what was verified: the overlap (one round stale, x(t+1) from x(t) and mean(t-1)),
the momentum form m = beta m + (x_old - x_avg) / lambda, x = x_old - alpha m, the element-wise
clamp of m and the defaults were read in the authors' public code (fairscale-CO2,
``_perform_local_optimization``). The paper's algorithm box and its equation for the staleness
gap penalty Lambda_t could not be read with our tools (only the abstract and reviews were
reachable); the reviews say Lambda_t is a metric computed each round from x(t) and x(t-1)
(unverified), while the public code divides by a constant ``co2_gap_penalty``: farsync follows the
code, so the penalty here is a constant rescaling of the stale average (hence the lr reduction
above). The code's clamp is not in place (``torch.clamp`` without ``out``), so there clipping has
no effect; farsync clips as the paper describes. The code's schedule is not reproduced: it averages
parameters in a side thread every ``localsgd_frequency`` steps and takes the outer step every
``outer_frequency`` steps over a sharded reduce / broadcast; farsync follows the paper's
description (the all-reduce of round t waited for at the end of round t + 1, tau the round) and
all-reduces the pseudo-gradients (the same mean as averaging parameters, in exact arithmetic). Evaluation point: x(t+1), the point the workers train from (buffers as in DiLoCo).
Bytes: one all-reduce of the flat pseudo-gradient (P fp32 values) per round, 2(M-1)/M x 4P per
worker under the ring model, hidden behind the next H inner steps when they take longer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field, field_validator, model_validator

from ..optim import check_outer_config
from .base import outer_step
from .eager_diloco import DelayedDiLoCo
from .flat import unflatten_into
from .options import Compressible, OuterOptimized, Periodic

CO2_OUTER: dict[str, Any] = {"name": "sgd", "lr": 1.0, "momentum": 0.5, "nesterov": False}  # fairscale-CO2's defaults


class CO2Options(Periodic, OuterOptimized, Compressible):
    """sync_every (tau), outer (CO2's outer SGD with momentum), compress, and CO2's staleness gap
    penalty and outer momentum clipping."""

    outer: dict[str, Any] | Callable[..., Any] = Field(
        default_factory=lambda: dict(CO2_OUTER),
        description="outer optimizer (default SGD lr 1.0, momentum 0.5, no Nesterov; a config without name updates it)")
    gap_penalty: float = Field(1.0, ge=1.0, description="lambda: the stale average enters the outer momentum divided by "
                                                        "it (the public code's co2_gap_penalty; 1 = no penalty)")
    clip: bool = Field(False, description="clip the outer momentum element-wise to [-clip_threshold, clip_threshold]")
    clip_threshold: float = Field(1.0, gt=0.0, description="phi: the outer momentum clipping threshold (used when clip)")

    @field_validator("outer", mode="before")
    @classmethod
    def _outer(cls, v):
        if isinstance(v, dict):
            v = {**CO2_OUTER, **v} if "name" not in v else dict(v)
            check_outer_config(v, "outer")
        elif not callable(v):
            raise ValueError(f"outer must be an optimizer config dict or a callable params -> optimizer, got {v!r}")
        return v

    @model_validator(mode="after")
    def _clip_needs_momentum(self):
        if self.clip and isinstance(self.outer, dict):
            _check_clippable(self.outer)
        return self


def _check_clippable(outer: dict[str, Any]) -> None:
    """Outer momentum clipping acts on SGD's momentum buffer between its update and the step."""
    if outer.get("name") != "sgd":
        raise ValueError(f"clip: outer momentum clipping needs outer SGD with momentum (got outer {outer.get('name')!r})")
    if not outer.get("momentum", 0) > 0:
        raise ValueError("clip: outer momentum clipping needs outer.momentum > 0 (there is no momentum to clip)")
    for key in ("weight_decay", "dampening"):
        if outer.get(key, 0):
            raise ValueError(f"clip: outer.{key} must be 0 with outer momentum clipping (got {outer[key]!r})")
    if outer.get("maximize"):
        raise ValueError("clip: outer.maximize is not supported with outer momentum clipping")


class CO2(DelayedDiLoCo):
    name = "co2"
    summary = "Local SGD whose outer all-reduce overlaps the next round (CO2, Sun et al. 2024)"
    Options = CO2Options

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.options.clip:
            opt = self.outer_optimizer
            group = opt.param_groups[0]
            if type(opt) is not torch.optim.SGD or not group["momentum"] > 0 or group["dampening"] or \
                    group["weight_decay"] or group["maximize"]:
                raise ValueError("clip: outer momentum clipping needs a torch.optim.SGD outer optimizer with momentum > 0, "
                                 f"no dampening, weight decay or maximize (got {type(opt).__name__})")

    def _outer(self, delta: torch.Tensor, prev: torch.Tensor | None, own_prev: torch.Tensor | None) -> None:
        """x(t+1) from x(t) and the stale mean(t-1) (nothing after round 1); the next round starts there."""
        if prev is not None:
            grad = prev / self.options.gap_penalty  # staleness gap penalty (exact when lambda = 1)
            if self.options.clip:
                self._clipped_momentum_step(grad)
            else:
                outer_step(self.outer_optimizer, self.global_params, grad)
        self._set_start(self.global_params)

    @torch.no_grad()
    def _clipped_momentum_step(self, grad: torch.Tensor) -> None:
        """torch SGD's momentum step (its single-tensor arithmetic, buffer in its state) with the
        buffer clamped to [-phi, phi] between its update and the parameter update."""
        group = self.outer_optimizer.param_groups[0]
        lr, beta, nesterov, phi = group["lr"], group["momentum"], group["nesterov"], self.options.clip_threshold
        grads = [torch.empty_like(g) for g in self.global_params]
        unflatten_into(grad, grads)
        for x, d in zip(self.global_params, grads):
            state = self.outer_optimizer.state[x]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d.clone()
            else:
                buf.mul_(beta).add_(d, alpha=1)
            buf.clamp_(-phi, phi)
            x.add_(d.add(buf, alpha=beta) if nesterov else buf, alpha=-lr)
