"""`farsync compare`: a markdown table and plots of eval loss against steps, bytes and time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import yaml  # noqa: E402

from .rundir import read_metrics  # noqa: E402
from .units import format_bytes, format_loss  # noqa: E402

PLOTS = (
    ("step", "loss_vs_steps.png", "inner steps per worker", False),
    ("bytes_sent", "loss_vs_bytes.png", "bytes sent (all workers)", True),
    ("sim_time_s", "loss_vs_time.png", "simulated wall-clock (s)", False),
)


@dataclass
class LoadedRun:
    path: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    config: dict[str, Any] | None = None
    label: str = ""

    def __post_init__(self):
        self.label = self.label or self.summary.get("name") or self.path.name


def load_run(path: str | Path) -> LoadedRun:
    path = Path(path)
    s, m = path / "summary.json", path / "metrics.jsonl"
    if not s.is_file() or not m.is_file():
        raise FileNotFoundError(f"{path} is not a run directory (needs summary.json and metrics.jsonl)")
    metrics = read_metrics(m)  # a partial last line (a killed run) is skipped
    cfg = path / "config.yaml"
    config = yaml.safe_load(cfg.read_text()) if cfg.is_file() else None
    return LoadedRun(path, json.loads(s.read_text()), metrics, config)


def flatten_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"algorithm": {"inner": {"lr": 1e-3}}}`` -> ``{"algorithm.inner.lr": 1e-3}``."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            flat.update(flatten_config(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The dotted keys whose values differ between `configs` (resolved run configs). When
    ``algorithm.name`` differs, an ``algorithm.*`` key counts only if it differs between runs of
    the same algorithm (otherwise it is just that algorithm's default or an ignored option)."""
    flats = [flatten_config(c) for c in configs]

    def differs(key: str, group: list[dict[str, Any]]) -> bool:
        return len({json.dumps(f.get(key), sort_keys=True, default=str) for f in group}) > 1

    diff = [k for k in sorted({k for f in flats for k in f}) if k != "name" and differs(k, flats)]
    if "algorithm.name" not in diff:
        return diff
    groups: dict[str, list[dict]] = {}
    for f in flats:
        groups.setdefault(f.get("algorithm.name"), []).append(f)
    rest = [k for k in diff if k != "algorithm.name"
            and (not k.startswith("algorithm.") or any(differs(k, g) for g in groups.values()))]
    return ["algorithm.name", *rest]


def short_key(key: str) -> str:
    """``algorithm.inner.lr`` -> ``inner.lr``, ``cluster.bandwidth`` -> ``bandwidth``,
    ``algorithm.name`` -> ``algorithm``."""
    if key.endswith(".name") and key.count(".") == 1:
        return key.split(".")[0]
    parts = key.split(".")
    return ".".join(parts[1:]) if len(parts) > 1 else key


def run_labels(names: list[str], configs: list[dict[str, Any] | None], max_keys: int = 3) -> list[str]:
    """Legend labels: each run's name, followed by the config keys that differ between the runs
    (``tiny (name=ddp)``, ``tiny (name=diloco, sync_every=50)``)."""
    if len(names) < 2 or any(c is None for c in configs):
        return list(names)
    keys = differing_keys(configs)
    labels = []
    for name, cfg in zip(names, configs):
        flat = flatten_config(cfg)
        parts = [f"{short_key(k)}={flat.get(k, '-')}" for k in keys[:max_keys]]
        if len(keys) > max_keys:
            parts.append(f"+{len(keys) - max_keys} more")
        labels.append(f"{name} ({', '.join(parts)})" if parts else name)
    return labels


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def markdown_table(runs: list[LoadedRun]) -> str:
    base = runs[0].summary["bytes_sent_total"] or None
    head = (
        "| run | algorithm | workers | final eval loss | best eval loss | bytes sent | bytes vs first "
        "| peak bytes/sync | sim time (s) | compute util. | status |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in runs:
        s = r.summary
        ratio = "-" if not base or not s["bytes_sent_total"] else f"{base / s['bytes_sent_total']:.1f}x fewer" if s["bytes_sent_total"] < base else f"{s['bytes_sent_total'] / base:.2f}x"
        rows.append(
            f"| {r.label} | {s['algorithm']} | {s['workers']} | {format_loss(s['final_eval_loss'])} | {format_loss(s['best_eval_loss'])} "
            f"| {format_bytes(s['bytes_sent_total'])} | {ratio} | {format_bytes(s['peak_bytes_per_sync'])} "
            f"| {_fmt(s['sim_time_s'], '.2f')} | {_fmt(s['compute_utilization'], '.3f')} | {s['status']} |"
        )
    return head + "\n".join(rows) + "\n"


def bytes_in_flight(transfers: list[tuple[float, float, int, int]]) -> tuple[list[float], list[int]]:
    """Bytes on the wire over (virtual) time, summed over workers, as a step function.

    `transfers` are (start, end, rank, bytes) of each call (``SimCluster.transfers``, or the rows of
    a run's ``transfers.csv``); a call's bytes count as in flight from its start to its end.
    Returns change points ``times`` and ``values[i]``, the bytes in flight on [times[i], times[i+1]).
    """
    events: dict[float, int] = {}
    for start, end, _, nbytes in transfers:
        if end > start:
            events[start] = events.get(start, 0) + nbytes
            events[end] = events.get(end, 0) - nbytes
    times, values, level = [], [], 0
    for t in sorted(events):
        level += events[t]
        times.append(t)
        values.append(level)
    return times, values


def load_transfers(run_dir: str | Path) -> list[tuple[float, float, int, int]]:
    """The rows of a simulated run's ``transfers.csv`` (start_s, end_s, rank, bytes)."""
    path = Path(run_dir) / "transfers.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: transfers are recorded by the simulated backend only")
    rows = path.read_text().splitlines()[1:]
    return [(float(a), float(b), int(c), int(d)) for a, b, c, d in (r.split(",") for r in rows)]


def plot_bytes_in_flight(run_dirs: list[str | Path], out: str | Path, t_max: float | None = None) -> Path:
    """Plot bytes in flight against simulated time for each run (up to `t_max` seconds)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for d in run_dirs:
        times, values = bytes_in_flight(load_transfers(d))
        label = load_run(d).label
        ax.step(times, values, where="post", label=label, linewidth=1)
    if t_max is not None:
        ax.set_xlim(0, t_max)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("bytes in flight (all workers)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def compare(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write ``report.md`` and three PNG plots into `out`; return the report's path."""
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    legends = run_labels([r.label for r in runs], [r.config for r in runs])  # name + the keys that differ
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for key, fname, xlabel, logx in PLOTS:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r, legend in zip(runs, legends):
            pts = [(m[key], m["eval_loss"]) for m in r.metrics if "eval_loss" in m]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", markersize=3, label=legend)
        if logx:
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    lines = ["# farsync comparison", "", markdown_table(runs), "", "Time models (how the simulated times were computed):", ""]
    lines += [f"- {r.label}: {r.summary.get('time_model') or 'not recorded (a run made before farsync stated it)'}"
              for r in runs]
    lines += [""]
    lines += [f"![{fname}]({fname})" for _, fname, _, _ in PLOTS]
    lines += ["", "Runs: " + ", ".join(str(r.path) for r in runs), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
