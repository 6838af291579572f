"""The runner: config -> cluster (simulated or torch.distributed) -> `train_worker` -> run directory.

Run directory (written by rank 0 only): ``config.yaml`` (resolved config), ``metrics.jsonl`` (one
JSON object per logged step, flushed as it goes), ``summary.json`` (written atomically at the end,
also when the run fails: ``status`` then says why), ``checkpoints/`` when
``train.checkpoint_every`` > 0, and on the simulator ``transfers.csv``: every communication
call's virtual start and end, the rank and the bytes it sent (bytes in flight over time:
`farsync.report.bytes_in_flight`; a resumed run keeps the calls that started before its checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml

from .api import sim_cluster
from .checkpoint import CheckpointError, RunWriteError, config_diff, latest_checkpoint, load_latest, write_error
from .comm import SimCluster, Straggler, faults
from .config import Config, ConfigError, load_config
from .algorithms import get_algorithm
from .algorithms.server import ParameterServerAlgorithm
from .async_loop import train_async
from .loop import NonFiniteLoss, RunContext, train_worker
from .progress import ProgressBar
from .report import bytes_in_flight, load_transfers
from .rundir import (LOCK_ENV, LOCK_NAME, MetricsLog, RunDirLock, check_new_run_dir, lock_run_dir, write_json_atomic,
                     write_text_atomic)
from .stopping import Terminated, stop_on_signals, stop_status
from .tasks import Task, get_task
from .units import format_bytes, format_loss, parse_bandwidth, parse_duration, parse_flops
from .algorithms.fragments import largest_block_list
from .deployment import resolve
from .retime import CommRecorder, write_log

# Keys a resumed run may change: none of them changes what a finished step computed.
RESUMABLE_KEYS = ("name", "logging", "train.steps", "train.eval_every", "train.log_every", "train.checkpoint_every",
                  "cluster.backend", "cluster.device", "cluster.timeout", "cluster.parallel", "cluster.threads",
                  "cluster.engine",
                  "train.checkpoint_format")
# a replica group may change its size on resume when its batch stays: group_size x batch_size
REGROUP_KEYS = ("cluster.group_size", "train.batch_size")
DIVERGED_FACTOR = 10.0  # summary "diverged": the last logged train loss is this many times the first


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.summary["status"]


def build_task(cfg: Config) -> Task:
    return get_task(cfg.task.name)(cfg.task.params(), cfg.cluster.workers, cfg.seed)


def server_based(cfg: Config) -> bool:
    """True if the algorithm runs a parameter server on rank 0 besides the workers (async_loop.py)."""
    return issubclass(get_algorithm(cfg.algorithm.name), ParameterServerAlgorithm)


def world_size(cfg: Config) -> int:
    """Processes of the run: the workers (times ``cluster.group_size``), plus the server of a
    server-based algorithm."""
    return cfg.cluster.workers * cfg.cluster.group_size + int(server_based(cfg))


def initial_model(cfg: Config, task: Task) -> torch.nn.Module:
    """The run's initial model as every worker builds it (seeded): what the checks before work and
    the time model look at."""
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    if cfg.train.init_from is not None:  # fine-tuning: refused here, before anything is written, if it does not fit
        from .loop import load_init_from

        try:
            load_init_from(model, cfg.train.init_from)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return model


def build_cluster(cfg: Config, task: Task, model: torch.nn.Module | None = None) -> SimCluster:
    """The simulated cluster. A server-based algorithm's server is rank 0 (no compute, its link at
    ``cluster.bandwidth``) and worker w of the config (speeds, stragglers, links) is rank w + 1.
    `model`: the initial model (built here if not given)."""
    c = cfg.cluster
    timed = timed_deployment(cfg, task, model if model is not None else initial_model(cfg, task))
    k = int(server_based(cfg))
    stragglers = [Straggler(s.rank + k, s.factor, *s.window_s()) for s in c.stragglers]
    speeds = [1.0] * k + c.speeds if c.speeds else None
    links = [c.bandwidth] * k + c.link_bandwidth if c.link_bandwidth else None
    return sim_cluster(world_size(cfg), c.bandwidth, c.latency, timed["step_time_s"], speeds, timed["bytes_scale"],
                       stragglers, links, timed, c.parallel, c.threads, c.churn_schedule(), c.engine)


MEMORY_COPIES = 8  # per worker: parameters, gradients, optimizer state (2), algorithm copies and flat buffers (~4)
THREAD_BYTES = 256 * 1024  # per simulated worker: its thread and Python objects


def available_memory() -> float | None:
    """Bytes of memory available to this process (Linux MemAvailable; None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(cfg: Config, model: torch.nn.Module) -> None:
    """Refuse, before any work, a simulated run whose workers cannot fit in memory (an estimate:
    MEMORY_COPIES copies of the initial `model` per worker plus THREAD_BYTES), naming the numbers."""
    avail = available_memory()
    if avail is None:
        return
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    n = world_size(cfg)
    need = n * (MEMORY_COPIES * size + THREAD_BYTES)
    if need > avail:
        raise ConfigError(f"cluster.workers={cfg.cluster.workers} needs about {format_bytes(need)} on the simulator "
                          f"({n} workers x ({MEMORY_COPIES} x {format_bytes(size)} of model: parameters, gradients, "
                          f"optimizer and algorithm state, + {format_bytes(THREAD_BYTES)} per thread)), but "
                          f"{format_bytes(avail)} is available; use fewer workers or a smaller model")


def timed_deployment(cfg: Config, task: Task, model: torch.nn.Module) -> dict[str, Any]:
    """What the clock times the run as: step time, bytes scale, step layout, buckets and the
    description in words (`deployment.py`; without ``cluster.time_model``: the run's own `model`
    at ``cluster.step_time`` or ``cluster.throughput``, payloads as they are)."""
    c = cfg.cluster
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = largest_block_list(model)
    layers = len(blocks) if blocks is not None else 1
    return resolve(c.time_model, n_params, layers, tokens_per_step=task.tokens_per_batch(cfg.train.batch_size),
                   flops_per_step=None if c.step_time is not None else task.flops_per_step(model, cfg.train.batch_size),
                   throughput=parse_flops(c.throughput),
                   step_time_s=parse_duration(c.step_time) if c.step_time is not None else None,
                   bytes_scale=c.bytes_scale, workers=c.workers, bandwidth_bps=parse_bandwidth(c.bandwidth),
                   latency_s=parse_duration(c.latency))


def train(comm, cfg: Config, task: Task, ctx: RunContext) -> list | None:
    """Run this rank's part of the training: the SPMD loop, or the server/worker loop. With
    ``FARSYNC_FAULT`` set (tests), the communicator kills a worker (`comm.faults`). Returns the
    rank's communication log when the simulator records one (from another process with
    ``cluster.parallel``)."""
    log = ctx.comm_log[comm.rank] if ctx.comm_log is not None else None
    if log is not None:  # the simulator records what each worker does, for `farsync retime`
        comm = CommRecorder(comm, log)
    comm = faults.from_env(comm, hard_kill=ctx.hard_kill)
    (train_async if server_based(cfg) else train_worker)(comm, cfg, task, ctx)
    return log


def summarize(cfg: Config, rows: list[dict], records: list[dict], status: str, wall: float, n_params: int) -> dict:
    """summary.json from the last gathered per-worker counters (`rows`) and the metrics."""
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    sim_time = max((r["clock_s"] for r in rows), default=0.0)
    compute = [r["compute_time_s"] for r in rows]
    busy = [r["compute_time_s"] for r in rows if r.get("role") != "server"]  # a server does no compute
    last = records[-1] if records else {}
    summary = {
        "name": cfg.name,
        "status": status,
        "backend": cfg.cluster.backend,
        "task": cfg.task.name,
        "algorithm": cfg.algorithm.name,
        "workers": cfg.cluster.workers,
        "n_params": n_params,
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": min(evals) if evals else None,
        "steps": last.get("step", 0),
        "tokens": last.get("tokens", 0),
        "bytes_sent_total": sum(r["bytes_sent"] for r in rows),
        "bytes_sent_per_worker": [r["bytes_sent"] for r in rows],
        "bytes_received_per_worker": [r["bytes_received"] for r in rows],
        "peak_bytes_per_sync": max((r["peak_bytes_per_sync"] for r in rows), default=0),
        "sim_time_s": sim_time,
        "compute_time_s_per_worker": compute,
        "blocked_time_s_per_worker": [r["blocked_time_s"] for r in rows],
        "compute_utilization": (sum(busy) / (len(busy) * sim_time)) if sim_time > 0 and busy else None,
        "wall_time_s": round(wall, 3),
    }
    summary.update(divergence(records))
    return summary


def divergence(records: list[dict]) -> dict:
    """``{"diverged": True, "warning": ...}`` when the last logged train loss is at least
    `DIVERGED_FACTOR` times the first (a blow-up by an order of magnitude or more), else ``{}``."""
    losses = [(r["step"], r["train_loss"] if r.get("train_loss") is not None else math.inf)
              for r in records if "train_loss" in r]
    if len(losses) < 2:
        return {}
    (s0, first), (s1, last) = losses[0], losses[-1]
    if first > 0 and math.isfinite(first) and (not math.isfinite(last) or last >= DIVERGED_FACTOR * first):
        return {"diverged": True, "warning": f"loss diverged: train loss {format_loss(first)} at step {s0} "
                                             f"rose to {format_loss(last)} at step {s1}"}
    return {}


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: Config, out: str | Path | None, resume: bool) -> tuple[Path, dict | None, RunDirLock | None]:
    """Create (or, when resuming, check) and lock the run directory; return it, the checkpoint to
    resume and the lock (None when a launcher holds it for this process).

    Nothing is written unless every check passes: an `out` that is a file, a directory that is not
    empty and not farsync's, or one that cannot be made is refused; a directory another process
    writes is `RunDirBusy`; on resume only `RESUMABLE_KEYS` may differ from the checkpoint's config
    (then config.yaml is rewritten with the new values), and a corrupt newest checkpoint falls back
    to the newest intact one with a warning."""
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    if resume:
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir} is not a run directory")
        lock = lock_run_dir(run_dir)
        try:
            path, ckpt, warnings = load_latest(run_dir)
            for w in warnings:
                print(w, file=sys.stderr)
            check_resume(ckpt, cfg, path)
            if config_diff(ckpt["config"], cfg.to_dict()):
                write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        except BaseException as err:
            if lock is not None:
                lock.release()
            if isinstance(err, CheckpointError):
                raise CheckpointError(f"{err}; {run_dir} is unchanged ({_summary_status(run_dir)})") from None
            raise
        return run_dir, ckpt, lock
    check_new_run_dir(run_dir)
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    lock = None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_run_dir(run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    except OSError as err:
        if lock is not None:
            lock.release()
        for p in made:  # leave no half-made run directory behind
            if p.is_dir():
                for f in ("config.yaml", LOCK_NAME):
                    (p / f).unlink(missing_ok=True)
                try:
                    p.rmdir()
                except OSError:
                    pass
        raise ConfigError(f"cannot write the run directory {run_dir} (--out): {err.strerror or err}") from None
    return run_dir, None, lock


def _summary_status(run_dir: Path) -> str:
    try:
        return f"its summary.json still says {json.loads((run_dir / 'summary.json').read_text())['status']!r}"
    except (OSError, ValueError, KeyError):
        return "it has no readable summary.json"


def check_resume(ckpt: dict, cfg: Config, path: Path) -> None:
    """Refuse a resumed config that changes what the checkpoint's finished steps mean."""
    diff = config_diff(ckpt["config"], cfg.to_dict())
    bad = [k for k in diff if k not in RESUMABLE_KEYS]
    old_c, old_t = ckpt["config"].get("cluster", {}), ckpt["config"].get("train", {})
    old_batch = old_c.get("group_size", 1) * old_t.get("batch_size", 16)
    if set(bad) <= set(REGROUP_KEYS) and old_batch == cfg.cluster.group_size * cfg.train.batch_size:
        bad = []  # the same workers with the same batch, over another number of processes each
    elif any(k in REGROUP_KEYS for k in bad):
        regroup = [k for k in bad if k in REGROUP_KEYS]
        bad = [k for k in bad if k not in REGROUP_KEYS] + [
            f"{' and '.join(regroup)} (cluster.group_size x train.batch_size may change only together, keeping {old_batch})"]
    if bad:
        raise CheckpointError(f"checkpoint {path} was written with a different config; these keys cannot change on "
                              f"resume: {', '.join(bad)} (a resume may change only {', '.join(RESUMABLE_KEYS)})")
    if cfg.train.steps <= ckpt["step"]:
        raise CheckpointError(f"train.steps ({cfg.train.steps}) must be larger than the checkpoint's step "
                              f"({ckpt['step']}, {path}) to go on training")
    old_steps = ckpt["config"]["train"]["steps"]
    if old_steps != cfg.train.steps and cfg.train.lr_schedule.name != "constant":
        print(f"note: train.lr_schedule {cfg.train.lr_schedule.name!r} is defined over train.steps; from step "
              f"{ckpt['step'] + 1} on the lr follows it over the new total {cfg.train.steps} (was {old_steps})",
              file=sys.stderr)


def resume_config(run_dir: str | Path, overrides: list[str] | None, backend: str | None = None) -> Config:
    """The config of run `run_dir` (its config.yaml) plus `overrides`; `backend` ('sim' for
    ``farsync run``, 'torch' for ``farsync launch``) replaces the one the run was written with,
    so a checkpoint moves between the simulator and torch.distributed with the same workers."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(path, overrides)
    if backend is not None and cfg.cluster.backend != backend:
        print(f"note: {run_dir} was run on cluster.backend {cfg.cluster.backend!r}; resuming it on {backend!r}", file=sys.stderr)
        extra = [f"cluster.backend={backend}"]
        if backend == "sim" and cfg.train.checkpoint_format == "sharded":
            print("note: its sharded checkpoints are read on the simulator; new ones are written in the full format",
                  file=sys.stderr)
            extra.append("train.checkpoint_format=full")
        cfg = load_config(path, [*(overrides or []), *extra])
    return cfg


def check_model(cfg: Config, model: torch.nn.Module) -> int:
    """The algorithm checks its options against the initial `model` (e.g. fragments against
    blocks) before anything is written; returns the number of parameters."""
    try:
        get_algorithm(cfg.algorithm.name).check_model(model, cfg.algorithm.options())
        if cfg.cluster.group_shard:
            from .comm.groups import check_shardable

            check_shardable(model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return sum(p.numel() for p in model.parameters())


def write_transfers(path: Path, transfers: list[tuple[float, float, int, int]]) -> None:
    """transfers.csv: every communication call's start, end, rank and the bytes that rank sent."""
    write_text_atomic(path, "start_s,end_s,rank,bytes\n" + "".join(f"{a!r},{b!r},{r},{n}\n" for a, b, r, n in sorted(transfers)))


def _finish(cfg, ctx: RunContext, status: str, wall0: float, n_params: int, transfers=None) -> RunResult:
    """Write transfers.csv, model.pt and summary.json (as much as the disk allows: a write error
    is printed and the summary names it), then release the run directory."""
    try:
        if transfers is not None:
            write_transfers(ctx.run_dir / "transfers.csv", transfers)
        if ctx.final_model is not None:
            tmp = ctx.run_dir / "model.pt.tmp"
            try:
                torch.save(ctx.final_model, tmp)
                os.replace(tmp, ctx.run_dir / "model.pt")
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise write_error(err, ctx.run_dir / "model.pt") from None
    except RunWriteError as err:
        status = f"failed: {err}" if status == "completed" else status
        print(f"farsync: error: {err}", file=sys.stderr)
    summary = summarize(cfg, ctx.last_rows, ctx.log.records, status, time.perf_counter() - wall0, n_params)
    if transfers is not None:
        summary["peak_bytes_in_flight"] = max(bytes_in_flight(transfers)[1], default=0)
    summary["restarts"] = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    summary["time_model"] = ctx.time_model or "real time (torch.distributed: measured wall-clock, no time model)"
    if ctx.comm_log is not None and summary["status"] == "completed":
        try:
            write_log(ctx.run_dir, ctx.comm_log, {"config": cfg.to_dict()})
        except RunWriteError as err:
            print(f"farsync: error: {err} (the run is complete; it cannot be re-timed)", file=sys.stderr)
    try:
        write_json_atomic(ctx.run_dir / "summary.json", summary)
    except RunWriteError as err:
        print(f"farsync: error: {err} (the run's status: {status})", file=sys.stderr)
    ctx.log.close(summary)  # metrics.jsonl, then the trackers with the summary
    if ctx.lock is not None:
        ctx.lock.release()
    return RunResult(ctx.run_dir, summary, ctx.log.records)


def check_logging(cfg: Config) -> None:
    """Before any work: every tracker of ``logging`` can be built (its package is installed)."""
    from .tracking import check_trackers

    try:
        check_trackers(cfg.logging)
    except ImportError as err:
        raise ConfigError(str(err)) from None


def open_metrics(cfg: Config, run_dir: Path, ckpt: dict | None) -> MetricsLog:
    """metrics.jsonl (a resumed run's history first) and the config's trackers beside it."""
    history = ckpt["metrics"] if ckpt else None
    tracking = None
    if cfg.logging:
        from .tracking import Tracking

        tracking = Tracking(run_dir, cfg.logging, config=cfg.to_dict(), history=history or (), name=cfg.name)
    return MetricsLog(run_dir / "metrics.jsonl", history, tracking=tracking)


def _status(exc: BaseException, ctx: RunContext | None = None) -> str:
    step = ctx.step if ctx is not None else "?"
    if isinstance(exc, Terminated):
        return stop_status(exc.signum, step)
    if isinstance(exc, KeyboardInterrupt):
        return f"failed: interrupted at step {step}"
    if isinstance(exc, (NonFiniteLoss, RunWriteError)):
        return f"failed: {exc}"
    return f"failed: {type(exc).__name__}: {exc}"


def write_processes(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """processes.json: every process of the run (role, rank, pid, host), so an operator can see
    and stop them; under ``farsync launch`` the launcher's and torchrun's rows it wrote are kept."""
    path = run_dir / "processes.json"
    keep = []
    if os.environ.get(LOCK_ENV) and path.is_file():
        try:
            keep = [r for r in json.loads(path.read_text()) if r.get("role") in ("launcher", "torchrun")]
        except (OSError, ValueError):
            keep = []
    write_text_atomic(path, json.dumps(keep + rows, indent=2) + "\n")


def this_process(role: str, rank: int | str) -> dict[str, Any]:
    return {"role": role, "rank": rank, "pid": os.getpid(), "host": socket.gethostname()}


def run(
    config: str | Path | dict | Config | None = None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    unset: list[str] | None = None,
) -> RunResult:
    """Validate `config`, train on the simulated cluster and write a run directory.

    `unset` removes dotted keys from the config before `overrides` apply. ``resume=RUN_DIR``
    continues that run from its latest checkpoint (its config.yaml plus `overrides`, which may
    change only `RESUMABLE_KEYS`, e.g. ``train.steps`` to train longer; a run made with
    ``farsync launch`` resumes here on the simulator). Raises ConfigError / ValueError /
    DataMissingError / CheckpointError before anything is written on bad input; a run that fails
    during training, or is interrupted (Ctrl-C: KeyboardInterrupt is re-raised), still writes its
    metrics and a summary whose status says why.
    """
    if resume is not None:
        cfg = resume_config(resume, overrides, backend="sim")
    else:
        cfg = load_config(config, overrides, unset)
        if cfg.cluster.backend != "sim":
            raise ConfigError("cluster.backend is 'torch': start it with `farsync launch --nproc N CONFIG` (or torchrun)")
    for note in cfg.notes():
        print(note, file=sys.stderr)
    check_logging(cfg)
    task = build_task(cfg)
    model = initial_model(cfg, task)
    n_params = check_model(cfg, model)
    check_memory(cfg, model)
    if cfg.cluster.batched:
        from .sim_batched import check_config

        try:
            check_config(cfg, model)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    cluster = build_cluster(cfg, task, model)
    del model
    run_dir, ckpt, lock = prepare_run_dir(cfg, resume if resume is not None else out, resume is not None)

    ctx = RunContext(
        device=torch.device(cfg.cluster.device),
        run_dir=run_dir,
        resume=ckpt,
        bar=ProgressBar(cfg.train.steps, enabled=progress, label=cfg.name, start=ckpt["step"] if ckpt else 0),
        lock=lock,
        time_model=cluster.time_model.description,
        comm_log=None if ckpt is not None or server_based(cfg) else [[] for _ in range(cluster.world_size)],
    )
    earlier = []  # a resumed run: the calls issued before its checkpoint
    if ckpt is not None and "transfers" in ckpt:
        earlier = [tuple(row) for row in ckpt["transfers"]]
    elif ckpt is not None and (run_dir / "transfers.csv").is_file():  # a checkpoint written on torch.distributed
        earlier = [row for row in load_transfers(run_dir) if row[0] < min(w["stats"]["clock_s"] for w in ckpt["workers"])]
    ctx.transfers = lambda: earlier + list(cluster.transfers)
    status, wall0 = "completed", time.perf_counter()
    try:
        ctx.log = open_metrics(cfg, run_dir, ckpt)
        write_processes(run_dir, [this_process("simulator", "all")])
        if cfg.cluster.batched:  # every worker at once (sim_batched.py): it fills ctx's rows and comm log
            from .sim_batched import train_batched

            with stop_on_signals(graceful=True), ctx.bar:
                train_batched(cfg, task, ctx, cluster)
        else:
            with stop_on_signals(graceful=not server_based(cfg)), ctx.bar:
                logs = cluster.run(lambda comm: train(comm, cfg, task, ctx))
            if ctx.comm_log is not None:
                ctx.comm_log = logs
            ctx.last_rows = [{**s.as_dict(), "role": "worker"} for s in cluster.stats]
        if server_based(cfg):
            ctx.last_rows[0]["role"] = "server"
    except RunWriteError as exc:
        if ctx.log is None:  # not even metrics.jsonl could be written
            if lock is not None:
                lock.release()
            raise
        status = _status(exc)
    except Exception as exc:  # noqa: BLE001 - recorded in summary.json
        status = _status(exc)
    except BaseException as exc:  # a signal (Terminated, KeyboardInterrupt): record, then re-raise
        _finish(cfg, ctx, _status(exc, ctx), wall0, n_params, ctx.transfers())
        raise
    return _finish(cfg, ctx, status, wall0, n_params, ctx.transfers())


def watch_parent(grace_s: float = 20.0) -> None:
    """Stop this worker when its parent (torchrun's agent) is gone: SIGTERM to itself (a graceful
    stop at the next logging step), then exit after `grace_s` if it is still running."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(143)

    threading.Thread(target=watch, daemon=True, name="farsync-parent-watch").start()


def init_process_group(backend: str, timeout: timedelta) -> None:
    """``dist.init_process_group`` from torchrun's environment.

    After an elastic restart, torchrun's agent store still holds the previous attempt's keys,
    and gloo could connect to the dead processes' addresses; keys are therefore prefixed with
    the restart count.
    """
    import torch.distributed as dist

    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend, timeout=timeout)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"farsync/attempt_{restart}", store),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=timeout,
    )


def run_distributed_worker(
    config: str | Path | None, overrides: list[str] | None, out: str | Path, resume: bool = False,
    unset: list[str] | None = None,
) -> RunResult | None:
    """Entry point of one torch.distributed process (under torchrun). Rank 0 returns the result.

    Resumes from the latest checkpoint in `out` when `resume` is set or when torchrun restarted
    the job after a failure (TORCHELASTIC_RESTART_COUNT > 0) and a checkpoint exists.
    """
    import torch.distributed as dist

    from .comm.torch_dist import TorchCommunicator

    cfg = resume_config(out, overrides, backend="torch") if resume else load_config(config, overrides, unset)
    if cfg.cluster.backend != "torch":
        raise ConfigError(f"farsync launch needs cluster.backend: torch (got {cfg.cluster.backend!r}); add --set cluster.backend=torch")
    check_logging(cfg)
    device = torch.device("cpu")
    if cfg.cluster.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=parse_duration(cfg.cluster.timeout))
    init_process_group("nccl" if device.type == "cuda" else "gloo", timeout)
    try:
        world = TorchCommunicator()
        if world.world_size != world_size(cfg):
            k = cfg.cluster.group_size
            raise ConfigError(f"the run needs {world_size(cfg)} processes (cluster.workers is {cfg.cluster.workers}"
                              f"{f' groups of cluster.group_size {k}' if k > 1 else ''}"
                              f"{', plus a server' if server_based(cfg) else ''}) but {world.world_size} were started")
        task = build_task(cfg)
        ctx = RunContext(device=device, hard_kill=True, checkpoints=Path(out) / "checkpoints")
        restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
        error, do_resume = None, False
        if world.rank == 0:
            try:
                do_resume = resume or (restarted and latest_checkpoint(out) is not None)
                if restarted and not do_resume:  # restarted before the first checkpoint: start over
                    for f in ("metrics.jsonl", "summary.json"):
                        (Path(out) / f).unlink(missing_ok=True)
                ctx.run_dir, ctx.resume, ctx.lock = prepare_run_dir(cfg, out, do_resume)
                ctx.log = open_metrics(cfg, ctx.run_dir, ctx.resume)
            except Exception as exc:  # noqa: BLE001 - every rank must learn about it
                error = f"{type(exc).__name__}: {exc}"
        me = this_process("worker", world.rank)
        if cfg.cluster.group_size > 1:
            me["group"] = world.rank // cfg.cluster.group_size
        gathered = world.all_gather_object((error, do_resume, me))
        if gathered[0][0] is not None:
            raise RuntimeError(f"rank 0 could not prepare the run directory: {gathered[0][0]}")
        if world.rank == 0:
            write_processes(ctx.run_dir, [p for _, _, p in gathered])
        comm = world
        if cfg.cluster.group_size > 1:  # the algorithm's communicator: across groups (comm/groups.py)
            from .comm.groups import GroupedCommunicator, init_replica_groups

            ctx.group = init_replica_groups(cfg.cluster.group_size)
            comm = GroupedCommunicator(ctx.group)
            if comm.rank == 0 and ctx.group.rank > 0 and gathered[0][1]:  # member j of group 0 hands group j's states out
                ctx.resume = load_latest(out)[1]
        n_params = check_model(cfg, initial_model(cfg, task))
        status, wall0 = "completed", time.perf_counter()
        watch_parent()
        try:
            with stop_on_signals(graceful=not server_based(cfg)):
                train(comm, cfg, task, ctx)
            rows = comm.all_gather_object(comm.stats.as_dict())
            ctx.last_rows = [{**r, "role": "server" if server_based(cfg) and i == 0 else "worker"} for i, r in enumerate(rows)]
        except BaseException as exc:
            status = _status(exc, ctx)
            if not isinstance(exc, NonFiniteLoss):
                raise
        finally:
            if world.rank == 0 and ctx.log is not None:
                result = _finish(cfg, ctx, status, wall0, n_params)
        dist.barrier()  # leave together: tearing down gloo while a peer still works can abort at exit
        return result if world.rank == 0 else None
    finally:
        dist.destroy_process_group()
