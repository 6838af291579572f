"""One step's gradient: ``train.grad_accum`` = k micro-batches in ``train.precision``.

    loss  = (1/k) sum_{j<k} L(theta; b_j)            each forward and loss under torch.autocast(dtype)
    .grad = s * d loss / d theta                     s: the loss scale (fp16), else 1

- ``fp32`` (the default): no autocast, k = 1 is the plain ``loss.backward()`` bit for bit.
- ``bf16`` / ``fp16``: `torch.autocast` on the run's device (mixed precision: the ops autocast
  lists run in the low dtype; parameters, gradients, optimizer states and every payload stay
  fp32, so the bytes sent do not change).
- ``fp16`` adds dynamic loss scaling with `torch.amp.GradScaler` (init scale
  ``train.loss_scale``): the backward runs on s * loss; the algorithm's inner optimizer step
  unscales, clips and skips the step on an inf/NaN gradient, then updates s (halved after a
  skip, doubled after 2000 clean steps) - `Algorithm.use_grad_scaler`. In DDP that happens after
  the gradient all-reduce, as in torch DDP with GradScaler: every worker sees the same averaged
  gradients and makes the same decision, so the replicas stay identical.

Micro-batches are drawn one after another from the worker's sampler; a step of k micro-batches is
charged k steps of compute on the simulated clock (``comm.compute(k - 1)`` before the step's own),
and counts k x batch_size samples toward the tokens. Inside a replica group (torch DDP), the first
k - 1 backwards run under ``no_sync()`` so the group averages once per step, as torch DDP's
gradient accumulation does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """`torch.autocast` to the precision's dtype on `device` (a no-op for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device, init_scale: float = 2.0**16) -> torch.amp.GradScaler | None:
    """The fp16 loss scaler (`torch.amp.GradScaler`, dynamic), None for fp32 and bf16."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type, init_scale=init_scale)


class MicroBatches:
    """Forward and backward of one step: ``backward(loss_fn, batches)`` for k = len(batches)."""

    def __init__(self, precision: str = "fp32", device: torch.device | None = None,
                 scaler: torch.amp.GradScaler | None = None, no_sync: Callable[[], AbstractContextManager] | None = None):
        self.device = device or torch.device("cpu")
        autocast(precision, self.device)  # checks the name
        self.precision, self.scaler, self.no_sync = precision, scaler, no_sync

    def backward(self, loss_fn: Callable[[Any], torch.Tensor], batches: Sequence[Any]) -> torch.Tensor:
        """Accumulate d/dtheta of s * mean_j loss_fn(b_j) into ``.grad``; return the mean loss (detached)."""
        k = len(batches)
        total = None
        for j, batch in enumerate(batches):
            sync = self.no_sync() if (self.no_sync is not None and j < k - 1) else nullcontext()
            with sync:
                with autocast(self.precision, self.device):
                    loss = loss_fn(batch)
                part = loss if k == 1 else loss.float() / k
                (self.scaler.scale(part) if self.scaler is not None else part).backward()
            if k == 1:
                return loss.detach()
            total = loss.detach().float() if total is None else total + loss.detach().float()
        return total / k

    def closure(self, loss_fn: Callable[[Any], torch.Tensor], model: torch.nn.Module,
                batches: Sequence[Any]) -> Callable[[], torch.Tensor]:
        """Recompute the loss and gradients on the same micro-batches at the model's current
        parameters (for optimizers that compare two points on one batch, e.g. AdGD)."""

        def again() -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            return self.backward(loss_fn, batches)

        return again
