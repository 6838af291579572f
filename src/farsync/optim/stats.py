"""Scalar statistics that must agree across data-parallel workers.

Parameter-free and adaptive step sizes (Prodigy, D-Adaptation, DoG, DoWG, AdGD, SPS, MoMo) derive
their step size from a few scalars per step: inner products, norms, loss values. When several
workers each hold a replica of the model and step on their own batches (DiLoCo's inner steps,
DDP with a loss-based rule), each worker computes its own scalars and the step sizes drift
apart. `GlobalStats` gives such an optimizer one hook: every step it packs its scalars into one
float64 vector and passes it through ``reduce_stats``, which the distributed algorithm sets to
"average over workers" (one small all-reduce per step, counted like any other traffic). Alone,
``reduce_stats`` is None and the scalars are used as they are.

Each optimizer's docstring says which scalars it reduces; all are averaged (the mean over
replicas), so a value that is already identical on every worker stays unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StatsReducer = Callable[[torch.Tensor], torch.Tensor]


class GlobalStats:
    """Mixin for a torch optimizer whose step size depends on scalar statistics.

    ``step_needs`` names what its ``step`` must be given besides the gradients: ``"loss"`` (the
    mini-batch loss at the current point, ``step(loss=...)``) or ``"closure"`` (a function that
    recomputes the loss and gradients on the *same* batch at whatever point the parameters hold).
    """

    reduce_stats: StatsReducer | None = None
    step_needs: tuple[str, ...] = ()

    def _global(self, *values: torch.Tensor | float) -> torch.Tensor:
        """The statistics `values` (floats or 0-d tensors, possibly on a GPU) as one float64 CPU
        vector - one device-to-host copy - averaged over workers when ``reduce_stats`` is set (one
        call, so one all-reduce, per step)."""
        vals = [v.detach().reshape(()).double() if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64)
                for v in values]
        device = next((v.device for v in vals if v.device.type != "cpu"), torch.device("cpu"))
        flat = torch.stack([v.to(device) for v in vals]).cpu()
        return flat if self.reduce_stats is None else self.reduce_stats(flat)


def total(terms: list[torch.Tensor]) -> torch.Tensor:
    """sum of 0-d tensors, accumulated in float64 on their device (no host sync; 0 if empty)."""
    return torch.stack([t.double() for t in terms]).sum() if terms else torch.zeros((), dtype=torch.float64)


def innermost(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    while not isinstance(optimizer, GlobalStats) and hasattr(optimizer, "base"):
        optimizer = optimizer.base
    return optimizer


def step_kwargs(optimizer: torch.optim.Optimizer, loss: torch.Tensor | None, closure) -> dict:
    """The keyword arguments ``optimizer.step`` needs (see `GlobalStats.step_needs`), from what
    the training loop has: the current mini-batch loss and a same-batch closure."""
    needs = getattr(innermost(optimizer), "step_needs", ())
    given = {"loss": loss, "closure": closure}
    missing = [k for k in needs if given[k] is None]
    if missing:
        raise ValueError(f"{type(innermost(optimizer)).__name__}.step needs {', '.join(missing)}; pass it to step()")
    return {k: given[k] for k in needs}


def set_stats_reducer(optimizer: torch.optim.Optimizer, reduce: StatsReducer | None) -> bool:
    """Install `reduce` on `optimizer` (or the base of a wrapper, recursively) if it keeps global
    statistics; returns whether one was installed."""
    optimizer = innermost(optimizer)
    if isinstance(optimizer, GlobalStats):
        optimizer.reduce_stats = reduce
        return True
    return False
