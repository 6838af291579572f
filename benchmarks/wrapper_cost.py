"""Cost of the averaging wrappers: step time relative to the base optimizer, and state memory
(issue 6, benchmark 2).

    python benchmarks/wrapper_cost.py [--steps 200] [--threads 2] [--n-embd 256] [--n-layer 4]

A Shakespeare-GPT-shaped model (random weights and gradients; no data needed), AdamW
(foreach, the torch default on this machine) as the base. Each optimizer has its own copy of the
parameters and fixed gradients; the optimizers step in turn (round-robin, --steps rounds) so
that the machine's drift affects them alike. Reported: the median step time, the median of the
per-round ratio to AdamW's step, and the bytes of state tensors per model parameter (AdamW:
2 x 4 = 8 bytes/parameter). Prints a markdown table.
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
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def fresh_params():  # each optimizer gets its own copy of the parameters and gradients
        ps = [p.detach().clone().requires_grad_() for p in model.parameters() if p.requires_grad]
        g = torch.Generator().manual_seed(1)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        return ps

    makers = {
        "AdamW (base)": lambda ps: torch.optim.AdamW(ps, lr=1e-4),
        "GPA(AdamW)": lambda ps: GPA(torch.optim.AdamW(ps, lr=1e-4)),
        "Schedule-Free GPA(AdamW)": lambda ps: GPA(torch.optim.AdamW(ps, lr=1e-4, betas=(0.0, 0.999)), mu_y=0.9, weighting="schedule-free"),
        "EMANesterov(AdamW)": lambda ps: EMANesterov(torch.optim.AdamW(ps, lr=1e-4)),
        "Lookahead(AdamW)": lambda ps: Lookahead(torch.optim.AdamW(ps, lr=1e-4)),
    }
    opts = {name: make(fresh_params()) for name, make in makers.items()}
    for opt in opts.values():
        for _ in range(5):  # warm-up (state allocation, first-call overheads)
            opt.step()
    times = {name: [] for name in opts}
    for _ in range(args.steps):  # round-robin, so that the machine's drift hits every optimizer alike
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    base = times["AdamW (base)"]
    rows = []
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))  # per-round ratio to the base
        rows.append((name, statistics.median(ts) * 1e3, ratio, state_bytes(opts[name]) / n))
    print(f"model: {n:,} parameters, torch {torch.__version__}, {args.threads} threads, median of {args.steps} steps\n")
    print("| optimizer | step time (ms) | vs AdamW | state bytes / parameter |")
    print("|---|---|---|---|")
    for name, ms, ratio, bpp in rows:
        print(f"| {name} | {ms:.2f} | {ratio:.2f}x | {bpp:.1f} |")


if __name__ == "__main__":
    main()
