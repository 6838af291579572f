"""Streaming, eager and naive-delayed DiLoCo vs DiLoCo vs DDP on the demo setting (issue 5, benchmark 1).

    python benchmarks/streaming.py [--out runs/streaming] [--only NAME ...] [--seeds 0 1 2] [--parallel N] [--set KEY=VALUE ...]

Shakespeare GPT with 4 blocks (so F = 4 fragments are strided blocks), 4 simulated workers, 600
steps, equal tokens, the demo's AdamW; DiLoCo-family runs use H = 24 (S = H/F = 6 leaves room for a
delay of 5). Streaming: F = 4, delay in {0, 1, 5} (alpha 0 without delay, 0.5 with, as the paper
suggests), fp32 and 4-bit (int4, block 64) exchange, the 4-bit payloads all-gathered (default) or
sent by the compressed reduce-scatter (`-rs`, ring all-reduce bytes; it does not overlap); eager
and naive-delayed DiLoCo (H = 24, the all-reduce overlapping the whole next round), fp32 and 4-bit,
and eager with the proxy committed to the outer optimizer (`eager-committed`). Writes
results.jsonl (final eval loss, total bytes, peak bytes per sync, simulated time, compute
utilization; one row per run and seed) into --out. `--parallel N` runs N at once in separate
processes (each with 2 intra-op threads).
"""

import argparse
import shutil
from importlib import resources
from pathlib import Path

import torch
from _pool import run_and_record

COMMON = ["task.n_layer=4"]
DILOCO = ["algorithm.sync_every=24"]
STREAM = DILOCO + ["algorithm.name=streaming-diloco", "algorithm.fragments=4"]
INT4 = {"": [], "-int4": ["algorithm.compress={name: int4, block: 64}"],
        "-int4-rs": ["algorithm.compress={name: int4, block: 64, collective: reduce_scatter}"]}
RUNS = [
    ("ddp", "ddp", []),
    *[(f"diloco{q}", "diloco", DILOCO + INT4[q]) for q in INT4],
    *[(f"streaming-tau{d}{q}", "diloco", STREAM + [f"algorithm.delay={d}", f"algorithm.alpha={0.5 if d else 0.0}"] + INT4[q])
      for q in INT4 for d in (0, 1, 5)],
    *[(f"{name}{q}", "diloco", DILOCO + [f"algorithm.name={name}-diloco"] + INT4[q]) for name in ("eager", "delayed") for q in ("", "-int4")],
    ("eager-committed", "diloco", DILOCO + ["algorithm.name=eager-diloco", "algorithm.proxy_step=committed"]),
]


def run_one(args: tuple[str, str, list[str], int, str]) -> dict:
    label, base, sets, seed, out = args
    torch.set_num_threads(2)
    import farsync

    cfg = str(resources.files("farsync") / "configs" / f"demo_{base}.yaml")
    run_dir = Path(out) / f"{label}-s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    s = farsync.run(cfg, overrides=COMMON + sets + [f"name={label}", f"seed={seed}"], out=run_dir, progress=False).summary
    return {"run": label, "seed": seed, "overrides": COMMON + sets, "final_eval_loss": s["final_eval_loss"], "bytes_sent_total": s["bytes_sent_total"],
            "peak_bytes_per_sync": s["peak_bytes_per_sync"], "sim_time_s": s["sim_time_s"],
            "compute_utilization": s["compute_utilization"], "status": s["status"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/streaming")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="extra override for every run (e.g. cluster.device=cuda)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(label, base, sets + args.set, seed, str(out)) for seed in args.seeds for label, base, sets in RUNS
            if not args.only or label in args.only]
    run_and_record(run_one, todo, out / "results.jsonl", args.parallel)


if __name__ == "__main__":
    main()
