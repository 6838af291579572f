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

PROFILES = {"full": {}, "quick": {"params": {"steps": 30, "datasets": ["breast_cancer"]}}}
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


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
