"""Async Local-SGD (delayed Nesterov + DyLU) vs synchronous DiLoCo on the Shakespeare GPT with heterogeneous
worker speeds, in simulated wall-clock time (issue 5, benchmark 3; formerly async_hetero.py).

    python benchmarks/harness.py async_local_sgd_gpt [--profile cpu|gpu|long|quick] [--out DIR] [--only RUN ...]
                                                     [--seeds 0 1 2] [--parallel N] [--set target_loss=2.2] [--set KEY=VALUE ...]

Not to be confused with async_heterogeneity.py (DuDe-ASGD / ASGD / FedBuff on convex logistic
regression, issue 8). The 4-block demo GPT of benchmarks/streaming.py, 4 workers, 600 steps' worth
of tokens (2,400 inner steps in all), the demo's AdamW, H = 24, outer SGD lr 0.7 / Nesterov 0.9 (run
by the async server as delayed Nesterov with N = 4 unless stated). An inner step takes 0.5 s x the
worker's speed factor: ``speeds [1, 1, 2, 4]`` (one worker 2x and one 4x slower) or all 1
(homogeneous reference). 1 Gbps / 10 ms links. Runs:

- diloco-homog: synchronous DiLoCo, equal speeds (the per-update reference)
- diloco: synchronous DiLoCo, speeds [1, 1, 2, 4] (every round waits for the slowest)
- async-dn-dylu: async Local-SGD, delayed Nesterov, dynamic local updates
- async-dn: the same without DyLU (every round H steps)
- async-nesterov-dylu: Nesterov on every arrival (period 1) with DyLU
- async-dn-dylu-homog: async Local-SGD with equal speeds

Profile ``long``: async-dn-dylu with twice the tokens (``train.steps=1200``). Metrics per run and
seed: final eval loss, simulated time, time to the parameter ``target_loss``, server updates, mean
staleness, tokens, compute utilization, bytes. Each run uses 2 intra-op threads.
"""

import torch

import harness

COMMON = ["task.n_layer=4", "algorithm.sync_every=24", "cluster.time_model=null", "cluster.step_time=0.5s"]
HETERO = ["cluster.speeds=[1, 1, 2, 4]"]
ASYNC = ["algorithm.name=async-local-sgd"]
RUNS = [
    ("diloco-homog", []),
    ("diloco", HETERO),
    ("async-dn-dylu", ASYNC + HETERO),
    ("async-dn", ASYNC + HETERO + ["algorithm.dylu=false"]),
    ("async-nesterov-dylu", ASYNC + HETERO + ["algorithm.period=1"]),
    ("async-dn-dylu-homog", ASYNC),
]

PROFILES = {"cpu": {}, "gpu": {"set": harness.GPU}, "long": {"set": ["train.steps=1200"], "only": ["async-dn-dylu"]},
            "quick": {"set": harness.GPT_QUICK, "only": ["diloco", "async-dn-dylu", "async-nesterov-dylu"]}}
PARAMS = {"target_loss": 2.2}
SEEDS = [0]
CONFIG_OVERRIDES = True
RESULTS = ("async_local_sgd_gpt_cpu", "async_local_sgd_gpt_long_cpu")


def jobs(args) -> list[dict]:
    return [harness.config_job(args, label, "demo_diloco.yaml", COMMON + sets, seed, target=args.params["target_loss"])
            for seed in args.seeds for label, sets in RUNS]


def run_one(job: dict) -> dict:
    torch.set_num_threads(2)
    from farsync.sweep import time_to_target

    r = harness.run_config(job)
    s, last = r.summary, r.metrics[-1]
    return {"final_eval_loss": s["final_eval_loss"], "sim_time_s": s["sim_time_s"],
            "time_to_target_s": time_to_target(r.metrics, job["target"]), "target_loss": job["target"],
            "updates": last.get("updates"), "staleness": last.get("staleness"), "tokens": s["tokens"],
            "compute_utilization": s["compute_utilization"], "bytes_sent_total": s["bytes_sent_total"], "status": s["status"]}


def finish(rows: list[dict], args) -> None:
    """One line per run and seed: final loss, simulated time, time to the target, server updates, staleness, costs."""
    f = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    print("\n| run | seed | final eval loss | sim time (s) | time to target (s) | updates | staleness | compute util. | bytes sent |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["metrics"]
        print(f"| {r['run']} | {r['seed']} | {f(m['final_eval_loss'], '.4f')} | {f(m['sim_time_s'], ',.1f')} | "
              f"{f(m['time_to_target_s'], ',.1f')} (<= {m['target_loss']}) | {f(m['updates'], 'd')} | {f(m['staleness'], '.1f')} | "
              f"{f(m['compute_utilization'], '.3f')} | {m['bytes_sent_total'] / 1e6:,.1f} MB |")


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
