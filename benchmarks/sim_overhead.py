"""Overhead of the simulated cluster: one simulated DDP step with N workers vs N plain PyTorch steps.

    python benchmarks/sim_overhead.py [--workers 4] [--steps 20] [--repeats 5]

Model and batch: the demo's Shakespeare GPT (3 layers, width 96, context 64, batch 16 per worker),
AdamW. "plain" = N consecutive forward/backward/AdamW steps of one model in one thread (the work
the simulator must do anyway); "sim" = one DDP step of the N-worker simulated cluster (N
forward/backward passes, the all-reduce of the gradients, N AdamW steps, the thread hand-offs).
Reports the median over repeats of the time per step and the ratio sim / plain (target <= 1.15).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import torch

from farsync.algorithms import DDP
from farsync.comm import SimCluster
from farsync.tasks.shakespeare import ShakespeareGPT, ShakespeareParams

PARAMS = ShakespeareParams(n_layer=3, n_head=4, n_embd=96, block_size=64)
BATCH = 16


def plain_step_time(task, n_workers: int, steps: int) -> float:
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    samplers = [task.sampler(r, BATCH) for r in range(n_workers)]

    def one():
        for s in samplers:  # N plain steps: the work of N workers
            task.loss(model, s.next_batch()).backward()
            opt.step()
            opt.zero_grad()

    for _ in range(3):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def sim_step_time(task, n_workers: int, steps: int) -> float:
    cluster = SimCluster(n_workers)

    def worker(comm):
        torch.manual_seed(0)
        model = task.build_model()
        algo = DDP(model, torch.optim.AdamW(model.parameters(), lr=1e-3), comm)
        sampler = task.sampler(comm.rank, BATCH)
        t0 = None
        for i in range(steps + 3):
            if i == 3:
                t0 = time.perf_counter()
            task.loss(model, sampler.next_batch()).backward()
            algo.step()
            algo.zero_grad()
        comm.barrier()  # every worker has finished its last step
        return time.perf_counter() - t0

    return cluster.run(worker)[0] / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    task = ShakespeareGPT(PARAMS, args.workers, seed=0)
    plain, sim = [], []
    for _ in range(args.repeats):
        plain.append(plain_step_time(task, args.workers, args.steps))
        sim.append(sim_step_time(task, args.workers, args.steps))
    p, s = statistics.median(plain), statistics.median(sim)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({
        "workers": args.workers, "steps": args.steps, "repeats": args.repeats,
        "plain_N_steps_s": round(p, 5), "sim_ddp_step_s": round(s, 5), "ratio": round(s / p, 3),
        "target": 1.15, "met": s / p <= 1.15, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "commit": commit,
    }))


if __name__ == "__main__":
    main()
