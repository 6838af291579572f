"""Compression on the demo setting: final eval loss vs total bytes (a Pareto plot; issue 4).

    python benchmarks/harness.py compression_pareto [--profile cpu|gpu|quick] [--out DIR] [--only RUN ...] [--report [FILE]]

Shakespeare GPT (the demo configs), 4 simulated workers, 600 steps, equal tokens, each run with
`algorithm.compress` (or DeMo) as its label says. Metrics: final eval loss, bytes sent, peak bytes
per sync. After the runs (and with --report): the markdown table of docs/benchmarks.md and
OUT/pareto.png.

Profiles ``claims-cpu`` / ``claims-gpu`` run the claim ``demo-bytes`` (CLAIMS below; ``farsync claims --only
demo-bytes``): DDP (AdamW) and DeMo at lr 1e-3, 2e-3 and 4e-3, 2 workers, on a narrower model, each with the
seeds of the `claim_seeds` parameter (the study's own runs have no seed: the demo configs' seed 0).
"""

from pathlib import Path

import harness
from farsync import claims as C

RUNS = [
    ("ddp", "ddp", []),
    ("ddp-bf16", "ddp", ["algorithm.compress={name: bf16}"]),
    ("ddp-int8", "ddp", ["algorithm.compress={name: int8, block: 64}"]),
    ("ddp-int4", "ddp", ["algorithm.compress={name: int4, block: 64}"]),
    ("ddp-top1%-ef", "ddp", ["algorithm.compress={name: topk, ratio: 0.01, error_feedback: ef}"]),
    ("ddp-sign-ef", "ddp", ["algorithm.compress={name: sign, error_feedback: ef}"]),
    ("ddp-powersgd-r4", "ddp", ["algorithm.compress={name: powersgd, rank: 4}"]),
    ("demo", "ddp", ["algorithm.name=decoupled-momentum", "algorithm.inner={name: sgd, lr: 0.001}"]),
    # DeMo learning-rate sweep (sign update: lr is the per-coordinate step), then fewer coefficients
    *[(f"demo-lr{lr}", "ddp", ["algorithm.name=decoupled-momentum", f"algorithm.inner={{name: sgd, lr: {lr}}}"])
      for lr in ("0.002", "0.003", "0.004")],
    *[(f"demo-top{k}-lr{lr}", "ddp", ["algorithm.name=decoupled-momentum", f"algorithm.inner={{name: sgd, lr: {lr}}}",
                                      f"algorithm.topk={k}"]) for k, lr in (("16", "0.002"), ("8", "0.002"))],
    ("diloco", "diloco", []),
    ("diloco-int8", "diloco", ["algorithm.compress={name: int8, block: 64}"]),
    ("diloco-int4", "diloco", ["algorithm.compress={name: int4, block: 64}"]),
    ("diloco-top10%-ef", "diloco", ["algorithm.compress={name: topk, ratio: 0.1, error_feedback: ef}"]),
    # compressed reduce-scatter + all-gather: ring all-reduce bytes
    ("ddp-int4-rs", "ddp", ["algorithm.compress={name: int4, block: 64, collective: reduce_scatter}"]),
    ("diloco-int4-rs", "diloco", ["algorithm.compress={name: int4, block: 64, collective: reduce_scatter}"]),
]

CLAIM_RUNS = ["ddp", "demo", "demo-lr0.002", "demo-lr0.004"]
CLAIMS_CPU = ["cluster.workers=2", "task.n_layer=2", "task.n_embd=64", "train.steps=300", "train.eval_every=30",
              "train.log_every=30", "task.eval_windows=128", "train.lr_schedule.warmup_steps=15"]
CLAIMS_GPU = harness.GPU + ["train.precision=bf16", "cluster.workers=2", "task.n_layer=6", "task.n_embd=256", "task.n_head=8",
                            "task.block_size=128", "train.steps=600", "train.eval_every=60", "train.log_every=30",
                            "task.eval_windows=256", "train.lr_schedule.warmup_steps=30"]
