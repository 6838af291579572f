"""Decentralized methods on label-split logistic regression (issue 8, benchmark 1).

    python benchmarks/harness.py decentralized_logreg [--profile n8|ring16|er16|quick] [--out DIR] [--only RUN ...]
                                                      [--parallel 2] [--set steps=2000] [--set KEY=VALUE ...]

The `logreg` task on digits (1437 training rows, 64 features, 10 classes: d = 650 parameters),
l2 = 1e-3, float32 models, ``split: label-sorted`` (each worker holds one or two digits: strongly
heterogeneous local objectives) and ``full_batch: true`` (exact local gradients, so methods with
exactness guarantees can converge to the optimum). Every method uses plain SGD with the same
lr = 2 (alpha for fspda / ticopd). Graphs (MH weights): a ring and an Erdos-Renyi graph
G(n, 0.4, seed 0); fspda also on a Bernoulli(p = 0.5) subgraph of each, redrawn every step.
Compressors: top-k 10% and int8 (per-block absmax) for choco-sgd, docom-sgt and ticopd; fspda
exchanges a shared random-k 10% mask of coordinates per active edge. Profiles: ``n8`` (8 workers,
ring and ER: the default), ``ring16`` and ``er16`` (16 workers, one graph each).

Each run (label ``"n<workers> <graph> <method>"``) logs, every ``log_every`` steps, the
suboptimality of the *average* model f(xbar) - f* (f: the whole training objective in float64,
`LogReg.train_objective`; f*: its L-BFGS optimum `LogReg.optimum()`), through a Task subclass whose
evaluate() returns it (the stock eval_loss is the held-out loss), with the consensus error
(1/n) sum_i ||x_i - xbar||^2 and the bytes sent by all workers together. Metrics: those curves (4
significant digits, null where not finite) and, from the unrounded curves, the final suboptimality,
the steps and bytes until <= 1e-4 for good (stays there), the plateau (median suboptimality over the
last 20% of the steps) and the final consensus error; a run that raised (a diverged run) has
"error". The tables give them per graph. Note: the decentralized methods minimize (1/n) sum_i f_i,
which weights the label-sorted shards (179 or 180 rows) very slightly differently from f; the tables
are followed by f(argmin (1/n) sum_i f_i) - f*, the floor this puts under the reported
suboptimality (measured ~1e-7, far below the 1e-4 target). Each run uses one torch thread.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

import farsync
import harness
from farsync import claims as C
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

PROFILES = {"n8": {"parallel": 2}, "ring16": {"params": {"workers": [16], "graphs": ["ring"]}, "parallel": 2},
            "er16": {"params": {"workers": [16], "graphs": ["er"]}, "parallel": 2},
            "quick": {"params": {"steps": 40, "log_every": 10, "graphs": ["ring"]}},
            # the claim decentralized-exact-convergence (see CLAIMS): the ring, both splits, 5 methods (Setting.only)
            "claims-cpu": {"params": {"steps": 1500, "graphs": ["ring"], "splits": ["label-sorted", "iid"]}},
            "claims-gpu": {"params": {"steps": 3000, "workers": [16], "graphs": ["ring"], "splits": ["label-sorted", "iid"]}}}
PARAMS = {"steps": 2000, "workers": [8], "graphs": ["ring", "er"], "log_every": 20, "splits": ["label-sorted"]}
SEEDS = None  # full-batch gradients: deterministic
CONFIG_OVERRIDES = True
RESULTS = ("decentralized_logreg", "decentralized_logreg_ring16", "decentralized_logreg_er16")  # the figure: harness.NOT_FROM_RESULTS


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


def config(algo: str, options: dict, topology, steps: int, workers: int, log_every: int, lr: float = LR,
           split: str = "label-sorted") -> dict:
    return {
        "name": f"dec-logreg-{algo}",
        "task": {"name": "logreg-subopt", "dataset": "digits", "split": split, "full_batch": True, "l2": 1e-3},
        "cluster": {"workers": workers, "topology": topology},
        "algorithm": {"name": algo, "inner": {"name": "sgd", "lr": lr}, **options},
        "train": {"steps": steps, "batch_size": 1, "eval_every": log_every, "log_every": log_every},
    }


def make_job(args, graph: str, label: str, workers: int, spec: tuple, split: str = "label-sorted") -> dict:
    """A run of `spec` = (algorithm, options, topology[, lr]) on `graph` with `workers` workers; a split other than
    label-sorted is named in the run label ("n8 ring dsgd (iid split)") and the config."""
    algo, options, topology, *lr = spec
    run = f"n{workers} {graph} {label}" + ("" if split == "label-sorted" else f" ({split} split)")
    cfg = config(algo, options, topology, args.params["steps"], workers, args.params["log_every"], *(lr or [LR]), split=split)
    extra = {} if split == "label-sorted" else {"split": split}
    return {"run": run, "seed": None, "dir": str(harness.run_dir(args.out, run, None)),
            "config": {"graph": graph, "method": label, "workers": workers, **extra, "farsync": cfg,
                       "overrides": list(args.overrides)}}


def jobs(args) -> list[dict]:
    return [make_job(args, g, m, n, spec, split) for split in args.params["splits"] for n in args.params["workers"]
            for g in args.params["graphs"] for m, spec in methods(g).items()]


def reached(subopt: list[float], step: list[int], nbytes: list[int], target: float = TARGET) -> tuple[int | None, int | None]:
    """(step, total bytes) from which the suboptimality stays <= target, or (None, None)."""
    above = [k for k, v in enumerate(subopt) if not v <= target]
    k = 0 if not above else above[-1] + 1
    return (step[k], nbytes[k]) if k < len(subopt) else (None, None)


def plateau(subopt: list[float]) -> float:
    tail = sorted(subopt[-max(1, len(subopt) // 5):])
    return tail[len(tail) // 2]


def run_one(job: dict) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        rows = farsync.run(job["config"]["farsync"], overrides=job["config"]["overrides"], out=job["dir"], progress=False).metrics
    except Exception as exc:  # a diverged run (non-finite loss) is a result too
        return {"error": repr(exc)[:300]}
    clean = lambda v: v if math.isfinite(v) else math.inf  # noqa: E731
    step, nbytes = [r["step"] for r in rows], [r["bytes_sent"] for r in rows]
    subopt = [clean(r.get("eval_loss", math.nan)) for r in rows]
    consensus = [clean(r["consensus_error"]) for r in rows]
    hit_step, hit_bytes = reached(subopt, step, nbytes)
    g4 = lambda v: float(f"{v:.4g}") if math.isfinite(v) else None  # noqa: E731
    return {"final_subopt": subopt[-1], "plateau": plateau(subopt), "final_consensus": consensus[-1], "final_bytes": nbytes[-1],
            "steps_to_1e-4": hit_step, "bytes_to_1e-4": hit_bytes, "wall_s": round(time.perf_counter() - t0, 1),
            "step": step, "subopt": [g4(v) for v in subopt], "consensus": [g4(v) for v in consensus], "bytes": nbytes}


def legacy_rows(data: dict) -> list[dict]:
    """A --compact-json file of the script before the harness ({..., "runs": [{graph, method, workers, config, ...}]})."""
    keys = ("graph", "method", "workers", "config")
    return [{"run": f"n{r['workers']} {r['graph']} {r['method']}", "seed": None,
             "config": {"graph": r["graph"], "method": r["method"], "workers": r["workers"], "farsync": r["config"]},
             "metrics": {k: v for k, v in r.items() if k not in keys}} for r in data["runs"]]


def label_of(row: dict) -> str:
    """The method, with its split when that is not label-sorted."""
    split = row["config"].get("split")
    return row["config"]["method"] + (f" ({split} split)" if split else "")


def report(rows: list[dict], title: str) -> None:
    print(f"\n### {title} (lr {LR}, target f(xbar) - f* <= {TARGET:g})\n")
    print("| method | final f(xbar) - f* | plateau (median, last 20%) | steps to 1e-4 | bytes to 1e-4 (all workers) "
          "| total bytes | final consensus error |\n|---|---|---|---|---|---|---|")
    for row in rows:
        r, method = row["metrics"], label_of(row)
        if "error" in r:
            print(f"| {method} | diverged | - | not reached | not reached | - | - |")
            continue
        step, nbytes = r["steps_to_1e-4"], r["bytes_to_1e-4"]
        hit = (f"{step}", f"{nbytes / 1e6:.2f} MB") if step is not None else ("not reached", "not reached")
        print(f"| {method} | {r['final_subopt']:.2e} | {r['plateau']:.2e} | {hit[0]} | {hit[1]} | "
              f"{r['final_bytes'] / 1e6:.1f} MB | {r['final_consensus']:.1e} |")


def panels(rows: list[dict]) -> list[tuple[int, str]]:
    return list(dict.fromkeys((r["config"]["workers"], r["config"]["graph"]) for r in rows))


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


def finish(rows: list[dict], args) -> None:
    for n, g in panels(rows):
        report([r for r in rows if (r["config"]["workers"], r["config"]["graph"]) == (n, g)], f"{g}, n = {n}")
    gaps = {n: mean_of_shards_gap(n) for n in dict.fromkeys(n for n, _ in panels(rows))}
    print(f"\nf(argmin mean of shard objectives) - f*: {', '.join(f'n={n}: {v:.2e}' for n, v in gaps.items())}")
    figure("decentralized_logreg.png", rows, Path(args.out) / "decentralized_logreg.png")


def figure(png: str, rows: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    nan = lambda v: math.nan if v is None else v  # noqa: E731  (not finite: not drawn)
    cols = panels(rows)
    fig, axes = plt.subplots(2, len(cols), figsize=(6 * len(cols), 8.5), squeeze=False)
    for col, (n, g) in enumerate(cols):
        runs = [r for r in rows if (r["config"]["workers"], r["config"]["graph"]) == (n, g) and "error" not in r["metrics"]]
        for k, row in enumerate(runs):
            r, style = row["metrics"], "-" if k < 10 else "--"
            mb = [b / 1e6 for b in r["bytes"]]
            axes[0][col].plot(mb, [max(nan(v), 1e-12) for v in r["subopt"]], style, label=label_of(row))
            axes[1][col].plot(r["step"], [max(nan(v), 1e-16) for v in r["consensus"]], style, label=label_of(row))
        axes[0][col].axhline(TARGET, color="grey", lw=0.5)
        axes[0][col].set(xscale="log", yscale="log", ylim=(1e-8, 10), title=f"digits label-sorted, {g}, n = {n}",
                         xlabel="MB sent (all workers)", ylabel="f(xbar) - f*")
        axes[1][col].set(yscale="log", xlabel="step", ylabel="consensus error")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    harness.save(fig, path, 100)



# ---------------------------------------------------------------- claims

EXACT = ("gradient-tracking", "docom-sgt int8", "docom-sgt top-k 10%")  # bias-corrected: should reach f*
BIASED = ("dsgd", "choco-sgd int8", "choco-sgd top-k 10%")  # should stall at a heterogeneity-dependent bias
RATIO = 100.0  # tolerance: every biased method's final gap >= 100x every exact method's
STALL = 0.9  # "stalled": the gap at the end is >= 90% of the gap at 80% of the run


def _claim_rows(rows: list[dict]) -> dict[str, dict]:
    """label_of(row) -> metrics, for rows that did not raise."""
    return {label_of(r): r["metrics"] for r in rows}


def _tail_drop(m: dict) -> float:
    """final gap / gap at 80% of the run (1: flat; small: still falling)."""
    xs = [v for v in m["subopt"] if v is not None]
    k = int(0.8 * (len(xs) - 1))
    return xs[-1] / xs[k] if xs and xs[k] > 0 else math.nan


def judge_exact(rows: list[dict]) -> C.Finding:
    by = _claim_rows(rows)
    n = rows[0]["config"]["workers"] if rows else "?"
    steps = rows[0]["config"]["farsync"]["train"]["steps"] if rows else "?"
    missing = [k for k in EXACT + BIASED + ("dsgd (iid split)",) if k not in by]
    if missing:
        raise ValueError(f"rows missing for {', '.join(missing)}")
    err = [k for k in by if "error" in by[k]]
    fin = {k: (math.inf if "error" in m else m["final_subopt"]) for k, m in by.items()}
    drop = {k: (math.nan if "error" in m else _tail_drop(m)) for k, m in by.items()}
    exact_hit = all(fin[k] <= TARGET for k in EXACT)
    stalled = all(fin[k] > 10 * TARGET and drop[k] >= STALL for k in BIASED)
    ratio = min(fin[k] for k in BIASED) / max(fin[k] for k in EXACT)
    het = by["dsgd"]["plateau"] / by["dsgd (iid split)"]["plateau"] if "error" not in by["dsgd (iid split)"] else math.nan
    g = lambda v: f"{v:.2e}"  # noqa: E731
    ours = (f"ring, n = {n}, {steps} steps, lr {LR} for all, full-batch (deterministic: no seeds): final f(xbar) - f* "
            + ", ".join(f"{k} {g(fin[k])}" for k in EXACT) + " vs " + ", ".join(f"{k} {g(fin[k])}" for k in BIASED)
            + f"; smallest biased / largest exact = {ratio:.3g}x (tolerance >= {RATIO:.0f}x); the biased gaps fell by "
            + ", ".join(f"{100 * (1 - drop[k]):.1f}%" for k in BIASED) + " over the last 20% of the run (stalled: < "
            f"{100 * (1 - STALL):.0f}%); DSGD's plateau {g(by['dsgd']['plateau'])} on the label-sorted split vs "
            f"{g(by['dsgd (iid split)']['plateau'])} on the iid split ({het:.0f}x: the bias comes from the heterogeneity).")
    table = C.table(["method", "split", "final f(xbar) - f*", "plateau (median, last 20%)", "steps to 1e-4",
                     "gap change, last 20%", "final consensus error"],
                    [[r["config"]["method"], r["config"].get("split", "label-sorted")]
                     + (["diverged", "-", "-", "-", "-"] if "error" in r["metrics"] else
                        [g(r["metrics"]["final_subopt"]), g(r["metrics"]["plateau"]), r["metrics"]["steps_to_1e-4"] or "not reached",
                         f"{100 * (drop[label_of(r)] - 1):+.1f}%", f"{r['metrics']['final_consensus']:.1e}"]) for r in rows])
    if exact_hit and stalled and ratio >= RATIO and het >= 10 and not err:
        return C.Finding("reproduced", ours, table)
    if any(fin[k] <= TARGET for k in BIASED):
        return C.Finding("contradicted", ours, table,
                         why="a method without bias correction reached 1e-4 on the label-sorted split at a constant step, "
                             "where the theory puts a heterogeneity floor under it.")
    return C.Finding("not at this scale", ours, table,
                     why=f"after {steps} steps " + ("an exact method has not yet reached 1e-4" if not exact_hit else
                                                    "the separation is below the tolerance")
                         + (f" ({', '.join(err)} diverged)" if err else "")
                         + ": geometric convergence needs more steps on a sparse ring (rho = 0.195 at n = 8).")


def plot_exact(rows: list[dict], path) -> None:
    """f(xbar) - f* against the step, log scale, every run; the 1e-4 target as a line."""
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    for i, r in enumerate(rows):
        m = r["metrics"]
        if "error" in m:
            continue
        lab = label_of(r)
        style = "-" if r["config"]["method"] in EXACT else "--"
        ax.plot(m["step"], [max(v, 1e-12) if v is not None else math.nan for v in m["subopt"]], style, color=f"C{i}",
                label=lab + (" (bias-corrected)" if r["config"]["method"] in EXACT and "split" not in r["config"] else ""))
    ax.axhline(TARGET, color="grey", lw=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("f(xbar) - f*  (full training objective)")
    n = rows[0]["config"]["workers"] if rows else "?"
    ax.set_title(f"digits logistic regression, ring n = {n}, constant lr {LR}, full batch", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _only(n: int) -> tuple[str, ...]:
    return tuple(f"n{n} ring {m}" for m in EXACT + BIASED) + (f"n{n} ring dsgd (iid split)",)


_DESC = ("logistic regression on digits (d = 650, l2 1e-3), label-sorted over {n} workers (1-2 digits each) on a ring "
         "(Metropolis-Hastings weights), full-batch local gradients, the same constant lr 2 for every method, {steps} steps; "
         "gradient tracking (DIGing), DoCoM-SGT (int8 and top-k 10%, beta 1), DSGD, CHOCO-SGD (int8 gamma 0.5, top-k 10% "
         "gamma 0.2), and DSGD on an iid split (the heterogeneity control). f(xbar) - f* of the workers' average on the whole "
         "training objective (f* by L-BFGS). Tolerance: the exact methods <= 1e-4, the biased ones stalled (< 10% drop over "
         "the last 20%) above 1e-3, >= 100x apart, DSGD's label-sorted plateau >= 10x its iid one.")
CLAIMS = [
    C.Claim("decentralized-exact-convergence", "1607.03218",
            "Achieving Geometric Convergence for Distributed Optimization over Time-Varying Graphs (DIGing)",
            "With a fixed step size, gradient tracking (DIGing) drives every agent to the exact global minimizer of a strongly "
            "convex sum of heterogeneous local objectives (at a geometric rate), whereas decentralized gradient descent "
            "(DSGD, and CHOCO-SGD, its compressed form) stalls at a bias set by the heterogeneity.",
            "Abstract (read on arxiv-vanity.com/papers/1607.03218 and the arXiv v3 text): DIGing 'employs fixed step-sizes "
            "and, yet, drives all the agents' iterates to a global and consensual minimizer' and, under strong convexity, "
            "converges 'at R-linear (geometric) rates'. The inexact limit of DGD with a constant step is the standard "
            "result it contrasts with (Yuan, Ling, Yin 2016; not read here); DoCoM-SGT (arXiv 2202.00255) extends the "
            "tracking to compressed gossip. No figure numbers are compared: the claim is qualitative.",
            "decentralized_logreg",
            {"cpu": C.Setting(_DESC.format(n=8, steps=1500), "claims-cpu", only=_only(8)),
             "gpu": C.Setting(_DESC.format(n=16, steps=3000) + " (a convex CPU-sized problem: the gpu profile only makes the "
                              "ring larger and sparser, rho = 0.05, and the run longer; unrun)", "claims-gpu", only=_only(16))},
            judge_exact, plot_exact,
            gpu="n = 16 ring (rho = 0.05), 3000 steps."),
]

if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
