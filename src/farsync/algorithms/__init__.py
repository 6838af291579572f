"""Algorithm registry."""

from __future__ import annotations

from .async_local_sgd import AsyncLocalSGD
from .async_server import ASGD, DuDeASGD, FedBuff
from .base import Algorithm, CollectiveAlgorithm
from .choco import ChocoSGD
from .co2 import CO2
from .ddp import DDP
from .demo import DecoupledMomentum
from .diloco import DiLoCo
from .docom import DoCoMSGT
from .dsgd import DSGD
from .eager_diloco import DelayedDiLoCo, EagerDiLoCo, SpeculativeDiLoCo
from .fspda import FSPDA
from .gossip import Decentralized
from .options import AlgorithmOptions
from .server import ParameterServerAlgorithm
from .gradient_tracking import GradientTracking
from .local_sgd import LocalSGD
from .sparta import SPARTA
from .streaming_diloco import StreamingDiLoCo
from .ticopd import TiCoPD
from .zo_shared import ZOShared

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (DDP, LocalSGD, DiLoCo, StreamingDiLoCo, EagerDiLoCo, DelayedDiLoCo, SpeculativeDiLoCo, AsyncLocalSGD, ASGD, DuDeASGD, FedBuff, DecoupledMomentum, DSGD, GradientTracking, FSPDA, TiCoPD, ChocoSGD, DoCoMSGT, CO2, SPARTA, ZOShared)}


def get_algorithm(name: str) -> type[Algorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; valid choices: {', '.join(sorted(ALGORITHMS))}") from None


__all__ = ["ALGORITHMS", "ASGD", "Algorithm", "AlgorithmOptions", "CollectiveAlgorithm", "ParameterServerAlgorithm", "AsyncLocalSGD", "DuDeASGD", "FedBuff", "CO2", "ChocoSGD", "DDP", "DSGD", "Decentralized", "DoCoMSGT", "DecoupledMomentum", "DelayedDiLoCo", "DiLoCo", "EagerDiLoCo", "FSPDA", "GradientTracking", "LocalSGD", "SPARTA", "SpeculativeDiLoCo", "StreamingDiLoCo", "TiCoPD", "ZOShared", "get_algorithm"]
