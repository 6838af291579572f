"""Cost of the averaging wrappers: step time relative to the base optimizer, and state memory
(issue 6, benchmark 2).

    python benchmarks/harness.py wrapper_cost [--profile full|quick] [--out DIR] [--set steps=300] [--set threads=2]
                                              [--set n_embd=256] [--set n_layer=4]

A Shakespeare-GPT-shaped model (random weights and gradients; no data needed), AdamW
(foreach, the torch default on this machine) as the base. Each optimizer has its own copy of the
parameters and fixed gradients; the optimizers step in turn (round-robin, ``steps`` rounds) so
that the machine's drift affects them alike: hence one run (label ``wrappers``) that measures
them all. Metrics: the model's parameter count and, per optimizer, the median step time, the
median of the per-round ratio to AdamW's step, and the bytes of state tensors per model parameter
(AdamW: 2 x 4 = 8 bytes/parameter). The table: after the run, or --report.
"""

import statistics
import time

import torch

import harness
from farsync.optim import GPA, EMANesterov, Lookahead
from farsync.tasks.gpt import GPT, GPTConfig

MAKERS = {
    "AdamW (base)": lambda ps: torch.optim.AdamW(ps, lr=1e-4),
    "GPA(AdamW)": lambda ps: GPA(torch.optim.AdamW(ps, lr=1e-4)),
    "Schedule-Free GPA(AdamW)": lambda ps: GPA(torch.optim.AdamW(ps, lr=1e-4, betas=(0.0, 0.999)), mu_y=0.9, weighting="schedule-free"),
    "EMANesterov(AdamW)": lambda ps: EMANesterov(torch.optim.AdamW(ps, lr=1e-4)),
    "Lookahead(AdamW)": lambda ps: Lookahead(torch.optim.AdamW(ps, lr=1e-4)),
}
BASE = "AdamW (base)"

PROFILES = {"full": {}, "quick": {"params": {"steps": 5, "n_embd": 32, "n_layer": 1}}}
PARAMS = {"steps": 200, "threads": 2, "n_embd": 256, "n_layer": 4}
SEEDS = None  # torch.manual_seed(0)
CONFIG_OVERRIDES = False
RESULTS = ()  # the numbers are in docs/benchmarks.md (printed tables of runs before the harness)


def jobs(args) -> list[dict]:
    return [{"run": "wrappers", "seed": None, "config": dict(args.params)}]


def state_bytes(opt: torch.optim.Optimizer) -> int:
    seen, total = set(), 0
    for o in (opt, getattr(opt, "base", None)):
        if o is None:
            continue
        for st in o.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor) and v.data_ptr() not in seen and v.numel() > 1:
                    seen.add(v.data_ptr())
                    total += v.numel() * v.element_size()
    return total


def fresh_params(model: torch.nn.Module) -> list[torch.Tensor]:
    """A copy of the model's parameters with fixed random gradients (each optimizer gets its own)."""
    ps = [p.detach().clone().requires_grad_() for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return ps


def round_robin(opts: dict, steps: int) -> dict[str, list[float]]:
    """Step every optimizer in turn, `steps` rounds after 5 warm-up steps each; the step times per optimizer."""
    for opt in opts.values():
        for _ in range(5):  # warm-up (state allocation, first-call overheads)
            opt.step()
    times: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(steps):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    return times


def run_one(job: dict) -> dict:
    cfg = job["config"]
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=128, n_layer=cfg["n_layer"], n_head=4, n_embd=cfg["n_embd"]))
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opts = {name: make(fresh_params(model)) for name, make in MAKERS.items()}
    times = round_robin(opts, cfg["steps"])
    base = times[BASE]
    return {"parameters": n, "optimizers": [
        {"optimizer": name, "step_ms": round(statistics.median(ts) * 1e3, 4),
         "vs_adamw": round(statistics.median(t / b for t, b in zip(ts, base)), 4),  # per-round ratio to the base
         "state_bytes_per_param": state_bytes(opts[name]) / n} for name, ts in times.items()]}


def finish(rows: list[dict], args) -> None:
    for r in rows:
        m = r["metrics"]
        print(f"\nmodel: {m['parameters']:,} parameters, {r['config']['threads']} threads, median of {r['config']['steps']} steps\n")
        print("| optimizer | step time (ms) | vs AdamW | state bytes / parameter |\n|---|---|---|---|")
        for o in m["optimizers"]:
            print(f"| {o['optimizer']} | {o['step_ms']:.2f} | {o['vs_adamw']:.2f}x | {o['state_bytes_per_param']:.1f} |")


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
