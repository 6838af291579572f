"""`farsync launch`: run a config on torch.distributed processes on this machine, via torchrun.

    farsync launch --nproc 4 CONFIG [--set k=v ...] [--out RUN_DIR] [--max-restarts K]
    farsync launch --nproc 4 --resume RUN_DIR
    farsync launch --groups 2 --nproc-per-group 2 CONFIG     (replica groups: 2 workers of 2 processes, DDP inside)

is ``torchrun --standalone --nproc-per-node 4 --max-restarts K -m farsync.cli worker ...`` with
``cluster.backend=torch``. With ``--max-restarts K``, when a worker process dies torchrun restarts
the whole group (up to K times) and the workers resume from the latest checkpoint in RUN_DIR.

The launcher owns its processes: it locks RUN_DIR for them (`rundir.py`), starts torchrun in its
own session with ``PR_SET_PDEATHSIG`` (torchrun gets SIGTERM if the launcher dies, even by
SIGKILL, and stops its workers; each worker also exits when its parent is gone), forwards SIGTERM,
SIGINT and SIGHUP to torchrun (which passes them to the workers: a graceful stop, `stopping.py`),
records every process in RUN_DIR/processes.json, and writes summary.json itself when the workers
died without one (e.g. rank 0 was killed mid-training).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .checkpoint import load_latest
from .config import ConfigError, config_tree, load_config
from .rundir import LOCK_ENV, RunDirLock, check_new_run_dir, read_metrics, write_json_atomic, write_text_atomic
from .runner import build_task, check_logging, check_model, check_resume, default_run_dir, initial_model, resume_config, summarize, this_process, world_size, write_processes
from .stopping import SIGNALS, stop_status


def torchrun_command(nproc: int, max_restarts: int, worker_args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
        "-m", "farsync.cli", "worker", *worker_args,
    ]


def group_commands(groups: int, nproc_per_group: int, max_restarts: int, worker_args: list[str],
                   master_addr: str = "127.0.0.1", master_port: int | None = None) -> list[list[str]]:
    """One torchrun per replica group, as on R nodes (node g = group g): static rendezvous at
    `master_addr`:`master_port` (a free loopback port by default); global rank g * k + j."""
    port = master_port if master_port is not None else free_port()
    return [[
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={groups}", f"--node-rank={g}",
        f"--nproc-per-node={nproc_per_group}", "--rdzv-backend=static", f"--master-addr={master_addr}",
        f"--master-port={port}", f"--max-restarts={max_restarts}",
        "-m", "farsync.cli", "worker", *worker_args,
    ] for g in range(groups)]


def free_port() -> int:
    """A free TCP port on loopback (the rendezvous of a run on this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    config: str | None,
    overrides: list[str] | None = None,
    nproc: int | None = None,
    out: str | None = None,
    max_restarts: int = 0,
    resume: str | None = None,
    unset: list[str] | None = None,
    groups: int | None = None,
    nproc_per_group: int | None = None,
) -> tuple[int, Path]:
    """Validate, start torchrun, wait; return (exit code, run directory). A run resumed here
    (``resume=RUN_DIR``) may have been made on the simulator: it goes on with ``cluster.backend:
    torch`` and the same workers. `groups` R and `nproc_per_group` k: replica groups
    (``cluster.workers = R``, ``cluster.group_size = k``; `comm.groups`), one torchrun per group."""
    overrides = list(overrides or [])
    if resume is None and config is not None and (config_tree(config, overrides, unset).get("cluster") or {}).get("backend") == "torchft":
        return launch_ft(config, overrides, out, max_restarts, unset, groups, nproc_per_group, nproc)
    if (groups is None) != (nproc_per_group is None):
        raise ConfigError("--groups and --nproc-per-group go together (R groups of k processes)")
    if groups is not None:
        if nproc is not None:
            raise ConfigError("give either --nproc or --groups R --nproc-per-group k")
        for name, v in (("--groups", groups), ("--nproc-per-group", nproc_per_group)):
            if v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")
        if resume is None:
            overrides += [f"cluster.workers={groups}", f"cluster.group_size={nproc_per_group}"]
    if resume is None:
        overrides.append("cluster.backend=torch")
        cfg = load_config(config, overrides, unset)
    else:
        cfg = resume_config(resume, overrides, backend="torch")
        path, ckpt, _ = load_latest(resume)  # refuse a bad resume here, before any process starts
        check_resume(ckpt, cfg, path)
    for note in cfg.notes():
        print(note, file=sys.stderr)
    check_logging(cfg)
    check_model(cfg, initial_model(cfg, build_task(cfg)))
    need = world_size(cfg)
    if groups is not None and (cfg.cluster.workers, cfg.cluster.group_size) != (groups, nproc_per_group):
        raise ConfigError(f"--groups {groups} --nproc-per-group {nproc_per_group} differ from the run's cluster.workers "
                          f"{cfg.cluster.workers} and cluster.group_size {cfg.cluster.group_size}")
    if groups is None and cfg.cluster.group_size > 1:
        if nproc is not None:
            raise ConfigError(f"cluster.group_size is {cfg.cluster.group_size}: launch with --groups {cfg.cluster.workers} "
                              f"--nproc-per-group {cfg.cluster.group_size} instead of --nproc")
        groups, nproc_per_group = cfg.cluster.workers, cfg.cluster.group_size
    n = nproc if nproc is not None else need
    if groups is None and n != need:
        extra = " plus 1 for the server" if need > cfg.cluster.workers else ""
        raise ConfigError(f"--nproc {n} differs from the {need} processes the run needs (cluster.workers {cfg.cluster.workers}{extra})")
    if max_restarts < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {max_restarts}")
    run_dir = Path(resume) if resume is not None else Path(out) if out is not None else default_run_dir(cfg)
    if resume is None:
        check_new_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run directory")
    lock = RunDirLock(run_dir).acquire()
    try:
        args = ["--out", str(run_dir)] + (["--resume"] if resume is not None else [str(config)])
        for o in overrides:
            args += ["--set", o]
        for key in unset or []:
            args += ["--unset", key]
        cmds = ([torchrun_command(n, max_restarts, args)] if groups is None
                else group_commands(groups, nproc_per_group, max_restarts, args))
        return run_torchrun(cmds, run_dir, cfg), run_dir
    finally:
        lock.release()


