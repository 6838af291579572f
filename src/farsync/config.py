"""The run configuration: a validated tree loaded from YAML plus ``dotted.key=value`` overrides.

Every section forbids unknown keys. Task- and algorithm-specific keys are validated by the
task's / algorithm's own parameter model, and optimizer keys against the torch optimizer's
signature, so a bad config fails before any training with a message that names the bad value and
the valid choices.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .optim import SCHEDULES, check_optimizer_config, lr_lambda
from .deployment import TimeModelConfig
from .units import parse_bandwidth, parse_duration, parse_flops
from .yamlio import YAMLSyntaxError, load_yaml, load_yaml_file


class ConfigError(ValueError):
    """A configuration is invalid; the message says which key and what is allowed."""


def _validate_params(model_cls: type[BaseModel], values: dict | None, owner: str) -> BaseModel:
    """Validate section-specific keys with `model_cls`; errors name the key and the valid keys."""
    try:
        return model_cls(**(values or {}))
    except ValidationError as err:
        valid = ", ".join(model_cls.model_fields) or "(none)"
        msgs = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                msgs.append(f"unknown key {key!r} for {owner} (valid keys: {valid})")
            else:
                msgs.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
        raise ValueError("; ".join(msgs)) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(BaseModel):
    """``name`` picks the task (see `farsync list`); other keys are the task's parameters."""

    model_config = ConfigDict(extra="allow")
    name: str = "shakespeare-gpt"

    @model_validator(mode="after")
    def _check(self):
        from .tasks import get_task

        cls = get_task(self.name)
        params = _validate_params(cls.Params, self.model_extra, f"task {self.name!r}")
        for k, v in params.model_dump().items():  # store the resolved parameters
            setattr(self, k, v)
        return self

    def params(self):
        from .tasks import get_task

        return get_task(self.name).Params(**(self.model_extra or {}))


_UNIT_PARSERS = {"bandwidth": parse_bandwidth, "latency": parse_duration, "throughput": parse_flops, "step_time": parse_duration, "timeout": parse_duration}


class StragglerConfig(_Strict):
    """One worker slowed down for a window of (its own) virtual time."""

    rank: int = Field(ge=0, description="the slowed worker")
    factor: float = Field(gt=0, description="its step time is multiplied by this")
    start: str | float = Field(0.0, description="window start on the worker's clock, e.g. '100s'")
    end: str | float | None = Field(None, description="window end (exclusive), e.g. '200s'; none: to the end of the run")

    @field_validator("start", "end")
    @classmethod
    def _duration(cls, v):
        if v is not None:
            parse_duration(v)  # raises ValueError naming the bad value
        return v

    def window_s(self) -> tuple[float, float]:
        return parse_duration(self.start), float("inf") if self.end is None else parse_duration(self.end)


class ChurnConfig(_Strict):
    """A worker away from the run for a window of steps (simulator; comm/churn.py)."""

    worker: int = Field(ge=0, description="the worker that leaves (not 0)")
    leave: int | str = Field(description="first step it is away, or a virtual time ('30s': from the first step after "
                             "its clock reached it)")
    join: int | str | None = Field(None, description="step it is back from (healed from a live worker), or a time "
                                   "('60s': after the run's clock reached it); none: gone for good")

    @field_validator("leave", "join")
    @classmethod
    def _step_or_time(cls, v):
        if isinstance(v, str):
            parse_duration(v)  # raises ValueError naming the bad value
        return v

    def window(self):
        """`comm.churn.Away`: an int is a step, a time becomes float seconds."""
        from .comm.churn import Away

        as_comm = lambda v: parse_duration(v) if isinstance(v, str) else v  # noqa: E731
        return Away(self.worker, as_comm(self.leave), None if self.join is None else as_comm(self.join))


