"""Heterogeneous worker speeds: async Local-SGD (delayed Nesterov + DyLU) vs synchronous DiLoCo
(issue 5, benchmark 3).

    python benchmarks/async_hetero.py [--out runs/async] [--only NAME ...] [--seeds 0 1 2] [--parallel N]
                                      [--target-loss 2.2] [--set KEY=VALUE ...]

The 4-block demo GPT of benchmarks/streaming.py, 4 workers, 600 steps' worth of tokens
(2,400 inner steps in all), the demo's AdamW, H = 24, outer SGD lr 0.7 / Nesterov 0.9 (run by the
async server as delayed Nesterov with N = 4 unless stated). An inner step takes 0.5 s x the
worker's speed factor: ``speeds [1, 1, 2, 4]`` (one worker 2x and one 4x slower) or all 1
(homogeneous reference). 1 Gbps / 10 ms links. Runs:

- diloco-homog: synchronous DiLoCo, equal speeds (the per-update reference)
- diloco: synchronous DiLoCo, speeds [1, 1, 2, 4] (every round waits for the slowest)
- async-dn-dylu: async Local-SGD, delayed Nesterov, dynamic local updates
- async-dn: the same without DyLU (every round H steps)
- async-nesterov-dylu: Nesterov on every arrival (period 1) with DyLU
- async-dn-dylu-homog: async Local-SGD with equal speeds

Writes results.jsonl (final eval loss, simulated time, time to --target-loss, server updates,
mean staleness; one row per run and seed) into --out.
"""

import argparse
import shutil
from importlib import resources
from pathlib import Path

import torch
from _pool import run_and_record

COMMON = ["task.n_layer=4", "algorithm.sync_every=24", "cluster.step_time=0.5s"]
HETERO = ["cluster.speeds=[1, 1, 2, 4]"]
ASYNC = ["algorithm.name=async-local-sgd"]
RUNS = [
    ("diloco-homog", []),
    ("diloco", HETERO),
    ("async-dn-dylu", ASYNC + HETERO),
    ("async-dn", ASYNC + HETERO + ["algorithm.dylu=false"]),
    ("async-nesterov-dylu", ASYNC + HETERO + ["algorithm.period=1"]),
    ("async-dn-dylu-homog", ASYNC),
]


def run_one(args: tuple[str, list[str], int, str, float]) -> dict:
    label, sets, seed, out, target = args
    torch.set_num_threads(2)
    import farsync
    from farsync.sweep import time_to_target

    cfg = str(resources.files("farsync") / "configs" / "demo_diloco.yaml")
    run_dir = Path(out) / f"{label}-s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    r = farsync.run(cfg, overrides=COMMON + sets + [f"name={label}", f"seed={seed}"], out=run_dir, progress=False)
    s, last = r.summary, r.metrics[-1]
    return {"run": label, "seed": seed, "overrides": COMMON + sets, "final_eval_loss": s["final_eval_loss"],
            "sim_time_s": s["sim_time_s"], "time_to_target_s": time_to_target(r.metrics, target), "target_loss": target,
            "updates": last.get("updates"), "staleness": last.get("staleness"), "tokens": s["tokens"],
            "compute_utilization": s["compute_utilization"], "bytes_sent_total": s["bytes_sent_total"], "status": s["status"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/async")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--target-loss", type=float, default=2.2)
    ap.add_argument("--set", action="append", default=[], help="extra override for every run (e.g. cluster.device=cuda)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(label, sets + args.set, seed, str(out), args.target_loss) for seed in args.seeds for label, sets in RUNS
            if not args.only or label in args.only]
    run_and_record(run_one, todo, out / "results.jsonl", args.parallel)


if __name__ == "__main__":
    main()
