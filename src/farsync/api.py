"""Use farsync inside your own training loop.

    algo = farsync.wrap(model, optimizer, "diloco", sync_every=20)
    for x, y in loader:
        loss_fn(model(x), y).backward()
        algo.step()
        algo.zero_grad()
    with algo.eval_params() as m:
        evaluate(m)

`wrap` finds its communicator by itself: inside `farsync.simulate` it is the simulated worker's;
under torchrun it is the default process group (initialized from torchrun's environment if
needed). The returned object is the same `Algorithm` class the runner uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .algorithms import Algorithm, get_algorithm
from .algorithms.replicas import INIT_MODES, replicate_initial_state
from .algorithms.options import validate_options
from .algorithms.server import ParameterServerAlgorithm
from .comm import CommStats, Communicator, NetworkModel, SimCluster, Straggler, TimeModel
from .comm.churn import Away, Churn
from .comm.sim import current_sim_communicator
from .progress import SimWatch
from .units import parse_bandwidth, parse_duration


def default_communicator(device: torch.device | None = None) -> Communicator:
    """The simulated worker's communicator, or the torch.distributed default group."""
    comm = current_sim_communicator()
    if comm is not None:
        return comm
    import torch.distributed as dist

    from .comm.torch_dist import TorchCommunicator

    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError(
                "farsync.wrap found no communicator: call it inside farsync.simulate(...), run under torchrun, "
                "or pass comm=..."
            )
        dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo")
    return TorchCommunicator()


def wrap(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    algorithm: str | dict[str, Any] = "diloco",
    comm: Communicator | None = None,
    init: str = "broadcast",
    **options: Any,
) -> Algorithm:
    """Wrap `model` and its (inner) `optimizer` in a distributed algorithm.

    `algorithm` is a name (``"ddp"``, ``"local-sgd"``, ``"diloco"``) with keyword options, or a
    dict in the config's ``algorithm`` form (``{"name": "diloco", "sync_every": 20, "outer":
    {...}}``; ``inner`` is not allowed: the optimizer is yours). Options are validated like the
    config: ``sync_every``, ``outer`` (optimizer config dict, or a callable params -> optimizer),
    ``grad_clip``, ``compress`` (a `farsync.compress` config dict or Compressor), ``topology``
    (decentralized algorithms: a `farsync.topology` graph or its config, default complete) and
    the algorithm's own options.

    Every worker starts from rank 0's model: ``init="broadcast"`` (default) copies rank 0's
    parameters and buffers into every worker's `model` before anything else, as torch DDP does;
    ``init="check"`` copies nothing and raises ValueError, naming the tensor and the ranks, if the
    workers' models differ. Buffers (BatchNorm statistics) then follow the policy in
    `farsync.algorithms.replicas`.
    """
    spec = dict(algorithm) if isinstance(algorithm, dict) else {"name": algorithm}
    spec.update(options)
    cls = get_algorithm(spec.get("name")) if spec.get("name") is not None else None
    if cls is not None and issubclass(cls, ParameterServerAlgorithm):
        raise ValueError(f"{spec['name']!r} runs a parameter server and its own loop (farsync.async_loop.train_async); "
                         "use farsync run / farsync launch")
    return build_algorithm(model, optimizer, spec, comm, init)


def build_algorithm(model: torch.nn.Module, optimizer: torch.optim.Optimizer, spec: dict[str, Any],
                    comm: Communicator | None = None, init: str = "broadcast") -> Algorithm:
    """The one construction path of `wrap` and the training loops: validate `spec` (the config's
    ``algorithm`` form without ``inner``, plus ``grad_clip`` and a decentralized algorithm's
    ``topology``) with the algorithm's Options, as a YAML config is; make the replicas identical;
    build the algorithm."""
    spec = dict(spec)
    if "inner" in spec:
        raise ValueError("wrap() takes your optimizer as the inner optimizer; remove 'inner'")
    name = spec.pop("name", None)
    if name is None:
        raise ValueError("algorithm needs a 'name'")
    cls = get_algorithm(name)
    grad_clip = spec.pop("grad_clip", None)
    options = validate_options(cls, spec)  # unknown keys, another algorithm's keys, bad values: errors naming them
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {', '.join(INIT_MODES)}, got {init!r}")
    device = next(model.parameters()).device
    comm = comm if comm is not None else default_communicator(device)
    replicate_initial_state(model, comm, init)  # before the algorithm copies the model (DiLoCo's phi, ...)
    return cls(model, optimizer, comm, options, grad_clip=grad_clip)


@dataclass
class SimReport:
    """What `simulate` returns: each worker's return value and counters, and totals."""

    results: list[Any]
    stats: list[CommStats]
    time_model: str = ""  # the time model in words

    @property
    def sim_time_s(self) -> float:
        return max(s.clock_s for s in self.stats)

    @property
    def bytes_sent_total(self) -> int:
        return sum(s.bytes_sent for s in self.stats)

    @property
    def compute_utilization(self) -> float | None:
        t = self.sim_time_s
        return sum(s.compute_time_s for s in self.stats) / (len(self.stats) * t) if t > 0 else None

    def summary(self) -> dict[str, Any]:
        return {
            "workers": len(self.stats),
            "sim_time_s": self.sim_time_s,
            "bytes_sent_total": self.bytes_sent_total,
            "bytes_sent_per_worker": [s.bytes_sent for s in self.stats],
            "peak_bytes_per_sync": max(s.peak_bytes_per_sync for s in self.stats),
            "compute_utilization": self.compute_utilization,
            "blocked_time_s_per_worker": [s.blocked_time_s for s in self.stats],
            "time_model": self.time_model,
        }


