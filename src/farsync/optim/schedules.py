"""Learning-rate schedules: the multiplier of the base lr at inner step t (0-based).

Every schedule starts with a linear warm-up over `warmup_steps` steps ((t + 1) / warmup_steps),
then follows its shape; decaying shapes end at ``min_lr_ratio`` x base lr.

- ``constant``: 1.
- ``cosine``: half a cosine from 1 to `min_lr_ratio`, reached at step `total_steps`.
- ``linear``: straight line from 1 to `min_lr_ratio` (default 0: decay to zero), reached at step
  `total_steps`.
- ``wsd`` (warmup-stable-decay): 1 until the last ``decay_fraction`` x `total_steps` steps
  (rounded; never before the warm-up ends), then a straight line to `min_lr_ratio`, reached at step
  `total_steps` like ``linear``. The decay is linear only (no "1-sqrt" variant).
- ``sgdr`` (cosine with warm restarts, Loshchilov & Hutter 2017): after the warm-up, cycles of
  `cycle_steps` (T_0) steps, each one `cycle_mult` (T_mult, an integer >= 1) times longer than the
  one before; within a cycle, half a cosine from 1 towards `min_lr_ratio`, then back to 1. It
  ignores `total_steps`. Equal step for step to ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``
  (T_0, T_mult, eta_min = min_lr_ratio x base lr).

As with the ``cosine`` and ``linear`` shapes, ``wsd`` reaches `min_lr_ratio` at t = total_steps,
one step after the last one taken (steps are 0 .. total_steps - 1): the last step runs at
min_lr_ratio + (1 - min_lr_ratio) / decay_steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("constant", "cosine", "linear", "wsd", "sgdr")


def lr_lambda(
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    *,
    decay_fraction: float = 0.2,
    cycle_steps: int | None = None,
    cycle_mult: int = 1,
) -> Callable[[int], float]:
    """The multiplier of the base lr at step t (0-based) of schedule `name` (see the module doc);
    for ``torch.optim.lr_scheduler.LambdaLR``. Raises ValueError naming a bad value."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction!r}")
    if isinstance(cycle_mult, bool) or not isinstance(cycle_mult, int) or cycle_mult < 1:
        raise ValueError(f"cycle_mult must be an integer >= 1, got {cycle_mult!r}")
    if name == "sgdr" and (isinstance(cycle_steps, bool) or not isinstance(cycle_steps, int) or cycle_steps < 1):
        raise ValueError(f"the sgdr schedule needs cycle_steps, an integer >= 1 (first cycle length), got {cycle_steps!r}")

    span = max(1, total_steps - warmup_steps)
    decay_start = max(warmup_steps, total_steps - round(decay_fraction * total_steps))
    decay_span = max(1, total_steps - decay_start)

    def f(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        if name == "constant":
            return 1.0
        if name == "sgdr":
            pos, length = t - warmup_steps, cycle_steps
            if cycle_mult == 1:
                pos %= length
            else:
                while pos >= length:
                    pos -= length
                    length *= cycle_mult
            shape = 0.5 * (1 + math.cos(math.pi * pos / length))
        elif name == "wsd":
            if t < decay_start or decay_start >= total_steps:  # decay_fraction 0: never decays
                return 1.0
            shape = 1.0 - min(1.0, (t - decay_start) / decay_span)
        else:
            frac = min(1.0, (t - warmup_steps) / span)
            shape = 0.5 * (1 + math.cos(math.pi * frac)) if name == "cosine" else 1.0 - frac
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return f
