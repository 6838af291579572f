"""Prodigy and DoWG on the Shakespeare GPT, one worker and as DiLoCo's inner optimizer (issue 7, benchmark 2).

    python benchmarks/parameter_free_gpt.py [--out runs/pf-gpt] [--only NAME ...] [--seeds 0] [--parallel 1]

One worker: the setting of benchmarks/averaging_quality.py (4-block GPT, 600 steps of batch 16,
cosine to 0.1 after 30 warm-up steps, grad clip 1), whose AdamW sweep picked lr 1.2e-2.
DiLoCo: the demo config (4 workers, H 20, outer SGD 0.7 / Nesterov 0.9, 3-block GPT, 600 steps)
with an inner AdamW sweep 3e-3 / 6e-3 / 1.2e-2 / 2.4e-2. Prodigy and DoWG run untuned: lr 1 under the
same schedule; Prodigy with AdamW's betas and weight decay and ``safeguard_warmup`` (its authors'
advice with an lr warm-up). Their scalar statistics are averaged over the 4 workers every inner
step (one small all-reduce, counted in the bytes). Writes results.jsonl into --out and prints the
table (target: final eval loss within 3% of tuned AdamW).
"""

import argparse
import shutil
from importlib import resources
from pathlib import Path

from _pool import run_and_record

ADAMW = "{{name: adamw, lr: {lr}, weight_decay: 0.1, betas: [0.9, 0.95]}}"
PRODIGY = "{name: prodigy, weight_decay: 0.1, betas: [0.9, 0.95], safeguard_warmup: true}"
DOWG = "{name: dowg}"
ONE = ["cluster.workers=1", "task.n_layer=4", "train.eval_every=30"]
RUNS = {  # name: (config, overrides)
    "1w-adamw-1.2e-2": ("demo_ddp.yaml", ONE + ["algorithm.inner=" + ADAMW.format(lr=1.2e-2)]),
    "1w-prodigy": ("demo_ddp.yaml", ONE + ["algorithm.inner=" + PRODIGY]),
    "1w-dowg": ("demo_ddp.yaml", ONE + ["algorithm.inner=" + DOWG]),
    "diloco-adamw-3e-3": ("demo_diloco.yaml", ["algorithm.inner=" + ADAMW.format(lr=3e-3)]),
    "diloco-adamw-6e-3": ("demo_diloco.yaml", ["algorithm.inner=" + ADAMW.format(lr=6e-3)]),
    "diloco-adamw-1.2e-2": ("demo_diloco.yaml", ["algorithm.inner=" + ADAMW.format(lr=1.2e-2)]),
    "diloco-adamw-2.4e-2": ("demo_diloco.yaml", ["algorithm.inner=" + ADAMW.format(lr=2.4e-2)]),
    "diloco-prodigy": ("demo_diloco.yaml", ["algorithm.inner=" + PRODIGY]),
    "diloco-dowg": ("demo_diloco.yaml", ["algorithm.inner=" + DOWG]),
}


def run_one(job: tuple) -> dict:
    name, seed, out, extra = job
    import farsync

    cfg, sets = RUNS[name]
    d = Path(out) / f"{name}-s{seed}"
    if d.exists():
        shutil.rmtree(d)
    r = farsync.run(str(resources.files("farsync") / "configs" / cfg), overrides=sets + [f"name={name}", f"seed={seed}"] + extra,
                    out=d, progress=False)
    return {"run": name, "seed": seed, "config": cfg, "overrides": sets + extra, "final_eval_loss": r.summary["final_eval_loss"],
            "status": r.summary["status"], "bytes_sent_per_worker": r.summary.get("bytes_sent_per_worker"),
            "evals": [(m["step"], m["eval_loss"]) for m in r.metrics if "eval_loss" in m]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/pf-gpt")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(n, s, str(out), args.set) for s in args.seeds for n in RUNS if not args.only or n in args.only]
    rows = run_and_record(run_one, todo, out / "results.jsonl", args.parallel)
    print("\n| run | seed | final eval loss | vs best AdamW of its setting |\n|---|---|---|---|")
    for x in sorted(rows, key=lambda r: (r["run"].split("-")[0], r["seed"], r["run"])):
        group = x["run"].split("-")[0]
        best = min((r["final_eval_loss"] for r in rows if r["run"].startswith(group + "-adamw") and r["seed"] == x["seed"]), default=None)
        vs = f"{100 * (x['final_eval_loss'] / best - 1):+.1f}%" if best else "-"
        print(f"| {x['run']} | {x['seed']} | {x['final_eval_loss']:.4f} | {vs} |")


if __name__ == "__main__":
    main()