def sim_cluster(
    workers: int, bandwidth: str | float, latency: str | float, step_time_s: float, speeds: list[float] | None = None,
    bytes_scale: float = 1.0, stragglers: list[Straggler] | tuple[Straggler, ...] | None = None,
    link_bandwidth: list[str | float] | None = None, timed: dict[str, Any] | None = None,
    parallel: int = 1, threads: int | None = None, churn: Churn | None = None, engine: str = "greenlets",
) -> SimCluster:
    """A `SimCluster` from the config's units ('1Gbps', '10ms'; numbers are bits/s and seconds);
    `timed` (`deployment.resolve`) sets the step time, bytes scale, step layout and buckets;
    `parallel` processes with `threads` torch threads each run the workers (`comm/sim_parallel.py`)."""
    links = tuple(parse_bandwidth(b) for b in link_bandwidth) if link_bandwidth else None
    if timed is not None:
        step_time_s, bytes_scale = timed["step_time_s"], timed["bytes_scale"]
    network = NetworkModel(parse_bandwidth(bandwidth), parse_duration(latency), bytes_scale, links)
    extra = {} if timed is None else {"layout": timed["layout"], "bucket_bytes": timed["bucket_bytes"],
                                      "description": timed["description"]}
    return SimCluster(workers, network, TimeModel(step_time_s, tuple(speeds or ()), tuple(stragglers or ()), **extra),
                      parallel=parallel, threads=threads, churn=churn, engine=engine)


def simulate(
    train_fn: Callable[[Communicator], Any],
    workers: int = 4,
    bandwidth: str | float = "1Gbps",
    latency: str | float = "10ms",
    step_time: str | float = 0.0,
    speeds: list[float] | None = None,
    bytes_scale: float = 1.0,
    stragglers: list[Straggler] | None = None,
    link_bandwidth: list[str | float] | None = None,
    time_model: str | dict[str, Any] | None = None,
    model_params: int | None = None,
    layers: int = 1,
    parallel: int = 1,
    threads: int | None = None,
    progress: bool = True,
    churn: list[Away] | None = None,
    engine: str = "greenlets",
) -> SimReport:
    """Run ``train_fn(comm)`` as `workers` simulated SPMD workers (your own loop, one machine).

    Inside `train_fn`, ``farsync.wrap`` picks up the worker's communicator; ``comm.rank`` and
    ``comm.world_size`` tell the worker which data shard is its. `step_time` is the virtual compute
    time of one ``algo.step()`` (scaled by ``speeds[rank]`` and by a `Straggler`'s factor inside its
    window); `link_bandwidth` gives each worker its own link (a collective runs at the slowest).

    `time_model` times the run as a deployment (a preset such as ``"1b"`` or a dict, as
    ``cluster.time_model``: `farsync.deployment`); with its ``params``, `model_params` (your
    model's parameter count) scales the payloads. `layers`: your model's layers when the time
    model does not say (per-layer timing: `farsync.comm.timing`).

    `parallel` > 1 runs the workers in that many processes (forked: `train_fn` may be a closure),
    each with `threads` torch threads: the same results at equal threads, for functions that
    use collectives only (`farsync.comm.sim_parallel`).

    `engine`: the workers of a process run as greenlets on the calling thread (the default) or
    as threads (``"threads"``, for a `train_fn` that blocks on its own threads, queues or I/O);
    the same results bit for bit (`farsync.comm.sim`).

    `churn`: workers away for windows of steps (`farsync.comm.churn.Away(worker, leave, join)`):
    averages go over the live workers, and a returning worker copies a live one's state
    (`farsync.comm.churn`).

    `progress`: while the call runs, a line on stderr every ``FARSYNC_PROGRESS_EVERY`` seconds
    (30 by default; a shorter call prints nothing) with the workers' steps, the virtual clock and
    the bytes sent (`farsync.progress.SimWatch`).
    """
    timed = None
    if time_model is not None:
        from .deployment import TimeModelConfig, resolve

        tm = TimeModelConfig.model_validate(time_model)
        if tm.params is not None and model_params is None:
            raise ValueError("time_model with params needs model_params (your model's parameter count) to scale payloads")
        timed = resolve(tm, model_params or 1, layers, step_time_s=parse_duration(step_time), bytes_scale=bytes_scale,
                        workers=workers, bandwidth_bps=parse_bandwidth(bandwidth), latency_s=parse_duration(latency))
    cluster = sim_cluster(workers, bandwidth, latency, parse_duration(step_time), speeds, bytes_scale, stragglers,
                          link_bandwidth, timed, parallel, threads, Churn(churn, workers) if churn else None, engine)
    with SimWatch(cluster, enabled=progress):
        results = cluster.run(train_fn)
    words = cluster.time_model.description or (f"timed at {parse_duration(step_time):g} s per step (simulate's step_time), "
                                                f"{workers} workers, {bandwidth}, {latency} latency")
    return SimReport(results, list(cluster.stats), words)
