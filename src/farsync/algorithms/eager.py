"""The eager-updates rule (Kale, Douillard, Donchev, arXiv 2502.12996), shared by `eager-diloco`
(whole model) and `streaming-diloco` with ``overlap: eager`` (per fragment).

At the end of a round, worker m has its fresh pseudo-gradient Delta_m(t) and the average of the
round k rounds back, mean(t-k) (k = 1: one outer step of overlap; k = 2: two)::

    proxy_m(t) = (Delta_m(t) + M mean(t-k) - own_m(t-k)) / M
               = (1/M) [Delta_m(t) + sum_{m' != m} Delta_m'(t-k)]

own_m(t-k) is this worker's term of that average as the others received it (`own_as_received`).
Every contribution enters each worker's outer steps exactly once: its own at once, the others'
k rounds late.
"""

from __future__ import annotations

import torch

from ..compress import PowerSGD
from ..compress.collective import Pending


def own_as_received(pending: Pending, delta: torch.Tensor) -> torch.Tensor:
    """This worker's contribution to `pending` as the others receive it: the decoded compressed
    Delta_m with a compressor, Delta_m itself without (`Pending.own`)."""
    own = pending.own
    return delta if own is None else own


def eager_proxy(delta: torch.Tensor, mean_old: torch.Tensor | None, own_old: torch.Tensor | None, n: int) -> torch.Tensor:
    """(Delta_m(t) + n mean(t-k) - own_m(t-k)) / n = (own fresh term + the others' terms of round
    t-k) / n; before anything has arrived, Delta_m(t) / n. Written so that with n = 1 the two
    last terms cancel exactly (n mean == own) and the proxy is Delta(t) bit for bit."""
    others = n * mean_old - own_old if mean_old is not None else torch.zeros_like(delta)
    return (delta + others) / n


def check_own_term_compressor(name: str, compress) -> None:
    """The own-term correction needs this worker's contribution as the others received it: a
    decoded payload. PowerSGD's low-rank factors and EF21 / EControl (which average a global
    estimate, not the payloads) have no such term."""
    spec = compress if isinstance(compress, dict) else {}
    if spec.get("name") == "powersgd" or isinstance(compress, PowerSGD):
        raise ValueError(f"{name}: compress: powersgd has no per-worker term to correct with; use an elementwise compressor")
    if spec.get("error_feedback") in ("ef21", "econtrol") or getattr(compress, "global_copy", False):
        raise ValueError(f"{name}: error_feedback {spec.get('error_feedback', 'ef21/econtrol')!r} averages a global "
                         "estimate, not the payloads, so the own term as the others received it is not defined; use ef or none")
