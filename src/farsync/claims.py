"""Paper claims in one command: run each claim's study, measure it over seeds, judge it, write ``claims.md``.

    farsync claims [--profile ci|cpu|gpu] [--only NAME ...] [--seeds N] [--parallel N] [--out DIR] [--list] [--dry-run]
                   [--publish DOCS]

A :class:`Claim` is one sentence of one paper (its arXiv id) that a farsync study can test: the
paper's own figure, the study that measures it (a module of ``benchmarks/``, run through
``benchmarks/harness.py``: the study's code lives there once, the claim only says which runs of it
to make and how to read them), one :class:`Setting` per profile, and a ``judge`` that turns the
study's result rows into a :class:`Finding`: our figure (numbers with their seeds and spread) and a
verdict, one of :data:`VERDICTS`:

- ``reproduced``: our runs show what the paper states, within the tolerance the claim names;
- ``not at this scale``: they do not, and the setting differs from the paper's in a way that could
  explain it (model size, steps, rounds, budget): ``why`` says which, ``Claim.gpu`` where the gpu
  profile could decide it;
- ``contradicted``: they show the opposite at a setting where the paper's argument should hold.

Profiles (:data:`PROFILES`): ``ci`` (tiny, one or two claims end to end in minutes: the test suite runs
it), ``cpu`` (every claim, sized for about two hours on a 2-core machine), ``gpu`` (the same claims at
10-50M parameters and thousands of steps, one H100/H200-class GPU, bf16, at most about ten minutes).

Runs are resumable: each claim's rows go to ``OUT/runs/GROUP/results.jsonl`` (the harness's row
schema, with provenance); a job whose (run, seed, config) already has a row there is not run again,
so an interrupted ``farsync claims`` picks up where it stopped and a finished one only rewrites
``claims.md``. Claims that share runs name the same ``Setting.group``. ``--publish docs`` copies claims.md,
its plots and the rows behind them into the docs (docs/claims.md is the cpu profile's).

The claims are collected from the ``CLAIMS`` lists of the benchmark modules in a farsync source
checkout's ``benchmarks/`` (or ``$FARSYNC_BENCHMARKS``).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import statistics
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError

VERDICTS = ("reproduced", "not at this scale", "contradicted")
IMG = "img/claims"  # the plots, relative to claims.md (docs/claims.md's are in docs/img/claims)
PROFILES = ("ci", "cpu", "gpu")


@dataclass(frozen=True)
class Setting:
    """How a claim's study runs under one profile.

    ``describe``: our setting in words (model, workers, steps, what differs from the paper).
    ``profile``: the study's own profile (``benchmarks/STUDY.py --profile``). ``params``: study
    parameters (``--set NAME=VALUE``). ``set``: config overrides for every run of a config study.
    ``only``: run labels or patterns. ``seeds``: seeds 0..seeds-1 (None: the study's own, or none for a
    study without seeds); ``farsync claims --seeds N`` replaces it. ``group``: run directory shared by
    the claims of one study that need the same runs (default: the claim's name).
    """

    describe: str
    profile: str
    params: dict = field(default_factory=dict)
    set: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    seeds: int | None = None
    group: str | None = None


@dataclass(frozen=True)
class Finding:
    """What our runs say: ``ours`` (our figure in words: numbers with seeds and spread), an optional
    markdown ``table``, the ``verdict`` and, when not reproduced, ``why`` (one sentence)."""

    verdict: str
    ours: str
    table: str = ""
    why: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {', '.join(VERDICTS)}")
        if self.verdict != "reproduced" and not self.why:
            raise ValueError(f"a {self.verdict!r} finding needs `why` (scale, budget, a setting we could not match)")


@dataclass(frozen=True)
class Claim:
    """One claim of one paper and how farsync tests it (see the module docstring)."""

    name: str
    paper: str  # arXiv id (2311.08105), or openreview:FORUM_ID for a paper with none
    title: str  # the paper's title
    statement: str  # the claim in one sentence
    paper_figure: str  # the paper's own number(s) and where they are
    study: str  # module of benchmarks/
    settings: dict[str, Setting]
    judge: Callable[[list[dict]], Finding]
    plot: Callable[[list[dict], Path], Any]
    gpu: str = ""  # where the gpu profile could decide a claim not reproduced on the CPU

    def __post_init__(self):
        bad = sorted(set(self.settings) - set(PROFILES))
        if bad:
            raise ValueError(f"claim {self.name}: unknown profile(s) {', '.join(bad)} (valid: {', '.join(PROFILES)})")
        paper_source(self.paper, self.name)

    @property
    def source(self) -> str:
        """The paper as a short label: ``arXiv 2311.08105`` or ``OpenReview stFPf3gzq1``."""
        return paper_source(self.paper, self.name)[0]

    @property
    def url(self) -> str:
        return paper_source(self.paper, self.name)[1]


def paper_source(paper: str, claim: str = "") -> tuple[str, str]:
    """(label, URL) of a claim's paper: an arXiv id, or ``openreview:FORUM_ID``."""
    if re.fullmatch(r"\d{4}\.\d{4,5}", paper):
        return f"arXiv {paper}", f"https://arxiv.org/abs/{paper}"
    m = re.fullmatch(r"openreview:([A-Za-z0-9_-]+)", paper)
    if m:
        return f"OpenReview {m.group(1)}", f"https://openreview.net/forum?id={m.group(1)}"
    raise ValueError(f"claim {claim}: paper {paper!r} is neither an arXiv id (2311.08105) nor openreview:FORUM_ID")


# ---------------------------------------------------------------- the registry

def benchmarks_dir() -> Path:
    """benchmarks/ of this source checkout, or $FARSYNC_BENCHMARKS; a clear error without one."""
    env = os.environ.get("FARSYNC_BENCHMARKS")
    d = Path(env) if env else Path(__file__).resolve().parents[2] / "benchmarks"
    if not (d / "harness.py").is_file():
        raise ConfigError(f"farsync claims runs the studies in benchmarks/ of a farsync source checkout; none at {d} "
                          "(clone the repository and `pip install -e .`, or set FARSYNC_BENCHMARKS=DIR)")
    return d


def harness():
    """benchmarks/harness.py, importable (the studies import it by name)."""
    d = str(benchmarks_dir())
    if d not in sys.path:
        sys.path.insert(0, d)
    import harness as h

    return h


def registry() -> dict[str, Claim]:
    """Every claim of every benchmark module's CLAIMS, by name (names are unique)."""
    h = harness()
    out: dict[str, Claim] = {}
    for study in h.benchmarks():
        for claim in getattr(h.load(study), "CLAIMS", ()):
            if claim.name in out:
                raise ValueError(f"claim {claim.name!r} is defined twice ({out[claim.name].study} and {study})")
            if claim.study != study:
                raise ValueError(f"claim {claim.name!r} is in benchmarks/{study}.py but names study {claim.study!r}")
            out[claim.name] = claim
    return out


def select(claims: dict[str, Claim], only: list[str] | None) -> list[Claim]:
    """The claims whose name matches a pattern of `only` (all without); a pattern matching none is an error."""
    if not only:
        return list(claims.values())
    unmatched = [p for p in only if not any(fnmatch.fnmatchcase(n, p) for n in claims)]
    if unmatched:
        raise ConfigError(f"--only {' '.join(map(repr, unmatched))} matches no claim; claims: {', '.join(claims)}")
    return [c for n, c in claims.items() if any(fnmatch.fnmatchcase(n, p) for p in only)]


# ---------------------------------------------------------------- running

def study_args(claim: Claim, setting: Setting, out: Path, seeds: int | None):
    """The harness's parsed flags for this claim's study under `setting` (run directories in `out`)."""
    h = harness()
    argv = ["--profile", setting.profile, "--out", str(out)]
    for key, value in setting.params.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    for item in setting.set:
        argv += ["--set", item]
    if setting.only:
        argv += ["--only", *setting.only]
    n = seeds if seeds is not None else setting.seeds
    mod = h.load(claim.study)
    if n is not None and mod.SEEDS is not None:
        argv += ["--seeds", *map(str, range(n))]
    elif seeds is not None and "claim_seeds" in mod.PARAMS:  # a study whose runs take their seeds from a parameter
        argv += ["--set", f"claim_seeds={json.dumps(list(range(seeds)))}"]
    try:
        return h.parse_args(claim.study, argv)
    except SystemExit as exc:  # argparse already printed what is wrong
        raise ConfigError(f"claim {claim.name}: its {setting.profile!r} setting is not a valid run of "
                          f"benchmarks/{claim.study}.py ({' '.join(argv)})") from exc


def job_key(run: str, seed, config: dict | None) -> tuple:
    """What identifies a run of a study: its name, seed and config (a row is reused by this key)."""
    return run, seed, json.dumps(config or {}, sort_keys=True)


def _job_key(j: dict) -> tuple:
    return job_key(j["run"], j.get("seed"), j.get("config"))


def plan(claim: Claim, setting: Setting, out: Path, seeds: int | None):
    """(harness args, the jobs, the rows already there, the jobs still to run)."""
    h = harness()
    group = out / "runs" / (setting.group or claim.name)
    args = study_args(claim, setting, group, seeds)
    mod = h.load(claim.study)
    jobs = h.select(mod.jobs(args), args.only)
    rows, todo = _rows_and_todo(mod, Path(args.out) / "results.jsonl", jobs)
    return args, jobs, rows, todo


def _rows_and_todo(mod, results: Path, jobs: list[dict]) -> tuple[list[dict], list[dict]]:
    """The rows in `results` and the jobs that have none there."""
    rows = harness().read_rows(mod, results) if results.is_file() else []
    done = {job_key(r["run"], r["seed"], r["config"]) for r in rows}
    return rows, [j for j in jobs if _job_key(j) not in done]


def rows_of(jobs: list[dict], rows: list[dict]) -> list[dict]:
    """The rows of these jobs (same run, seed and config), in the jobs' order (linear in both)."""
    key = {job_key(r["run"], r["seed"], r["config"]): r for r in rows}
    found = (key.get(_job_key(j)) for j in jobs)
    return [r for r in found if r is not None]


@dataclass
class Outcome:
    claim: Claim
    setting: Setting | None
    rows: list[dict] = field(default_factory=list)
    finding: Finding | None = None
    ran: int = 0
    reused: int = 0
    seconds: float = 0.0
    error: str = ""


def run_claims(profile: str = "cpu", only: list[str] | None = None, seeds: int | None = None, out: str | Path = "runs/claims",
               parallel: int = 1, dry_run: bool = False, echo=print) -> list[Outcome]:
    """Run (or reuse) every selected claim's study under `profile`, judge it, write OUT/claims.md, claims.json and
    one PNG per claim. Every setting is checked (its jobs built) before anything trains."""
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r} is not one of {', '.join(PROFILES)}")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    out = Path(out)
    h = harness()
    chosen = select(registry(), only)
    plans = {c.name: plan(c, c.settings[profile], out, seeds) for c in chosen if profile in c.settings}
    if dry_run:
        sized: dict[str, int] = {}  # run directory -> worker-steps still to run (claims of a group share them)
        for c in chosen:
            if c.name not in plans:
                echo(f"{c.name}: not in profile {profile}")
                continue
            args, jobs, _, todo = plans[c.name]
            sizes = [h.worker_steps(j) for j in todo]
            known = sum(s for s in sizes if s is not None)
            size = f", {known:,} worker-steps to go" if known else ""
            echo(f"{c.name}: {len(jobs)} run(s) of benchmarks/{c.study}.py, {len(jobs) - len(todo)} done{size}")
            sized[str(args.out)] = known
            for j in todo:
                echo("  " + json.dumps({"run": j["run"], "seed": j.get("seed"), "config": j.get("config", {})}))
        echo(f"claims: {sum(sized.values()):,} simulated worker-steps of farsync configs to go (train.steps x cluster.workers)")
        return []
    outcomes = []
    for c in chosen:
        setting = c.settings.get(profile)
        o = Outcome(c, setting)
        outcomes.append(o)
        if setting is None:
            continue
        args, jobs, _, _ = plans[c.name]
        mod = h.load(c.study)
        rows, todo = _rows_and_todo(mod, Path(args.out) / "results.jsonl", jobs)  # again: an earlier claim of its group may have run some
        o.reused = len(jobs) - len(todo)
        echo(f"claims: {c.name}: {len(todo)} run(s) of benchmarks/{c.study}.py to go, {o.reused} reused")
        t0 = time.perf_counter()
        if todo:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            args.parallel = parallel
            rows = h.run_jobs(mod, todo, args)
        o.seconds, o.ran = time.perf_counter() - t0, len(todo)
        o.rows = rows_of(jobs, rows)
        try:
            o.finding = c.judge(o.rows)
            c.plot(o.rows, out / IMG / f"{c.name}.png")
        except Exception as exc:  # a judge or plot that cannot read these rows: say so in claims.md, go on
            o.error = f"{type(exc).__name__}: {exc}"
        echo(f"claims: {c.name}: {o.finding.verdict if o.finding else 'error: ' + o.error}")
    write_report(outcomes, profile, out)
    return outcomes


