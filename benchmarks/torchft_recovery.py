"""Recovery on the torchft backend (issue 23): from a failure to the next committed round, and from a
replacement's start to its first commit, at Lighthouse heartbeat timeouts of 1 s and 5 s.

    pip install -e '.[ft]'                           # torchft==0.2.0, the optional engine
    python benchmarks/torchft_recovery.py [--profile cpu|quick] [--out DIR]

Each run: ``farsync launch`` of 3 replicas of DiLoCo (H = 5) on the quadratic task, ``cluster.backend:
torchft``, ``--max-restarts 1``, every inner step paced to ``pace`` seconds (``FARSYNC_STEP_SLEEP``:
a compute-like step on CPU), replica 2 killed by SIGKILL at step ``kill_step``
(``FARSYNC_FAULT``). From the replicas' logs (RUN_DIR/replicas/G/rounds-A.json: the time, step,
participants and outcome of every commit; ``killed_at``; the replacement's ``started_at``):

- failure_to_commit_s: the kill to the survivors' next committed round (without the dead replica, or
  with its replacement when that joined before the dead one's heartbeat expired);
- replacement_start_to_commit_s: the replacement process's start (before imports; /proc) to its
  first commit; failure_to_replacement_commit_s: from the kill (torchrun's restart included);
- ready_to_commit_s: the same from its Manager being ready (the spec's "Manager ready -> first
  committed round"; it includes the H - 1 steps the replacement trains on its own before its first
  synchronization, where it heals);
- healed_at: the committed step it healed to; models_equal: all three final models bitwise equal.

Skips (exit 0 with a message) when torchft is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import harness

PROFILES = {"cpu": {}, "quick": {"params": {"heartbeats": ["1s"], "steps": 400}}}
PARAMS = {"heartbeats": ["1s", "5s"], "steps": 1000, "kill_step": 51, "pace": 0.02}
SEEDS = None
CONFIG_OVERRIDES = False
RESULTS = ("torchft_recovery_cpu",)


def jobs(args) -> list[dict]:
    p = args.params
    return [{"run": f"heartbeat {hb}", "seed": None, "out": str(Path(args.out) / f"hb-{hb}"),
             "config": {"heartbeat": hb, "steps": p["steps"], "kill_step": p["kill_step"], "pace": p["pace"]}}
            for hb in p["heartbeats"]]


def run_one(job: dict) -> dict:
    try:
        import torchft  # noqa: F401
    except ImportError:
        raise SystemExit("torchft is not installed: pip install -e '.[ft]' (torchft==0.2.0)") from None
    import torch

    c, out = job["config"], Path(job["out"])
    cfg = out.parent / f"{out.name}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps({"task": {"name": "quadratic"}, "algorithm": {"name": "diloco", "sync_every": 5},
                               "cluster": {"backend": "torchft", "workers": 3, "ft": {"heartbeat_timeout": c["heartbeat"]}},
                               "train": {"steps": c["steps"], "log_every": 50, "eval_every": 0}}))
    if out.exists():
        raise SystemExit(f"{out} exists: give another --out")
    env = {**os.environ, "FARSYNC_FAULT": f"2:{c['kill_step']}", "FARSYNC_STEP_SLEEP": str(c["pace"]), "RUST_LOG": "warn"}
    subprocess.run([sys.executable, "-m", "farsync.cli", "launch", str(cfg), "--out", str(out), "--max-restarts", "1"],
                   env=env, check=True, stdout=subprocess.DEVNULL)

    def rounds(g: int, attempt: int) -> list:
        return json.loads((out / "replicas" / str(g) / f"rounds-{attempt}.json").read_text())["rows"]

    killed, at_step = (float(x) for x in (out / "replicas" / "2" / "killed_at").read_text().split())
    survivor = rounds(0, 0)
    after = next(t for t, step, _, ok in survivor if ok and step > at_step)  # the first round it did not commit
    back = json.loads((out / "replicas" / "2" / "summary.json").read_text())
    mine = rounds(2, 1)
    first_commit = next(t for t, _, _, ok in mine if ok)
    models = [torch.load(out / "replicas" / str(g) / "model.pt", weights_only=True)["x"] for g in range(3)]
    return {
        "failure_to_commit_s": round(after - killed, 3),
        "replacement_start_to_commit_s": round(first_commit - back["started_at"], 3),
        "failure_to_replacement_commit_s": round(first_commit - killed, 3),
        "ready_to_commit_s": round(first_commit - back["manager_ready_at"], 3),
        "healed_at": back["heals"][0] if back["heals"] else None,
        "committed_step": back["committed_step"],
        "models_equal": all(torch.equal(models[0], m) for m in models[1:]),
    }


def finish(rows: list[dict], args) -> None:
    harness.print_table(["run", "failure -> commit (s)", "failure -> replacement's commit (s)",
                         "replacement start -> first commit (s)", "Manager ready -> first commit (s)", "healed at step",
                         "models equal"],
                        [[r["run"], r["metrics"]["failure_to_commit_s"], r["metrics"]["failure_to_replacement_commit_s"],
                          r["metrics"]["replacement_start_to_commit_s"],
                          r["metrics"]["ready_to_commit_s"], r["metrics"]["healed_at"], r["metrics"]["models_equal"]]
                         for r in rows])


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
