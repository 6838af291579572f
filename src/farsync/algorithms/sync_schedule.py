"""When a round of local steps ends: every H steps, or H adapted to the learning rate (QSR).

``sync_every: 30`` - a fixed H. ``sync_every: {rule: qsr, base: 30, alpha: 0.1}`` - the Quadratic
Synchronization Rule (Gu, Lyu, Arora, Zhang, Huang; ICLR 2024, arXiv 2310.14423): as the learning
rate decays, rounds get longer::

    H_s = max(base, floor((alpha / lr_s)^2))

where lr_s is the inner optimizer's learning rate (its first param group) at the first step of
round s, read when that step is taken. A round of H_s steps then ends with a synchronization.
As in the authors' code (github.com/hmgxr128/QSR, ``LocalOptimizer.adjust_h``): rounds that start
during the learning-rate warm-up (step < ``warmup_steps``) are H_base long, whatever the small
warm-up lr would give; and a round is cut to the steps left (``total_steps``), so the run ends with
an average. A config fills both from ``train.lr_schedule.warmup_steps`` and ``train.steps`` unless
unset (None); ``farsync.wrap`` users pass them in the dict (default: no warm-up rule, no cap).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QSR(BaseModel):
    """The Quadratic Synchronization Rule: H = max(base, floor((alpha / lr)^2))."""

    model_config = ConfigDict(extra="forbid")
    rule: Literal["qsr"] = Field(description="qsr: the Quadratic Synchronization Rule")
    base: int = Field(ge=1, description="H_base: the shortest round, in inner steps")
    alpha: float = Field(gt=0, description="growth coefficient: H = (alpha / lr)^2 once that exceeds base")
    warmup_steps: int | None = Field(None, ge=0, description="rounds starting before this step are base long (lr "
                                                            "warm-up; a config fills in train.lr_schedule.warmup_steps)")
    total_steps: int | None = Field(None, ge=1, description="rounds are cut to the steps left, so the run ends with an "
                                                            "average (a config fills in train.steps)")

    def round_length(self, lr: float, start: int = 0) -> int:
        """The length of a round whose first step is step `start` + 1, at learning rate `lr`."""
        n = self.base if lr <= 0 or start < (self.warmup_steps or 0) else max(self.base, math.floor((self.alpha / lr) ** 2))
        return n if self.total_steps is None else max(1, min(n, self.total_steps - start))


SyncEvery = int | QSR


def parse_sync_every(value: int | QSR | dict) -> SyncEvery:
    """An int >= 1, a QSR, or a dict with ``rule: qsr``; anything else is a ValueError."""
    if isinstance(value, dict):
        return QSR(**value)
    if isinstance(value, QSR):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"sync_every must be an integer >= 1 or {{rule: qsr, base, alpha}}, got {value!r}")
    return value


class RoundClock:
    """Says when a round ends. A fixed H: after every step that is a multiple of H (so rounds
    stay aligned to step 0, also after Local SGD's DDP warm-up). QSR: a round starts at the first
    step that asks, and its length is fixed from that step's learning rate."""

    def __init__(self, sync_every: SyncEvery):
        self.sync_every = sync_every
        self.start, self.length = 0, None  # QSR only: the current round's first step - 1 and its length

    def ends_after(self, step: int, lr: float) -> bool:
        """True if inner step `step` (1-based) completes the current round."""
        if not isinstance(self.sync_every, QSR):
            return step % self.sync_every == 0
        if self.length is None:  # the first step of a round
            self.start, self.length = step - 1, self.sync_every.round_length(lr, step - 1)
        if step - self.start < self.length:
            return False
        self.length = None
        return True

    def state_dict(self) -> dict:
        return {"start": self.start, "length": self.length}

    def load_state_dict(self, state: dict) -> None:
        self.start, self.length = state["start"], state["length"]
