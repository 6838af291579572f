"""Compression on the demo setting: final eval loss vs total bytes (a Pareto plot).

    python benchmarks/compression_pareto.py [--out runs/pareto] [--only NAME ...] [--skip NAME ...] [--table]

Shakespeare GPT (the demo configs), 4 simulated workers, 600 steps, equal tokens. Writes
`results.jsonl` and `pareto.png` into --out; `--table` prints the markdown table of
docs/benchmarks.md from results.jsonl (no runs).
"""

import argparse
import json
from importlib import resources
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import farsync  # noqa: E402

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


def markdown(rows: list[dict]) -> str:
    """The results as a table, in RUNS order, relative to the `ddp` row."""
    by = {r["run"]: r for r in rows}
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


def plot(rows: list[dict], out: Path) -> None:
    """Final eval loss vs total bytes (log), DDP-family blue, DiLoCo-family orange, DeMo green."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        if r["final_eval_loss"] is None:
            continue
        color = "C1" if r["run"].startswith("diloco") else "C2" if r["run"].startswith("demo") else "C0"
        ax.scatter(r["bytes_sent_total"], r["final_eval_loss"], color=color)
        ax.annotate(r["run"], (r["bytes_sent_total"], r["final_eval_loss"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent, all workers (log)")
    ax.set_ylabel("final eval loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/pareto")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--table", action="store_true", help="print the markdown table of results.jsonl and exit")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] if (out / "results.jsonl").exists() else []
    if args.table:
        plot(rows, out)
        print(markdown(rows))
        return
    for label, base, sets in RUNS:
        if (args.only and label not in args.only) or label in args.skip:
            continue
        cfg = str(resources.files("farsync") / "configs" / f"demo_{base}.yaml")
        if (out / label).exists():
            import shutil

            shutil.rmtree(out / label)
        res = farsync.run(cfg, overrides=sets + [f"name={label}"], out=out / label, progress=False)
        s = res.summary
        row = {"run": label, "overrides": sets, "final_eval_loss": s["final_eval_loss"], "bytes_sent_total": s["bytes_sent_total"],
               "peak_bytes_per_sync": s["peak_bytes_per_sync"], "status": s["status"]}
        rows = [r for r in rows if r["run"] != label] + [row]
        print(json.dumps(row), flush=True)
        (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot(rows, out)


if __name__ == "__main__":
    main()
