"""`farsync sweep`: configs over a grid of overrides; compute utilization and time to a target loss.

    farsync sweep A.yaml B.yaml --grid cluster.bandwidth=100Mbps,1Gbps,10Gbps [--grid KEY=V1,V2 ...]
                  [--set KEY=VALUE ...] [--target-loss 2.2] [--out runs/sweep]

Every combination of grid values is applied (after the --set overrides) to every config, and all
of them are validated before the first run starts. Points that differ from an earlier point of the
same config only in timing keys (network, time model: `retime.TIMING_KEYS`) are not trained again
when the algorithm's trajectory does not depend on timing: they are re-timed from that run's
communication log (`farsync retime`), which gives what training them would (tested). Each run lands in OUT/<config name>/<key=value
...>; a completed run already there is reused. OUT/sweep.jsonl holds one line per run, OUT/report.md
a table (final eval loss, bytes, simulated time, compute utilization, simulated time until the eval
loss first reaches --target-loss; in the units of `farsync compare`, from `farsync.units`); with one grid key, OUT/utilization.png and OUT/time_to_target.png
plot those against it (log axis for bandwidths).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config
from .retime import check_retimeable, is_timing_key, retime
from .report import run_labels
from .rundir import read_metrics
from .units import format_bytes, format_loss, format_seconds_column, format_utilization, parse_bandwidth, parse_duration


def split_values(text: str) -> list[str]:
    """Split ``a,b,{c: 1, d: 2}`` on the commas outside brackets and braces."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    if any(not v for v in out):
        raise ConfigError(f"empty value in grid {text!r}")
    return out


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--grid needs KEY=V1,V2,..., got {item!r}")
        grid.append((key.strip(), split_values(values)))
    return grid


def _label(point: dict[str, str]) -> str:
    text = ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)


def time_to_target(metrics: list[dict[str, Any]], target: float | None) -> float | None:
    """Simulated time of the first evaluation with eval_loss <= target (None if never)."""
    if target is None:
        return None
    return next((m["sim_time_s"] for m in metrics if m.get("eval_loss") is not None and m["eval_loss"] <= target), None)


def _numeric(key: str, value: str) -> float | None:
    """The grid value as a number (bandwidths in bits/s, durations in s), or None."""
    parse = parse_bandwidth if "bandwidth" in key else parse_duration if key.endswith(("latency", "step_time")) else float
    try:
        return parse(value)
    except (ValueError, TypeError):
        return None


def retimeable(run_dir: Path) -> bool:
    """True if `run_dir` can be re-timed (any timing override); see `retime.check_retimeable`."""
    try:
        check_retimeable(run_dir, [])
    except ValueError:
        return False
    return True


def sweep(configs: list[str], grid_items: list[str], overrides: list[str] | None = None, out: str | Path = "runs/sweep",
          target_loss: float | None = None, progress: bool = False, unset: list[str] | None = None) -> Path:
    """Run the sweep; return the path of report.md. `unset` keys are removed from every config
    first. A grid over ``algorithm.name`` runs one config with each algorithm: keys of the others
    (``sync_every``, ``outer``, ``fragments``, ...) are ignored where they do not apply."""
    from .runner import run

    grid = parse_grid(grid_items)
    points = [dict(zip([k for k, _ in grid], combo)) for combo in itertools.product(*[v for _, v in grid])]
    plan = []
    for path in configs:  # validate everything before any work
        for point in points:
            sets = list(overrides or []) + [f"{k}={v}" for k, v in point.items()]
            cfg = load_config(path, sets, unset)
            plan.append((cfg.name, point, path, sets))
    bases = {path: load_config(path, overrides, unset) for path in dict.fromkeys(configs)}
    labels = dict(zip(bases, run_labels([c.name for c in bases.values()], [c.to_dict() for c in bases.values()])))
    out = Path(out)
    rows = []
    trained: dict[tuple, tuple[Path, dict[str, str]]] = {}  # (config, non-timing point) -> a trained run
    for name, point, path, sets in plan:
        run_dir = out / name / _label(point)
        summary_file = run_dir / "summary.json"
        done = summary_file.exists() and json.loads(summary_file.read_text()).get("status") == "completed"
        same = (path, tuple((k, v) for k, v in point.items() if not is_timing_key(k)))
        if done:
            summary = json.loads(summary_file.read_text())
            metrics = read_metrics(run_dir / "metrics.jsonl")
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            source = trained.get(same)
            if source is not None and retimeable(source[0]):
                changed = [f"{k}={v}" for k, v in point.items() if is_timing_key(k)]
                print(f"[sweep] {name} {point}: re-timed from {source[0]} (no training)", flush=True)
                retime(source[0], changed, run_dir)
                summary = json.loads(summary_file.read_text())
                metrics = read_metrics(run_dir / "metrics.jsonl")
            else:
                print(f"[sweep] {name} {point}", flush=True)
                result = run(path, overrides=sets, out=run_dir, progress=progress, unset=unset)
                summary, metrics = result.summary, result.metrics
        if summary.get("status") == "completed" and "retimed_from" not in summary:
            trained.setdefault(same, (run_dir, point))
        rows.append({
            "config": name, "label": labels[path], **point, "run_dir": str(run_dir), "status": summary["status"],
            "final_eval_loss": summary["final_eval_loss"], "bytes_sent_total": summary["bytes_sent_total"],
            "sim_time_s": summary["sim_time_s"], "compute_utilization": summary["compute_utilization"],
            "time_to_target_s": time_to_target(metrics, target_loss), "retimed": "retimed_from" in summary,
            "time_model": summary.get("time_model"),
        })
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = [k for k, _ in grid]
    if len(keys) == 1:
        plot_sweep(rows, keys[0], out, target_loss)
    return write_report(rows, keys, out, target_loss)


