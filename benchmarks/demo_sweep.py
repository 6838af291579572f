"""The tuning sweep behind the demo configs: DDP and DiLoCo learning rates / H at equal tokens.

    python benchmarks/harness.py demo_sweep [--profile cpu|gpu|quick] [--out DIR] [--only RUN ...] [--set KEY=VALUE ...]

The demo configs (demo_ddp.yaml, demo_diloco.yaml: 3-block Shakespeare GPT, 4 simulated workers,
600 steps, batch 16, AdamW with cosine decay) with the overrides that the run's label names: the
inner AdamW lr (``lr``), DiLoCo's H (``sync_every``) and its outer SGD lr (``outer-lr``, 0.7
otherwise). Every run sets its inner lr and H explicitly, so that the grid does not depend on what
the configs hold now (they held lr 3e-3 and H 30 when the sweep picked lr 6e-3 and H 20). Metrics
per run: final eval loss, total bytes. The configs' seed (0); no seeds.
"""

import harness

GRID = {
    "ddp lr 3e-3": ("ddp", ["algorithm.inner.lr=0.003"]),
    "ddp lr 6e-3": ("ddp", ["algorithm.inner.lr=0.006"]),
    "diloco H30 lr 3e-3": ("diloco", ["algorithm.sync_every=30", "algorithm.inner.lr=0.003"]),
    "diloco H20 lr 3e-3": ("diloco", ["algorithm.sync_every=20", "algorithm.inner.lr=0.003"]),
    "diloco H20 lr 3e-3 outer-lr 1.0": ("diloco", ["algorithm.sync_every=20", "algorithm.inner.lr=0.003", "algorithm.outer.lr=1.0"]),
    "diloco H20 lr 6e-3": ("diloco", ["algorithm.sync_every=20", "algorithm.inner.lr=0.006"]),
    "diloco H20 lr 6e-3 outer-lr 1.0": ("diloco", ["algorithm.sync_every=20", "algorithm.inner.lr=0.006", "algorithm.outer.lr=1.0"]),
}

PROFILES = {"cpu": {}, "gpu": {"set": harness.GPU}, "quick": {"set": harness.GPT_QUICK, "only": ["ddp lr 6e-3", "diloco H20 lr 6e-3"]}}
PARAMS: dict = {}
SEEDS = None  # the demo configs' seed
CONFIG_OVERRIDES = True
RESULTS = ()  # the numbers are in docs/benchmarks.md (printed lines of a run before the harness)


def jobs(args) -> list[dict]:
    return [harness.config_job(args, label, f"demo_{base}.yaml", sets, None) for label, (base, sets) in GRID.items()]


def run_one(job: dict) -> dict:
    s = harness.run_config(job).summary
    return {"final_eval_loss": s["final_eval_loss"], "bytes_sent_total": s["bytes_sent_total"], "status": s["status"]}


def finish(rows: list[dict], args) -> None:
    print("\n| run | final eval loss | bytes sent (all workers) |\n|---|---|---|")
    for r in rows:
        m = r["metrics"]
        loss = "-" if m["final_eval_loss"] is None else f"{m['final_eval_loss']:.4f}"
        print(f"| {r['run']} | {loss} | {m['bytes_sent_total'] / 1e6:,.1f} MB |")


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