class FTConfig(_Strict):
    """cluster.backend: torchft - the Lighthouse's and the Managers' settings (comm/fault_tolerant.py).

    The defaults avoid torchft's split-quorum pitfall: ``join_timeout`` (how long a quorum waits for
    a live replica that has not reached the synchronization yet) well above the skew between
    replicas, ``quorum_timeout`` above a whole round plus that skew."""

    heartbeat_timeout: str | float = Field("5s", description="a replica silent this long is dead: it leaves the quorum")
    join_timeout: str | float = Field("60s", description="how long a quorum waits for the live replicas to join it")
    quorum_timeout: str | float = Field("300s", description="how long a replica waits for its quorum")
    timeout: str | float = Field("60s", description="a collective, a commit, a heal's state transfer")
    min_replicas: int = Field(1, ge=1, description="fewest live replicas that may form a quorum and commit")
    host: str = Field("127.0.0.1", description="the address this machine's replicas advertise (their store and "
                      "Manager); the launcher's Lighthouse binds it too. Another machine's address for a multi-node run")

    @field_validator("heartbeat_timeout", "join_timeout", "quorum_timeout", "timeout")
    @classmethod
    def _duration(cls, v):
        parse_duration(v)  # raises ValueError naming the bad value
        return v

    def seconds(self, name: str) -> float:
        return parse_duration(getattr(self, name))