PROFILES = {"cpu": {}, "gpu": {"set": harness.GPU}, "quick": {"set": harness.GPT_QUICK, "only": ["ddp", "ddp-int8", "demo", "diloco-int4-rs"]},
            "claims-cpu": {"set": CLAIMS_CPU, "only": CLAIM_RUNS, "params": {"claim_seeds": [0, 1, 2], "threads": 1}},
            "claims-gpu": {"set": CLAIMS_GPU, "only": CLAIM_RUNS[:3], "params": {"claim_seeds": [0, 1]}}}  # lr 4e-3: worst on cpu
PARAMS: dict = {"claim_seeds": [], "threads": None}  # seeds of the runs (none: the configs' seed), intra-op threads
SEEDS = None  # the demo configs' seed
CONFIG_OVERRIDES = True
RESULTS = ("compression_pareto_cpu",)
FIGURES = {"compression_pareto.png": "compression_pareto_cpu"}


def jobs(args) -> list[dict]:
    seeds = args.params.get("claim_seeds") or [None]
    return [harness.config_job(args, label, f"demo_{base}.yaml", sets, seed, threads=args.params.get("threads"))
            for seed in seeds for label, base, sets in RUNS]


def run_one(job: dict) -> dict:
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])
    result = harness.run_config(job)
    s = result.summary
    return {"final_eval_loss": s["final_eval_loss"], "bytes_sent_total": s["bytes_sent_total"],
            "peak_bytes_per_sync": s["peak_bytes_per_sync"], "status": s["status"], "evals": harness.evals(result.metrics)}


def markdown(rows: list[dict]) -> str:
    """The results as a table, in RUNS order, relative to the `ddp` row."""
    by = {r["run"]: r["metrics"] for r in rows}
    ddp = by["ddp"]
    lines = ["| run | final eval loss | vs DDP | bytes sent (all workers) | bytes vs DDP | peak bytes/sync |", "|---|---|---|---|---|---|"]
    for label, _, _ in RUNS:
        r = by.get(label)
        if r is None or r["final_eval_loss"] is None:
            continue
        rel = (r["final_eval_loss"] - ddp["final_eval_loss"]) / ddp["final_eval_loss"]
        ratio = ddp["bytes_sent_total"] / r["bytes_sent_total"]
        lines.append(f"| {label} | {r['final_eval_loss']:.4f} | {rel:+.2%} | {r['bytes_sent_total'] / 1e6:,.1f} MB "
                     f"| {ratio:.1f}x fewer | {r['peak_bytes_per_sync'] / 1e6:.3f} MB |")
    return "\n".join(lines)