# ---------------------------------------------------------------- claims.md

def _commits(rows: list[dict]) -> str:
    prov = [r.get("provenance") or {} for r in rows]
    commits = sorted({(p.get("commit") or "?") + ("+" if p.get("dirty") else "") for p in prov})
    devices = sorted({str(p.get("device")) for p in prov})
    dates = sorted(p.get("date", "")[:10] for p in prov if p.get("date"))
    when = f"{dates[0]}..{dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "?")
    return f"commit {', '.join(commits)} (+: uncommitted changes), {', '.join(devices)}, {when}"


def _seeds(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    return ", ".join(map(str, seeds)) if seeds else "none (deterministic)"


def write_report(outcomes: list[Outcome], profile: str, out: Path) -> Path:
    """OUT/claims.md (every claim: paper, claim, paper's figure, our setting, our figure, verdict, why, plot) and
    OUT/claims.json (name, paper, verdict, ours, why per claim)."""
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [f"# Paper claims: profile `{profile}`", "",
             f"Written by `farsync claims --profile {profile}` on {now}. Each claim: the paper's sentence and figure, "
             "the setting we ran, our figure (mean ± sd over the seeds named), and a verdict: "
             f"{', '.join(VERDICTS)}. Rows: `runs/GROUP/results.jsonl` of the output directory.", "",
             "| claim | paper | verdict | runs (reused) |", "|---|---|---|---|"]
    for o in outcomes:
        v = "not in this profile" if o.setting is None else (o.finding.verdict if o.finding else "error")
        lines.append(f"| [{o.claim.name}](#{o.claim.name}) | {o.claim.source} | {v} | "
                     f"{len(o.rows)} ({o.reused}) |" if o.setting else f"| {o.claim.name} | {o.claim.source} | {v} | - |")
    for o in outcomes:
        c = o.claim
        lines += ["", f"<a id=\"{c.name}\"></a>", f"## {c.name}", "",
                  f"- **Paper**: {c.title}, [{c.source}]({c.url}).",
                  f"- **Claim**: {c.statement}", f"- **Paper's figure**: {c.paper_figure}"]
        if o.setting is None:
            lines.append(f"- **Not in profile `{profile}`**; profiles: {', '.join(c.settings)}.")
            continue
        lines += [f"- **Our setting** (`benchmarks/{c.study}.py --profile {o.setting.profile}`): {o.setting.describe}",
                  f"- **Runs**: {len(o.rows)} (seeds {_seeds(o.rows)}); {o.ran} run now in "
                  f"{o.seconds / 60:.1f} min, {o.reused} reused; {_commits(o.rows) if o.rows else 'no rows'}."]
        if o.finding is None:
            lines.append(f"- **Error** reading the rows: {o.error}")
            continue
        f = o.finding
        lines += [f"- **Our figure**: {f.ours}", f"- **Verdict**: **{f.verdict}**."]
        if f.why:
            lines.append(f"- **Why**: {f.why}" + (f" **Where the gpu profile could decide it**: {c.gpu}" if c.gpu else ""))
        if f.table:
            lines += ["", f.table.strip()]
        lines += ["", f"![{c.name}]({IMG}/{c.name}.png)"]
    path = out / "claims.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    data = [{"name": o.claim.name, "paper": o.claim.paper, "profile": profile,
             "verdict": o.finding.verdict if o.finding else None, "ours": o.finding.ours if o.finding else None,
             "why": o.finding.why if o.finding else None, "runs": len(o.rows), "error": o.error or None}
            for o in outcomes if o.setting is not None]
    (out / "claims.json").write_text(json.dumps(data, indent=1) + "\n")
    return path


