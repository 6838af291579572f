"""DiLoCo under simulated churn (issue 23): final loss against the fraction of time workers are away.

    python benchmarks/churn.py [--profile cpu|quick] [--seeds 0 ...] [--out DIR] [--parallel 2]
    python benchmarks/churn.py --report benchmarks/results/churn_cpu.jsonl

The demo (demo_diloco.yaml: the Shakespeare GPT, 4 workers, H = 20, 600 steps, 10 Gbps / 10 ms).
Workers 1, 2 and 3 are each away for a fraction f of the steps, in windows spread over the run (worker
w from step ``1 + (steps - L) * (w - 1) / 2`` for ``L = f * steps`` steps, then back, healed from
worker 0; `farsync.comm.churn`). Rows: f in {0, 0.25, 0.5, 0.75} (away: 3f/4 of the worker-steps).
A row "gone-3" has workers 1-3 leave for good at step 150 (from there DiLoCo runs on one worker).
Metrics: final eval loss, every evaluation, tokens, bytes, simulated time. One intra-op thread per
run (use --parallel 2 on 2 cores).
"""

from __future__ import annotations


import harness

FRACTIONS = (0.0, 0.25, 0.5, 0.75)
PROFILES = {"cpu": {"parallel": 2}, "quick": {"params": {"steps": 24}, "set": harness.GPT_QUICK}}
PARAMS = {"steps": 600}
SEEDS = [0]
CONFIG_OVERRIDES = True
RESULTS = ("churn_cpu",)
SUMMARY = ("final_eval_loss", "tokens", "bytes_sent_total", "sim_time_s", "status")


def windows(steps: int, fraction: float) -> list[dict]:
    length = round(fraction * steps)
    if length == 0:
        return []
    out = []
    for w in (1, 2, 3):
        leave = 1 + (steps - length) * (w - 1) // 2
        join = leave + length
        out.append({"worker": w, "leave": leave, "join": join if join <= steps else None})
    return out


def churn_override(spec: list[dict]) -> str:
    items = ", ".join("{" + ", ".join(f"{k}: {'null' if v is None else v}" for k, v in w.items()) + "}" for w in spec)
    return f"cluster.churn=[{items}]"


def jobs(args) -> list[dict]:
    steps = args.params["steps"]
    rows = {f"away-{f:g}": windows(steps, f) for f in FRACTIONS}
    rows["gone-3"] = [{"worker": w, "leave": steps // 4} for w in (1, 2, 3)]
    return [harness.config_job(args, label, "demo_diloco.yaml", [f"train.steps={steps}", churn_override(spec)], seed)
            for seed in args.seeds for label, spec in rows.items()]


def run_one(job: dict) -> dict:
    return harness.summary_and_evals(job, SUMMARY)


def finish(rows: list[dict], args) -> None:
    rows = harness.metric_rows(rows)
    base = next((r["final_eval_loss"] for r in rows if r["run"] == "away-0"), None)
    harness.print_table(["run", "seed", "final eval loss", "vs no churn", "tokens", "bytes sent", "sim time (s)"],
                        [[r["run"], r["seed"], f"{r['final_eval_loss']:.4f}",
                          f"{r['final_eval_loss'] - base:+.4f}" if base is not None else "-", f"{r['tokens']:,}",
                          f"{r['bytes_sent_total']:,}", f"{r['sim_time_s']:.1f}"] for r in rows])


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
