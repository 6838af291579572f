"""The one runner of the benchmarks in benchmarks/: common flags, one result schema with provenance, figures.

    python benchmarks/harness.py --list                            # the benchmarks, their profiles and parameters
    python benchmarks/harness.py BENCHMARK [--profile NAME] [--out DIR] [--seeds S ...] [--only RUN ...]
                                 [--set KEY=VALUE ...] [--parallel N] [--dry-run] [--report [FILE]]
    python benchmarks/BENCHMARK.py [the same flags]                 # the same as `harness.py BENCHMARK ...`
    python benchmarks/harness.py --figures [--results DIR] [--img-dir DIR] [--only PNG ...]   # = make figures

Flags of a benchmark run:

--profile NAME    a named setting of the benchmark (its PROFILES; the first is the default), e.g. ``cpu`` /
                  ``gpu`` (``cluster.device=cuda``) / ``quick`` (a few steps of a tiny model: a smoke test, not a
                  result) for the GPT benchmarks, ``full`` / ``long`` for the logistic-regression ones. An unknown
                  name is refused with the list of valid ones.
--out DIR         run directories and ``DIR/results.jsonl`` (default ``runs/BENCHMARK/PROFILE``).
--seeds S ...     seeds (benchmarks without seeds refuse the flag).
--only RUN ...    run labels to run; shell patterns (``"ddp sgd*"``) match several; a pattern that matches no
                  label is refused with the list of labels (``--dry-run`` lists them too).
--set KEY=VALUE   a benchmark parameter (a key of its PARAMS: ``--set steps=8000``, ``--set sgd_lrs=[0.3, 1]``;
                  values are YAML) or, for benchmarks whose runs are farsync configs, a config override applied to
                  every run after the benchmark's own (``--set cluster.device=cuda``). Repeatable.
--parallel N      runs at once, each in a spawned process (default 1: one after the other in this process).
--dry-run         print the runs (label, seed, config) and exit.
--report [FILE]   no runs: print the benchmark's tables from FILE (default ``OUT/results.jsonl``; a stored file in
                  benchmarks/results/ works, in either format).

Result rows. Every run appends one JSON object to ``OUT/results.jsonl``; a later run with the same
(run, seed) replaces its row, and the file is rewritten after every run, so an interrupted benchmark
keeps what finished. To store results, copy that file to ``benchmarks/results/STEM.jsonl`` (the stem
that the benchmark's RESULTS / FIGURES name) and run ``make figures``. A row::

    {"benchmark": "streaming",           # module name in benchmarks/
     "run": "diloco-int4",               # the run's label within the benchmark (what --only selects)
     "seed": 0,                          # null where the benchmark has no seeds
     "profile": "gpu",                   # --profile
     "config": {"base": "demo_diloco.yaml", "overrides": ["task.n_layer=4", ...]},  # what ran (or the parameters)
     "metrics": {"final_eval_loss": 2.1376, ...},                                   # what was measured
     "provenance": {"commit": "6b9ec1c", "dirty": true, "torch": "2.13.0+cpu", "device": "cpu",
                    "threads": 2, "date": "2026-12-02T18:56:00+00:00", "python": "3.11.7", "cpu_count": 2}}

``provenance``: the git commit of the working tree when the benchmark started and whether it had
uncommitted changes (``dirty``; null without git), torch's version, the device (``cpu`` or the CUDA
device's name), ``torch.get_num_threads()`` at the end of the run, the date (UTC, ISO 8601), the
Python version and the host's CPU count; ``wall_s``: the run's wall-clock seconds (rows written since
`farsync claims` existed; older rows lack it). Result files written before this harness (the ``*.json`` files
and the older ``*.jsonl`` rows of benchmarks/results/) are read as they are: each benchmark converts
them into this schema when loading (``legacy_rows`` / ``legacy_row``) with ``"profile": null`` and
``"provenance": null`` (recorded before the harness; the commit and machine are in docs/benchmarks.md).
They are never rewritten.

A benchmark module (every ``benchmarks/*.py`` except this one and ``_``-prefixed ones) exposes:

``__doc__``             first line: what it measures; then the setting.
``PROFILES``            ``{name: {"params": {...}, "set": [...], "seeds": [...], "only": [...], "parallel": N}}``
                        (every key optional); the first profile is the default; every benchmark has ``quick``
                        (seconds to a minute on a 2-core CPU: a smoke test of jobs, run_one and finish).
``PARAMS``              the benchmark's own parameters with their defaults (profiles and ``--set`` change them).
``SEEDS``               default seeds, or None where runs have no seed.
``CONFIG_OVERRIDES``    True where runs are farsync configs, so that ``--set section.key=value`` applies to them.
``RESULTS``             stems of its stored results in benchmarks/results/.
``jobs(args)``          the runs: a list of picklable dicts ``{"run", "seed", "config", ...}`` for ``run_one``.
                        ``args``: benchmark, profile, params, overrides, seeds, only, parallel, out.
``run_one(job)``        runs one job, returns the row's ``metrics`` (in this process, or a spawned one).
``finish(rows, args)``  optional: tables and summaries from every row of the results file (also ``--report``).
``FIGURES``             optional ``{png in docs/img: results stem}``, drawn by ``figure(png, rows, path)`` from
                        rows of the stored results (either format), without training.
``CLAIMS``              optional: the paper claims this study tests (``farsync.claims.Claim``; ``farsync claims``
                        runs them under its ci / cpu / gpu profiles and writes ``claims.md``).

``make figures`` regenerates every figure of FIGURES whose results are stored; NOT_FROM_RESULTS names
the figures of docs/img that do not come from benchmarks/results and why. ``interface_problems(module)``
says what a module lacks (tests/test_benchmarks_harness.py checks every one).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
IMG_DIR = ROOT / "docs" / "img"
if str(BENCH_DIR) not in sys.path:  # benchmark modules import each other and this module by name
    sys.path.insert(0, str(BENCH_DIR))

# Figures of docs/img that no stored result makes (checked by tests/test_benchmarks_harness.py).
NOT_FROM_RESULTS = {
    "demo_loss_vs_steps.png": "drawn by `make demo` (farsync demo's report, runs/demo/report/loss_vs_steps.png, copied "
                              "into docs/img); the demo's eval curves are not stored in benchmarks/results",
    "demo_loss_vs_bytes.png": "drawn by `make demo` (runs/demo/report/loss_vs_bytes.png, copied into docs/img); the "
                              "demo's eval curves are not stored in benchmarks/results",
    "parameter_free_convex.png": "drawn before the harness from every evaluation of its curves; the stored "
                                 "parameter_free_convex.json keeps every 6th, which would hide SPS's period-2 oscillation. "
                                 "A new run's rows keep the points a plot needs (parameter_free_convex.thin); finish() draws "
                                 "them into OUT/suboptimality.png",
    "decentralized_logreg.png": "drawn before the harness from its curves every 20 steps; the stored decentralized_logreg.json "
                                "keeps every 100th step. A new run's rows keep every logged step; finish() draws them into "
                                "OUT/decentralized_logreg.png",
}

# Config overrides of the `quick` profile of the GPT benchmarks: a smoke test of the pipeline (24 steps of a
# narrow model, so that DiLoCo's H = 24 still fits), not a result.
GPT_QUICK = ["train.steps=24", "train.eval_every=12", "train.log_every=12", "task.n_embd=32", "task.block_size=32",
             "task.eval_windows=8", "train.lr_schedule.warmup_steps=2"]
GPU = ["cluster.device=cuda"]
REQUIRED = ("PROFILES", "PARAMS", "SEEDS", "CONFIG_OVERRIDES", "RESULTS", "jobs", "run_one")


# ---------------------------------------------------------------- benchmarks

def benchmarks() -> list[str]:
    """Names of the benchmark modules in benchmarks/."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem != "harness" and not p.stem.startswith("_"))


