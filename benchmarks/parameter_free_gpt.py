"""Prodigy and DoWG on the Shakespeare GPT, one worker and as DiLoCo's inner optimizer (issue 7, benchmark 2).

    python benchmarks/harness.py parameter_free_gpt [--profile cpu|gpu|quick] [--out DIR] [--only RUN ...] [--seeds 0 1 2]
                                                    [--parallel N] [--set KEY=VALUE ...]

One worker: the setting of benchmarks/averaging_quality.py (4-block GPT, 600 steps of batch 16,
cosine to 0.1 after 30 warm-up steps, grad clip 1), whose AdamW sweep picked lr 1.2e-2.
DiLoCo: the demo config (4 workers, H 20, outer SGD 0.7 / Nesterov 0.9, 3-block GPT, 600 steps)
with an inner AdamW sweep 3e-3 / 6e-3 / 1.2e-2 / 2.4e-2. Prodigy and DoWG run untuned: lr 1 under the
same schedule; Prodigy with AdamW's betas and weight decay and ``safeguard_warmup`` (its authors'
advice with an lr warm-up). Their scalar statistics are averaged over the 4 workers every inner
step (one small all-reduce, counted in the bytes). Metrics per run and seed: final eval loss,
bytes sent per worker, every evaluation (step, eval loss); the table (after the runs, or --report)
gives each run against the best AdamW of its setting (target: final eval loss within 3% of tuned
AdamW). The stored rows ran with ``OMP_NUM_THREADS=1``.
"""

import harness

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

PROFILES = {"cpu": {}, "gpu": {"set": harness.GPU}, "quick": {"set": harness.GPT_QUICK, "only": ["1w-adamw-1.2e-2", "1w-prodigy", "diloco-adamw-6e-3", "diloco-dowg"]}}
PARAMS: dict = {}
SEEDS = [0]
CONFIG_OVERRIDES = True
RESULTS = ("parameter_free_gpt_cpu",)


def jobs(args) -> list[dict]:
    return [harness.config_job(args, name, cfg, sets, seed) for seed in args.seeds for name, (cfg, sets) in RUNS.items()]


def run_one(job: dict) -> dict:
    r = harness.run_config(job)
    return {"final_eval_loss": r.summary["final_eval_loss"], "status": r.summary["status"],
            "bytes_sent_per_worker": r.summary.get("bytes_sent_per_worker"), "evals": harness.evals(r.metrics)}


def finish(rows: list[dict], args) -> None:
    """Each run's final eval loss against the best AdamW run of its setting (1w or diloco) and seed."""
    rows = harness.metric_rows(rows)
    print("\n| run | seed | final eval loss | vs best AdamW of its setting |\n|---|---|---|---|")
    for x in sorted(rows, key=lambda r: (r["run"].split("-")[0], r["seed"], r["run"])):
        group = x["run"].split("-")[0]
        best = min((r["final_eval_loss"] for r in rows if r["run"].startswith(group + "-adamw") and r["seed"] == x["seed"]),
                   default=None)
        vs = f"{100 * (x['final_eval_loss'] / best - 1):+.1f}%" if best else "-"
        print(f"| {x['run']} | {x['seed']} | {x['final_eval_loss']:.4f} | {vs} |")


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
