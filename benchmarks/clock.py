"""The clock (issue 21): `farsync plan` tables for the papers' deployments, and trained runs re-timed over bandwidths.

    python benchmarks/harness.py clock [--profile cpu|quick] [--out DIR] [--only RUN ...] [--set KEY=VALUE ...]

Runs (one row each):

- ``plan-1b``, ``plan-10b``, ``plan-100b``: no training. The bandwidth each method needs for compute
  utilization 50/80/90/95/99% (`farsync.planner.paper_table`: M = 2 workers, no latency, 25 MiB
  buckets overlapped with the backward; DDP; DiLoCo H = 100; Streaming DiLoCo with 3-layer
  fragments, H = the multiple of F nearest above 100, delay 0 and 1, bf16 and 4 bits, eager; eager
  DiLoCo H = 100).
- ``demo-ddp``, ``demo-diloco``: `make demo`'s configs (4 workers, 10 ms, timed as a 1B-parameter,
  24-layer model at 0.1 s per step), trained once at 10 Gbps and re-timed (`farsync retime`) at
  each of ``demo_bandwidths``.
- ``sweep-METHOD``: the methods and loss curves of benchmarks/bandwidth_sweep.py (4-block demo GPT,
  4 workers, 600 steps, 10 ms), trained once with the per-layer clock and the same deployment
  (``time_model: {params: 1e9, layers: 24, step_time: 0.5s}``: the old sweep's step time and payload
  scale, now with 24 layers and overlapped buckets) and re-timed at each of ``sweep_bandwidths``.
  finish() prints them next to the stored old-clock rows (bandwidth_h100: one message per call at
  the end of the step).

Each trained run uses 2 intra-op threads; the re-timings take a second each.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

import bandwidth_sweep
import harness

DEMO_BANDWIDTHS = ["100Mbps", "1Gbps", "10Gbps", "100Gbps"]
SWEEP_CLOCK = ["task.n_layer=4", "cluster.time_model={params: 1e9, layers: 24, step_time: 0.5s}"]
PROFILES = {
    "cpu": {},
    "quick": {"set": harness.GPT_QUICK, "params": {"demo_bandwidths": ["1Gbps", "100Gbps"], "sweep_bandwidths": ["1Gbps"]},
              "only": ["plan-1b", "demo-diloco", "sweep-eager"]},
}
PARAMS = {"demo_bandwidths": DEMO_BANDWIDTHS, "sweep_bandwidths": bandwidth_sweep.BANDWIDTHS, "target_loss": 2.2}
SEEDS = None
CONFIG_OVERRIDES = True
RESULTS = ("clock_cpu",)


def jobs(args) -> list[dict]:
    out = [{"run": f"plan-{name}", "seed": None, "config": {"plan": name}, "kind": "plan"} for name in ("1b", "10b", "100b")]
    for name in ("ddp", "diloco"):
        job = harness.config_job(args, f"demo-{name}", f"demo_{name}.yaml", [], None, name=name)
        job.update(kind="retime", bandwidths=args.params["demo_bandwidths"], target=args.params["target_loss"])
        out.append(job)
    for name, (base, sets) in bandwidth_sweep.METHODS.items():
        if name == "delayed":  # not in the stored old-clock table
            continue
        job = harness.config_job(args, f"sweep-{name}", f"demo_{base}.yaml", SWEEP_CLOCK + sets, None, name=name)
        job.update(kind="retime", bandwidths=args.params["sweep_bandwidths"], target=args.params["target_loss"])
        out.append(job)
    return out


def run_one(job: dict) -> dict:
    if job["kind"] == "plan":
        from farsync.planner import paper_table

        return {"table": paper_table((job["config"]["plan"],))}
    torch.set_num_threads(2)
    from farsync.retime import retime
    from farsync.rundir import read_metrics
    from farsync.sweep import time_to_target

    r = harness.run_config(job)
    per = {}
    for bw in job["bandwidths"]:
        d = Path(job["dir"] + f"-at-{bw}")
        if d.exists():
            shutil.rmtree(d)
        s = retime(r.run_dir, [f"cluster.bandwidth={bw}"], d)
        per[bw] = {"sim_time_s": s["sim_time_s"], "compute_utilization": s["compute_utilization"],
                   "time_to_target_s": time_to_target(read_metrics(d / "metrics.jsonl"), job["target"]),
                   "time_model": s["time_model"]}
    s = r.summary
    return {"status": s["status"], "final_eval_loss": s["final_eval_loss"], "bytes_sent_total": s["bytes_sent_total"],
            "trained_at": "the config's bandwidth (10 Gbps)", "target": job["target"], "per_bandwidth": per}


def _gbps(x):
    return "not reached" if x is None else f"{x / 1e9:.3g}"


def finish(rows: list[dict], args) -> None:
    plans = [r for r in rows if r["run"].startswith("plan-")]
    if plans:
        print("\nBandwidth (Gbit/s) needed for compute utilization (farsync plan: M = 2, no latency, 25 MiB buckets "
              "overlapped with the backward):\n")
        print("| deployment | method | 50% | 80% | 90% | 95% | 99% |\n|---|---|---|---|---|---|---|")
        for r in plans:
            for t in r["metrics"]["table"]:
                print(f"| {t['deployment']} ({t['step_time']}/step) | {t['method']} | "
                      + " | ".join(_gbps(t[k]) for k in ("0.5", "0.8", "0.9", "0.95", "0.99")) + " |")
    for prefix, title in (("demo-", "make demo's runs re-timed"), ("sweep-", "bandwidth sweep, per-layer clock")):
        sel = [r for r in rows if r["run"].startswith(prefix)]
        if not sel:
            continue
        bws = list(sel[0]["metrics"]["per_bandwidth"])
        print(f"\n{title} ({sel[0]['metrics']['per_bandwidth'][bws[0]]['time_model'].split(';')[0]}):\n")
        print("| run | final eval loss | " + " | ".join(f"CU @ {b}" for b in bws) + " | "
              + " | ".join(f"sim time @ {b} (s)" for b in bws) + " |")
        print("|---|---|" + "---|" * (2 * len(bws)))
        for r in sel:
            m = r["metrics"]
            per = m["per_bandwidth"]
            print(f"| {r['run']} | {m['final_eval_loss']:.4f} | " + " | ".join(f"{per[b]['compute_utilization']:.3f}" for b in bws)
                  + " | " + " | ".join(f"{per[b]['sim_time_s']:,.1f}" for b in bws) + " |")
    sweep = [r for r in rows if r["run"].startswith("sweep-")]
    old_file = harness.stored("bandwidth_h100")
    if sweep and old_file is not None:
        old = {(x["config"]["method"], x["config"]["bandwidth"]): x["metrics"]
               for x in harness.read_rows(bandwidth_sweep, old_file)}
        print(f"\nCompute utilization and time to loss {sweep[0]['metrics']['target']:g}, old clock (stored bandwidth_h100: "
              "one message at the step end) -> per-layer clock (this run, CPU):\n")
        bws = list(sweep[0]["metrics"]["per_bandwidth"])
        print("| method | " + " | ".join(bws) + " |\n|---|" + "---|" * len(bws))
        cu = lambda x: f"{x:.3f}"  # noqa: E731
        tt = lambda x: "not reached" if x is None else f"{x:,.1f}"  # noqa: E731
        for title, key, fmt in (("CU", "compute_utilization", cu), ("time to target (s)", "time_to_target_s", tt)):
            for r in sweep:
                method = r["run"][len("sweep-"):]
                per = r["metrics"]["per_bandwidth"]
                cells = [f"{'-' if old.get((method, b)) is None else fmt(old[(method, b)][key])} -> {fmt(per[b][key])}"
                         for b in bws]
                print(f"| {title}: {method} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
