"""Algorithm registry."""

from __future__ import annotations

from .async_local_sgd import AsyncLocalSGD
from .base import Algorithm
from .ddp import DDP
from .demo import DecoupledMomentum
from .diloco import DiLoCo
from .dsgd import DSGD
from .eager_diloco import DelayedDiLoCo, EagerDiLoCo
from .gossip import Decentralized
from .gradient_tracking import GradientTracking
from .local_sgd import LocalSGD
from .streaming_diloco import StreamingDiLoCo

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (DDP, LocalSGD, DiLoCo, StreamingDiLoCo, EagerDiLoCo, DelayedDiLoCo, AsyncLocalSGD, DecoupledMomentum, DSGD, GradientTracking)}


def get_algorithm(name: str) -> type[Algorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; valid choices: {', '.join(sorted(ALGORITHMS))}") from None


__all__ = ["ALGORITHMS", "Algorithm", "AsyncLocalSGD", "DDP", "DSGD", "Decentralized", "DecoupledMomentum", "DelayedDiLoCo", "DiLoCo", "EagerDiLoCo", "GradientTracking", "LocalSGD", "StreamingDiLoCo", "get_algorithm"]