def figure(png: str, rows: list[dict], path: Path) -> None:
    """Final eval loss vs total bytes (log), DDP-family blue, DiLoCo-family orange, DeMo green."""
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        r = row["metrics"]
        if r["final_eval_loss"] is None:
            continue
        color = "C1" if row["run"].startswith("diloco") else "C2" if row["run"].startswith("demo") else "C0"
        ax.scatter(r["bytes_sent_total"], r["final_eval_loss"], color=color)
        ax.annotate(row["run"], (r["bytes_sent_total"], r["final_eval_loss"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent, all workers (log)")
    ax.set_ylabel("final eval loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    harness.save(fig, path, 110)


def finish(rows: list[dict], args) -> None:
    figure("compression_pareto.png", rows, Path(args.out) / "pareto.png")
    if any(r["run"] == "ddp" for r in rows):
        print(markdown(rows))

# ---------------------------------------------------------------- the claim (farsync claims)

DEMO_TOL = 3.0  # percent (or the seeds' sd where larger): "comparable loss"
DEMO_BYTES = 10.0  # "far fewer bytes": at least 10x fewer than DDP (the paper: up to 85x per GPU)
NAMES = {"ddp": "DDP, AdamW 6e-3", "demo": "DeMo, lr 1e-3", "demo-lr0.002": "DeMo, lr 2e-3", "demo-lr0.004": "DeMo, lr 4e-3"}


def _bytes(rows: list[dict], run: str) -> float:
    return C.mean([r["metrics"]["bytes_sent_total"] for r in rows if r["run"] == run and r["metrics"].get("bytes_sent_total")])


def demo_table(rows: list[dict]) -> str:
    d, b = C.mean(C.values(rows, "ddp")), _bytes(rows, "ddp")
    cells = [[name, C.ms(C.values(rows, run)), f"{C.rel(C.mean(C.values(rows, run)), d):+.2f}%",
              f"{_bytes(rows, run) / 1e6:,.2f} MB", f"{b / _bytes(rows, run):.1f}x"] for run, name in NAMES.items()]
    return C.table(["row", "final eval loss", "vs DDP", "bytes sent (all workers)", "fewer bytes than DDP"], cells)


def judge_demo(rows: list[dict]) -> C.Finding:
    d = C.values(rows, "ddp")
    best = min(("demo", "demo-lr0.002", "demo-lr0.004"), key=lambda run: C.mean(C.values(rows, run)))  # DeMo at its better lr
    x = C.values(rows, best)
    gap, fewer = C.rel(C.mean(x), C.mean(d)), _bytes(rows, "ddp") / _bytes(rows, best)
    tol = max(DEMO_TOL, 100 * (C.sd(x) + C.sd(d)) / C.mean(d))
    ours = (f"DeMo at its best lr ({NAMES[best]}) {C.ms(x)} vs AdamW-DDP {C.ms(d)} ({gap:+.2f}%; tolerance {tol:.1f}%: "
            f"{DEMO_TOL:.0f}% or the seeds' sd), {fewer:.1f}x fewer bytes (needed: >= {DEMO_BYTES:.0f}x).")
    if gap <= tol and fewer >= DEMO_BYTES:
        return C.Finding("reproduced", ours, demo_table(rows))
    why = []
    if gap > tol:
        why.append(f"DeMo's sign update trails AdamW by {gap:.1f}% after 300 steps of a 0.1M-parameter model (the paper: "
                   "300M and 1B OLMo models trained on billions of tokens, its lr tuned; we tried three)")
    if fewer < DEMO_BYTES:
        why.append(f"only {fewer:.1f}x fewer bytes")
    return C.Finding("not at this scale", ours, demo_table(rows), why="; ".join(why) + ".")


def plot_demo(rows: list[dict], path) -> None:
    C.curves(rows, path, NAMES, title="DeMo vs AdamW-DDP, 2 workers: eval loss (mean ± sd over seeds)")


CLAIMS = [
    C.Claim("demo-bytes", "2411.19870", "DeMo: Decoupled Momentum Optimization",
            "DeMo (each worker keeps its own momentum and exchanges only its top-k DCT coefficients per chunk, applying the "
            "sign of their mean) trains to about the loss of AdamW data-parallel while sending far fewer bytes.",
            "the abstract (read, arxiv.org/html/2411.19870v2): on 300M and 1B-parameter language models DeMo transmits "
            "\"up to 85x less data per GPU than AdamW-DDP while achieving comparable loss and accuracy\"; the per-run losses "
            "and bytes of its tables could not be read here.",
            "compression_pareto",
            {"cpu": C.Setting("Shakespeare char GPT, 2 blocks x 64 wide (so the DCT chunks are whole 64 x 64 matrices), 2 "
                              "simulated workers, 300 steps of 16 x 64 characters per worker, cosine schedule; DDP: AdamW 6e-3 "
                              "(the demo's); DeMo: top-32 of each 64 x 64 chunk, decay 0.999, sign update, SGD lr 1e-3, 2e-3 "
                              "and 4e-3 (the best one is judged, picked on the same seeds), no weight decay.",
                              "claims-cpu", group="demo-bytes"),
             "gpu": C.Setting("DDP and DeMo at lr 1e-3 and 2e-3 (4e-3 dropped: the worst on the cpu) at 6 blocks x 256 wide "
                              "(4.8M parameters), block 128, 600 steps, bf16 autocast, 2 seeds, on one GPU (unrun so far).", "claims-gpu", group="demo-bytes")},
            judge_demo, plot_demo,
            gpu="600 steps at 4.8M parameters test whether DeMo's gap to AdamW closes with scale and steps."),
]


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
