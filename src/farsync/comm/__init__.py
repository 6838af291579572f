"""Communication layer: the `Communicator` interface and its backends."""

from .base import CommStats, Communicator, CommunicatorWrapper, Work, wire_bytes
from .cost import NetworkModel, Straggler, TimeModel
from .sim import SimCluster, SimCommunicator, SimDeadlock

__all__ = [
    "CommStats",
    "Communicator",
    "CommunicatorWrapper",
    "NetworkModel",
    "SimCluster",
    "SimCommunicator",
    "SimDeadlock",
    "Straggler",
    "TimeModel",
    "Work",
    "wire_bytes",
]
