"""What a task is: a model factory, per-worker data shards, a loss and an evaluation.

Tasks know nothing about algorithms or communication. A task is built once per run with its
validated parameters, the number of workers and the seed; every worker then builds the same
model (same seed) and draws batches from its own shard through a `BatchSampler`, whose state
(a torch.Generator) can be checkpointed.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class TaskParams(BaseModel):
    """Base of every task's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class BatchSampler:
    """Draws a worker's batches; `draw(generator)` is supplied by the task."""

    def __init__(self, draw, seed: int):
        self._draw = draw
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> Any:
        return self._draw(self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class Task(abc.ABC):
    """A training problem. Subclasses set `name`, `Params` and implement the methods below."""

    name: ClassVar[str]
    Params: ClassVar[type[TaskParams]] = TaskParams
    description: ClassVar[str] = ""

    def __init__(self, params: TaskParams, world_size: int, seed: int):
        self.params = params
        self.world_size = world_size
        self.seed = seed

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model; called under the same torch seed on every worker."""

    @abc.abstractmethod
    def sampler(self, rank: int, batch_size: int) -> BatchSampler:
        """The batch sampler of worker `rank` (deterministic given the task's seed)."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Scalar training loss of `model` on `batch`."""

    @abc.abstractmethod
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        """Held-out loss of `model` (deterministic)."""

    def tokens_per_batch(self, batch_size: int) -> int:
        """Tokens (or samples) in one worker's batch, for the `tokens` metric."""
        return batch_size

    def flops_per_step(self, model: nn.Module, batch_size: int) -> float:
        """Forward+backward FLOPs of one worker's step (default: 6 * params * samples)."""
        n_params = sum(p.numel() for p in model.parameters())
        return 6.0 * n_params * self.tokens_per_batch(batch_size)


def worker_seed(seed: int, rank: int, salt: int = 0) -> int:
    """A per-worker seed derived from the run seed (stable across versions and platforms)."""
    return (seed * 1_000_003 + rank * 7919 + salt * 104_729) % (2**63 - 1)
