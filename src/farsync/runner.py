"""The runner: config -> simulated cluster -> one SPMD training loop per worker -> run directory.

Run directory: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one JSON object per logged
step, flushed as it goes) and ``summary.json`` (written atomically at the end, also when the run
fails: ``status`` then says why it stopped).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .algorithms import get_algorithm
from .comm import Communicator, NetworkModel, SimCluster, TimeModel
from .config import Config, load_config
from .optim import build_optimizer, lr_lambda
from .progress import ProgressBar
from .tasks import Task, get_task
from .units import parse_bandwidth, parse_duration, parse_flops


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.summary["status"]


class NonFiniteLoss(RuntimeError):
    pass


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def build_task(cfg: Config) -> Task:
    return get_task(cfg.task.name)(cfg.task.params(), cfg.cluster.workers, cfg.seed)


def build_cluster(cfg: Config, task: Task) -> SimCluster:
    c = cfg.cluster
    if c.step_time is not None:
        step_time = parse_duration(c.step_time)
    else:
        torch.manual_seed(cfg.seed)
        step_time = task.flops_per_step(task.build_model(), cfg.train.batch_size) / parse_flops(c.throughput)
    network = NetworkModel(parse_bandwidth(c.bandwidth), parse_duration(c.latency), c.bytes_scale)
    return SimCluster(c.workers, network, TimeModel(step_time, tuple(c.speeds or ())))


def build_algorithm(cfg: Config, model: torch.nn.Module, comm: Communicator):
    a = cfg.algorithm
    optimizer = build_optimizer(model.parameters(), a.inner)
    cls = get_algorithm(a.name)
    kwargs: dict[str, Any] = {"sync_every": a.sync_every, "grad_clip": cfg.train.grad_clip, "options": a.options()}
    if cls.uses_outer:
        kwargs["outer"] = a.outer
    return cls(model, optimizer, comm, **kwargs)


class MetricsLog:
    """Append-only metrics.jsonl, flushed after every line."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._fh = path.open("w")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def train_worker(comm: Communicator, cfg: Config, task: Task, log: MetricsLog | None, bar: ProgressBar | None) -> dict:
    """The SPMD training loop, run by every worker. Rank 0 evaluates and writes metrics."""
    t = cfg.train
    torch.manual_seed(cfg.seed)  # identical initial model on every worker
    model = task.build_model()
    algo = build_algorithm(cfg, model, comm)
    sched = torch.optim.lr_scheduler.LambdaLR(
        algo.optimizer, lr_lambda(t.lr_schedule.name, t.steps, t.lr_schedule.warmup_steps, t.lr_schedule.min_lr_ratio)
    )
    sampler = task.sampler(comm.rank, t.batch_size)
    tokens_per_step = task.tokens_per_batch(t.batch_size) * comm.world_size
    loss_sum, loss_n, first_bad = 0.0, 0, math.inf
    wall0 = time.perf_counter()
    for step in range(1, t.steps + 1):
        lr = sched.get_last_lr()[0]
        loss = task.loss(model, sampler.next_batch())
        loss.backward()
        algo.step()
        algo.zero_grad()
        sched.step()
        value = loss.item()
        if not math.isfinite(value):
            first_bad = min(first_bad, step)
        loss_sum, loss_n = loss_sum + value, loss_n + 1

        do_eval = step == t.steps or (t.eval_every > 0 and step % t.eval_every == 0)
        if not (do_eval or step % t.log_every == 0):
            continue
        st = comm.stats
        rows = comm.gather_metrics(
            {"loss": loss_sum / loss_n, "bad": first_bad, "clock": st.clock_s, "sent": st.bytes_sent, "recv": st.bytes_received}
        )
        loss_sum, loss_n = 0.0, 0
        bad = min(r["bad"] for r in rows)  # first step with a non-finite loss on any worker (inf: none)
        failed = math.isfinite(bad)
        if comm.rank == 0:
            rec = {
                "step": step,
                "tokens": step * tokens_per_step,
                "sim_time_s": max(r["clock"] for r in rows),
                "bytes_sent": sum(r["sent"] for r in rows),
                "bytes_received": sum(r["recv"] for r in rows),
                "train_loss": sum(r["loss"] for r in rows) / len(rows),
                "lr": lr,
            }
            if do_eval and not failed:
                with algo.eval_params() as m:
                    rec["eval_loss"] = task.evaluate(m)
            rec["wall_time_s"] = round(time.perf_counter() - wall0, 3)
            if log is not None:
                log.write(rec)
            if bar is not None:
                bar.update(step, rec)
        if failed:
            raise NonFiniteLoss(f"non-finite loss at step {int(bad)}")
    return {"steps": t.steps}


def _summarize(cfg: Config, cluster: SimCluster, records: list[dict], status: str, wall: float, n_params: int) -> dict:
    stats = cluster.stats
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    sim_time = max(s.clock_s for s in stats)
    compute = [s.compute_time_s for s in stats]
    last = records[-1] if records else {}
    return {
        "name": cfg.name,
        "status": status,
        "task": cfg.task.name,
        "algorithm": cfg.algorithm.name,
        "workers": cfg.cluster.workers,
        "n_params": n_params,
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": min(evals) if evals else None,
        "steps": last.get("step", 0),
        "tokens": last.get("tokens", 0),
        "bytes_sent_total": sum(s.bytes_sent for s in stats),
        "bytes_sent_per_worker": [s.bytes_sent for s in stats],
        "bytes_received_per_worker": [s.bytes_received for s in stats],
        "peak_bytes_per_sync": max(s.peak_bytes_per_sync for s in stats),
        "sim_time_s": sim_time,
        "compute_time_s_per_worker": compute,
        "blocked_time_s_per_worker": [s.blocked_time_s for s in stats],
        "compute_utilization": (sum(compute) / (len(stats) * sim_time)) if sim_time > 0 else None,
        "wall_time_s": round(wall, 3),
    }


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(
    config: str | Path | dict | Config | None = None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> RunResult:
    """Validate `config`, train on the simulated cluster and write a run directory.

    Raises ConfigError / ValueError / DataMissingError before any training on bad input; a run
    that fails during training still writes its metrics and a summary whose status says why.
    """
    cfg = load_config(config, overrides)
    task = build_task(cfg)
    cluster = build_cluster(cfg, task)
    torch.manual_seed(cfg.seed)
    n_params = sum(p.numel() for p in task.build_model().parameters())

    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    if (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; choose another --out or delete it")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    log = MetricsLog(run_dir / "metrics.jsonl")
    bar = ProgressBar(cfg.train.steps, enabled=progress, label=cfg.name)
    status, wall0 = "completed", time.perf_counter()
    try:
        with bar:
            cluster.run(lambda comm: train_worker(comm, cfg, task, log, bar if comm.rank == 0 else None))
    except NonFiniteLoss as exc:
        status = f"failed: {exc}"
    except BaseException as exc:
        status = f"failed: {type(exc).__name__}: {exc}"
        if not isinstance(exc, Exception):  # KeyboardInterrupt etc.: record, then re-raise
            write_json_atomic(run_dir / "summary.json", _summarize(cfg, cluster, log.records, status, time.perf_counter() - wall0, n_params))
            log.close()
            raise
    finally:
        log.close()
    summary = _summarize(cfg, cluster, log.records, status, time.perf_counter() - wall0, n_params)
    write_json_atomic(run_dir / "summary.json", summary)
    return RunResult(run_dir, summary, log.records)
