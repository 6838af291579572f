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

from .checkpoint import load_latest
from .config import ConfigError, load_config
from .rundir import LOCK_ENV, RunDirLock, check_new_run_dir, read_metrics, write_json_atomic
from .runner import build_task, check_model, check_resume, default_run_dir, initial_model, resume_config, summarize, this_process, world_size, write_processes
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


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def run_torchrun(cmds: list[list[str]], run_dir: Path, cfg) -> int:
    """Start each torchrun (one, or one per replica group) in its own session, forward signals to
    them, wait; when one fails, stop the others (SIGTERM: a graceful stop). Return the exit code
    (the first failure's; 128 + the signal when the launcher was signalled)."""
    summary = run_dir / "summary.json"
    before = summary.stat().st_mtime_ns if summary.is_file() else None
    env = {**os.environ, LOCK_ENV: str(run_dir.resolve())}
    got: list[int] = []
    procs = [subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent) for cmd in cmds]

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
        code = wait_all(procs, send)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if (summary.stat().st_mtime_ns if summary.is_file() else None) == before and (run_dir / "metrics.jsonl").is_file():
        write_missing_summary(run_dir, cfg, code, got)
    return 128 + got[0] if got else code


def wait_all(procs: list[subprocess.Popen], send) -> int:
    """Wait for every process; after the first non-zero exit, SIGTERM the others once (a group
    whose peer is gone would otherwise wait for its collectives' timeout)."""
    first = None
    while any(p.poll() is None for p in procs):
        if first is None:
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
