"""Re-timing a finished simulated run under other network and time-model settings, without training.

For algorithms whose trajectory does not depend on timing (every SPMD algorithm: collectives and
messages to fixed peers), what a worker sends, when it computes and where it waits are the same
under any network. A simulated run therefore records each worker's communication log
(``comm_log.json.gz``: compute marks, calls with their payload size and description, waits,
logging points; `CommRecorder`), and ``farsync retime RUN --set cluster.bandwidth=100Mbps --out
NEW`` replays that log on a `SimCluster` built from the new settings (the same clock engine,
dummy payloads of the same sizes): NEW gets RUN's metrics with the new simulated times, a summary
with the new times, utilization and time model, ``transfers.csv``, and RUN's model. The replay
checks that every worker sends the bytes it sent in RUN.

Only timing keys may change (`TIMING_KEYS`). Refused, with the reason: parameter-server
algorithms (the arrival order of ``recv_any`` depends on timing), runs on torch.distributed, runs
resumed from a checkpoint (their log holds only the resumed part) and runs that did not complete.
"""

from __future__ import annotations

import gzip
import json
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml

from .comm import CommunicatorWrapper, SimCluster, Work

TIMING_KEYS = ("cluster.bandwidth", "cluster.latency", "cluster.link_bandwidth", "cluster.time_model",
               "cluster.step_time", "cluster.throughput", "cluster.bytes_scale", "cluster.speeds", "cluster.stragglers")
LOG_NAME = "comm_log.json.gz"


def is_timing_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in TIMING_KEYS)


class _RecordedWork(Work):
    def __init__(self, inner: Work, log: list, ident: int):
        self.inner, self.log, self.ident = inner, log, ident

    def wait(self) -> None:
        self.log.append(["w", self.ident])
        self.inner.wait()

    def is_completed(self) -> bool:
        return self.inner.is_completed()


