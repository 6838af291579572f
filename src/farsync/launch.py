"""`farsync launch`: run a config on torch.distributed processes on this machine, via torchrun.

    farsync launch --nproc 4 CONFIG [--set k=v ...] [--out RUN_DIR] [--max-restarts K]
    farsync launch --nproc 4 --resume RUN_DIR

is ``torchrun --standalone --nproc-per-node 4 --max-restarts K -m farsync.cli worker ...`` with
``cluster.backend=torch``. With ``--max-restarts K``, when a worker process dies torchrun restarts
the whole group (up to K times) and the workers resume from the latest checkpoint in RUN_DIR.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .runner import build_task, check_model, default_run_dir, resume_config, world_size


def torchrun_command(nproc: int, max_restarts: int, worker_args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
        "-m", "farsync.cli", "worker", *worker_args,
    ]


def launch(
    config: str | None,
    overrides: list[str] | None = None,
    nproc: int | None = None,
    out: str | None = None,
    max_restarts: int = 0,
    resume: str | None = None,
    unset: list[str] | None = None,
) -> tuple[int, Path]:
    """Validate, start torchrun, wait; return (exit code, run directory). A run resumed here
    (``resume=RUN_DIR``) may have been made on the simulator: it goes on with ``cluster.backend:
    torch`` and the same workers."""
    overrides = list(overrides or [])
    if resume is None:
        overrides.append("cluster.backend=torch")
        cfg = load_config(config, overrides, unset)
    else:
        cfg = resume_config(resume, overrides, backend="torch")
    for note in cfg.notes():
        print(note, file=sys.stderr)
    check_model(cfg, build_task(cfg))
    need = world_size(cfg)
    n = nproc if nproc is not None else need
    if n != need:
        extra = " plus 1 for the server" if need > cfg.cluster.workers else ""
        raise ConfigError(f"--nproc {n} differs from the {need} processes the run needs (cluster.workers {cfg.cluster.workers}{extra})")
    if max_restarts < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {max_restarts}")
    run_dir = Path(resume) if resume is not None else Path(out) if out is not None else default_run_dir(cfg)
    if resume is None and (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; choose another --out, delete it, or --resume it")
    args = ["--out", str(run_dir)] + (["--resume"] if resume is not None else [str(config)])
    for o in overrides:
        args += ["--set", o]
    for key in unset or []:
        args += ["--unset", key]
    proc = subprocess.run(torchrun_command(n, max_restarts, args))
    return proc.returncode, run_dir


def read_summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None
