"""Streaming, eager, speculative and naive-delayed DiLoCo vs DiLoCo vs DDP on the demo setting (issue 5, benchmark 1).

    python benchmarks/harness.py streaming [--profile cpu|gpu|quick] [--out DIR] [--only RUN ...] [--seeds 0 1 2]
                                           [--parallel N] [--set KEY=VALUE ...]

Shakespeare GPT with 4 blocks (so F = 4 fragments are strided blocks), 4 simulated workers, 600
steps, equal tokens, the demo's AdamW; DiLoCo-family runs use H = 24 (S = H/F = 6 leaves room for a
delay of 5). Streaming: F = 4, delay in {0, 1, 5} (alpha 0 without delay, 0.5 with, as the paper
suggests), fp32 and 4-bit (int4, block 64) exchange, the 4-bit payloads all-gathered (default) or
sent by the compressed reduce-scatter (`-rs`, ring all-reduce bytes; it does not overlap); with
H = 24 and the all-reduce overlapping the whole next round, fp32 and 4-bit: ``eager``
(`eager-diloco`, the paper's committed rule), ``speculative`` (`speculative-diloco`, farsync's
tentative design) and ``delayed`` (`delayed-diloco`, the naive one). Metrics per run and seed:
final eval loss, total bytes, peak bytes per sync, simulated time, compute utilization. Each run
uses 2 intra-op threads; profile `gpu` puts the workers' models on CUDA.

Stored rows from before `speculative-diloco` existed (eager_cpu, eager_lr035_cpu) are read under
today's labels: ``eager-committed*`` (`algorithm.proxy_step=committed`, or the only eager at
7f3ac08) as ``eager*``, and the tentative ``eager*`` rows (then eager-diloco's default) as
``speculative*``; the row's config keeps what was recorded (``recorded``).
"""

import statistics

import torch

import harness

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
    *[(f"{name}{q}", "diloco", DILOCO + [f"algorithm.name={name}-diloco"] + INT4[q])
      for name in ("eager", "speculative", "delayed") for q in ("", "-int4")],
]

QUICK = ["ddp", "diloco-int4-rs", "streaming-tau5-int4", "eager", "speculative"]  # a smoke test of each family
PROFILES = {"cpu": {}, "gpu": {"set": harness.GPU}, "quick": {"set": harness.GPT_QUICK, "only": QUICK}}
PARAMS: dict = {}
SEEDS = [0]
CONFIG_OVERRIDES = True
RESULTS = ("streaming_h100", "eager_cpu", "eager_lr035_cpu")
SUMMARY = ("final_eval_loss", "bytes_sent_total", "peak_bytes_per_sync", "sim_time_s", "compute_utilization", "status")


def jobs(args) -> list[dict]:
    return [harness.config_job(args, label, f"demo_{base}.yaml", COMMON + sets, seed)
            for seed in args.seeds for label, base, sets in RUNS]


def run_one(job: dict) -> dict:
    torch.set_num_threads(2)
    s = harness.run_config(job).summary
    return {k: s[k] for k in SUMMARY}


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def finish(rows: list[dict], args) -> None:
    """Per run (in the order of the rows), the final eval loss as mean ± std over its seeds, and its costs."""
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r["metrics"])
    print("\n| run | final eval loss (seeds) | bytes sent | peak bytes / sync | sim time (s) | compute util. |\n|---|---|---|---|---|---|")
    for run, ms in by_run.items():
        losses = [m["final_eval_loss"] for m in ms if m["final_eval_loss"] is not None]
        loss = f"{statistics.fmean(losses):.4f}" + (f" ± {statistics.stdev(losses):.4f}" if len(losses) > 1 else "") if losses else "-"
        m = ms[0]
        print(f"| {run} | {loss} ({len(ms)}) | {m['bytes_sent_total'] / 1e6:,.1f} MB | {m['peak_bytes_per_sync']:,} | "
              f"{fmt(m['sim_time_s'], '.2f')} | {fmt(m['compute_utilization'], '.3f')} |")


def today(run: str, overrides: list[str]) -> tuple[str, list[str]]:
    """An old eager row's label and overrides under today's names (others unchanged): committed eager is
    `eager-diloco`, tentative eager is `speculative-diloco`; `algorithm.proxy_step` no longer exists."""
    if not run.startswith("eager"):
        return run, overrides
    sets = [o for o in overrides if not o.startswith("algorithm.proxy_step=")]
    if run.startswith("eager-committed"):
        return "eager" + run.removeprefix("eager-committed"), sets
    return "speculative" + run.removeprefix("eager"), [o.replace("=eager-diloco", "=speculative-diloco") for o in sets]


def legacy_row(r: dict) -> dict:
    """A results.jsonl row from before the harness: {"run", "seed", "overrides", metrics..., "code"?, "note"?}."""
    run, sets = today(r["run"], r["overrides"])
    recorded = {k: v for k, v in r.items() if k not in SUMMARY and k != "seed"}
    return {"run": run, "seed": r["seed"], "metrics": {k: r[k] for k in SUMMARY if k in r},
            "config": {"base": f"demo_{'ddp' if run == 'ddp' else 'diloco'}.yaml", "overrides": sets, "recorded": recorded}}


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