def load(name: str) -> ModuleType:
    if name not in benchmarks():
        raise SystemExit(f"harness.py: unknown benchmark {name!r}; benchmarks: {', '.join(benchmarks())}")
    return importlib.import_module(name)


PROFILE_KEYS = ("params", "set", "seeds", "only", "parallel")


def interface_problems(mod: ModuleType) -> list[str]:
    """What `mod` lacks of the benchmark interface (empty: none)."""
    out = [f"no {a}" for a in REQUIRED if not hasattr(mod, a)]
    if not (mod.__doc__ or "").strip():
        out.append("no docstring")
    profiles = getattr(mod, "PROFILES", None) or {}
    if not profiles:
        out.append("PROFILES is empty")
    elif "quick" not in profiles:
        out.append("no `quick` profile (a smoke test of a few seconds)")
    for name, spec in profiles.items():
        unknown = sorted(set(spec) - set(PROFILE_KEYS))
        if unknown:
            out.append(f"profile {name!r}: unknown key(s) {', '.join(unknown)} (valid: {', '.join(PROFILE_KEYS)})")
        bad = sorted(set(spec.get("params", {})) - set(getattr(mod, "PARAMS", {})))
        if bad:
            out.append(f"profile {name!r}: {', '.join(bad)} not in PARAMS")
        if spec.get("set") and not getattr(mod, "CONFIG_OVERRIDES", False):
            out.append(f"profile {name!r}: config overrides ('set') but CONFIG_OVERRIDES is False")
    figures = getattr(mod, "FIGURES", None) or {}
    if figures and not callable(getattr(mod, "figure", None)):
        out.append("FIGURES without figure()")
    orphans = sorted(stem for stem in figures.values() if stem not in getattr(mod, "RESULTS", ()))
    if orphans:
        out.append(f"FIGURES drawn from {', '.join(orphans)}, which RESULTS does not name")
    for claim in getattr(mod, "CLAIMS", ()):
        if claim.study != mod.__name__:
            out.append(f"claim {claim.name}: names study {claim.study!r}, not {mod.__name__!r}")
        for name, setting in claim.settings.items():
            if setting.profile not in profiles:
                out.append(f"claim {claim.name}: its {name} setting runs profile {setting.profile!r}, which PROFILES lacks")
            bad = sorted(set(setting.params) - set(getattr(mod, "PARAMS", {})))
            if bad:
                out.append(f"claim {claim.name}: its {name} setting sets {', '.join(bad)}, not in PARAMS")
        missing = [p for p in ("cpu", "gpu") if p not in claim.settings]
        if missing:
            out.append(f"claim {claim.name}: no {' and no '.join(missing)} setting (every claim runs in the cpu and gpu profiles)")
    return out


