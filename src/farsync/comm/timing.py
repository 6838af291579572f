"""Per-layer timing of a training step: when each part of a payload is ready, and its buckets.

One engine for the simulator (`sim.py`) and the planner (`farsync.planner`); the rules are those of
the DiLoCo papers' simulations (``docs/architecture.md``, "The clock"):

- A step of compute time T is a forward pass (``forward_share`` x T, 1/3 by default) and then a
  backward pass over the model's L layers from the last to the first; layer l takes
  ``share[l]`` of the backward (equal shares by default). Layer l's gradient is complete at::

      ready(l) = T * (forward_share + (1 - forward_share) * sum_{j >= l} share[j])

- A payload is described by the parts of the model it carries: spans of the parameter vector in
  model order, as fractions in [0, 1] (a whole-model gradient is [(0, 1)]; a strided Streaming
  DiLoCo fragment several spans). Position x belongs to layer l when
  ``sum_{j < l} share[j] <= x < sum_{j <= l} share[j]`` (layers hold ``share`` of the parameters).
- The payload goes in buckets of ``bucket_bytes`` (as timed, i.e. after ``bytes_scale``; torch
  DDP's 25 MiB by default; none: one bucket), filled from the last layer backwards as the
  backward produces them (as torch DDP fills buckets in reverse parameter order). A bucket is
  ready when its lowest position is: ``ready(layer(lowest position))``.
- The links are first-in first-out: bucket k starts at ``max(its ready time on every
  participant, the time the participants' links are free)``; it keeps the links busy for the
  bandwidth term of its bytes and arrives one latency term later (`NetworkModel.terms`): the
  buckets of one call pipeline their latencies, as NCCL/gloo pipeline the chunks of a ring. The
  call ends when its last bucket has arrived, and the next call starts after that.

With ``overlap: false`` every part is ready at the end of the step (the reduction starts when the
whole backward has finished). With that and ``bucket_size: none`` a call is one message at the
end of the step: the clock before per-layer timing.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

DDP_BUCKET_BYTES = 25 * 2**20  # torch DDP's bucket_cap_mb=25 (MiB)

Spans = tuple[tuple[float, float], ...]
WHOLE: Spans = ((0.0, 1.0),)


@dataclass(frozen=True)
class StepLayout:
    """How one step's compute is laid out over the model's layers (see the module docstring)."""

    layers: int = 1
    layer_shares: tuple[float, ...] = ()  # per layer, model order; empty: equal shares
    forward_share: float = 1.0 / 3.0
    overlap: bool = True

    def __post_init__(self):
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.layer_shares and len(self.layer_shares) != self.layers:
            raise ValueError(f"layer_shares has {len(self.layer_shares)} entries but layers is {self.layers}")
        if self.layer_shares and (any(not s > 0 for s in self.layer_shares)):
            raise ValueError(f"layer_shares must all be > 0, got {list(self.layer_shares)}")
        if not 0.0 <= self.forward_share < 1.0:
            raise ValueError(f"forward_share must be in [0, 1), got {self.forward_share}")

    def shares(self) -> tuple[float, ...]:
        if not self.layer_shares:
            return (1.0 / self.layers,) * self.layers
        total = sum(self.layer_shares)
        return tuple(s / total for s in self.layer_shares)

    def bounds(self) -> list[float]:
        """Start position of each layer in the parameter vector (fractions)."""
        out, c = [], 0.0
        for s in self.shares():
            out.append(c)
            c += s
        return out

    def layer_of(self, x: float) -> int:
        """The layer holding position `x` (a hair of tolerance for fractions computed in floats)."""
        if not self.layer_shares:  # equal layers: exact arithmetic where x is a multiple of 1/L
            return min(self.layers - 1, max(0, math.floor(x * self.layers + 1e-9)))
        return min(self.layers - 1, max(0, bisect_right(self.bounds(), x + 1e-12) - 1))

    def ready(self, x: float) -> float:
        """Fraction of the step after which the gradient at position `x` is complete."""
        if not self.overlap:
            return 1.0
        layer = self.layer_of(x)
        if not self.layer_shares:
            done = (self.layers - layer) / self.layers
        else:
            done = sum(self.shares()[layer:])
        return self.forward_share + (1.0 - self.forward_share) * done


def buckets(timed_bytes: float, spans: Spans, bucket_bytes: float | None, layout: StepLayout) -> list[tuple[float, float]]:
    """Cut a payload of `timed_bytes` carrying `spans` into buckets, last layer first.

    Returns ``[(fraction of the payload, ready fraction of the step), ...]`` in the order they
    go on the link; the fractions sum to 1. One bucket when `bucket_bytes` is None or the
    payload fits in one."""
    spans = tuple(sorted(((float(a), float(b)) for a, b in spans if b > a), reverse=True))
    if not spans:
        return [(1.0, layout.ready(0.0) if layout.overlap else 1.0)]
    total = sum(b - a for a, b in spans)
    n = 1 if bucket_bytes is None or timed_bytes <= bucket_bytes else math.ceil(timed_bytes / bucket_bytes - 1e-9)
    out: list[tuple[float, float]] = []
    for k in range(n):
        # bucket k covers [k, k+1) x bucket_bytes of the payload from its top (the last one, the rest)
        share = 1.0 if n == 1 else min(bucket_bytes, timed_bytes - k * bucket_bytes) / timed_bytes
        upto = total if k == n - 1 else (k + 1) * bucket_bytes / timed_bytes * total  # span length covered so far
        out.append((share, layout.ready(_position_at(spans, upto))))
    return out


def _position_at(spans: Spans, length: float) -> float:
    """The position reached after walking `length` down the (descending) spans from the top."""
    for a, b in spans:
        if length <= b - a + 1e-12:
            return max(a, b - length)
        length -= b - a
    return spans[-1][0]


def spans_of(sizes: list[int], indices: list[int] | None = None) -> Spans:
    """Spans (fractions of the parameter vector in model order) of the tensors `indices` among
    tensors of `sizes` values each (all of them when None); adjacent tensors merge."""
    total = sum(sizes)
    if total == 0:
        return WHOLE
    chosen = set(range(len(sizes)) if indices is None else indices)
    out: list[list[int]] = []
    start = 0
    for i, n in enumerate(sizes):
        if i in chosen and n:
            if out and out[-1][1] == start:
                out[-1][1] = start + n
            else:
                out.append([start, start + n])
        start += n
    return tuple((a / total, b / total) for a, b in out)