def publish(out: str | Path, docs: str | Path, profile: str) -> list[Path]:
    """Copy OUT's claims.md (as DOCS/claims.md for the cpu profile, DOCS/claims-PROFILE.md otherwise), its plots
    (DOCS/img/claims/) and every group's rows (DOCS/claims-data/PROFILE/GROUP.jsonl, the provenance of each figure)."""
    import shutil

    out, docs = Path(out), Path(docs)
    if not (out / "claims.md").is_file():
        raise ConfigError(f"nothing to publish: no {out / 'claims.md'} (run farsync claims first)")
    written = [docs / ("claims.md" if profile == "cpu" else f"claims-{profile}.md")]
    written[0].parent.mkdir(parents=True, exist_ok=True)
    text = (out / "claims.md").read_text().replace("Rows: `runs/GROUP/results.jsonl` of the output directory.",
                                                   f"Rows: `claims-data/{profile}/GROUP.jsonl` (each with its provenance).")
    written[0].write_text(text)
    (docs / IMG).mkdir(parents=True, exist_ok=True)
    for png in sorted((out / IMG).glob("*.png")):
        written.append(Path(shutil.copyfile(png, docs / IMG / png.name)))
    data = docs / "claims-data" / profile
    data.mkdir(parents=True, exist_ok=True)
    for results in sorted((out / "runs").glob("*/results.jsonl")):
        written.append(Path(shutil.copyfile(results, data / f"{results.parent.name}.jsonl")))
    return written