class ClusterConfig(_Strict):
    """The cluster the run is simulated on (or runs on)."""

    backend: Literal["sim", "torch", "torchft"] = Field(
        "sim", description="sim: in-process simulated cluster; torch: torch.distributed processes (farsync launch); "
        "torchft: fault-tolerant replica groups on torchft, survivors go on without restart (pip install farsync[ft])"
    )
    ft: FTConfig = Field(default_factory=FTConfig, description="cluster.backend: torchft - timeouts and quorum size")
    device: Literal["cpu", "cuda"] = Field("cpu", description="cuda: one GPU per process (LOCAL_RANK), NCCL")
    timeout: str | float = Field("300s", description="torch backend: timeout of a collective / the rendezvous")
    workers: int = Field(4, ge=1, description="number of workers (data-parallel replicas)")
    bandwidth: str | float = Field("1Gbps", description="per-worker link bandwidth, e.g. '100Mbps', '10Gbps'")
    latency: str | float = Field("10ms", description="per-message latency, e.g. '10ms', '50us'")
    throughput: str | float = Field("10TFLOPS", description="device FLOP rate for the FLOPs time model")
    step_time: str | float | None = Field(None, description="fixed compute time per inner step; overrides throughput")
    speeds: list[float] | None = Field(None, description="per-worker slowdown factors (>= 1 is slower)")
    stragglers: list[StragglerConfig] = Field(default_factory=list, description="workers slowed down for a window of time")
    link_bandwidth: list[str | float] | None = Field(
        None, description="per-worker link bandwidth (a collective runs at its slowest member's); overrides bandwidth"
    )
    bytes_scale: float = Field(1.0, gt=0, description="multiply payload bytes by this in the time model only")
    time_model: TimeModelConfig | None = Field(
        None, description="time the run as a deployment: a preset (1b, 10b, 100b) or {params, layers, step_time | "
        "device, mfu, tokens_per_step, bucket_size, overlap} (deployment.py); replaces step_time and bytes_scale")
    group_size: int = Field(
        1, ge=1, description="torch backend: processes per worker (a replica group training with DDP inside; "
        "farsync launch --groups R --nproc-per-group k; comm/groups.py)")
    group_shard: bool = Field(
        False, description="replica groups: shard each group's model over its k processes with FSDP2 (fully_shard) "
        "instead of replicating it with DDP; each member exchanges its own shard across groups (diloco, local-sgd)")
    parallel: int = Field(
        1, ge=1, description="simulator: spread the workers over this many processes (identical metrics at equal "
        "threads; algorithms that use collectives only)")
    threads: int | None = Field(
        None, ge=1, description="simulator: torch threads per process (default: this machine's torch threads / parallel)")
    engine: Literal["greenlets", "threads"] = Field(
        "greenlets", description="simulator: run each process's workers as greenlets on one thread (the default: "
        "torch's OpenMP team stays warm, hand-offs cost ~1 us) or as threads; the same results bit for bit")
    batched: bool = Field(
        False, description="simulator: run the identical workers as one stacked model (torch.func.vmap; ddp, local-sgd, "
        "diloco, dsgd with sgd / adam / adamw; the same metrics, clock by replay: sim_batched.py)")
    churn: list[ChurnConfig] = Field(
        default_factory=list, description="simulator: workers that leave and come back, e.g. [{worker: 2, leave: 40, "
        "join: 80}] (comm/churn.py)")
    topology: dict[str, Any] | str | None = Field(
        None, description="decentralized algorithms' graph, e.g. ring or {name: torus, rows: 2} (farsync/topology.py); none: complete"
    )

    @field_validator("bandwidth", "latency", "throughput", "step_time", "timeout")
    @classmethod
    def _parse_units(cls, v, info):
        if v is not None:
            _UNIT_PARSERS[info.field_name](v)  # raises ValueError naming the bad value
        return v

    def churn_schedule(self):
        """The churn schedule (`comm.churn.Churn`), or None without churn."""
        if not self.churn:
            return None
        from .comm.churn import Churn

        return Churn([c.window() for c in self.churn], self.workers)

    @field_validator("link_bandwidth")
    @classmethod
    def _links(cls, v):
        for b in v or []:
            parse_bandwidth(b)  # raises ValueError naming the bad value
        return v

    @model_validator(mode="after")
    def _speeds(self):
        for name in ("speeds", "link_bandwidth"):  # one entry per worker
            value = getattr(self, name)
            if value is not None and len(value) != self.workers:
                raise ValueError(f"{name} has {len(value)} entries but workers is {self.workers}")
        for s in self.stragglers:
            if s.rank >= self.workers:
                raise ValueError(f"straggler rank {s.rank} is not a worker (workers: {self.workers})")
            if s.window_s()[1] <= s.window_s()[0]:
                raise ValueError(f"straggler window must have end > start, got start={s.start!r} end={s.end!r}")
        if self.time_model is not None:
            both = [k for k, given in (("step_time", self.step_time is not None), ("bytes_scale", self.bytes_scale != 1.0),
                                       ("throughput", self.time_model.step_time is not None
                                        and parse_flops(self.throughput) != parse_flops("10TFLOPS"))) if given]
            if both:
                given = ", ".join(f"cluster.{k}" for k in both)
                raise ValueError(f"cluster.time_model replaces {given}: give the step time and the timed model's size "
                                 "in time_model (e.g. {params: 1e9, layers: 24, step_time: 0.1s}), not both")
        if self.batched and self.backend != "sim":
            raise ValueError(f"cluster.batched runs simulated workers as one stacked model; on cluster.backend: "
                             f"{self.backend} every worker is a process: remove cluster.batched")
        if self.batched and self.parallel > 1:
            raise ValueError(f"cluster.batched runs the workers as one program; cluster.parallel ({self.parallel}) "
                             "spreads threaded workers over processes: use one of them")
        if self.parallel > 1 and self.backend != "sim":
            raise ValueError(f"cluster.parallel ({self.parallel}) spreads simulated workers over processes; on "
                             "cluster.backend: torch every worker is a process already: remove cluster.parallel")
        if self.backend == "torchft" and self.group_size > 1:
            raise ValueError(f"cluster.group_size ({self.group_size}) with cluster.backend: torchft is not built yet (a "
                             "replica group is one process there); use cluster.group_size: 1")
        if self.backend == "torchft" and self.ft.min_replicas > self.workers:
            raise ValueError(f"cluster.ft.min_replicas ({self.ft.min_replicas}) exceeds cluster.workers ({self.workers})")
        if self.group_size > 1 and self.backend != "torch":
            raise ValueError(f"cluster.group_size ({self.group_size}) makes each worker a group of processes on "
                             "cluster.backend: torch (farsync launch --groups R --nproc-per-group k); on the simulator a "
                             "group of k is one worker with k times the batch: set train.batch_size instead")
        if self.group_shard and self.group_size < 2:
            raise ValueError("cluster.group_shard shards each replica group's model over its processes: it needs "
                             f"cluster.group_size >= 2 (got {self.group_size})")
        if self.parallel > self.workers:
            raise ValueError(f"cluster.parallel must be in [1, {self.workers}] (cluster.workers), got {self.parallel}")
        if self.speeds is not None and any(not s > 0 for s in self.speeds):
            raise ValueError(f"speeds must all be > 0, got {self.speeds}")
        if self.topology is not None:
            self.build_topology()
        return self

    def build_topology(self):
        """The communication graph (complete when `topology` is not set); errors name the bad value."""
        from .topology import build_topology

        try:
            return build_topology(self.topology if self.topology is not None else "complete", self.workers)
        except ValueError as err:
            raise ValueError(f"topology {self.topology!r} with {self.workers} workers: {err}") from None