def write_report(rows: list[dict], keys: list[str], out: Path, target: float | None) -> Path:
    """OUT/report.md: one row per run, in the units `farsync compare` uses (`farsync.units`: bytes
    in kB / MB / GB, times of a column in one unit, utilization in percent)."""
    head = ["config", *keys, "final eval loss", "bytes sent", "sim time", "compute util.", f"time to loss {target}",
            "status", "trained or re-timed"]
    lines = ["# Sweep", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    times = format_seconds_column([r["sim_time_s"] for r in rows])
    to_target = format_seconds_column([r["time_to_target_s"] for r in rows])
    for r, time, reach in zip(rows, times, to_target):
        cells = [r["config"], *[str(r[k]) for k in keys], format_loss(r["final_eval_loss"]), format_bytes(r["bytes_sent_total"]),
                 time, format_utilization(r["compute_utilization"]), reach, r["status"],
                 "re-timed" if r.get("retimed") else "trained"]
        lines.append("| " + " | ".join(cells) + " |")
    models = list(dict.fromkeys(r.get("time_model") or "not recorded" for r in rows))
    lines += ["", "Time models:", ""] + [f"- {m}" for m in models]
    if len(keys) == 1:
        lines += ["", "![compute utilization](utilization.png)"] + (["![time to target](time_to_target.png)"] if target is not None else [])
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_sweep(rows: list[dict], key: str, out: Path, target: float | None) -> None:
    """OUT/utilization.png and OUT/time_to_target.png against the one grid key (bandwidths on a
    log axis in Mbps / Gbps; utilization in percent; times in the unit of the longest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import bandwidth_axis, percent_axis, time_axis

    values = list(dict.fromkeys(r[key] for r in rows))
    nums = [_numeric(key, v) for v in values]
    xs = nums if all(n is not None for n in nums) else list(range(len(values)))
    xpos = dict(zip(values, xs))
    for field, ylabel, fname in [("compute_utilization", "compute utilization", "utilization.png"),
                                 ("time_to_target_s", f"simulated time to eval loss {target}", "time_to_target.png")]:
        if field == "time_to_target_s" and target is None:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        scale = 1.0
        if field == "time_to_target_s":
            scale = time_axis(ax, "y", [r[field] for r in rows], ylabel, log=True)
        else:
            ax.set_ylabel(ylabel)
            percent_axis(ax, "y")
        for name in dict.fromkeys(r.get("label", r["config"]) for r in rows):
            pts = [(xpos[r[key]], r[field] / scale) for r in rows if r.get("label", r["config"]) == name and r[field] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        if xs is not nums:
            ax.set_xticks(xs, values)
        elif "bandwidth" in key:
            bandwidth_axis(ax, "x")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