def describe(mod: ModuleType) -> str:
    """The first paragraph of a benchmark's docstring (what it measures), on one line."""
    return " ".join((mod.__doc__ or "").strip().split("\n\n")[0].split())


# ---------------------------------------------------------------- provenance

def git_state(cwd: Path = ROOT) -> dict[str, Any]:
    """{"commit": short hash of HEAD, "dirty": uncommitted changes (tracked or untracked)}; nulls without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def provenance(device: str = "cpu", git: dict | None = None) -> dict[str, Any]:
    """Where a row comes from: commit (and "dirty"), torch, device, threads, date, python, host CPU count."""
    import torch

    name = device
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else f"{device} (not available)"
    return {**(git if git is not None else git_state()), "torch": torch.__version__, "device": name,
            "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}


def job_device(job: dict) -> str:
    """The device a job runs on: its "device", else the last ``cluster.device=`` override, else cpu."""
    device = job.get("device")
    for item in job.get("config", {}).get("overrides", []) if device is None else []:
        if item.replace(" ", "").startswith("cluster.device="):
            device = item.split("=", 1)[1].strip()
    return device or "cpu"


# ---------------------------------------------------------------- arguments

def make_parser(name: str, mod: ModuleType) -> argparse.ArgumentParser:
    profiles = "; ".join(f"{p}: {spec}" if spec else f"{p}: the defaults" for p, spec in mod.PROFILES.items())
    params = ", ".join(f"{k}={v!r}" for k, v in mod.PARAMS.items()) or "none"
    ap = argparse.ArgumentParser(prog=f"harness.py {name}", description=describe(mod),
                                 epilog=f"profiles: {profiles}. parameters (--set NAME=VALUE): {params}.")
    ap.add_argument("--profile", choices=list(mod.PROFILES), default=next(iter(mod.PROFILES)),
                    help=f"named setting (default: {next(iter(mod.PROFILES))})")
    ap.add_argument("--out", type=Path, help=f"run directories and results.jsonl (default: runs/{name}/PROFILE)")
    ap.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default: {mod.SEEDS})")
    ap.add_argument("--only", nargs="+", metavar="RUN", help="run labels or shell patterns (default: every run)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter of the benchmark" + (" or a config override for every run" if mod.CONFIG_OVERRIDES else ""))
    ap.add_argument("--parallel", type=int, help="runs at once in spawned processes (default: 1, in this process)")
    ap.add_argument("--dry-run", action="store_true", help="print the runs and exit")
    ap.add_argument("--report", nargs="?", const="", metavar="FILE",
                    help="no runs: print the tables from FILE (default: OUT/results.jsonl)")
    return ap


def parse_args(name: str, argv: list[str]) -> argparse.Namespace:
    """The flags of one benchmark, with its profile resolved into params, overrides, seeds, only, parallel, out."""
    from farsync.yamlio import load_yaml

    mod = load(name)
    ap = make_parser(name, mod)
    args = ap.parse_args(argv)
    prof = mod.PROFILES[args.profile]
    params, overrides = {**mod.PARAMS, **prof.get("params", {})}, list(prof.get("set", []))
    for item in args.set:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            ap.error(f"--set needs KEY=VALUE, got {item!r}")
        if key in mod.PARAMS:
            params[key] = load_yaml(value, f"--set {item}")
        elif mod.CONFIG_OVERRIDES:
            overrides.append(item)
        else:
            ap.error(f"--set {key}: not a parameter of {name} (parameters: {', '.join(mod.PARAMS) or 'none'}); "
                     "its runs are not farsync configs, so config overrides do not apply")
    if args.seeds is not None and mod.SEEDS is None:
        ap.error(f"{name} has no seeds (its runs are deterministic or use their config's seed)")
    if args.parallel is not None and args.parallel < 1:
        ap.error("--parallel must be >= 1")
    args.benchmark, args.params, args.overrides = name, params, overrides
    args.seeds = args.seeds or prof.get("seeds") or mod.SEEDS
    args.only = args.only or prof.get("only")
    args.parallel = args.parallel or prof.get("parallel", 1)
    args.out = args.out or Path("runs") / name / args.profile
    return args


def select(jobs: list[dict], only: list[str] | None) -> list[dict]:
    """The jobs whose run label matches a pattern of `only` (all without); a pattern matching nothing is an error."""
    if not only:
        return jobs
    labels = list(dict.fromkeys(j["run"] for j in jobs))
    unmatched = [p for p in only if not any(fnmatch.fnmatchcase(label, p) for label in labels)]
    if unmatched:
        raise SystemExit(f"harness.py: --only {' '.join(map(repr, unmatched))} matches no run; runs: {', '.join(labels)}")
    return [j for j in jobs if any(fnmatch.fnmatchcase(j["run"], p) for p in only)]


# ---------------------------------------------------------------- helpers for the benchmark modules

def run_dir(out: str | Path, run: str, seed: int | None) -> Path:
    """OUT/<run label with odd characters replaced>[-s<seed>]."""
    return Path(out) / (re.sub(r"[^A-Za-z0-9_.+-]", "_", run) + ("" if seed is None else f"-s{seed}"))


def config_job(args: argparse.Namespace, run: str, base: str, overrides: list[str], seed: int | None, **extra) -> dict:
    """A job that trains `base` (a config in farsync/configs) with `overrides`, then --set's (see `run_config`)."""
    return {"run": run, "seed": seed, "config": {"base": base, "overrides": list(overrides) + list(args.overrides)},
            "dir": str(run_dir(args.out, run, seed)), **extra}


