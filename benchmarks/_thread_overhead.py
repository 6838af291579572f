"""Where the simulator's overhead on the demo GPT goes (issue 22): one worker's step, several ways.

    .venv/bin/python benchmarks/_thread_overhead.py            # prints a markdown table

Rows (the demo GPT of sim_overhead.py, batch 16, AdamW; best of 2 runs of 30 steps after 3 warm-up
steps, torch's default threads unless the row says otherwise):
- plain step in the main thread / in another thread (`threading.Thread`);
- plain step + DDP's flatten and copy back of the gradients (what a 1-worker DDP step adds);
- simulated DDP step with 1 worker, on the default engine (greenlets: the worker runs on this
  thread) and on ``engine="threads"`` (the worker in a thread of its own);
- a bare parallel kernel (x.mul(2) on 100,000 floats) in the main thread and in another thread;
- plain step in the main thread vs another thread under GOMP_SPINCOUNT=0, OMP_WAIT_POLICY=ACTIVE
  and one intra-op thread (each in a fresh process, since OpenMP reads its settings at start).
Not a harness benchmark (no result rows): the numbers are quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sim_overhead as so  # noqa: E402
from farsync.algorithms.flat import flatten, unflatten_into  # noqa: E402
from farsync.tasks.shakespeare import ShakespeareGPT  # noqa: E402

TASK = ShakespeareGPT(so.MODEL, 1, seed=0)
STEPS = 30


def plain(flat: bool = False) -> float:
    torch.manual_seed(0)
    model = TASK.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = TASK.sampler(0, so.BATCH)

    def one():
        TASK.loss(model, sampler.next_batch()).backward()
        if flat:
            grads = [p.grad for p in model.parameters()]
            unflatten_into(flatten(grads), grads)
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        one()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        one()
    return (time.perf_counter() - t0) / STEPS


def in_thread(fn, *args) -> float:
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join()
    return out[0]


def kernel_us() -> float:
    """One small parallel kernel: its time is mostly OpenMP's fork / join (spin or futex wake-up)."""
    x = torch.randn(100_000)
    for _ in range(200):
        x.mul(2)
    t0 = time.perf_counter()
    for _ in range(3000):
        x.mul(2)
    return (time.perf_counter() - t0) / 3000 * 1e6


def best(fn, *args) -> float:
    return min(fn(*args) for _ in range(2))


def child(mode: str) -> None:
    if mode == "1thread":
        torch.set_num_threads(1)
    m, t = best(plain), best(in_thread, plain)
    print(f"{m:.4f} {t:.4f}")


def main() -> None:
    print("| one worker's GPT step | s |\n|---|---|")
    print(f"| plain, main thread | {best(plain):.4f} |")
    print(f"| plain, another thread | {best(in_thread, plain):.4f} |")
    print(f"| plain + flatten / copy back, main thread | {best(plain, True):.4f} |")
    print(f"| simulated DDP step, 1 worker (greenlets) | {min(so.sim_step_time(TASK, 1, STEPS) for _ in range(2)):.4f} |")
    print(f"| simulated DDP step, 1 worker (threads) | "
          f"{min(so.sim_step_time(TASK, 1, STEPS, 'threads') for _ in range(2)):.4f} |")
    print(f"| x.mul(2), 1e5 floats, main thread (us) | {kernel_us():.1f} |")
    print(f"| x.mul(2), 1e5 floats, another thread (us) | {in_thread(kernel_us):.1f} |")
    print("\n| setting (fresh process) | main thread (s) | another thread (s) | ratio |\n|---|---|---|---|")
    for label, env, mode in (("default", {}, "default"), ("GOMP_SPINCOUNT=0", {"GOMP_SPINCOUNT": "0"}, "default"),
                             ("OMP_WAIT_POLICY=ACTIVE", {"OMP_WAIT_POLICY": "ACTIVE"}, "default"),
                             ("one intra-op thread", {}, "1thread")):
        out = subprocess.run([sys.executable, __file__, "--child", mode], env={**os.environ, **env},
                             capture_output=True, text=True, check=True).stdout.split()
        m, t = float(out[0]), float(out[1])
        print(f"| {label} | {m:.4f} | {t:.4f} | {t / m:.3f} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
