"""Small tuning sweep behind the demo configs: DDP and DiLoCo learning rates / H at equal tokens.

    python benchmarks/demo_sweep.py [--out runs/demo_sweep]

Prints one line per run (final eval loss, bytes); results are recorded in docs/benchmarks.md.
"""

import argparse
import json
from importlib import resources

import farsync

GRID = [
    ("ddp", ["algorithm.inner.lr=0.003"]),
    ("ddp", ["algorithm.inner.lr=0.006"]),
    ("diloco", ["algorithm.sync_every=20"]),
    ("diloco", ["algorithm.sync_every=20", "algorithm.outer.lr=1.0"]),
    ("diloco", ["algorithm.sync_every=20", "algorithm.inner.lr=0.006"]),
    ("diloco", ["algorithm.sync_every=20", "algorithm.outer.lr=1.0", "algorithm.inner.lr=0.006"]),
]

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/demo_sweep")
    args = ap.parse_args()
    for i, (name, sets) in enumerate(GRID):
        cfg = str(resources.files("farsync") / "configs" / f"demo_{name}.yaml")
        res = farsync.run(cfg, overrides=sets, out=f"{args.out}/{i}-{name}", progress=False)
        s = res.summary
        print(json.dumps({"algorithm": name, "overrides": sets, "final_eval_loss": round(s["final_eval_loss"], 4),
                          "bytes_sent_total": s["bytes_sent_total"], "status": s["status"]}), flush=True)
