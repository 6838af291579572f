"""Eager updates (Kale et al., arXiv 2502.12996) vs DiLoCo, naive delayed DiLoCo and DDP, 2 workers (issue 20).

    python benchmarks/eager_overlap.py --seeds 0 --out runs/eager_overlap              # stage 1: every outer lr, seed 0
    python benchmarks/eager_overlap.py --seeds 1 2 --out runs/eager_overlap --only ddp "diloco-lr0.7" ...   # stage 2
    python benchmarks/eager_overlap.py --report benchmarks/results/eager_overlap_cpu.jsonl

The paper's small-scale comparison as far as this CPU allows: the demo's Shakespeare GPT (3 blocks,
n_embd 96), 2 simulated workers (the paper's replica count), H = 30, equal tokens (every run 360
steps of batch 16 per worker, the demo's AdamW with cosine decay), evaluated every 30 steps. Rows:
DDP; DiLoCo; naive delayed DiLoCo; naive delayed with a lowered outer lr ({0.1, 0.2}); eager
DiLoCo (whole model, the paper's committed rule), and with a lowered outer lr ({0.1, 0.2}: a
diagnostic); Streaming DiLoCo with eager overlap (F = 3
strided fragments, each fragment's all-reduce overlapping a whole round of that fragment), fp32
and 4-bit (fp4) exchange. Every DiLoCo-family row but the lowered one has its outer lr (SGD,
Nesterov 0.9) in {0.4, 0.7, 1.0}; `finish` picks each row's lr on seed 0 and averages the picked
lr's seeds. Metrics: final eval loss, every evaluation, bytes, simulated time, compute
utilization, peak bytes in flight. One intra-op thread per run (use --parallel 2 on 2 cores).
"""

from __future__ import annotations

import statistics


import harness

COMMON = ["cluster.workers=2", "train.steps=360", "train.eval_every=30"]
H = ["algorithm.sync_every=30"]
LRS = (0.4, 0.7, 1.0)
LOW_LRS = (0.1, 0.2)
STREAM = ["algorithm.sync_every=30", "algorithm.name=streaming-diloco", "algorithm.fragments=3", "algorithm.overlap=eager"]
ROWS = {  # row: (base config, overrides, outer lrs)
    "ddp": ("demo_ddp.yaml", [], None),
    "diloco": ("demo_diloco.yaml", H, LRS),
    "delayed": ("demo_diloco.yaml", H + ["algorithm.name=delayed-diloco"], LRS),
    "delayed-low": ("demo_diloco.yaml", H + ["algorithm.name=delayed-diloco"], LOW_LRS),
    "eager": ("demo_diloco.yaml", H + ["algorithm.name=eager-diloco"], LRS),
    "eager-low": ("demo_diloco.yaml", H + ["algorithm.name=eager-diloco"], LOW_LRS),  # diagnostic: is eager's best lr lower?
    "streaming-eager": ("demo_diloco.yaml", STREAM, LRS),
    "streaming-eager-fp4": ("demo_diloco.yaml", STREAM + ["algorithm.compress={name: fp4}"], LRS),
}

PROFILES = {"cpu": {"parallel": 2}, "gpu": {"set": harness.GPU}, "quick": {"set": harness.GPT_QUICK}}
PARAMS: dict = {}
SEEDS = [0, 1, 2]
CONFIG_OVERRIDES = True
RESULTS = ("eager_overlap_cpu",)
SUMMARY = ("final_eval_loss", "bytes_sent_total", "peak_bytes_in_flight", "sim_time_s", "compute_utilization", "status")


def label(row: str, lr: float | None) -> str:
    return row if lr is None else f"{row}-lr{lr}"


def jobs(args) -> list[dict]:
    out = []
    for seed in args.seeds:
        for row, (base, sets, lrs) in ROWS.items():
            for lr in lrs or (None,):
                extra = [] if lr is None else [f"algorithm.outer.lr={lr}"]
                out.append(harness.config_job(args, label(row, lr), base, COMMON + sets + extra, seed, row=row))
    return out


def run_one(job: dict) -> dict:
    return harness.summary_and_evals(job, SUMMARY)


def finish(rows: list[dict], args) -> None:
    """Per row: the outer lr picked on seed 0, the mean (and spread) of that lr's seeds, vs DiLoCo."""
    rows = harness.metric_rows(rows)
    picked = {}
    for row, (_, _, lrs) in ROWS.items():
        seed0 = [x for x in rows if x["seed"] == 0 and x["run"] in {label(row, lr) for lr in lrs or (None,)}
                 and x["final_eval_loss"] is not None and x["final_eval_loss"] == x["final_eval_loss"]]
        if seed0:
            picked[row] = min(seed0, key=lambda x: x["final_eval_loss"])["run"]
    means = {}
    print("\n| row | outer lr (picked on seed 0) | seeds | final eval loss (mean +- sd) | vs DiLoCo | bytes sent | "
          "peak bytes in flight | compute util. |")
    print("|---|---|---|---|---|---|---|---|")
    for row, run in picked.items():
        xs = [x for x in rows if x["run"] == run]
        losses = [x["final_eval_loss"] for x in xs]
        means[row] = statistics.mean(losses)
        sd = statistics.stdev(losses) if len(losses) > 1 else 0.0
        rel = f"{100 * (means[row] / means['diloco'] - 1):+.1f}%" if "diloco" in means else "-"
        lr = run.rsplit("-lr", 1)[1] if "-lr" in run else "-"
        print(f"| {row} | {lr} | {sorted(x['seed'] for x in xs)} | {means[row]:.4f} +- {sd:.4f} | {rel} | "
              f"{xs[0]['bytes_sent_total'] / 1e6:.1f} MB | {xs[0]['peak_bytes_in_flight']:,} | {xs[0]['compute_utilization']:.3f} |")
    print("\nseed 0, every outer lr:")
    for x in sorted((x for x in rows if x["seed"] == 0), key=lambda x: x["run"]):
        print(f"  {x['run']}: {x['final_eval_loss']} ({x['status']})")


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
