"""Parameter-free step sizes on logistic regression with real data (issue 7, benchmark 1).

    python benchmarks/harness.py parameter_free_convex [--profile full|quick] [--out DIR] [--only "digits *" ...]
        [--set steps=3000] [--set "datasets=[breast_cancer, digits, mushroom]"]

Full-batch gradients (one gradient evaluation per step; AdGD needs no extra one in full batch),
float64, the `logreg` task with l2 = 1e-3 and its L-BFGS optimum f*. Every parameter-free method
runs with its defaults, untuned (AdGD: lambda_0 = 1e-6; SPS: the Polyak step, given f*; MoMo:
lower bound 0). Baselines: SGD and Adam, each over a grid of 7 learning rates; the best grid point
is the one that gets below suboptimality 1e-4 for good (and stays there) in the fewest gradient
evaluations; the first time below 1e-4 is reported too. One run (label ``"DATASET METHOD"``, e.g.
``"digits sgd lr=10"``, ``"mushroom dowg"``) per data set and method; metrics: f*, the curve
f(x_k) - f* thinned for plotting (`thin`: [gradient evaluations, suboptimality] pairs, 4 significant
digits), the gradient evaluations to 1e-4 for good and first, the final suboptimality. The table
(after the runs, or --report) gives each method's evaluations to 1e-4 and the ratio to the best
tuned baseline (target <= 2); the figure, every curve. Each run uses one torch thread.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import harness
from farsync import claims as C
from farsync.algorithms.base import evaluation_point
from farsync.optim import build_optimizer, step_kwargs
from farsync.tasks.classification import LogReg, LogRegParams

TARGET = 1e-4
GRIDS = {"sgd": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0], "adam": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]}
METHODS = {
    "prodigy": {"name": "prodigy"},
    "dadapt-sgd": {"name": "dadapt-sgd"},
    "dadapt-adam": {"name": "dadapt-adam"},
    "dog": {"name": "dog"},
    "dog + poly-average": {"name": "poly-average", "base": {"name": "dog"}},
    "dowg": {"name": "dowg"},
    "adgd-2020": {"name": "adgd", "lr": 1e-6},
    "adgd-2023": {"name": "adgd", "lr": 1e-6, "rule": "2023"},
    "sps (f* known)": "sps",
    "momo (lb 0)": {"name": "momo"},
}
LEGACY_STEPS = 3000  # the --steps of the stored results (the default then; the JSON does not record it)

CLAIM_RUNS = ["* sgd lr=*", "* adam lr=*", "* prodigy", "* dowg"]  # the runs of the parameter-free-vs-tuned claim
PROFILES = {"full": {}, "quick": {"params": {"steps": 30, "datasets": ["breast_cancer"]}},
            "claims": {"params": {"steps": 300}, "only": CLAIM_RUNS},
            "claims-long": {"params": {"steps": 1000}, "only": CLAIM_RUNS}}
PARAMS = {"steps": 3000, "datasets": ["breast_cancer", "digits", "mushroom"]}
SEEDS = None  # full batch from a zero start: deterministic
CONFIG_OVERRIDES = False
RESULTS = ("parameter_free_convex",)  # docs/img/parameter_free_convex.png: see harness.NOT_FROM_RESULTS
_TASKS: dict = {}  # per process: dataset -> (task, f*)


def methods() -> dict[str, dict | str]:
    """Method label -> optimizer config: the baseline grids, then the parameter-free methods."""
    grid = {f"{base} lr={lr:g}": {"name": base, "lr": lr} for base, lrs in GRIDS.items() for lr in lrs}
    return {**grid, **METHODS}


def task_and_f_star(dataset: str) -> tuple[LogReg, float]:
    if dataset not in _TASKS:
        task = LogReg(LogRegParams(dataset=dataset, dtype="float64", full_batch=True), world_size=1, seed=0)
        _TASKS[dataset] = (task, task.optimum())
    return _TASKS[dataset]


def jobs(args) -> list[dict]:
    p = args.params
    return [{"run": f"{ds} {name}", "seed": None, "config": {"dataset": ds, "method": name, "optimizer": cfg, "steps": p["steps"]}}
            for ds in p["datasets"] for name, cfg in methods().items()]


def curve(task: LogReg, cfg: dict, steps: int, f_star: float) -> list[float]:
    """Suboptimality f(x_k) - f* of the evaluation point after each of `steps` full-batch steps."""
    torch.manual_seed(0)
    model = task.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # start at 0, the usual convex-benchmark start (and L-BFGS's)
    opt = build_optimizer(model.parameters(), cfg)
    averaging = hasattr(opt, "averaged")  # evaluate a wrapper at its averaged point; else the step's own loss is f(x_k)
    batch, out = (task.X, task.y), []
    for k in range(steps + 1):
        opt.zero_grad()
        loss = task.loss(model, batch)  # the full training objective at x_k (full batch)
        loss.backward()
        if k:
            with evaluation_point([opt]):
                gap = (task.train_objective(model) if averaging else float(loss.detach())) - f_star
            out.append(gap if math.isfinite(gap) else math.inf)
            if not math.isfinite(gap) or k == steps:
                break
        opt.step(**step_kwargs(opt, loss.detach(), None))
    return out


def evals_to(c: list[float], target: float = TARGET, stay: bool = True) -> int | None:
    """Gradient evaluations until the suboptimality is <= target (``stay``: and remains so for the
    rest of the run; constant-step Adam, for one, dips below and comes back up)."""
    if not stay:
        return next((k + 1 for k, v in enumerate(c) if v <= target), None)
    above = [k for k, v in enumerate(c) if not v <= target]
    if not above:
        return 1
    return above[-1] + 2 if above[-1] + 1 < len(c) else None


def thin(c: list[float], decades: float = 0.02, points: int = 300) -> list[list]:
    """The [gradient evaluations, suboptimality] points of a curve that a log-log plot needs (4 digits): the
    first and last, about `points` log-spaced evaluations, and every point whose value moved by more than
    `decades` (in log10, values below 1e-12 counted as 1e-12) from the previous point kept, so that
    oscillations survive."""
    marks = {round(len(c) ** (i / points)) - 1 for i in range(points + 1)}
    kept, last = [], None
    for k, v in enumerate(c):
        lv = max(math.log10(v), -12.0) if v > 0 else -12.0  # inf stays inf: kept once, the curve ends there
        moved = last is None or abs(lv - last) > decades
        if k in marks or moved or k == len(c) - 1:
            kept.append([k + 1, float(f"{v:.4g}")])
            last = lv
    return kept


def run_one(job: dict) -> dict:
    torch.set_num_threads(1)
    cfg = job["config"]
    task, f_star = task_and_f_star(cfg["dataset"])
    opt = {"name": "sps", "f_star": f_star, "lr": 1e6} if cfg["optimizer"] == "sps" else cfg["optimizer"]
    c = curve(task, opt, cfg["steps"], f_star)
    return {"f_star": f_star, "curve": thin(c), "evals_to_1e-4": evals_to(c), "first_below_1e-4": evals_to(c, stay=False),
            "final": c[-1]}


def legacy_rows(data: dict) -> list[dict]:
    """The results.json of the script before the harness: {dataset: {"f_star", "curves", "evals_to_1e-4", ...}},
    curves thinned as v[::len(v) // 500] + v[-1:] from LEGACY_STEPS evaluations."""
    out = []
    for ds, r in data.items():
        for name, v in r["curves"].items():
            stride = max(1, LEGACY_STEPS // 500)
            xs = [1 + stride * k for k in range(len(v) - 1)] + [LEGACY_STEPS]
            out.append({"run": f"{ds} {name}", "seed": None,
                        "config": {"dataset": ds, "method": name, "optimizer": methods().get(name), "steps": LEGACY_STEPS},
                        "metrics": {"f_star": r["f_star"], "curve": [[x, y] for x, y in zip(xs, v)],
                                    "evals_to_1e-4": r["evals_to_1e-4"][name], "first_below_1e-4": r["first_below_1e-4"][name],
                                    "final": r["final"][name]}})
    return out


def by_dataset(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """dataset -> method -> the run's metrics, in run order."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        out.setdefault(r["config"]["dataset"], {})[r["config"]["method"]] = r["metrics"]
    return out


def best_baseline(res: dict[str, dict], base: str) -> tuple[str, int | None]:
    """The grid point of `base` that reaches 1e-4 for good in the fewest evaluations (else the lowest final value)."""
    runs = {k: m["evals_to_1e-4"] for k, m in res.items() if k.startswith(base + " ")}
    reached = {k: v for k, v in runs.items() if v is not None}
    if reached:
        k = min(reached, key=reached.get)
        return k, reached[k]
    return min(runs, key=lambda k: res[k]["final"]), None


def report(ds: str, res: dict[str, dict]) -> None:
    print(f"\n### {ds}\n\n| method | grad evals until <= 1e-4 for good | first <= 1e-4 | final suboptimality | vs best tuned |\n"
          "|---|---|---|---|---|")
    best = [best_baseline(res, b) for b in GRIDS if any(k.startswith(b + " ") for k in res)]
    ref = min((n for _, n in best if n is not None), default=None)
    for name, m in res.items():
        n, first = m["evals_to_1e-4"], m["first_below_1e-4"]
        ratio = f"{n / ref:.2f}x" if (n and ref) else "-"
        print(f"| {name} | {n if n else 'not reached'} | {first if first else 'not reached'} | {m['final']:.2e} | {ratio} |")
    print(f"\nbest tuned: {', '.join(f'{k} ({n})' for k, n in best)}")


def finish(rows: list[dict], args) -> None:
    results = by_dataset(rows)
    for ds, res in results.items():
        report(ds, res)
    figure("parameter_free_convex.png", rows, Path(args.out) / "suboptimality.png")


def figure(png: str, rows: list[dict], path: Path) -> None:
    """Suboptimality vs gradient evaluations per data set: the best SGD and Adam grid points and every
    parameter-free method."""
    plt = harness.pyplot()
    results = by_dataset(rows)
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (ds, res) in zip(axes[0], results.items()):
        for base in GRIDS:
            if any(k.startswith(base + " ") for k in res):
                k, _ = best_baseline(res, base)
                ax.plot(*zip(*res[k]["curve"]), "k--" if base == "sgd" else "k:", label=f"best {k}")
        for name in METHODS:
            if name in res:
                ax.plot(*zip(*res[name]["curve"]), label=name)
        ax.axhline(TARGET, color="grey", lw=0.5)
        f_star = next(iter(res.values()))["f_star"]
        ax.set(xscale="log", yscale="log", ylim=(1e-10, 10), title=f"{ds} (f* = {f_star:.4g})",
               xlabel="gradient evaluations", ylabel="f(x) - f*")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    harness.save(fig, path, 110)


# ---------------------------------------------------------------- the claim (farsync claims)

PF = {"prodigy": "Prodigy", "dowg": "DoWG"}
CLAIM_TOL = 1.0  # percent: the untuned method's final training loss may exceed the best tuned grid point's by this much


def loss_at(m: dict, steps: int) -> float:
    """f(x) after `steps` gradient evaluations, read off the thinned curve (its last point at or before `steps`)."""
    return m["f_star"] + [y for x, y in m["curve"] if x <= steps][-1]


def claim_gaps(rows: list[dict], steps: int | None = None) -> dict[str, dict]:
    """dataset -> {"best": best grid label, "loss": its loss, method: (loss, gap in percent)} at `steps` (default the end)."""
    out = {}
    for ds, res in by_dataset(rows).items():
        n = steps or max(r["config"]["steps"] for r in rows if r["config"]["dataset"] == ds)
        grid = {k: loss_at(m, n) for k, m in res.items() if k.split(" ")[0] in GRIDS}
        if not grid:
            continue
        best = min(grid, key=grid.get)
        out[ds] = {"best": best, "loss": grid[best], "steps": n,
                   **{k: (loss_at(res[k], n), C.rel(loss_at(res[k], n), grid[best])) for k in PF if k in res}}
    return out


def claim_table(rows: list[dict]) -> str:
    final = max(r["config"]["steps"] for r in rows)
    budgets = sorted({b for b in (30, 100, final) if b <= final})
    cells = []
    for n in budgets:
        for ds, g in claim_gaps(rows, n).items():
            res = by_dataset(rows)[ds]
            ref = min((m["evals_to_1e-4"] for k, m in res.items() if k.split(" ")[0] in GRIDS and m["evals_to_1e-4"]),
                      default=None)
            evals = [f"{res[k]['evals_to_1e-4'] or 'no'}" + (f" ({res[k]['evals_to_1e-4'] / ref:.2f}x)"
                                                             if ref and res[k]['evals_to_1e-4'] else "") for k in PF]
            cells.append([n, ds, f"{g['loss']:.6f} ({g['best']})"]
                         + [f"{g[k][0]:.6f} ({g[k][1]:+.3f}%)" for k in PF]
                         + ([f"{ref or 'no'}"] + evals if n == final else ["", "", ""]))
    return C.table(["steps", "data set", "best tuned grid point: loss", "Prodigy: loss (gap)", "DoWG: loss (gap)",
                    "best tuned: evals to 1e-4", "Prodigy", "DoWG"], cells)


def judge_vs_tuned(rows: list[dict]) -> C.Finding:
    g = claim_gaps(rows)
    n = next(iter(g.values()))["steps"]
    worst = {k: max(v[k][1] for v in g.values()) for k in PF}
    ours = (f"after {n} full-batch steps, untuned, on {', '.join(g)}: "
            + "; ".join(f"{PF[k]}'s final training loss is {', '.join(f'{v[k][1]:+.3f}%' for v in g.values())} vs the best of "
                        f"the 14-point tuned SGD/Adam grid (worst {worst[k]:+.3f}%)" for k in PF)
            + f". Tolerance: {CLAIM_TOL:g}% on every data set (the table's earlier budgets are read off the stored thinned "
              "curves, to within 5% of the suboptimality). Deterministic (full batch, zero start): one run each, no seeds.")
    ok = {k: w <= CLAIM_TOL for k, w in worst.items()}
    if all(ok.values()):
        return C.Finding("reproduced", ours, claim_table(rows))
    bad = [PF[k] for k, v in ok.items() if not v]
    return C.Finding("not at this scale", ours, claim_table(rows),
                     why=f"{' and '.join(bad)} trail{'s' if len(bad) == 1 else ''} the best grid point by more than {CLAIM_TOL:g}% "
                         f"after {n} steps: the budget is short of what the method needs to grow its step from its "
                         "initial estimate (1e-6); the gpu profile's 1000 steps would show whether the gap closes.")


def plot_vs_tuned(rows: list[dict], path: Path) -> None:
    """Training loss gap to the best tuned grid point (per budget), per data set and method."""
    plt = C.pyplot()
    res = by_dataset(rows)
    fig, axes = plt.subplots(1, len(res), figsize=(4.2 * len(res), 3.6), squeeze=False)
    for ax, (ds, r) in zip(axes[0], res.items()):
        steps = max(m["curve"][-1][0] for m in r.values())
        xs = sorted({x for m in r.values() for x, _ in m["curve"]})
        best = [min(loss_at(m, x) for k, m in r.items() if k.split(" ")[0] in GRIDS) for x in xs]
        for base, style in (("sgd", "--"), ("adam", ":")):
            k, _ = best_baseline(r, base)
            ax.plot(*zip(*r[k]["curve"]), "k" + style, lw=1, label=f"best {k} (by evals to 1e-4)")
        for i, k in enumerate(PF):
            if k in r:
                ax.plot(*zip(*r[k]["curve"]), color=f"C{i}", label=f"{PF[k]} (untuned)")
        ax.plot(xs, [b - r[next(iter(r))]["f_star"] for b in best], color="grey", lw=3, alpha=0.35,
                label="best grid point at each step")
        ax.set(xscale="log", yscale="log", ylim=(1e-12, 10), xlim=(1, steps), title=ds, xlabel="gradient evaluations (steps)",
               ylabel="f(x) - f*")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("untuned Prodigy / DoWG vs a 7-point lr grid of SGD and of Adam (logistic regression, full batch)", fontsize=9)
    fig.tight_layout()
    harness.save(fig, path, 110)


CLAIMS = [
    C.Claim("parameter-free-vs-tuned", "2306.06101", "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
            "Untuned parameter-free methods (Prodigy; DoWG, arXiv 2305.16284) reach, on convex logistic regression, a final "
            "training loss within a small gap (here 1%) of the best hand-tuned baseline (SGD or Adam, the best of a learning-rate grid).",
            "Prodigy's abstract (arxiv.org/html/2306.06101v4): on 12 logistic-regression benchmark data sets and deep networks it "
            "'consistently outperforms D-Adaptation and reaches test accuracy values close to that of hand-tuned Adam'. DoWG's "
            "abstract (arXiv 2305.16284): it matches 'the convergence rate of optimally tuned gradient descent in convex "
            "optimization up to a logarithmic factor without tuning any parameters'. The per-data-set numbers of their "
            "figures: unverified (not read).",
            "parameter_free_convex",
            {"ci": C.Setting("smoke test: breast_cancer only, 30 steps (not a result)", "quick", only=tuple(CLAIM_RUNS)),
             "cpu": C.Setting("logistic regression (l2 1e-3, float64, full batch, zero start) on breast_cancer, digits, mushroom; "
                              "300 steps; Prodigy and DoWG with their defaults (d0 = 1e-6, lr 1, constant) vs the best of SGD lr "
                              "{0.1 ... 100} and Adam lr {0.01 ... 10} (7 points each) at the same step; the paper uses 12 LIBSVM "
                              "data sets and, for the deep nets, tuned Adam with schedules.", "claims", group="parameter-free-convex"),
             "gpu": C.Setting("unrun: the same at 1000 steps (float64 on the host's CPU, about 75 s on one core: a convex "
                              "full-batch study needs no GPU)", "claims-long", group="parameter-free-convex")},
            judge_vs_tuned, plot_vs_tuned,
            gpu="the 1000-step run of the same study (cheap on any machine) shows whether a gap at 300 steps closes."),
]


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
