"""Compression on the demo setting: final eval loss vs total bytes (a Pareto plot; issue 4).

    python benchmarks/harness.py compression_pareto [--profile cpu|gpu|quick] [--out DIR] [--only RUN ...] [--report [FILE]]

Shakespeare GPT (the demo configs), 4 simulated workers, 600 steps, equal tokens, each run with
`algorithm.compress` (or DeMo) as its label says. Metrics: final eval loss, bytes sent, peak bytes
per sync. After the runs (and with --report): the markdown table of docs/benchmarks.md and
OUT/pareto.png.
"""

from pathlib import Path

import harness

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

PROFILES = {"cpu": {}, "gpu": {"set": harness.GPU}, "quick": {"set": harness.GPT_QUICK, "only": ["ddp", "ddp-int8", "demo", "diloco-int4-rs"]}}
PARAMS: dict = {}
SEEDS = None  # the demo configs' seed
CONFIG_OVERRIDES = True
RESULTS = ("compression_pareto_cpu",)
FIGURES = {"compression_pareto.png": "compression_pareto_cpu"}


def jobs(args) -> list[dict]:
    return [harness.config_job(args, label, f"demo_{base}.yaml", sets, None) for label, base, sets in RUNS]


def run_one(job: dict) -> dict:
    s = harness.run_config(job).summary
    return {"final_eval_loss": s["final_eval_loss"], "bytes_sent_total": s["bytes_sent_total"],
            "peak_bytes_per_sync": s["peak_bytes_per_sync"], "status": s["status"]}


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


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
