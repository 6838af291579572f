"""How the simulator's cost grows with the number of workers (issue 22): simulated / plain steps.

    python benchmarks/harness.py sim_scaling [--profile full|quick] [--out DIR] [--only "ddp *" ...]
                                             [--set "workers=[4, 16, 64, 256, 1024]"] [--set steps=20] [--set repeats=3]

Model: a 72-parameter linear model (nn.Linear(8, 8)), batch 8
of random inputs, SGD. "plain" = workers x steps forward/backward/SGD steps of one model in one
thread (the work the simulator must do anyway); "sim" = ``steps`` steps of the simulated cluster
(default engine: greenlets; "threads": ``engine="threads"``, the simulator before that engine)
with that many workers running the algorithm (ddp: an all-reduce per step; diloco: H = 5; dsgd:
a ring, a message to each neighbour per step). One run per algorithm and worker count (label
``"ALGO Nw"``); metrics: median over ``repeats`` of both times, their ratio (target <= 1.5 at 256
and 1,024 workers) and the resident memory growth per worker. Runs in this process with one
intra-op thread (recorded in provenance).
"""

from __future__ import annotations

import resource
import statistics
import time

import torch
from torch import nn

import harness

TARGET = 1.5
ALGOS = {"ddp": {}, "diloco": {"sync_every": 5}, "dsgd-ring": {}}
PROFILES = {"full": {}, "quick": {"params": {"workers": [4, 16], "steps": 4, "repeats": 1}}}
PARAMS = {"workers": [4, 16, 64, 256, 1024], "steps": 20, "repeats": 3}
SEEDS = None
CONFIG_OVERRIDES = False
RESULTS = ("sim_scaling_cpu", "sim_scaling_threads_cpu", "sim_scaling_before_cpu")  # now; threads (5b0839c); 014a1b5


def jobs(args) -> list[dict]:
    p = args.params
    return [{"run": f"{algo} {n}w", "seed": None, "config": {"algorithm": algo, "workers": n, "steps": p["steps"],
                                                              "repeats": p["repeats"]}}
            for algo in ALGOS for n in p["workers"]]


def _data(steps: int):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 8, generator=g) for _ in range(steps)]


def plain_time(n: int, steps: int) -> float:
    torch.manual_seed(0)
    model = nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xs = _data(steps)
    t0 = time.perf_counter()
    for x in xs:
        for _ in range(n):
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    return time.perf_counter() - t0


def sim_time(algo: str, n: int, steps: int, engine: str = "greenlets") -> float:
    import farsync
    from farsync.comm import SimCluster
    from farsync.topology import build_topology

    name = "dsgd" if algo == "dsgd-ring" else algo
    options = dict(ALGOS[algo])
    if algo == "dsgd-ring":
        options["topology"] = build_topology("ring", n)
    xs = _data(steps)

    def fn(comm):
        torch.manual_seed(0)
        model = nn.Linear(8, 8)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        a = farsync.wrap(model, opt, name, comm, **options)
        for x in xs:
            model(x).pow(2).mean().backward()
            a.step()
            a.zero_grad()

    cluster = SimCluster(n, engine=engine)
    t0 = time.perf_counter()
    cluster.run(fn)
    return time.perf_counter() - t0


def batched_time(algo: str, n: int, steps: int) -> float:
    from farsync.comm import SimCluster
    from farsync.sim_batched import BatchedWorkers, StepEvents, StreamedClock, add_step
    from farsync.topology import build_topology

    name = "dsgd" if algo == "dsgd-ring" else algo
    options = dict(ALGOS[algo])
    if algo == "diloco":
        options["outer"] = {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}
    xs = _data(steps)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    workers = BatchedWorkers(nn.Linear(8, 8), lambda m, x: m(x).pow(2).mean(), n, name, options, {"name": "sgd", "lr": 0.01},
                             topology=build_topology("ring", n) if name == "dsgd" else None)
    events, clock = StepEvents(workers), StreamedClock(SimCluster(n))
    clock.add_all(events.start())
    for x in xs:  # every worker gets the batch x, as in sim_time
        workers.step(x.unsqueeze(0).expand(n, *x.shape))
        add_step(clock, events)
    clock.add_all(events.log_point())
    clock.marks(0)
    clock.close()
    return time.perf_counter() - t0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(job: dict) -> dict:
    torch.set_num_threads(1)
    c = job["config"]
    plain, sim, threads, batched = [], [], [], []
    before = _rss_mb()
    for _ in range(c["repeats"]):
        plain.append(plain_time(c["workers"], c["steps"]))
        sim.append(sim_time(c["algorithm"], c["workers"], c["steps"]))
        threads.append(sim_time(c["algorithm"], c["workers"], c["steps"], "threads"))
        batched.append(batched_time(c["algorithm"], c["workers"], c["steps"]))
    p, s, b = statistics.median(plain), statistics.median(sim), statistics.median(batched)
    t = statistics.median(threads)
    return {"plain_s": round(p, 4), "sim_s": round(s, 4), "ratio": round(s / p, 3), "target": TARGET,
            "met": s / p <= TARGET, "threads_s": round(t, 4), "threads_ratio": round(t / p, 3), "batched_s": round(b, 4), "batched_ratio": round(b / p, 3), "batched_met": b / p <= TARGET, "peak_rss_growth_kb_per_worker": round(max(0.0, _rss_mb() - before) * 1024 / c["workers"], 1)}


def finish(rows: list[dict], args) -> None:
    harness.print_table(["run", "plain (s)", "simulated (s)", "ratio", "threads ratio", "batched (s)", "batched ratio",
                         "target", "peak RSS growth per worker (kB)"],
                        [[r["run"], f"{r['metrics']['plain_s']:.4f}", f"{r['metrics']['sim_s']:.4f}", f"{r['metrics']['ratio']:.2f}",
                          f"{r['metrics'].get('threads_ratio', float('nan')):.2f}",
                          f"{r['metrics']['batched_s']:.4f}", f"{r['metrics']['batched_ratio']:.2f}",
                          f"<= {r['metrics']['target']}", r["metrics"]["peak_rss_growth_kb_per_worker"]] for r in rows])


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