class CommRecorder(CommunicatorWrapper):
    """Forwards every call and appends it to `log` (one worker's communication log)."""

    def __init__(self, inner, log: list):
        super().__init__(inner)
        self.log = log
        self._spans = None
        self._works = 0
        self._seen: dict[str, list] = {}  # repeated events are one shared list (8 bytes per repeat in memory)

    def _add(self, event: list) -> None:
        key = repr(event)
        self.log.append(self._seen.setdefault(key, event) if len(self._seen) < 4096 else event)

    def _call(self, event: list, work: Work | None) -> Work | None:
        if work is None:
            self._add(event + [None])
            return None
        self._works += 1
        self.log.append(event + [self._works])
        return _RecordedWork(work, self.log, self._works)

    @contextmanager
    def payload(self, spans):
        self._spans = [list(s) for s in spans]
        try:
            with self.inner.payload(spans):
                yield
        finally:
            self._spans = None

    def all_reduce(self, tensor, op="sum", async_op=False):
        return self._call(["ar", _nbytes(tensor), self._spans], self.inner.all_reduce(tensor, op, async_op))

    def all_gather(self, tensor_list, tensor, async_op=False):
        return self._call(["ag", _nbytes(tensor), self._spans], self.inner.all_gather(tensor_list, tensor, async_op))

    def all_to_all(self, output_list, input_list, async_op=False):
        return self._call(["aa", _nbytes(input_list[0]), self._spans],
                          self.inner.all_to_all(output_list, input_list, async_op))

    def broadcast(self, tensor, src, async_op=False):
        return self._call(["bc", _nbytes(tensor), self._spans, src], self.inner.broadcast(tensor, src, async_op))

    def send(self, tensor, dst):
        self._add(["s", _nbytes(tensor), dst])
        return self.inner.send(tensor, dst)

    def recv(self, tensor, src):
        self._add(["r", _nbytes(tensor), src])
        return self.inner.recv(tensor, src)

    def recv_any(self, tensor):
        raise RuntimeError("recv_any depends on timing: a run that uses it cannot be re-timed")

    def isend(self, tensor, dst):
        return self._call(["is", _nbytes(tensor), dst], self.inner.isend(tensor, dst))

    def irecv(self, tensor, src):
        return self._call(["ir", _nbytes(tensor), src], self.inner.irecv(tensor, src))

    def barrier(self):
        self._add(["b"])
        return self.inner.barrier()

    def compute(self, steps=1.0):
        self._add(["c", steps])
        return self.inner.compute(steps)

    def all_gather_object(self, obj):
        self._add(["o", "all_gather_object", None])
        return self.inner.all_gather_object(obj)

    def gather_object(self, obj, dst=0):
        self._add(["o", "gather_object", dst])
        return self.inner.gather_object(obj, dst)

    def scatter_object(self, objs, src=0):
        self._add(["o", "scatter_object", src])
        return self.inner.scatter_object(objs, src)

    def broadcast_state(self, tensors, src=0):
        self._add(["o", "all_gather_object", None])  # the base implementation: one object all-gather
        return self.inner.broadcast_state(tensors, src)

    def gather_metrics(self, values):
        self._add(["m"])
        return self.inner.gather_metrics(values)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def replay(logs: list[list], cluster: SimCluster) -> tuple[list[list[dict]], list[dict]]:
    """Play every worker's log on `cluster`; return each worker's counters at each logging point
    and at the end (the cluster keeps the transfers)."""
    if len(logs) != cluster.world_size:
        raise ValueError(f"the log has {len(logs)} workers but the cluster {cluster.world_size}")
    marks: list[list[dict]] = [[] for _ in logs]

    def fn(comm):
        buffers: dict[int, torch.Tensor] = {}

        def buf(n: int) -> torch.Tensor:
            if n not in buffers:
                buffers[n] = torch.zeros(n, dtype=torch.uint8)
            return buffers[n]

        works: dict[int, Work] = {}
        for ev in logs[comm.rank]:
            kind = ev[0]
            if kind == "c":
                comm.compute(ev[1])
            elif kind == "m":
                comm.gather_metrics({})
                marks[comm.rank].append(comm.stats.as_dict())
            elif kind == "o":
                if ev[1] == "all_gather_object":
                    comm.all_gather_object(None)
                elif ev[1] == "gather_object":
                    comm.gather_object(None, ev[2])
                else:
                    comm.scatter_object([None] * comm.world_size, ev[2])
            elif kind == "w":
                works.pop(ev[1]).wait()
            elif kind == "b":
                comm.barrier()
            elif kind in ("s", "r"):
                (comm.send if kind == "s" else comm.recv)(buf(ev[1]), ev[2])
            else:
                ident = ev[-1]
                spans = ev[2] if kind in ("ar", "ag", "aa", "bc") else None
                with comm.payload([tuple(s) for s in spans]) if spans is not None else nullcontext():
                    work = _issue(comm, kind, ev, buf, ident is not None)
                if ident is not None:
                    works[ident] = work
        return comm.stats.as_dict()

    final = cluster.run(fn)
    return marks, final


def _issue(comm, kind: str, ev: list, buf, async_op: bool):
    n = ev[1]
    if kind == "ar":
        return comm.all_reduce(buf(n), "sum", async_op)
    if kind == "ag":
        return comm.all_gather([torch.zeros(n, dtype=torch.uint8) for _ in range(comm.world_size)], buf(n), async_op)
    if kind == "aa":
        return comm.all_to_all([torch.zeros(n, dtype=torch.uint8) for _ in range(comm.world_size)],
                               [torch.zeros(n, dtype=torch.uint8) for _ in range(comm.world_size)], async_op)
    if kind == "bc":
        return comm.broadcast(buf(n), ev[3], async_op)
    if kind == "is":
        return comm.isend(buf(n), ev[2])
    if kind == "ir":
        return comm.irecv(torch.zeros(n, dtype=torch.uint8), ev[2])
    raise ValueError(f"unknown event {kind!r} in the communication log")


def write_log(run_dir: Path, logs: list[list], meta: dict[str, Any]) -> None:
    """Write the communication log (gzip'd JSON) atomically."""
    import os

    from .checkpoint import write_error

    path = Path(run_dir) / LOG_NAME
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_bytes(gzip.compress(json.dumps({**meta, "workers": logs}).encode(), mtime=0))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(err, path) from None


def read_log(run_dir: Path) -> dict[str, Any]:
    return json.loads(gzip.decompress((Path(run_dir) / LOG_NAME).read_bytes()))


