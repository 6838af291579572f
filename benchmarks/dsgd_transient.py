"""DSGD transient time on rings of n = 4, 8, 16 vs centralized SGD (issue 8, benchmark 4).

    python benchmarks/dsgd_transient.py [--ns 4 8 16] [--seeds 0 1 2] [--steps 1000] [--lr 0.3]
        [--decay-t0 10] [--eps 0.005 0.01 0.02 0.03] [--json benchmarks/results/dsgd_transient.json]
        [--png docs/img/dsgd_transient.png]

Task (non-convex, the setting of the O(n^{2/3} / rho^{8/3}) prediction): `logreg` on digits with
one hidden tanh layer of 32 units (a 2-layer MLP, 2,410 parameters), l2 = 1e-3, float32, split
``iid`` (the workers' objectives differ only by sampling: the "similar local Hessians" regime),
batch ``--batch`` per worker. DSGD (the library's `dsgd`, cta order, Metropolis-Hastings weights) on
a ring of n workers on the in-process simulator vs centralized SGD with the same total batch
(n x batch: the n workers' batches concatenated, i.e. what `ddp` computes) and the same step sizes.
Both draw the same batches (worker r's sampler is seeded by (seed, r) in both) from the same
initial model, so the difference is the network alone. Step size: lr_t = lr / sqrt(1 + t / t0),
the anytime form of the lr ~ 1/sqrt(T) of the non-convex analyses (with a constant lr the
consensus error, and with it DSGD's lag, does not die out, so there is no transient to measure).

Measured every ``--eval-every`` steps: the full training objective f(xbar) of DSGD's average model
and f(x) of centralized SGD, in float64. Gap g(t) = (f_DSGD(t) - f_SGD(t)) / f_SGD(t), averaged over
seeds. Transient time T_eps(n): the first evaluation after which g stays <= eps for the rest of the
run (None if it never settles). Also: T with the running averages (1/t) sum_{s<=t} f(.) (the
quantity the bounds are about). Predictions, normalised to n = 4: n^{2/3} / rho^{8/3}
(non-convex) and sqrt(n) / rho (strongly convex), rho = the ring's spectral gap from
`build_topology`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from farsync.algorithms import get_algorithm
from farsync.comm import SimCluster
from farsync.optim import build_optimizer
from farsync.tasks.classification import LogReg, LogRegParams
from farsync.topology import build_topology


def make_task(n: int, seed: int, hidden: int) -> LogReg:
    return LogReg(LogRegParams(dataset="digits", split="iid", hidden=hidden), n, seed=seed)


def lr_at(t: int, lr: float, t0: float) -> float:
    return lr / math.sqrt(1.0 + t / t0)


def run_dsgd(n: int, seed: int, args) -> list[float]:
    task = make_task(n, seed, args.hidden)

    def fn(comm):
        torch.manual_seed(seed)  # identical initial model on every worker (as the training loop does)
        model = task.build_model()
        opt = build_optimizer(model.parameters(), {"name": "sgd", "lr": args.lr})
        algo = get_algorithm("dsgd")(model, opt, comm, topology="ring")
        sampler = task.sampler(comm.rank, args.batch)
        out = []
        for t in range(args.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(t, args.lr, args.decay_t0)
            task.loss(model, sampler.next_batch()).backward()
            algo.step()
            algo.zero_grad()
            if (t + 1) % args.eval_every == 0:
                ce = algo.consensus_error()  # collective: gathers the average model
                if comm.rank == 0:
                    with algo.eval_params() as m:
                        out.append((task.train_objective(m), ce))
        return out

    return SimCluster(n).run(fn)[0]


def run_sgd(n: int, seed: int, args) -> list[float]:
    """Centralized SGD on the n workers' concatenated batches (= ddp's mean gradient)."""
    task = make_task(n, seed, args.hidden)
    torch.manual_seed(seed)
    model = task.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    samplers = [task.sampler(r, args.batch) for r in range(n)]
    out = []
    for t in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(t, args.lr, args.decay_t0)
        batches = [s.next_batch() for s in samplers]
        X, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        opt.zero_grad()
        task.loss(model, (X, y)).backward()
        opt.step()
        if (t + 1) % args.eval_every == 0:
            out.append(task.train_objective(model))
    return out


def settle(steps: list[int], gap: list[float], eps: float) -> int | None:
    """First step after which gap <= eps for the rest of the run (None: never settles)."""
    above = [k for k, g in enumerate(gap) if g > eps]
    if not above:
        return steps[0]
    return steps[above[-1] + 1] if above[-1] + 1 < len(gap) else None


def running_mean(xs: list[float]) -> list[float]:
    out, s = [], 0.0
    for k, x in enumerate(xs):
        s += x
        out.append(s / (k + 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--decay-t0", type=float, default=10.0)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.03])
    ap.add_argument("--json", default="benchmarks/results/dsgd_transient.json")
    ap.add_argument("--png", default="docs/img/dsgd_transient.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = list(range(args.eval_every, args.steps + 1, args.eval_every))
    rho = {n: build_topology("ring", n).spectral_gap() for n in args.ns}
    runs = {}
    for n in args.ns:
        for seed in args.seeds:
            t0 = time.perf_counter()
            d = run_dsgd(n, seed, args)
            s = run_sgd(n, seed, args)
            runs[(n, seed)] = {"dsgd": [f for f, _ in d], "consensus": [c for _, c in d], "sgd": s}
            print(f"n={n:2d} seed {seed}: final f dsgd {d[-1][0]:.4f} sgd {s[-1]:.4f} "
                  f"gap {(d[-1][0] - s[-1]) / s[-1]:+.4f} consensus {d[-1][1]:.3g} wall {time.perf_counter() - t0:.0f}s", flush=True)

    res = {}
    for n in args.ns:
        rs = [runs[(n, s)] for s in args.seeds]
        gap = [statistics.fmean((r["dsgd"][k] - r["sgd"][k]) / r["sgd"][k] for r in rs) for k in range(len(steps))]
        rd = [running_mean(r["dsgd"]) for r in rs]
        rsg = [running_mean(r["sgd"]) for r in rs]
        rgap = [statistics.fmean((a[k] - b[k]) / b[k] for a, b in zip(rd, rsg)) for k in range(len(steps))]
        gap_sd = [statistics.pstdev([(r["dsgd"][k] - r["sgd"][k]) / r["sgd"][k] for r in rs]) for k in range(len(steps))]
        res[n] = {"rho": rho[n], "gap": gap, "gap_sd": gap_sd, "running_gap": rgap,
                  "max_gap": max(gap), "argmax_gap": steps[gap.index(max(gap))], "final_gap": gap[-1],
                  "consensus": [statistics.fmean(r["consensus"][k] for r in rs) for k in range(len(steps))],
                  "T": {str(e): settle(steps, gap, e) for e in args.eps},
                  "T_running": {str(e): settle(steps, rgap, e) for e in args.eps},
                  "T_per_seed": {str(e): [settle(steps, [(r["dsgd"][k] - r["sgd"][k]) / r["sgd"][k] for k in range(len(steps))], e)
                                          for r in rs] for e in args.eps}}

    n0 = args.ns[0]
    pred_nc = {n: (n ** (2 / 3) / rho[n] ** (8 / 3)) / (n0 ** (2 / 3) / rho[n0] ** (8 / 3)) for n in args.ns}
    pred_sc = {n: (math.sqrt(n) / rho[n]) / (math.sqrt(n0) / rho[n0]) for n in args.ns}
    print(f"\nlogreg digits MLP (hidden {args.hidden}), iid, batch {args.batch}/worker, lr_t = {args.lr}/sqrt(1 + t/{args.decay_t0:g}), "
          f"{args.steps} steps, seeds {args.seeds}")
    for e in args.eps:
        for label, key in (("instantaneous", "T"), ("running-average", "T_running")):
            print(f"\n#### eps = {e:g}, {label} gap\n\n| n | rho | max gap (at step) | final gap | T(n) | T(n)/T({n0}) | "
                  f"n^(2/3)/rho^(8/3), normalised | sqrt(n)/rho, normalised | per seed T |\n|---|---|---|---|---|---|---|---|---|")
            T0 = res[n0][key][str(e)]
            for n in args.ns:
                T = res[n][key][str(e)]
                ratio = f"{T / T0:.2f}" if (T and T0) else "-"
                per_seed = res[n]["T_per_seed"][str(e)] if key == "T" else "-"
                print(f"| {n} | {rho[n]:.5f} | {res[n]['max_gap']:.4f} ({res[n]['argmax_gap']}) | {res[n]['final_gap']:+.4f} | "
                      f"{T if T is not None else f'> {args.steps}'} | {ratio} | {pred_nc[n]:.1f} | {pred_sc[n]:.2f} | {per_seed} |")
    out = {"setup": vars(args), "steps": steps, "rho": rho, "pred_nonconvex_ratio": pred_nc, "pred_strongly_convex_ratio": pred_sc,
           "summary": {n: {k: (v if not isinstance(v, list) else [float(f"{x:.4g}") for x in v]) for k, v in r.items()}
                       for n, r in res.items()},
           "runs": {f"n{n}-s{s}": {k: [float(f"{x:.6g}") for x in v] for k, v in r.items()} for (n, s), r in runs.items()}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, separators=(",", ":")))
    plot(steps, res, args, Path(args.png))


def plot(steps, res, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for n, r in res.items():
        axes[0].plot(steps, r["gap"], label=f"ring n={n} (rho={r['rho']:.3f})")
        axes[1].plot(steps, r["running_gap"], label=f"ring n={n}")
        axes[2].plot(steps, r["consensus"], label=f"ring n={n}")
    for e in args.eps:
        for ax in axes[:2]:
            ax.axhline(e, color="grey", lw=0.6, ls="--")
    axes[0].set(xlabel="iteration", ylabel="(f_DSGD(xbar) - f_SGD) / f_SGD", title="relative gap to centralized SGD (mean of seeds)",
                yscale="symlog", ylim=(-0.01, None))
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[1].set(xlabel="iteration", title="relative gap of the running averages (1/t) sum f")
    axes[1].set_yscale("symlog", linthresh=1e-3)
    axes[2].set(xlabel="iteration", ylabel="(1/n) sum ||x_i - xbar||^2", title="consensus error", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"DSGD vs centralized SGD, logreg digits MLP(hidden {args.hidden}), iid, batch {args.batch}/worker, "
                 f"lr_t = {args.lr}/sqrt(1 + t/{args.decay_t0:g})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