DEFAULT_INNER = {"name": "adamw", "lr": 1e-3}


class AlgorithmConfig(BaseModel):
    """``name`` picks the algorithm and ``inner`` is the inner (local) optimizer; every other key
    belongs to the algorithm's own Options model (algorithms/options.py: ``sync_every``,
    ``outer``, ``compress`` where it takes them, and its options, with their defaults).

    An optimizer section without ``name`` (e.g. only ``outer.lr``) updates the default optimizer.
    """

    model_config = ConfigDict(extra="allow")
    name: str = "ddp"
    inner: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_INNER), description="inner (local) optimizer")

    @field_validator("inner", mode="before")
    @classmethod
    def _fill_defaults(cls, v):
        if isinstance(v, dict) and "name" not in v:
            return {**DEFAULT_INNER, **v}
        return v

    _ignored: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _check(self):
        from .algorithms import get_algorithm
        from .algorithms.options import validate_options

        cls = get_algorithm(self.name)
        values = dict(self.model_extra or {})
        if "topology" in values:
            raise ValueError("the graph of a decentralized algorithm is cluster.topology; move algorithm.topology there")
        self._drop_foreign_keys(cls, values)
        check_optimizer_config(self.inner, "algorithm.inner")
        cls.check_inner(self.inner)
        opts = validate_options(cls, values, where="algorithm.")
        self.model_extra.clear()
        for k, v in opts.model_dump().items():  # store the resolved options (the graph is cluster.topology)
            if k != "topology":
                setattr(self, k, v)
        return self

    def _drop_foreign_keys(self, cls, values: dict[str, Any]) -> None:
        """Keys that another registered algorithm takes and this one does not (``outer``,
        ``sync_every``, another's options) are dropped from `values` and, unless they hold that
        key's default, listed in `ignored`: one config runs with any ``algorithm.name``; keys no
        algorithm knows stay errors, and so does ``compress`` (see `options.foreign_keys`)."""
        from .algorithms import ALGORITHMS
        from .algorithms.options import default_of, foreign_keys

        shape_first = {"outer": 0, "sync_every": 1}  # the note names the shape keys first
        for key in sorted(foreign_keys(cls, values, ALGORITHMS), key=lambda k: shape_first.get(k, 2)):
            value = values.pop(key)
            if value is not None and value not in default_of(ALGORITHMS, key) and not (key == "sync_every" and value == 1):
                self._ignored.append(key)

    @property
    def ignored(self) -> list[str]:
        """The keys of other algorithms that were dropped for this one (see `_drop_foreign_keys`)."""
        return list(self._ignored)

    def options(self, topology: Any = None):
        """The algorithm's Options (with `topology`, a decentralized algorithm's graph)."""
        from .algorithms import get_algorithm
        from .algorithms.options import takes

        cls = get_algorithm(self.name)
        extra = {"topology": topology} if takes(cls, "topology") else {}
        return cls.Options(**(self.model_extra or {}), **extra)

    def spec(self) -> dict[str, Any]:
        """The section as `farsync.wrap` takes it: name and the options, without ``inner``."""
        return {"name": self.name, **(self.model_extra or {})}


