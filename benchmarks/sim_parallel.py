"""The simulator spread over processes (issue 22, ``cluster.parallel``): wall time per step of the demo.

    python benchmarks/harness.py sim_parallel [--profile full|quick] [--out DIR] [--only "ddp *" ...]
                                              [--set steps=60] [--set repeats=3]

The demo's configs (demo_ddp.yaml, demo_diloco.yaml: the 3-layer Shakespeare GPT, 4 workers)
trained for ``steps`` steps with evaluation only at the end, under four settings: ``p1`` (one
process, torch's default threads: what a run does without ``cluster.parallel``), ``p1-t1`` (one
process, one thread), ``p2`` and ``p4`` (2 and 4 processes, one thread each: the default threads
on a 2-core machine). Metrics: the median over ``repeats`` of the wall time per step between the
first and the last logged step before the end (no start-up, no final evaluation), the final train
loss (as a hex float: equal settings of threads must give equal bits) and, in the table, the
speed-up over ``p1`` and over ``p1-t1``. Target (issue 22): p2 >= 1.6 x faster than one process.
"""

from __future__ import annotations

import statistics

import harness

TARGET = 1.6
SETTINGS = {"p1": [], "p1-t1": ["cluster.threads=1"], "p2": ["cluster.parallel=2", "cluster.threads=1"],
            "p4": ["cluster.parallel=4", "cluster.threads=1"]}
CONFIGS = {"ddp": "demo_ddp.yaml", "diloco": "demo_diloco.yaml"}
PROFILES = {"full": {}, "quick": {"params": {"steps": 24, "repeats": 1}, "set": ["task.n_embd=32", "task.eval_windows=8"]}}
PARAMS = {"steps": 60, "repeats": 3}
SEEDS = None
CONFIG_OVERRIDES = True
RESULTS = ("sim_parallel_cpu", "sim_parallel_threads_cpu")  # now; threads (dddb431)


def jobs(args) -> list[dict]:
    p = args.params
    every = 10
    base = [f"train.steps={p['steps']}", f"train.log_every={every}", f"train.eval_every={p['steps']}"]
    return [harness.config_job(args, f"{algo} {name}", cfg, base + extra, None, repeats=p["repeats"], every=every)
            for algo, cfg in CONFIGS.items() for name, extra in SETTINGS.items()]


def run_one(job: dict) -> dict:
    per_step, loss = [], None
    for _ in range(job["repeats"]):
        res = harness.run_config(job)
        assert res.status == "completed", res.status
        logged = [m for m in res.metrics if m["step"] < res.metrics[-1]["step"]]  # before the final evaluation
        first, last = logged[0], logged[-1]
        per_step.append((last["wall_time_s"] - first["wall_time_s"]) / (last["step"] - first["step"]))
        loss = res.metrics[-1]["train_loss"]
    return {"step_s": round(statistics.median(per_step), 4), "step_s_each": [round(x, 4) for x in per_step],
            "final_train_loss": loss.hex(), "target": TARGET}


def finish(rows: list[dict], args) -> None:
    by = {r["run"]: r["metrics"] for r in rows}
    cells = []
    for r in rows:
        algo, name = r["run"].split(" ")
        m, one, one_t1 = r["metrics"], by.get(f"{algo} p1"), by.get(f"{algo} p1-t1")
        cells.append([r["run"], f"{m['step_s']:.4f}", f"{one['step_s'] / m['step_s']:.2f}" if one else "-",
                      f"{one_t1['step_s'] / m['step_s']:.2f}" if one_t1 else "-", m["final_train_loss"]])
    harness.print_table(["run", "wall s / step", "speed-up vs p1", "speed-up vs p1-t1", "final train loss"], cells)


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
