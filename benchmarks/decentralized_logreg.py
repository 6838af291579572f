"""Decentralized methods on label-split logistic regression (issue 8, benchmark 1).

    python benchmarks/decentralized_logreg.py [--steps 2000] [--workers 8] [--graphs ring er] [--jobs 2] [--out runs/dec-logreg]

The `logreg` task on digits (1437 training rows, 64 features, 10 classes: d = 650 parameters),
l2 = 1e-3, float32 models, ``split: label-sorted`` (each worker holds one or two digits: strongly
heterogeneous local objectives) and ``full_batch: true`` (exact local gradients, so methods with
exactness guarantees can converge to the optimum). Every method uses plain SGD with the same
lr = 2 (alpha for fspda / ticopd). Graphs (MH weights): a ring and an Erdos-Renyi graph
G(n, 0.4, seed 0); fspda also on a Bernoulli(p = 0.5) subgraph of each, redrawn every step.
Compressors: top-k 10% and int8 (per-block absmax) for choco-sgd, docom-sgt and ticopd; fspda
exchanges a shared random-k 10% mask of coordinates per active edge.

Each run logs, every `--log-every` steps, the suboptimality of the *average* model
f(xbar) - f* (f: the whole training objective in float64, `LogReg.train_objective`; f*: its
L-BFGS optimum `LogReg.optimum()`), through a Task subclass whose evaluate() returns it (the
stock eval_loss is the held-out loss), with the consensus error (1/n) sum_i ||x_i - xbar||^2 and
the bytes sent by all workers together. Note: the decentralized methods minimize
(1/n) sum_i f_i, which weights the label-sorted shards (179 or 180 rows) very slightly differently
from f; `f_star_mean_of_shards_gap` in the results is f(argmin (1/n) sum_i f_i) - f*, the floor
this puts under the reported suboptimality (measured ~1e-7, far below the 1e-4 target).

Writes results.json (every curve) and decentralized_logreg.png into --out and prints one
markdown table per graph: final suboptimality, steps and bytes until <= 1e-4 for good (stays
there), the plateau (median suboptimality over the last 20% of the steps) and final consensus error.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path

import torch

import farsync
from farsync.tasks import register_task
from farsync.tasks.classification import LogReg

TARGET = 1e-4
LR = 2.0
TOPK = {"name": "topk", "ratio": 0.1}
INT8 = {"name": "int8"}
ER = {"name": "erdos-renyi", "p": 0.4, "seed": 0}
GRAPHS = {"ring": "ring", "er": ER}
FSPDA = {"mask_fraction": 0.1, "eta": 0.01, "gamma": 0.5, "beta": 1.0}
TICOPD = {"theta": 0.05, "eta": 0.01, "gamma": 1.0}  # theta 0.1, eta 0.02 diverged on the ER graph and with top-k


def methods(graph: str) -> dict[str, tuple[str, dict, dict | str]]:
    """label -> (algorithm, algorithm options, topology) for one graph."""
    g = GRAPHS[graph]
    return {
        "dsgd": ("dsgd", {}, g),
        "gradient-tracking": ("gradient-tracking", {}, g),
        "choco-sgd top-k 10%": ("choco-sgd", {"gamma": 0.2, "compress": TOPK}, g),
        "choco-sgd int8": ("choco-sgd", {"gamma": 0.5, "compress": INT8}, g),
        "docom-sgt top-k 10%": ("docom-sgt", {"gamma": 0.2, "beta": 1.0, "compress": TOPK}, g),
        "docom-sgt int8": ("docom-sgt", {"gamma": 0.5, "beta": 1.0, "compress": INT8}, g),
        "ticopd (exact)": ("ticopd", dict(TICOPD), g),
        "ticopd top-k 10%": ("ticopd", {**TICOPD, "compress": TOPK}, g),
        "ticopd int8": ("ticopd", {**TICOPD, "compress": INT8}, g),
        "fspda random-k 10%": ("fspda", dict(FSPDA), g),
        "fspda random-k 10%, bernoulli(0.5)": ("fspda", dict(FSPDA), {"name": "bernoulli", "p": 0.5, "base": g, "seed": 0}),
    }


class LogRegSubopt(LogReg):
    """`logreg` whose evaluation is the training-objective suboptimality f(x) - f* (float64)."""

    name = "logreg-subopt"

    def __init__(self, params, world_size, seed):
        super().__init__(params, world_size, seed)
        self.f_star = self.optimum()

    @torch.no_grad()
    def evaluate(self, model) -> float:
        return self.train_objective(model) - self.f_star


register_task(LogRegSubopt)  # at import: also in the spawned pool workers


def config(algo: str, options: dict, topology, steps: int, workers: int, log_every: int, lr: float = LR) -> dict:
    return {
        "name": f"dec-logreg-{algo}",
        "task": {"name": "logreg-subopt", "dataset": "digits", "split": "label-sorted", "full_batch": True, "l2": 1e-3},
        "cluster": {"workers": workers, "topology": topology},
        "algorithm": {"name": algo, "inner": {"name": "sgd", "lr": lr}, **options},
        "train": {"steps": steps, "batch_size": 1, "eval_every": log_every, "log_every": log_every},
    }


def run_one(job: tuple) -> dict:
    """job: (graph, label, workers, steps, log_every, out[, (algorithm, options, topology[, lr])]);
    the method comes from `methods(graph)[label]` (at lr LR) unless given."""
    graph, label, workers, steps, log_every, out = job[:6]
    torch.set_num_threads(1)
    algo, options, topology, *lr = job[6] if len(job) > 6 else methods(graph)[label]
    t0 = time.perf_counter()
    cfg = config(algo, options, topology, steps, workers, log_every, *lr)
    try:
        res = farsync.run(cfg, out=Path(out) / "runs" / f"n{workers}-{graph}-{label.replace(' ', '_').replace('%', '').replace(',', '').replace('(', '').replace(')', '')}",
                          progress=False)
        rows = res.metrics
    except Exception as exc:  # a diverged run (non-finite loss) is a result too
        return {"graph": graph, "method": label, "workers": workers, "error": repr(exc)[:300], "config": cfg}
    clean = lambda v: v if math.isfinite(v) else math.inf  # noqa: E731
    return {
        "graph": graph, "method": label, "workers": workers, "config": cfg,
        "step": [r["step"] for r in rows],
        "subopt": [clean(r.get("eval_loss", math.nan)) for r in rows],
        "consensus": [clean(r["consensus_error"]) for r in rows],
        "bytes": [r["bytes_sent"] for r in rows],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def reached(r: dict, target: float = TARGET) -> tuple[int | None, int | None]:
    """(step, total bytes) from which the suboptimality stays <= target, or (None, None)."""
    above = [k for k, v in enumerate(r["subopt"]) if not v <= target]
    k = 0 if not above else above[-1] + 1
    return (r["step"][k], r["bytes"][k]) if k < len(r["subopt"]) else (None, None)


def plateau(r: dict) -> float:
    tail = sorted(r["subopt"][-max(1, len(r["subopt"]) // 5):])
    return tail[len(tail) // 2]


def mean_of_shards_gap(workers: int) -> float:
    """f(argmin (1/n) sum_i f_i) - f*: how far the decentralized problem's optimum is from f's."""
    from farsync.tasks.classification import LogRegParams

    task = LogReg(LogRegParams(dataset="digits", split="label-sorted", l2=1e-3, dtype="float64"), workers, seed=0)
    model = task.optimal_model()  # warm start at argmin f
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=5000, tolerance_grad=1e-12, tolerance_change=0.0,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        f = sum(task._objective(model, task.X_train64[s], task.y[s]) for s in task._shards) / workers
        f.backward()
        return f

    for _ in range(3):
        opt.step(closure)
    return task.train_objective(model) - task.optimum()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[8])
    ap.add_argument("--graphs", nargs="+", default=["ring", "er"], choices=sorted(GRAPHS))
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (spawned processes, one torch thread each)")
    ap.add_argument("--out", default="runs/dec-logreg")
    ap.add_argument("--compact-json", default=None, help="also write a thinned, rounded copy of the results here")
    ap.add_argument("--reuse", default=None, help="a results.json whose runs with an identical config are kept, not rerun "
                                                   "(the runs are deterministic)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(g, m, n, args.steps, args.log_every, str(out)) for n in args.workers for g in args.graphs for m in methods(g)]
    t0 = time.perf_counter()
    old = json.loads(Path(args.reuse).read_text())["runs"] if args.reuse else []
    runs = []
    for job in list(todo):
        cfg = config(*methods(job[0])[job[1]], job[3], job[2], job[4])
        hit = [r for r in old if r["config"] == cfg and "error" not in r]
        if hit:
            runs.append(hit[0])
            todo.remove(job)
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for r in pool.imap(run_one, todo):
            runs.append(r)
            print(f"done {r['workers']} {r['graph']} {r['method']}: {r.get('wall_s', r.get('error'))}", flush=True)
    order = {(n, g, m): i for i, (n, g, m) in enumerate((n, g, m) for n in args.workers for g in args.graphs for m in methods(g))}
    runs.sort(key=lambda r: order[(r["workers"], r["graph"], r["method"])])
    gaps = {n: mean_of_shards_gap(n) for n in args.workers}
    summary = {"lr": LR, "steps": args.steps, "target": TARGET, "dataset": "digits", "split": "label-sorted",
               "f_star_mean_of_shards_gap": gaps, "total_wall_s": round(time.perf_counter() - t0, 1), "runs": runs}
    (out / "results.json").write_text(json.dumps(summary))
    if args.compact_json:
        Path(args.compact_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.compact_json).write_text(json.dumps(compact(summary), separators=(",", ":")))
    for n in args.workers:
        for g in args.graphs:
            report([r for r in runs if r["workers"] == n and r["graph"] == g], f"{g}, n = {n}")
    print(f"\nf(argmin mean of shard objectives) - f*: {', '.join(f'n={n}: {v:.2e}' for n, v in gaps.items())}")
    plot(runs, args.workers, args.graphs, out / "decentralized_logreg.png")


def compact(summary: dict) -> dict:
    """Curves every 5th logged point (plus the last), 4 significant digits; configs kept."""
    def thin(v):
        idx = list(range(0, len(v), 5)) + ([len(v) - 1] if (len(v) - 1) % 5 else [])
        return [v[i] if isinstance(v[i], int) else float(f"{v[i]:.4g}") if math.isfinite(v[i]) else None for i in idx]

    runs = []
    for r in summary["runs"]:
        if "error" in r:
            runs.append(r)
            continue
        step, nbytes = reached(r)
        runs.append({**{k: r[k] for k in ("graph", "method", "workers", "config", "wall_s")},
                     "final_subopt": float(f"{r['subopt'][-1]:.4g}"), "plateau": float(f"{plateau(r):.4g}"),
                     "final_consensus": float(f"{r['consensus'][-1]:.4g}"), "final_bytes": r["bytes"][-1],
                     "steps_to_1e-4": step, "bytes_to_1e-4": nbytes,
                     **{k: thin(r[k]) for k in ("step", "subopt", "consensus", "bytes")}})
    return {**{k: v for k, v in summary.items() if k != "runs"}, "runs": runs}


def report(runs: list[dict], title: str) -> None:
    print(f"\n### {title} (lr {LR}, target f(xbar) - f* <= {TARGET:g})\n")
    print("| method | final f(xbar) - f* | plateau (median, last 20%) | steps to 1e-4 | bytes to 1e-4 (all workers) "
          "| total bytes | final consensus error |\n|---|---|---|---|---|---|---|")
    for r in runs:
        if "error" in r:
            print(f"| {r['method']} | diverged | - | not reached | not reached | - | - |")
            continue
        step, nbytes = reached(r)
        hit = (f"{step}", f"{nbytes / 1e6:.2f} MB") if step is not None else ("not reached", "not reached")
        print(f"| {r['method']} | {r['subopt'][-1]:.2e} | {plateau(r):.2e} | {hit[0]} | {hit[1]} | "
              f"{r['bytes'][-1] / 1e6:.1f} MB | {r['consensus'][-1]:.1e} |")


def plot(runs: list[dict], workers: list[int], graphs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, g) for n in workers for g in graphs]
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 8.5), squeeze=False)
    for col, (n, g) in enumerate(panels):
        for k, r in enumerate(x for x in runs if x["workers"] == n and x["graph"] == g and "error" not in x):
            style = "-" if k < 10 else "--"
            mb = [b / 1e6 for b in r["bytes"]]
            axes[0][col].plot(mb, [max(v, 1e-12) for v in r["subopt"]], style, label=r["method"])
            axes[1][col].plot(r["step"], [max(v, 1e-16) for v in r["consensus"]], style, label=r["method"])
        axes[0][col].axhline(TARGET, color="grey", lw=0.5)
        axes[0][col].set(xscale="log", yscale="log", ylim=(1e-8, 10), title=f"digits label-sorted, {g}, n = {n}",
                         xlabel="MB sent (all workers)", ylabel="f(xbar) - f*")
        axes[1][col].set(yscale="log", xlabel="step", ylabel="consensus error")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