class ScheduleConfig(_Strict):
    """Learning-rate schedule of the inner optimizer (per inner step)."""

    name: str = Field("constant", description=f"one of {', '.join(SCHEDULES)} (optim/schedules.py)")
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="final lr / base lr for decaying schedules")
    decay_fraction: float = Field(0.2, ge=0.0, le=1.0, description="wsd: fraction of the steps spent decaying")
    cycle_steps: int | None = Field(None, ge=1, description="sgdr: length of the first cycle (T_0); required")
    cycle_mult: int = Field(1, ge=1, description="sgdr: each cycle is this many times longer than the last (T_mult)")

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if v not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {v!r}; valid choices: {', '.join(SCHEDULES)}")
        return v

    @model_validator(mode="after")
    def _options(self):
        if self.name == "sgdr" and self.cycle_steps is None:
            raise ValueError("schedule 'sgdr' needs cycle_steps, the length of its first cycle (an integer >= 1)")
        for key, owner in (("decay_fraction", "wsd"), ("cycle_steps", "sgdr"), ("cycle_mult", "sgdr")):
            if self.name != owner and getattr(self, key) != ScheduleConfig.model_fields[key].default:
                raise ValueError(f"{key} applies to schedule {owner!r} only; remove it (schedule is {self.name!r})")
        return self

    def lr_lambda(self, total_steps: int):
        """The lr multiplier at step t (0-based) of this schedule over `total_steps` steps."""
        return lr_lambda(
            self.name, total_steps, self.warmup_steps, self.min_lr_ratio,
            decay_fraction=self.decay_fraction, cycle_steps=self.cycle_steps, cycle_mult=self.cycle_mult,
        )


class TrainConfig(_Strict):
    steps: int = Field(1000, ge=1, description="inner steps per worker")
    batch_size: int = Field(16, ge=1, description="per-worker batch size (sequences or samples)")
    eval_every: int = Field(100, ge=0, description="evaluate every this many steps (0: only at the end)")
    log_every: int = Field(10, ge=1, description="write a metrics line every this many steps")
    grad_clip: float | None = Field(None, gt=0, description="clip each worker's gradient norm to this")
    checkpoint_every: int = Field(0, ge=0, description="checkpoint every this many steps (0: never); a multiple of log_every")
    checkpoint_format: Literal["full", "sharded"] = Field(
        "full", description="full: rank 0 writes every worker's state (gathered); sharded: torch backend, every process "
        "writes its own with torch.distributed.checkpoint (checkpoint_shards.py)")
    lr_schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="forward and loss under torch.autocast to this dtype (parameters, gradients, optimizer "
        "state, payloads and evaluation stay fp32); fp16 adds dynamic loss scaling (torch.amp.GradScaler): microbatch.py")
    loss_scale: float = Field(2.0**16, gt=0, description="fp16: the initial loss scale (halved and the step skipped on "
                              "an inf/NaN gradient, doubled after 2000 clean steps)")
    grad_accum: int = Field(1, ge=1, description="micro-batches of batch_size per step, their gradients averaged: one "
                            "optimizer step and synchronization per k micro-batches, charged k steps of compute")
    init_from: str | None = Field(None, description="fine-tuning: start from this run directory's model.pt (or this "
                                  "model file); refused before training if its parameters do not fit the task's model")

    @model_validator(mode="after")
    def _ckpt(self):
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of log_every ({self.log_every})"
            )
        return self


def innermost_optimizer(inner: dict[str, Any]) -> str:
    """The name of the optimizer that takes the gradients (a wrapper's ``base``, recursively)."""
    from .optim import WRAPPERS

    while inner.get("name") in WRAPPERS and isinstance(inner.get("base"), dict):
        inner = inner["base"]
    return inner.get("name", "")


SHARDABLE = ("diloco", "local-sgd")  # cluster.group_shard: algorithms whose every exchange is the whole parameter vector