def launch_ft(config: str, overrides: list[str], out: str | None, max_restarts: int, unset: list[str] | None,
              groups: int | None, nproc_per_group: int | None, nproc: int | None) -> tuple[int, Path]:
    """``cluster.backend: torchft``: the Lighthouse in this process, one torchrun per replica
    (``--max-restarts K``: a replica that dies is replaced, and the replacement heals from a live
    one), every replica to the end; then RUN_DIR/summary.json from the replicas' own summaries.
    A replica that fails for good does not stop the others (`ft_worker.py`)."""
    if nproc is not None or (nproc_per_group not in (None, 1)):
        raise ConfigError("cluster.backend: torchft runs one process per replica: launch with --groups R "
                          "(or cluster.workers), without --nproc / --nproc-per-group > 1")
    if groups is not None:
        if groups < 1:
            raise ConfigError(f"--groups must be >= 1, got {groups}")
        overrides = [*overrides, f"cluster.workers={groups}"]
    if max_restarts < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {max_restarts}")
    cfg = load_config(config, overrides, unset)
    os.environ.setdefault("RUST_LOG", "warn")  # torchft's Rust side logs every quorum and commit at info (read at import)
    try:
        from torchft.coordination import LighthouseServer
    except ImportError:
        raise ConfigError("cluster.backend: torchft needs torchft: pip install 'farsync[ft]' (torchft==0.2.0)") from None
    from .ft_worker import check_ft_model, read_replica_summaries

    for note in cfg.notes():
        print(note, file=sys.stderr)
    check_logging(cfg)
    model = initial_model(cfg, build_task(cfg))
    check_model(cfg, model)
    check_ft_model(model)
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunDirLock(run_dir).acquire()
    ft, replicas = cfg.cluster.ft, cfg.cluster.workers
    lighthouse = LighthouseServer(bind=f"{ft.host}:0", min_replicas=ft.min_replicas, quorum_tick_ms=100,
                                  join_timeout_ms=int(ft.seconds("join_timeout") * 1000),
                                  heartbeat_timeout_ms=int(ft.seconds("heartbeat_timeout") * 1000))
    try:
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        args = ["--out", str(run_dir), str(config)]
        for o in overrides:
            args += ["--set", o]
        for key in unset or []:
            args += ["--unset", key]
        cmd = torchrun_command(1, max_restarts, args)
        envs = [{"REPLICA_GROUP_ID": str(g), "NUM_REPLICA_GROUPS": str(replicas),
                 "TORCHFT_LIGHTHOUSE": f"http://{ft.host}:{lighthouse.address().rsplit(':', 1)[1]}"}  # it advertises the host name
                for g in range(replicas)]
        t0 = time.perf_counter()
        code = run_torchrun([cmd] * replicas, run_dir, cfg, envs=envs, stop_others=False, summary=False)
        write_ft_summary(run_dir, cfg, read_replica_summaries(run_dir, replicas), time.perf_counter() - t0)
        return code, run_dir
    finally:
        lighthouse.shutdown()
        lock.release()