def list_claims(echo=print) -> None:
    for c in registry().values():
        echo(f"{c.name} ({c.source}, benchmarks/{c.study}.py; profiles {', '.join(c.settings)}): {c.statement}")


# ---------------------------------------------------------------- helpers for the judges and plots

def values(rows: list[dict], run: str, key: str = "final_eval_loss") -> list[float]:
    """`key` of every seed's row of `run` (NaN and missing values dropped)."""
    out = []
    for r in rows:
        v = r["metrics"].get(key) if r["run"] == run else None
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def ms(xs: list[float], digits: int = 4) -> str:
    """"2.4300 ± 0.0137 (3 seeds)"; "-" without values."""
    if not xs:
        return "-"
    return f"{mean(xs):.{digits}f} ± {sd(xs):.{digits}f} ({len(xs)} seed{'s' if len(xs) != 1 else ''})"


def rel(a: float, b: float) -> float:
    """(a - b) / b in percent."""
    return 100.0 * (a - b) / b


def table(head: list[str], cells: list[list]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(x) for x in row) + " |" for row in cells])


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Lay out, write (110 dpi, creating the folder) and close a claim's figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def mean_curve(rows: list[dict], run: str, key: str = "evals"):
    """(x, mean, sd, seeds) of metrics[key] ([[x, ..., y], ...]) over `run`'s seeds, cut to the shortest; None without
    rows. Non-finite values are left out of each point's mean and sd."""
    series = [r["metrics"].get(key) for r in rows if r["run"] == run and r["metrics"].get(key)]
    if not series:
        return None
    n = min(len(s) for s in series)
    ys = [[v for v in (s[k][-1] for s in series) if v is not None and math.isfinite(v)] for k in range(n)]
    return [series[0][k][0] for k in range(n)], [mean(y) for y in ys], [sd(y) for y in ys], len(series)


