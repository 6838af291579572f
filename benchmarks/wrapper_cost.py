"""Cost of the averaging wrappers: step time relative to the base optimizer, and state memory
(issue 6, benchmark 2).

    python benchmarks/wrapper_cost.py [--steps 200] [--threads 2] [--n-embd 256] [--n-layer 4]

A Shakespeare-GPT-shaped model (random weights and gradients; no data needed), AdamW
(foreach, the torch default on this machine) as the base. For each optimizer: the median over
--steps of the time of ``opt.step()`` alone (gradients fixed, set once), and the bytes of its
state tensors per model parameter after one step (AdamW: 2 x 4 = 8 bytes/parameter). Prints a
markdown table.
"""

import argparse
import statistics
import time

import torch

from farsync.optim import GPA, EMANesterov, Lookahead
from farsync.tasks.gpt import GPT, GPTConfig


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=128, n_layer=args.n_layer, n_head=4, n_embd=args.n_embd))
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    makers = {
        "AdamW (base)": lambda: torch.optim.AdamW(params, lr=1e-4),
        "GPA(AdamW)": lambda: GPA(torch.optim.AdamW(params, lr=1e-4)),
        "Schedule-Free GPA(AdamW)": lambda: GPA(torch.optim.AdamW(params, lr=1e-4, betas=(0.0, 0.999)), mu_y=0.9, weighting="schedule-free"),
        "EMANesterov(AdamW)": lambda: EMANesterov(torch.optim.AdamW(params, lr=1e-4)),
        "Lookahead(AdamW)": lambda: Lookahead(torch.optim.AdamW(params, lr=1e-4)),
    }
    rows, base_time = [], None
    for name, make in makers.items():
        opt = make()
        for _ in range(5):  # warm-up (state allocation, first-call overheads)
            opt.step()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        base_time = base_time or med
        rows.append((name, med * 1e3, med / base_time, state_bytes(opt) / n))
    print(f"model: {n:,} parameters, torch {torch.__version__}, {args.threads} threads, median of {args.steps} steps\n")
    print("| optimizer | step time (ms) | vs AdamW | state bytes / parameter |")
    print("|---|---|---|---|")
    for name, ms, ratio, bpp in rows:
        print(f"| {name} | {ms:.2f} | {ratio:.2f}x | {bpp:.1f} |")


if __name__ == "__main__":
    main()