def check_retimeable(run_dir: Path, overrides: list[str]) -> None:
    """Raise ValueError (naming the reason) if `run_dir` cannot be re-timed with `overrides`."""
    from .algorithms import get_algorithm

    run_dir = Path(run_dir)
    bad = [o.partition("=")[0].strip() for o in overrides if not is_timing_key(o.partition("=")[0].strip())]
    if bad:
        raise ValueError(f"retime changes timing only; {', '.join(bad)} would change the trajectory "
                         f"(timing keys: {', '.join(TIMING_KEYS)}); train it with farsync run")
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        raise ValueError(f"{run_dir} is not a finished run (no summary.json)")
    summary = json.loads(summary_file.read_text())
    if summary.get("backend", "sim") != "sim":
        raise ValueError(f"{run_dir} ran on torch.distributed: only simulated runs have a communication log to re-time")
    why = get_algorithm(summary["algorithm"]).timing_dependent
    if why:
        raise ValueError(f"{summary['algorithm']} cannot be re-timed: {why}; train each setting with farsync run")
    cfg_file = run_dir / "config.yaml"
    if cfg_file.is_file() and (yaml.safe_load(cfg_file.read_text()) or {}).get("cluster", {}).get("churn"):
        raise ValueError(f"{run_dir} ran with cluster.churn, whose away workers the communication log does not "
                         "record: not supported by retime; train each setting with farsync run")
    if summary.get("status") != "completed":
        raise ValueError(f"{run_dir} did not complete (status: {summary.get('status')}); only completed runs can be re-timed")
    if not (run_dir / LOG_NAME).is_file():
        raise ValueError(f"{run_dir} has no {LOG_NAME}: runs resumed from a checkpoint, and runs made before "
                         "farsync recorded communication logs, cannot be re-timed")


def retime(run_dir: str | Path, overrides: list[str], out: str | Path) -> dict[str, Any]:
    """Re-time `run_dir` under `overrides` (timing keys only) into `out`; return the new summary."""
    from .config import load_config
    from .rundir import check_new_run_dir, read_metrics, write_json_atomic, write_text_atomic
    from .report import bytes_in_flight
    from .runner import build_cluster, build_task, summarize, write_transfers

    run_dir, out = Path(run_dir), Path(out)
    check_retimeable(run_dir, overrides)
    cfg = load_config(str(run_dir / "config.yaml"), overrides)
    log = read_log(run_dir)
    task = build_task(cfg)
    cluster = build_cluster(cfg, task)
    cluster.parallel = 1  # a replay moves no real payloads: one process is fastest
    marks, final = replay(log["workers"], cluster)
    old = json.loads((run_dir / "summary.json").read_text())
    sent = [f["bytes_sent"] for f in final]
    if sent != old["bytes_sent_per_worker"]:
        raise RuntimeError(f"the replay sent {sent} bytes per worker, the run {old['bytes_sent_per_worker']}: "
                           "the communication log does not match the run")
    metrics = read_metrics(run_dir / "metrics.jsonl")
    if any(len(m) != len(metrics) for m in marks):
        raise RuntimeError(f"the log has {[len(m) for m in marks]} logging points, metrics.jsonl {len(metrics)} rows")
    rows = [{**row, "sim_time_s": max(m[i]["clock_s"] for m in marks)} for i, row in enumerate(metrics)]
    check_new_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_transfers(out / "transfers.csv", cluster.transfers)
    for name in ("model.pt", LOG_NAME):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / name)
    timing = summarize(cfg, [{**f, "role": "worker"} for f in final], rows, "completed", 0.0, old["n_params"])
    summary = {
        **old,
        **{k: timing[k] for k in ("sim_time_s", "compute_time_s_per_worker", "blocked_time_s_per_worker",
                                  "compute_utilization")},
        "peak_bytes_in_flight": max(bytes_in_flight(cluster.transfers)[1], default=0),
        "time_model": cluster.time_model.description,
        "retimed_from": str(run_dir),
        "retimed_with": list(overrides),
        "wall_time_s": old.get("wall_time_s"),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


__all__ = ["CommRecorder", "LOG_NAME", "TIMING_KEYS", "check_retimeable", "is_timing_key", "replay", "retime"]
