"""The common shape of farsync's averaging / lookahead wrappers (GPA, EMA-Nesterov, Lookahead).

A wrapper is a `torch.optim.Optimizer` around an already-built base optimizer:

- it *shares* the base's ``param_groups`` (the same list of the same dicts), so an LR scheduler
  built on the wrapper (or on the base) changes the base's learning rate; the wrapper's own
  hyperparameters are stored in those group dicts too (the base ignores unknown keys);
- ``step(closure=None)`` runs the base optimizer's step and then the wrapper's update; parameters
  whose ``.grad`` is None are left alone (as torch optimizers do);
- during training the model's parameters hold the point where the gradient is taken; ``eval()``
  puts the evaluation point into them and ``train()`` restores the training point bit for bit
  (eval keeps a copy of it until then); both are idempotent; ``with opt.averaged(): ...``
  evaluates at the evaluation point and switches back;
- ``state_dict()`` holds the base optimizer's state, the wrapper's buffers and counters, the mode
  flag and (in eval mode) the stashed training point; ``load_state_dict`` restores all of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .stats import innermost


class OptimizerWrapper(torch.optim.Optimizer):
    """Base class: subclasses implement `_update(group, params, old)` and `_eval_point(group, p)`."""

    def __init__(self, optimizer: torch.optim.Optimizer, defaults: dict[str, Any]):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.base = optimizer
        super().__init__(optimizer.param_groups, defaults)  # adds our defaults to the shared group dicts
        self.param_groups = optimizer.param_groups  # the very same list: schedulers and base agree
        self.mode = "train"
        self._stash: list[torch.Tensor] | None = None  # the training point while in eval mode

    # ------------------------------------------------------------------ stepping
    def _params(self, group: dict) -> list[torch.Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One base step, then the wrapper's update. A base that needs the loss or a same-batch
        closure (`GlobalStats.step_needs`: SPS, MoMo, AdGD) gets them passed on."""
        if self.mode != "train":
            raise RuntimeError(f"{type(self).__name__}.step() in eval mode: call .train() first")
        needs = getattr(innermost(self.base), "step_needs", ())
        if closure is not None and "closure" not in needs:
            with torch.enable_grad():
                loss = closure()
        kwargs = {k: v for k, v in (("closure", closure), ("loss", loss)) if k in needs}
        self._before_base()
        self.base.step(**kwargs)
        self._after_base()
        return loss

    def _before_base(self) -> None:
        """Called with the parameters at the gradient point, before the base step."""

    def _after_base(self) -> None:
        """Called after the base step (parameters moved by the base optimizer)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------ modes
    @torch.no_grad()
    def eval(self) -> OptimizerWrapper:
        """Put the evaluation point into the parameters (idempotent)."""
        if self.mode == "eval":
            return self
        self._stash = [p.detach().clone() for g in self.param_groups for p in g["params"]]
        for group in self.param_groups:
            for p in group["params"]:
                self._to_eval_point(group, p)
        self.mode = "eval"
        return self

    @torch.no_grad()
    def train(self) -> OptimizerWrapper:
        """Restore the training (gradient) point exactly (idempotent)."""
        if self.mode == "train":
            return self
        for p, s in zip((p for g in self.param_groups for p in g["params"]), self._stash):
            p.copy_(s)
        self._stash = None
        self.mode = "train"
        return self

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """``with opt.averaged(): evaluate(model)`` - at the evaluation point, then back."""
        was = self.mode
        self.eval()
        try:
            yield
        finally:
            if was == "train":
                self.train()

    def _to_eval_point(self, group: dict, p: torch.Tensor) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        own = super().state_dict()  # our per-parameter buffers + the (shared) param groups
        return {"base": self.base.state_dict(), "wrapper": own, "mode": self.mode,
                "stash": None if self._stash is None else [s.clone() for s in self._stash]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict["base"])
        groups = self.base.param_groups
        super().load_state_dict(state_dict["wrapper"])  # replaces self.param_groups with new dicts ...
        for mine, theirs in zip(self.param_groups, groups):  # ... so merge them back into the base's
            theirs.update({k: v for k, v in mine.items() if k != "params"})
        self.param_groups = groups
        self.mode = state_dict["mode"]
        self._stash = None if state_dict["stash"] is None else [s.clone() for s in state_dict["stash"]]


def check_range(name: str, value: float, low: float, high: float, low_open: bool, high_open: bool) -> None:
    """Raise ValueError naming `name` unless `value` lies in the interval."""
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