def run_config(job: dict):
    """Train a `config_job` into a fresh run directory (name = the job's "name" or run label, seed = the job's);
    returns farsync's RunResult."""
    import farsync

    cfg = job["config"]
    d = Path(job["dir"])
    if d.exists():
        shutil.rmtree(d)
    seed = [] if job["seed"] is None else [f"seed={job['seed']}"]
    return farsync.run(str(resources.files("farsync") / "configs" / cfg["base"]),
                       overrides=cfg["overrides"] + [f"name={job.get('name', job['run'])}"] + seed, out=d, progress=False)


def worker_steps(job: dict) -> int | None:
    """The inner steps all simulated workers of a `config_job` take (train.steps x cluster.workers): the
    size of the run, for sizing a profile (``farsync claims --dry-run``); None for a job that is not a config."""
    cfg = job.get("config") or {}
    if "base" not in cfg:
        return None
    from farsync.config import load_config

    c = load_config(str(resources.files("farsync") / "configs" / cfg["base"]), overrides=cfg["overrides"])
    return c.train.steps * c.cluster.workers


def summary_and_evals(job: dict, keys: tuple[str, ...]) -> dict:
    """Train a `config_job` with one intra-op thread; the summary's `keys` and every evaluation."""
    import torch

    torch.set_num_threads(1)
    result = run_config(job)
    return {**{k: result.summary.get(k) for k in keys}, "evals": evals(result.metrics)}


def print_table(head: list[str], cells: list[list]) -> None:
    """A markdown table: header, separator, one line per row of cells."""
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in cells:
        print("| " + " | ".join(str(c) for c in row) + " |")