def bars(rows: list[dict], path: Path, runs: dict[str, str], key: str = "final_eval_loss", title: str = "",
         ylabel: str = "final eval loss") -> Path:
    """A bar per run (label: runs[run]) at the mean over seeds, every seed as a dot, ±sd as error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(runs) + 1.5), 3.6))
    for i, (run, label) in enumerate(runs.items()):
        xs = values(rows, run, key)
        if xs:
            ax.bar(i, mean(xs), yerr=sd(xs), color="C0", alpha=0.6, capsize=4)
            ax.plot([i] * len(xs), xs, "k.", ms=5)
    ax.set_xticks(range(len(runs)), list(runs.values()), rotation=30, ha="right", fontsize=8)
    finite = [v for run in runs for v in values(rows, run, key)]
    if finite:
        lo, hi = min(finite), max(finite)
        ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9) - 0.02 * abs(lo), hi + 0.15 * (hi - lo + 1e-9) + 0.02 * abs(hi))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def curves(rows: list[dict], path: Path, runs: dict[str, str], title: str = "", key: str = "evals",
           xlabel: str = "step", ylabel: str = "eval loss", logy: bool = False) -> Path:
    """Per run, the mean over seeds of metrics[key] ([[x, ..., y], ...]) against x, with a ±sd band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for i, (run, label) in enumerate(runs.items()):
        curve = mean_curve(rows, run, key)
        if curve is None:
            continue
        x, m, d, seeds = curve
        ax.plot(x, m, label=f"{label} ({seeds} seed{'s' if seeds != 1 else ''})", color=f"C{i % 10}")
        if seeds > 1:
            ax.fill_between(x, [a - b for a, b in zip(m, d)], [a + b for a, b in zip(m, d)], color=f"C{i % 10}", alpha=0.2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)