def write_ft_summary(run_dir: Path, cfg, replicas: list[dict | None], wall: float) -> None:
    """The run's summary.json on torchft: each replica's last summary (the last attempt's) and the
    run's status: completed when every replica trained to the end."""
    done = [r for r in replicas if r is not None and r["status"] == "completed"]
    if len(done) == len(replicas):
        status = "completed"
    else:
        bad = {g: (r["status"] if r is not None else "no summary (killed)") for g, r in enumerate(replicas)
               if r is None or r["status"] != "completed"}
        status = f"failed: {len(done)} of {len(replicas)} replicas completed; " + "; ".join(f"replica {g}: {v}" for g, v in bad.items())
    final = min((r["final_eval_loss"] for r in done if r.get("final_eval_loss") is not None), default=None)
    write_json_atomic(run_dir / "summary.json", {
        "status": status, "backend": "torchft", "algorithm": cfg.algorithm.name, "workers": cfg.cluster.workers,
        "final_eval_loss": final, "bytes_sent_total": sum(r["bytes_sent"] for r in replicas if r is not None),
        "wall_time_s": round(wall, 3), "replicas": replicas,
        "note": "per replica: RUN_DIR/replicas/G/{metrics.jsonl, summary.json, model.pt}",
    })


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def run_torchrun(cmds: list[list[str]], run_dir: Path, cfg, envs: list[dict[str, str]] | None = None,
                 stop_others: bool = True, summary: bool = True) -> int:
    """Start each torchrun (one, or one per replica group; `envs`: each one's extra environment) in
    its own session, forward signals to them, wait; when one fails, stop the others (SIGTERM: a
    graceful stop) unless not `stop_others` (torchft). Return the exit code (the first failure's;
    128 + the signal when the launcher was signalled). `summary`: write one if the workers did not."""
    summary_path = run_dir / "summary.json"
    before = summary_path.stat().st_mtime_ns if summary_path.is_file() else None
    env = {**os.environ, LOCK_ENV: str(run_dir.resolve())}
    got: list[int] = []
    procs = [subprocess.Popen(cmd, env={**env, **(envs[i] if envs else {})}, start_new_session=True,
                              preexec_fn=_die_with_parent) for i, cmd in enumerate(cmds)]

    def send(signum):
        for proc in procs:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass

    def forward(signum, frame):
        got.append(signum)
        send(signum)

    previous = {s: signal.signal(s, forward) for s in SIGNALS}
    try:
        rows = [{**this_process("torchrun", "-"), "pid": p.pid, **({"group": g} if len(procs) > 1 else {})}
                for g, p in enumerate(procs)]
        write_processes(run_dir, [this_process("launcher", "-"), *rows])
        code = wait_all(procs, send if stop_others else None)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if not summary:
        return 128 + got[0] if got else code
    if (summary_path.stat().st_mtime_ns if summary_path.is_file() else None) == before and (run_dir / "metrics.jsonl").is_file():
        write_missing_summary(run_dir, cfg, code, got)
    return 128 + got[0] if got else code


def wait_all(procs: list[subprocess.Popen], send) -> int:
    """Wait for every process; after the first non-zero exit, SIGTERM the others once (a group
    whose peer is gone would otherwise wait for its collectives' timeout; `send` None: never)."""
    first = None
    while any(p.poll() is None for p in procs):
        if first is None and send is not None:
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed:
                first = failed[0]
                send(signal.SIGTERM)
        time.sleep(0.05)
    if first is None:
        first = next((p.returncode for p in procs if p.returncode), 0)
    return first


def write_missing_summary(run_dir: Path, cfg, code: int, signals: list[int]) -> None:
    """The workers exited without a summary (rank 0 died): write one from metrics.jsonl."""
    records = read_metrics(run_dir / "metrics.jsonl")
    last = records[-1]["step"] if records else 0
    if signals:
        status = stop_status(signals[0], f"{last} or later (the workers did not finish their summary)")
    else:
        status = (f"failed: the worker processes exited with code {code} before writing a summary "
                  f"(rank 0 died during training; last logged step {last}); resume with farsync launch --resume {run_dir}")
    s = summarize(cfg, [], records, status, 0.0, 0)
    s["restarts"] = None
    write_json_atomic(run_dir / "summary.json", s)


def read_summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None