class Config(_Strict):
    name: str = "run"
    seed: int = 0
    task: TaskConfig = Field(default_factory=TaskConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    logging: list[Literal["tensorboard", "csv", "wandb", "mlflow"]] = Field(
        default_factory=list, description="trackers that get a copy of metrics.jsonl (tracking.py): tensorboard, csv, "
        "wandb (offline), mlflow (local store); all write inside the run directory")

    def _check_precision(self, cls) -> None:
        """train.precision and train.grad_accum against the algorithm, optimizer and engine (microbatch.py)."""
        t = self.train
        if self.cluster.batched and (t.precision != "fp32" or t.grad_accum > 1):
            raise ValueError("cluster.batched runs fp32 with one batch per step (train.precision: fp32, train.grad_accum: "
                             "1); remove cluster.batched for mixed precision or gradient accumulation")
        if t.precision != "fp16":
            return
        from .algorithms import ALGORITHMS
        from .optim import get_optimizer_class
        from .optim.stats import GlobalStats

        if cls.forward_only:
            raise ValueError(f"train.precision: fp16 scales the loss for the backward, and {self.algorithm.name} runs "
                             "forward passes only (its losses are compared in fp32 scalars); use train.precision: bf16")
        if not cls.grad_scaler_ok:
            ok = ", ".join(sorted(n for n, c in ALGORITHMS.items() if c.grad_scaler_ok))
            raise ValueError(f"train.precision: fp16 scales the loss, and {self.algorithm.name} reads the gradients "
                             f"beyond its inner optimizer's step (they would arrive scaled); fp16 works with {ok}; "
                             "use train.precision: bf16 (no loss scaling)")
        name = innermost_optimizer(self.algorithm.inner)
        try:
            opt_cls = get_optimizer_class(name)
        except ValueError:
            return  # the inner optimizer's own check names it
        if issubclass(opt_cls, GlobalStats):
            raise ValueError(f"train.precision: fp16 cannot take the inner optimizer {name!r}: its step size comes from "
                             "statistics of the gradients or the loss, which fp16 loss scaling changes (and a skipped "
                             "step would skip its averaging); use train.precision: bf16")
        compressed_grads = self.algorithm.name == "ddp" or (self.algorithm.name == "local-sgd"
                                                            and getattr(self.algorithm, "ddp_steps", 0))
        if compressed_grads and getattr(self.algorithm, "compress", None) is not None:
            raise ValueError(f"train.precision: fp16 with {self.algorithm.name}'s algorithm.compress: the compressor's "
                             "error feedback would keep loss-scaled gradient residuals across a change of scale; use "
                             "train.precision: bf16, or no compression")

    def _check_forward_only(self, cls) -> None:
        """A forward-only (zeroth-order) algorithm and ``train.init_from`` against the engines that
        build the model or run the backward themselves."""
        if cls.forward_only and self.cluster.group_size > 1:
            raise ValueError(f"{self.algorithm.name} runs forward passes only, and replica groups average gradients with "
                             "torch DDP inside the group: use cluster.group_size: 1")
        if cls.forward_only and self.cluster.batched:
            raise ValueError(f"cluster.batched has no forward-only path for {self.algorithm.name}; remove cluster.batched")
        if self.train.init_from is None:
            return
        from .algorithms.server import ParameterServerAlgorithm

        where = ("cluster.batched" if self.cluster.batched else "cluster.backend: torchft"
                 if self.cluster.backend == "torchft" else f"the server-based {self.algorithm.name}"
                 if issubclass(cls, ParameterServerAlgorithm) else None)
        if where is not None:
            raise ValueError(f"train.init_from is not supported with {where} yet (it builds its model elsewhere); "
                             "remove train.init_from")

    def _check_group_shard(self) -> None:
        """``cluster.group_shard`` (FSDP2 inside replica groups) against what it does not carry yet."""
        if not self.cluster.group_shard:
            return
        t, a = self.train, self.algorithm
        why = (f"algorithm {a.name!r} (sharded groups run {', '.join(SHARDABLE)}: each member all-reduces its "
               "whole shard across groups)" if a.name not in SHARDABLE else
               "algorithm.compress (a compressor sees whole tensors, a member holds a shard)"
               if getattr(a.options(), "compress", None) is not None else
               "train.checkpoint_format: full (each member's state is its own shard: use train.checkpoint_format: "
               "sharded, every member writing its own)" if t.checkpoint_every and t.checkpoint_format != "sharded" else
               f"train.grad_accum {t.grad_accum} (use a larger train.batch_size)" if t.grad_accum > 1 else
               "train.precision: fp16 (use bf16)" if t.precision == "fp16" else None)
        if why is not None:
            raise ValueError(f"cluster.group_shard does not take {why}")

    @model_validator(mode="after")
    def _fits(self):
        from .algorithms import get_algorithm
        from .algorithms.gossip import Decentralized
        from .algorithms.options import takes

        from .algorithms.sync_schedule import QSR

        cls = get_algorithm(self.algorithm.name)
        every = getattr(self.algorithm, "sync_every", 1)
        if isinstance(every, (QSR, dict)):  # the authors' rule: H_base during the lr warm-up, rounds cut to the steps left
            get = every.get if isinstance(every, dict) else lambda k: getattr(every, k)
            fill = {k: v for k, v in (("warmup_steps", self.train.lr_schedule.warmup_steps), ("total_steps", self.train.steps))
                    if get(k) is None}
            if fill:
                every = every.model_copy(update=fill) if isinstance(every, QSR) else {**every, **fill}
                extra = self.algorithm.__pydantic_extra__
                if extra is not None and "sync_every" in extra:  # an algorithm's own option lives among the extras
                    extra["sync_every"] = every
                else:
                    object.__setattr__(self.algorithm, "sync_every", every)
        if takes(cls, "sync_every") and isinstance(every, int) and every > self.train.steps:
            raise ValueError(f"algorithm.sync_every ({every}) is larger than train.steps ({self.train.steps}): the workers "
                             "would never synchronize; lower algorithm.sync_every or raise train.steps")
        if not cls.checkpointable and self.train.checkpoint_every:
            raise ValueError(f"algorithm {self.algorithm.name!r} cannot be checkpointed: its server and workers run at "
                             "their own pace, so no step has one consistent state of all of them to save (not "
                             "implemented); set train.checkpoint_every: 0")
        if self.cluster.churn:
            from .comm.churn import CHURN_ALGORITHMS

            where = ("cluster.backend: sim" if self.cluster.backend != "sim" else
                     "cluster.parallel: 1" if self.cluster.parallel > 1 else None)
            if where is not None:
                raise ValueError(f"cluster.churn runs on the simulator with {where}")
            if self.algorithm.name not in CHURN_ALGORITHMS:
                raise ValueError(f"cluster.churn supports {', '.join(CHURN_ALGORITHMS)} (every data-plane call an "
                                 f"all-reduce of a mean); {self.algorithm.name!r} is not supported yet")
            if getattr(self.algorithm, "compress", None) is not None:
                raise ValueError("cluster.churn with algorithm.compress is not supported yet (compressed payloads are "
                                 "gathered, and a worker away would count in the gathered mean)")
            if self.cluster.churn_schedule().timed and self.train.checkpoint_every:
                raise ValueError("cluster.churn with a window in time cannot be checkpointed yet (a resumed run would "
                                 "need each worker's away flag): give the window in steps, or set train.checkpoint_every: 0")
        if self.cluster.backend == "torchft":
            from .comm.fault_tolerant import FT_ALGORITHMS, FT_REFUSED

            if self.algorithm.name not in FT_ALGORITHMS:
                reason = FT_REFUSED.get(self.algorithm.name, "it is not built as a round of all-reduces yet")
                raise ValueError(f"cluster.backend: torchft runs {', '.join(FT_ALGORITHMS)} (a round of all-reduces, "
                                 "or all-gathers built from one, that commits or is discarded); "
                                 f"{self.algorithm.name!r} is not supported there: {reason}")
            why = ("algorithm.compress (error-feedback residuals and gathered payloads are not fault-tolerant yet)"
                   if getattr(self.algorithm, "compress", None) is not None else
                   "train.checkpoint_every (a replica coming back heals from a live peer; checkpoints of a torchft run "
                   "are not built yet): set train.checkpoint_every: 0" if self.train.checkpoint_every else
                   "cluster.churn (churn is simulated; on torchft replicas really die)" if self.cluster.churn else None)
            if why is not None:
                raise ValueError(f"cluster.backend: torchft does not take {why}")
        self._check_precision(cls)
        self._check_forward_only(cls)
        self._check_group_shard()
        if self.train.checkpoint_format == "sharded" and self.cluster.backend != "torch":
            raise ValueError("train.checkpoint_format: sharded is written by each process of cluster.backend: torch "
                             "(farsync launch); the simulator's workers share one process: use full (a sharded "
                             "checkpoint still resumes on the simulator)")
        if self.cluster.parallel > 1 or self.cluster.group_size > 1:
            from .algorithms import ALGORITHMS
            from .algorithms.base import CollectiveAlgorithm

            if not issubclass(cls, CollectiveAlgorithm):
                ok = ", ".join(sorted(n for n, c in ALGORITHMS.items() if issubclass(c, CollectiveAlgorithm)))
                why = ("whose simulated timing follows the order the workers run in: use cluster.parallel: 1"
                       if self.cluster.parallel > 1 else "which replica groups do not carry: use cluster.group_size: 1")
                key = "parallel" if self.cluster.parallel > 1 else "group_size"
                raise ValueError(f"cluster.{key} ({getattr(self.cluster, key)}) needs an algorithm that communicates by "
                                 f"collectives only ({ok}); {self.algorithm.name!r} sends point-to-point messages, {why}")
        if issubclass(cls, Decentralized):
            try:
                cls.check_topology(self.cluster.build_topology(), self.algorithm.options())
            except ValueError as err:
                raise ValueError(f"cluster.topology {self.cluster.topology!r}: {err}") from None
        elif self.cluster.topology is not None:
            from .algorithms import ALGORITHMS

            gossip = ", ".join(sorted(n for n, c in ALGORITHMS.items() if issubclass(c, Decentralized)))
            raise ValueError(f"algorithm {self.algorithm.name!r} does not use cluster.topology "
                             f"(decentralized algorithms do: {gossip}); remove cluster.topology")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def notes(self) -> list[str]:
        """One-line notes about what the config ignores (printed by the runner before it starts)."""
        ignored = self.algorithm.ignored
        if not ignored:
            return []
        keys = ", ".join(f"algorithm.{k}" for k in ignored)
        return [f"note: algorithm {self.algorithm.name!r} does not use {keys} (options of other algorithms); ignored"]


def apply_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML, numbers as in `farsync.yamlio`) to a
    nested dict copy."""
    tree = copy.deepcopy(tree)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = tree
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = load_yaml(raw, f"--set {item}") if raw.strip() else ""
    return tree


def remove_keys(tree: dict[str, Any], keys: list[str] | None) -> dict[str, Any]:
    """Remove dotted `keys` (``--unset algorithm.outer``) from a nested dict copy; a key that is
    not there is an error (a typo must not pass silently)."""
    tree = copy.deepcopy(tree)
    for key in keys or []:
        parts = key.strip().split(".")
        node = tree
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"--unset {key}: the config has no key {key!r}")
        del node[parts[-1]]
    return tree


def _section_keys(path: tuple) -> list[str] | None:
    """The keys allowed in the config section at `path` (None if it is not a fixed section)."""
    model: type[BaseModel] = Config
    for part in path:
        ann = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return list(model.model_fields)


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {loc.split('.')[-1]!r}"
            valid = _section_keys(e["loc"][:-1])
            if valid:
                msg += f" (valid keys: {', '.join(valid)})"
        got = e.get("input")
        if e["type"] != "extra_forbidden" and not isinstance(got, dict) and repr(got) not in msg:
            msg += f" (got {got!r})"
        lines.append(f"  {loc or '<root>'}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def load_config(
    source: str | Path | dict[str, Any] | Config | None = None,
    overrides: list[str] | None = None,
    unset: list[str] | None = None,
) -> Config:
    """Build a validated `Config` from a YAML path, a dict or a Config, minus the `unset` keys,
    plus overrides. An empty file is refused (it would silently start the defaults' long run)."""
    tree = config_tree(source, overrides, unset)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def config_tree(
    source: str | Path | dict[str, Any] | Config | None = None,
    overrides: list[str] | None = None,
    unset: list[str] | None = None,
) -> dict[str, Any]:
    """The config tree `load_config` validates: the source minus `unset`, plus `overrides`."""
    if isinstance(source, Config):
        tree = source.to_dict()
    elif isinstance(source, dict):
        tree = source
    elif source is None:
        tree = {}
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = load_yaml_file(path)
        except YAMLSyntaxError as err:
            raise ConfigError(str(err)) from None
        if tree is None:
            raise ConfigError(f"{path} is empty: a config needs at least the keys that differ from the defaults "
                              "(examples: farsync/configs/demo_diloco.yaml)")
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (task, cluster, algorithm, train)")
    try:
        return apply_overrides(remove_keys(tree, unset), overrides)
    except YAMLSyntaxError as err:
        raise ConfigError(str(err)) from None
