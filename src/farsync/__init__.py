"""farsync: low-communication distributed training, simulated on one machine or run on a cluster.

Python API (mirrors the CLI)::

    import farsync
    result = farsync.run("config.yaml", overrides=["cluster.workers=8"], out="runs/x")
    farsync.compare([result.run_dir, "runs/y"], out="runs/report")

    algo = farsync.wrap(model, optimizer, "diloco", sync_every=20)   # in your own loop
    report = farsync.simulate(train_fn, workers=4, bandwidth="1Gbps")  # your loop, simulated
"""

from .algorithms import ALGORITHMS, Algorithm, DDP, DiLoCo, LocalSGD, StreamingDiLoCo, get_algorithm
from .api import SimReport, default_communicator, simulate, wrap
from .comm import Communicator, NetworkModel, SimCluster, Straggler, TimeModel
from .config import Config, ConfigError, load_config
from .report import compare
from .runner import RunResult, run
from .planner import Plan, plan
from .retime import retime
from .tasks import TASKS, DataMissingError, Task, get_task, register_task
from .tracking import Tracking

__version__ = "0.1.0"

__all__ = [
    "Plan",
    "plan",
    "retime",
    "ALGORITHMS",
    "Algorithm",
    "Communicator",
    "Config",
    "ConfigError",
    "DDP",
    "DataMissingError",
    "DiLoCo",
    "LocalSGD",
    "NetworkModel",
    "RunResult",
    "SimCluster",
    "SimReport",
    "TASKS",
    "Task",
    "Straggler",
    "StreamingDiLoCo",
    "TimeModel",
    "Tracking",
    "compare",
    "default_communicator",
    "get_algorithm",
    "get_task",
    "load_config",
    "register_task",
    "run",
    "simulate",
    "wrap",
]