def evals(metrics: list[dict], *keys: str) -> list[list]:
    """[step, *keys, eval_loss] of every evaluation in a run's metrics."""
    return [[m["step"], *(m[k] for k in keys), m["eval_loss"]] for m in metrics if "eval_loss" in m]


def metric_rows(rows: list[dict]) -> list[dict]:
    """Rows flattened for tables: run, seed, config and the metrics at the top level."""
    return [{"run": r["run"], "seed": r["seed"], "config": r["config"], **r["metrics"]} for r in rows]


def save(fig, path: Path, dpi: int) -> Path:
    """Write and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- rows

def is_row(r: dict) -> bool:
    return {"benchmark", "run", "metrics", "provenance"} <= r.keys()


def legacy_row(name: str, mod: ModuleType, r: dict) -> dict:
    """An old results.jsonl row ({"run", "seed", "overrides", metric...}) in the schema, provenance null."""
    if hasattr(mod, "legacy_row"):
        return {"benchmark": name, "profile": None, "provenance": None, **mod.legacy_row(r)}
    config = {"base": r["config"]} if isinstance(r.get("config"), str) else {}
    if "overrides" in r:
        config["overrides"] = r["overrides"]
    metrics = {k: v for k, v in r.items() if k not in ("run", "seed", "config", "overrides")}
    return {"benchmark": name, "run": r["run"], "seed": r.get("seed"), "profile": None, "config": config,
            "metrics": metrics, "provenance": None}


def read_rows(mod: ModuleType, path: str | Path) -> list[dict]:
    """Rows of a results file in the schema: a harness results.jsonl, an older .jsonl, or an older .json."""
    path = Path(path)
    name = mod.__name__
    if path.suffix == ".jsonl":
        items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r if is_row(r) else legacy_row(name, mod, r) for r in items]
    data = json.loads(path.read_text())
    if not hasattr(mod, "legacy_rows"):
        raise ValueError(f"{path}: {name} reads no .json results")
    return [{"benchmark": name, "profile": None, "provenance": None, **r} for r in mod.legacy_rows(data)]


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def stored(stem: str, results: Path = RESULTS_DIR) -> Path | None:
    """benchmarks/results/STEM.jsonl (harness rows), else STEM.json (an older format), else None."""
    return next((p for p in (results / f"{stem}.jsonl", results / f"{stem}.json") if p.is_file()), None)


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if not isinstance(v, (list, dict))}


def _run_job(item: tuple[str, dict, dict]) -> tuple[dict, dict]:
    import torch

    name, job, git = item
    threads = torch.get_num_threads()  # run_one may set its own; the caller's (a test session's) is restored after
    t0 = time.perf_counter()
    try:
        metrics = load(name).run_one(job)
        return metrics, {**provenance(job_device(job), git), "wall_s": round(time.perf_counter() - t0, 2)}
    except StopIteration as err:  # it would end the map over the jobs silently, dropping this row and the rest
        raise RuntimeError(f"{name}: run {job.get('run')!r} raised StopIteration (a next() found nothing)") from err
    finally:
        torch.set_num_threads(threads)


def run_jobs(mod: ModuleType, jobs: list[dict], args: argparse.Namespace) -> list[dict]:
    """`run_one` for every job, `args.parallel` at a time; each row replaces an earlier row of the same
    (run, seed) in OUT/results.jsonl, which is rewritten after every run. Returns every row of the file."""
    results = Path(args.out) / "results.jsonl"
    rows = read_rows(mod, results) if results.exists() else []
    git = git_state()
    work = [(args.benchmark, job, git) for job in jobs]
    pool = mp.get_context("spawn").Pool(args.parallel) if args.parallel > 1 else None
    try:
        for job, (metrics, prov) in zip(jobs, pool.imap(_run_job, work) if pool else map(_run_job, work)):
            row = {"benchmark": args.benchmark, "run": job["run"], "seed": job.get("seed"), "profile": args.profile,
                   "config": job.get("config", {}), "metrics": metrics, "provenance": prov}
            rows = [r for r in rows if (r["run"], r["seed"]) != (row["run"], row["seed"])] + [row]
            write_rows(results, rows)
            print(json.dumps({"run": row["run"], "seed": row["seed"], **_scalars(metrics)}), flush=True)
    finally:
        if pool:
            pool.close()
            pool.join()
    return rows


# ---------------------------------------------------------------- figures

def figures(results: Path = RESULTS_DIR, img_dir: Path = IMG_DIR, only: list[str] | None = None
            ) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """Draw every figure of the benchmarks' FIGURES from the stored results into `img_dir`, without training.
    Returns (drawn: [(png, results file)], skipped: [(png, why)])."""
    pyplot()
    drawn, skipped = [], []
    for name in benchmarks():
        mod = load(name)
        for png, stem in getattr(mod, "FIGURES", {}).items():
            if only and png not in only:
                continue
            src = stored(stem, Path(results))
            if src is None:
                skipped.append((png, f"no stored results ({stem}.jsonl) in {results}: run `python benchmarks/harness.py {name}` "
                                     f"and copy its results.jsonl there"))
                continue
            mod.figure(png, read_rows(mod, src), Path(img_dir) / png)
            drawn.append((png, src))
    return drawn, skipped


def figures_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="harness.py --figures", description="Regenerate the figures of docs/img from "
                                 "benchmarks/results (no training).")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="stored results (default: benchmarks/results)")
    ap.add_argument("--img-dir", type=Path, default=IMG_DIR, help="where the PNGs go (default: docs/img)")
    ap.add_argument("--only", nargs="+", metavar="PNG", help="these figures only (file names)")
    args = ap.parse_args(argv)
    known = {png for n in benchmarks() for png in getattr(load(n), "FIGURES", {})}
    bad = [p for p in args.only or [] if p not in known]
    if bad:
        ap.error(f"unknown figure(s) {', '.join(bad)}; figures: {', '.join(sorted(known))}")
    drawn, skipped = figures(args.results, args.img_dir, args.only)
    for png, src in drawn:
        print(f"{args.img_dir / png}  <- {src}")
    for png, why in skipped:
        print(f"{png}: not drawn: {why}")
    for png, why in NOT_FROM_RESULTS.items() if not args.only else ():
        print(f"{png}: not from benchmarks/results: {why}")
    return 0


# ---------------------------------------------------------------- main

def list_benchmarks() -> None:
    for name in benchmarks():
        mod = load(name)
        print(f"{name}: {describe(mod)}")
        problems = interface_problems(mod)
        if problems:
            print(f"    not a benchmark module: {'; '.join(problems)} (see harness.py's docstring)")
            continue
        print(f"    profiles: {', '.join(mod.PROFILES)}; seeds: {mod.SEEDS}; parameters: "
              f"{', '.join(f'{k}={v!r}' for k, v in mod.PARAMS.items()) or 'none'}"
              + ("; config overrides" if mod.CONFIG_OVERRIDES else ""))
        if mod.RESULTS or getattr(mod, "FIGURES", None):
            print(f"    results: {', '.join(mod.RESULTS) or '-'}; figures: {', '.join(getattr(mod, 'FIGURES', {})) or '-'}")


def run(args: argparse.Namespace) -> int:
    mod = load(args.benchmark)
    if args.report is not None:
        path = Path(args.report) if args.report else Path(args.out) / "results.jsonl"
        if not path.is_file():
            raise SystemExit(f"harness.py: no results file {path}")
        if hasattr(mod, "finish"):
            mod.finish(read_rows(mod, path), args)
        return 0
    jobs = select(mod.jobs(args), args.only)
    if args.dry_run:
        for j in jobs:
            print(json.dumps({"run": j["run"], "seed": j.get("seed"), "config": j.get("config", {})}))
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = run_jobs(mod, jobs, args)
    if hasattr(mod, "finish"):
        mod.finish(rows, args)
    print(f"\n{len(jobs)} run(s) of {args.benchmark} (profile {args.profile}); rows in {Path(args.out) / 'results.jsonl'}")
    return 0


USAGE = __doc__.split("\n\n")[1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ if argv else USAGE)
        return 0 if argv else 2
    if argv[0] == "--list":
        list_benchmarks()
        return 0
    if argv[0] == "--figures":
        return figures_main(argv[1:])
    if argv[0].startswith("-"):
        print(f"harness.py: the benchmark comes first, then its flags\n{USAGE}", file=sys.stderr)
        return 2
    load(argv[0])
    return run(parse_args(argv[0], argv[1:]))


def script(file: str) -> int:
    """`python benchmarks/NAME.py FLAGS` = `python benchmarks/harness.py NAME FLAGS`."""
    return main([Path(file).stem, *sys.argv[1:]])


if __name__ == "__main__":
    import harness  # the importable module, so that spawned workers and the benchmarks share it

    raise SystemExit(harness.main())
