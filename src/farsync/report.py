"""`farsync compare`: report.md (what each run was, how it did) and plots of train and eval loss
against steps, bytes sent and simulated time.

report.md has a results table (losses, bytes, simulated time, compute utilization), a "Runs"
table read from each run's resolved ``config.yaml`` (the algorithm with the options that matter,
the inner and outer optimizers, workers, network, training budget), the time models and the plots.
Legends name each run and the config keys that differ between the runs. Numbers are formatted by
`farsync.units` (``format_seconds``, ``format_bytes``, ``format_utilization``), which
`farsync sweep` uses too; the axis helpers here (`bytes_axis`, `time_axis`, `bandwidth_axis`)
are shared with its plots.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

import yaml  # noqa: E402

from .rundir import read_metrics  # noqa: E402
from .units import (format_bandwidth, format_bytes, format_loss, format_seconds,  # noqa: E402
                    format_seconds_column, format_utilization, parse_bandwidth, parse_duration, time_unit)

PLOTS = (  # metrics key, file, x axis label
    ("step", "loss_vs_steps.png", "inner steps per worker"),
    ("bytes_sent", "loss_vs_bytes.png", "bytes sent, all workers (log scale, from the first synchronization)"),
    ("sim_time_s", "loss_vs_time.png", "simulated wall-clock"),
)
LOG_TIME_RATIO = 30.0  # runs whose simulated durations differ more than this get a log time axis
TITLES = {"step": "loss vs inner steps", "bytes_sent": "loss vs bytes sent", "sim_time_s": "loss vs simulated time"}


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


def _canonical(key: str, value: Any) -> Any:
    """A value to compare: bandwidths and durations as numbers ('100Mbps' == 1e8, '5ms' == 0.005)."""
    last = key.rsplit(".", 1)[-1]
    parse = parse_bandwidth if "bandwidth" in last else parse_duration if last in ("latency", "step_time", "timeout") else None
    if parse is not None and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            return parse(value)
        except ValueError:
            pass
    return value


def _takes(algorithm: Any, option: str) -> bool:
    """True if the algorithm named `algorithm` has `option` of its own choosing (``inner``: all)."""
    from .algorithms import get_algorithm
    from .algorithms.options import takes

    if option == "inner":
        return True
    try:
        return takes(get_algorithm(str(algorithm)), option)
    except ValueError:
        return True


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The dotted keys whose values differ between `configs` (resolved run configs; '100Mbps' and
    1e8 are the same bandwidth). When ``algorithm.name`` differs, an ``algorithm.*`` key counts
    only if it differs between the runs whose algorithms take it (``sync_every`` of diloco runs
    with H = 3 and 6 does, DDP's fixed 1 beside one DiLoCo run does not; ``fragments`` counts
    between streaming-diloco runs only): otherwise it is just an algorithm's default or an
    option another algorithm ignores."""
    flats = [flatten_config(c) for c in configs]

    def differs(key: str, group: list[dict[str, Any]]) -> bool:
        return len({json.dumps(_canonical(key, f.get(key)), sort_keys=True, default=str) for f in group}) > 1

    diff = [k for k in sorted({k for f in flats for k in f}) if k != "name" and differs(k, flats)]
    if "algorithm.name" not in diff:
        return diff
    rest = [k for k in diff if k != "algorithm.name"
            and (not k.startswith("algorithm.")
                 or differs(k, [f for f in flats if _takes(f.get("algorithm.name"), k.split(".")[1])]))]
    return ["algorithm.name", *rest]


def short_key(key: str) -> str:
    """``algorithm.inner.lr`` -> ``inner.lr``, ``cluster.bandwidth`` -> ``bandwidth``,
    ``algorithm.name`` -> ``algorithm``."""
    if key.endswith(".name") and key.count(".") == 1:
        return key.split(".")[0]
    parts = key.split(".")
    return ".".join(parts[1:]) if len(parts) > 1 else key


def _nested(tree: dict[str, Any] | None, key: str, missing: Any = "-") -> Any:
    """``_nested(cfg, "algorithm.outer.lr")``; `missing` where a part is absent."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def format_value(key: str, value: Any) -> str:
    """A config value for legends and tables: bandwidths as '100 Mbps' (from '100Mbps' or 1e8),
    durations as '5 ms', floats with %g, mappings as ``name(k=v, ...)``, ``none``."""
    last = key.rsplit(".", 1)[-1]
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)) and ("bandwidth" in last or last in ("latency", "step_time", "timeout")):
        number = _canonical(key, value)
        if isinstance(number, float):
            return format_bandwidth(number) if "bandwidth" in last else format_seconds(number)
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, dict):
        rest = ", ".join(f"{k}={format_value(k, v)}" for k, v in value.items() if k != "name")
        return f"{value['name']}({rest})" if "name" in value else "{" + rest + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(key, v) for v in value) + "]"
    return str(value)


def _label_keys(keys: list[str], flats: list[dict[str, Any]]) -> list[str]:
    """Collapse the keys below a section that is a leaf in some run (``algorithm.compress`` is
    none in one run and ``{name: int8, block: 64}`` in another): the section is one legend entry."""
    out: list[str] = []
    for key in keys:
        parts = key.split(".")
        top = next((p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if any(p in f for f in flats)), key)
        if top not in out:
            out.append(top)
    return out


def legend_value(key: str, value: Any, width: int = 32) -> str:
    """`format_value`, kept short for a legend: a long section by its name or preset
    (``time_model=1b``), other long values cut with an ellipsis."""
    text = format_value(key, value)
    if len(text) <= width:
        return text
    if isinstance(value, dict) and (value.get("name") or value.get("preset")):
        return f"{value['name']}(...)" if value.get("name") else str(value["preset"])
    return text[: width - 3] + "..."


def legend_rank(key: str) -> int:
    """The order of the differing keys in a legend: the algorithm, its sync period and options,
    workers and network, the outer then the inner optimizer, the rest."""
    if key == "algorithm.name":
        return 0
    if key == "algorithm.sync_every":
        return 1
    if key.startswith("algorithm.outer"):
        return 4
    if key in ("algorithm.inner.name", "algorithm.inner.lr"):
        return 5
    if key.startswith("algorithm.inner"):
        return 6
    if key.startswith("algorithm."):
        return 2
    if key in ("cluster.workers", "cluster.bandwidth", "cluster.link_bandwidth", "cluster.latency", "cluster.topology"):
        return 3
    return 7


def run_labels(names: list[str], configs: list[dict[str, Any] | None], max_keys: int = 3) -> list[str]:
    """Legend labels: each run's name, followed by the config keys that differ between the runs
    (``tiny (algorithm=ddp)``, ``tiny (algorithm=diloco, sync_every=50)``), the most telling
    first (`legend_rank`); numbers of bandwidth and duration keys in human units (`format_value`),
    ``default`` where a run's config does not have the key; at most `max_keys` keys, then
    ``+N more``."""
    if len(names) < 2 or any(c is None for c in configs):
        return list(names)
    keys = sorted(_label_keys(differing_keys(configs), [flatten_config(c) for c in configs]), key=legend_rank)
    labels = []
    for name, cfg in zip(names, configs):
        parts = [f"{short_key(k)}={legend_value(k, _nested(cfg, k, 'default'))}" for k in keys[:max_keys]]
        if len(keys) > max_keys:
            parts.append(f"+{len(keys) - max_keys} more")
        labels.append(f"{name} ({', '.join(parts)})" if parts else name)
    return labels


def display_names(runs: list[LoadedRun]) -> list[str]:
    """The runs' names for the tables; runs that share a name get their directory's name after it
    (``tiny [a]``, ``tiny [b]``), or their position when those are the same too."""
    names = [r.label for r in runs]
    if len(set(names)) == len(names):
        return names
    dirs = [r.path.name for r in runs]
    tags = dirs if len(set(dirs)) == len(dirs) else [str(i + 1) for i in range(len(runs))]
    return [f"{n} [{t}]" if names.count(n) > 1 else n for n, t in zip(names, tags)]


# ---------------------------------------------------------------- what each run was (config.yaml)
def _optimizer_default(name: str, arg: str) -> Any:
    """The default of `arg` in optimizer `name`'s constructor (torch's AdamW: weight_decay 0.01)."""
    try:
        from .optim import OPTIMIZERS

        default = inspect.signature(OPTIMIZERS[name]).parameters[arg].default
    except (KeyError, TypeError, ValueError, ImportError):
        return None
    return None if default is inspect.Parameter.empty else default


def describe_optimizer(opt: Any, inner: bool = False) -> str:
    """``adamw (lr=0.003, weight_decay=0.01 default)``, ``sgd (lr=0.7, momentum=0.9, nesterov)``;
    a wrapper shows its base: ``gpa (base=adamw (lr=0.001, ...), ...)``. The inner optimizer always
    states lr and weight decay (from the optimizer's defaults when the config does not set them)."""
    if not isinstance(opt, dict):
        return "-" if opt is None else str(opt)
    name = str(opt.get("name", "?"))
    parts = []
    keys = ["lr", "weight_decay"] if inner and "base" not in opt else [k for k in ("lr",) if k in opt]
    for k in keys:
        if k in opt:
            parts.append(f"{k}={format_value(k, opt[k])}")
        elif (d := _optimizer_default(name, k)) is not None:
            parts.append(f"{k}={format_value(k, d)} default")
    for k, v in opt.items():
        if k in ("name", *keys):
            continue
        if k == "base":
            parts.append(f"base={describe_optimizer(v, inner)}")
        elif v is True:
            parts.append(k)
        elif v is not False:
            parts.append(f"{k}={format_value(k, v)}")
    return f"{name} ({', '.join(parts)})" if parts else name


def algorithm_options(algorithm: dict[str, Any]) -> list[tuple[str, Any]]:
    """The options of a resolved ``algorithm`` section worth stating: ``sync_every`` of an
    algorithm that synchronizes periodically, ``compress`` when set, and every other field of the
    algorithm's Options model that differs from its default (``outer`` and ``topology`` are shown
    apart: outer optimizer, network)."""
    from .algorithms import get_algorithm
    from .algorithms.options import takes

    try:
        cls = get_algorithm(algorithm.get("name", ""))
    except ValueError:
        return [(k, v) for k, v in algorithm.items() if k not in ("name", "inner", "outer")]
    out = []
    for key, field in cls.Options.model_fields.items():
        if key in ("outer", "topology") or key not in algorithm:
            continue
        value = algorithm[key]
        if key == "sync_every":
            if takes(cls, key):
                out.append((key, value))
            continue
        try:
            default = field.get_default(call_default_factory=True)
        except TypeError:  # a factory that needs the validated data
            default = None
        if value is not None and value != default:
            out.append((key, value))
    return out


def describe_algorithm(cfg: dict[str, Any]) -> str:
    """``diloco: sync_every=3``, ``streaming-diloco: sync_every=30, fragments=3, delay=1``, ``ddp``."""
    algo = cfg.get("algorithm") or {}
    opts = ", ".join(f"{k}={format_value(k, v)}" for k, v in algorithm_options(algo))
    return f"{algo.get('name', '?')}: {opts}" if opts else str(algo.get("name", "?"))


def describe_network(cfg: dict[str, Any]) -> str:
    """``100 Mbps, 5 ms latency``, then what is set: per-worker links, a topology other than the
    complete graph, speeds, stragglers, churn, a backend other than the simulator."""
    c = cfg.get("cluster") or {}

    def bw(v):
        try:
            return format_bandwidth(parse_bandwidth(v))
        except (ValueError, TypeError):
            return str(v)

    def dur(v):
        try:
            return format_seconds(parse_duration(v))
        except (ValueError, TypeError):
            return str(v)

    parts = [f"links {', '.join(bw(b) for b in c['link_bandwidth'])}" if c.get("link_bandwidth") else bw(c.get("bandwidth", "-")),
             f"{dur(c.get('latency', '-'))} latency"]
    if c.get("topology") not in (None, "complete"):
        parts.append(f"topology {format_value('topology', c['topology'])}")
    if c.get("speeds"):
        parts.append(f"speeds {format_value('speeds', c['speeds'])}")
    for s in c.get("stragglers") or []:
        end = "end" if s.get("end") is None else dur(s["end"])
        parts.append(f"straggler: worker {s.get('rank')} x{format_value('factor', s.get('factor'))} from {dur(s.get('start', 0))} to {end}")
    for w in c.get("churn") or []:
        back = "gone for good" if w.get("join") is None else f"back at {w['join']}"
        parts.append(f"churn: worker {w.get('worker')} leaves at {w.get('leave')}, {back}")
    if c.get("bytes_scale", 1.0) != 1.0:
        parts.append(f"payloads timed x{format_value('bytes_scale', c['bytes_scale'])}")
    if c.get("backend", "sim") != "sim":
        parts.append(f"{c['backend']} backend")
    return ", ".join(parts)


def describe_workers(cfg: dict[str, Any]) -> str:
    c = cfg.get("cluster") or {}
    n, g = c.get("workers", "-"), c.get("group_size", 1)
    return f"{n} x {g} processes" if g and g > 1 else str(n)


def describe_training(cfg: dict[str, Any]) -> str:
    """``600 steps, batch 16, grad clip 1, cosine lr (warmup 30, min lr x0.1)``."""
    t = cfg.get("train") or {}
    parts = [f"{t.get('steps', '-')} steps", f"batch {t.get('batch_size', '-')}"]
    if t.get("grad_accum", 1) > 1:
        parts.append(f"{t['grad_accum']} micro-batches")
    if t.get("precision", "fp32") != "fp32":
        parts.append(str(t["precision"]))
    if t.get("grad_clip") is not None:
        parts.append(f"grad clip {format_value('grad_clip', t['grad_clip'])}")
    sched = t.get("lr_schedule") or {}
    if sched.get("name", "constant") != "constant":
        extra = [f"warmup {sched['warmup_steps']}" if sched.get("warmup_steps") else "",
                 f"min lr x{format_value('min_lr_ratio', sched['min_lr_ratio'])}" if sched.get("min_lr_ratio") else ""]
        extra = [e for e in extra if e]
        parts.append(f"{sched['name']} lr" + (f" ({', '.join(extra)})" if extra else ""))
    return ", ".join(parts)


def runs_table(runs: list[LoadedRun], names: list[str] | None = None) -> str:
    """One row per run, from its resolved config.yaml: algorithm and options, the inner and outer
    optimizers, workers, network and training budget."""
    from .algorithms import get_algorithm
    from .algorithms.options import takes

    names = names or [r.label for r in runs]
    head = ("| run | algorithm and options | inner optimizer | outer optimizer | workers | network | training |\n"
            "|---|---|---|---|---|---|---|\n")
    rows = []
    for name, r in zip(names, runs):
        cfg = r.config
        if not cfg:
            rows.append(f"| {name} | {r.summary.get('algorithm', '-')} | - | - | {r.summary.get('workers', '-')} "
                        "| - | - (no config.yaml) |")
            continue
        algo = cfg.get("algorithm") or {}
        try:
            has_outer = takes(get_algorithm(algo.get("name", "")), "outer")
        except ValueError:
            has_outer = "outer" in algo
        outer = describe_optimizer(algo.get("outer")) if has_outer else "-"
        rows.append(f"| {name} | {describe_algorithm(cfg)} | {describe_optimizer(algo.get('inner'), inner=True)} | {outer} "
                    f"| {describe_workers(cfg)} | {describe_network(cfg)} | {describe_training(cfg)} |")
    return head + "\n".join(rows) + "\n"


# ---------------------------------------------------------------- how each run did (summary.json)
def bytes_ratio(total: float | None, base: float | None) -> str:
    """A run's bytes against the first run's: ``3.0x fewer``, ``2.00x``; '-' when either is 0."""
    if not base or not total:
        return "-"
    return f"{base / total:.1f}x fewer" if total < base else f"{total / base:.2f}x"


def markdown_table(runs: list[LoadedRun], names: list[str] | None = None) -> str:
    names = names or [r.label for r in runs]
    base = runs[0].summary["bytes_sent_total"] or None
    head = (
        "| run | algorithm | workers | final eval loss | best eval loss | bytes sent | bytes vs first "
        "| peak bytes/sync | sim time | compute util. | status |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    times = format_seconds_column([r.summary["sim_time_s"] for r in runs])
    for name, r, time in zip(names, runs, times):
        s = r.summary
        rows.append(
            f"| {name} | {s['algorithm']} | {s['workers']} | {format_loss(s['final_eval_loss'])} | {format_loss(s['best_eval_loss'])} "
            f"| {format_bytes(s['bytes_sent_total'])} | {bytes_ratio(s['bytes_sent_total'], base)} | {format_bytes(s['peak_bytes_per_sync'])} "
            f"| {time} | {format_utilization(s['compute_utilization'])} | {s['status']} |"
        )
    return head + "\n".join(rows) + "\n"


# ---------------------------------------------------------------- axes in human units (shared with sweep.py)
def _log_ticks(ax, which: str, fmt, lo: float | None = None, hi: float | None = None) -> None:
    """A log axis labelled by `fmt`; so that a short axis has numbers on it, under a decade (from
    `lo` to `hi`, or the data's limits) it ticks at 1, 2, 3, 5 and 7 of each decade, under two
    decades at 1, 2 and 5."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    if lo is not None and hi is not None:
        (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)
    else:
        lo, hi = (ax.get_xlim() if which == "x" else ax.get_ylim())
    span = hi / lo if lo > 0 else float("inf")
    subs = (1.0, 2.0, 3.0, 5.0, 7.0) if span < 10 else (1.0, 2.0, 5.0) if span < 100 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_formatter(NullFormatter())


def bytes_axis(ax, which: str = "x", lo: float | None = None, hi: float | None = None) -> None:
    """A log axis of bytes from `lo` to `hi`, ticks in kB / MB / GB (`format_bytes`)."""
    _log_ticks(ax, which, lambda v: format_bytes(v, digits=3), lo, hi)


def time_axis(ax, which: str, seconds: list[float], label: str, log: bool = False) -> float:
    """Label an axis of times in the unit its largest value reads best in (``simulated wall-clock
    (ms)``); return the unit's length in seconds: plot ``t / scale``. With `log`, a log axis
    with plain numbers (200, 500 ms) from the shortest nonzero time to the longest."""
    ts = [abs(t) for t in seconds if t is not None]
    unit, scale = time_unit(max(ts, default=0.0), whole=True)
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(f"{label} ({unit})")
    if log and any(t > 0 for t in ts):
        lo, hi = min(t for t in ts if t > 0) / scale, max(ts) / scale
        _log_ticks(ax, which, lambda v: f"{v:g}", lo / 1.1, hi * 1.1)
    return scale


def bandwidth_axis(ax, which: str = "x") -> None:
    """A log axis of bandwidths in bits/s, ticks as '100 Mbps', '1 Gbps' (`format_bandwidth`)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_formatter(FuncFormatter(lambda v, _: format_bandwidth(v)))
    axis.set_minor_formatter(NullFormatter())


def percent_axis(ax, which: str = "y") -> None:
    """Fractions shown as percentages ('98.5%')."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))


def _points(run: LoadedRun, key: str, loss: str) -> list[tuple[float, float]]:
    return [(m[key], m[loss]) for m in run.metrics if m.get(loss) is not None and m.get(key) is not None]


def first_sync_bytes(runs: list[LoadedRun]) -> float | None:
    """The smallest nonzero ``bytes_sent`` at which any run logged a loss: where the bytes axis
    starts (the points before the first synchronization, at 0 bytes, are left out)."""
    xs = [x for r in runs for loss in ("eval_loss", "train_loss") for x, _ in _points(r, "bytes_sent", loss) if x > 0]
    return min(xs) if xs else None


def loss_figure(runs: list[LoadedRun], legends: list[str], key: str, xlabel: str = ""):
    """One plot of eval loss (line with markers) and train loss (thin, transparent, same color)
    against `key` (``step``, ``bytes_sent`` or ``sim_time_s``); the legend sits below the axes.
    On ``bytes_sent`` the x axis is logarithmic from the first nonzero value (`first_sync_bytes`);
    on ``sim_time_s`` it is in the unit of the longest time (`time_axis`), and logarithmic when
    the runs' durations are more than `LOG_TIME_RATIO` apart (one would be a sliver at the left)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    scale, positive = 1.0, key == "bytes_sent"
    if key == "sim_time_s":
        times = [x for r in runs for x, _ in _points(r, key, "train_loss") + _points(r, key, "eval_loss")]
        ends = [max((x for x, _ in _points(r, key, "train_loss") + _points(r, key, "eval_loss")), default=0.0) for r in runs]
        positive = min(ends, default=0.0) > 0 and max(ends) / min(ends) > LOG_TIME_RATIO
        scale = time_axis(ax, "x", times, xlabel or "simulated wall-clock", log=positive)
        if positive:
            ax.set_xlabel(ax.get_xlabel()[:-1] + ", log scale)")
    else:
        ax.set_xlabel(xlabel or key)
    lo = first_sync_bytes(runs) if key == "bytes_sent" else None
    handles = []
    for i, (r, legend) in enumerate(zip(runs, legends)):
        color = f"C{i % 10}"
        for loss in ("train_loss", "eval_loss"):
            pts = [(x / scale, y) for x, y in _points(r, key, loss) if not positive or x > 0]
            if not pts:
                continue
            xs, ys = zip(*pts)
            if loss == "train_loss":
                ax.plot(xs, ys, color=color, linewidth=0.9, alpha=0.4)
            else:
                handles += ax.plot(xs, ys, color=color, linewidth=1.8, marker="o", markersize=3.5, label=legend,
                                   clip_on=key != "bytes_sent")  # the first point sits on the axis' left end
    if key == "bytes_sent":
        if lo is None:
            ax.text(0.5, 0.5, "no bytes sent", ha="center", va="center", transform=ax.transAxes)
        else:
            hi = max(x for r in runs for loss in ("eval_loss", "train_loss") for x, _ in _points(r, key, loss))
            bytes_axis(ax, "x", lo, max(hi, lo) * 1.15)
    ax.set_ylabel("loss")
    ax.set_title(TITLES.get(key, key), fontsize=11)
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.12, which="minor")
    styles = [Line2D([], [], color="0.35", linewidth=1.8, marker="o", markersize=3.5, label="eval loss"),
              Line2D([], [], color="0.35", linewidth=0.9, alpha=0.4, label="train loss (mean over workers)")]
    for h in handles:  # a long label wraps rather than widening the figure
        h.set_label(textwrap.fill(h.get_label(), 95, subsequent_indent="   "))
    two = len(handles) <= 3 and max((len(h.get_label()) for h in handles), default=0) <= 40  # else one column, no wider than the plot
    ax.legend(handles=handles + styles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2 if two else 1,
              fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


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
    """Plot bytes in flight against simulated time for each run (up to `t_max` seconds); times in
    the unit of the longest, bytes in kB / MB / GB."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    steps = [(bytes_in_flight(load_transfers(d)), load_run(d).label) for d in run_dirs]
    scale = time_axis(ax, "x", [t_max] if t_max is not None else [t for (times, _), _ in steps for t in times],
                      "simulated time")
    for (times, values), label in steps:
        ax.step([t / scale for t in times], values, where="post", label=label, linewidth=1)
    if t_max is not None:
        ax.set_xlim(0, t_max / scale)
    ax.set_ylabel("bytes in flight (all workers)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v, digits=3)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def compare(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write ``report.md`` and three PNG plots (train and eval loss against steps, bytes and
    simulated time) into `out`; return the report's path."""
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    legends = run_labels([r.label for r in runs], [r.config for r in runs])  # name + the keys that differ
    names = display_names(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for key, fname, xlabel in PLOTS:
        fig = loss_figure(runs, legends, key, xlabel)
        fig.savefig(out / fname, dpi=110, bbox_inches="tight")
        plt.close(fig)
    lines = ["# farsync comparison", "", "## Results", "", markdown_table(runs, names),
             "## Runs", "", runs_table(runs, names),
             "Options not listed are at their defaults (`farsync explain ALGORITHM` lists them); the network is "
             "per-worker link bandwidth and per-message latency.", "",
             "Time models (how the simulated times were computed):", ""]
    models = [r.summary.get("time_model") or "not recorded (a run made before farsync stated it)" for r in runs]
    if len(runs) > 1 and len(set(models)) == 1:
        lines += [f"- all runs: {models[0]}"]
    else:
        lines += [f"- {n}: {m}" for n, m in zip(names, models)]
    lines += ["", "## Plots", "", "Legends: " + "; ".join(legends) + ". Thick lines with markers: eval loss; "
              "thin lines: train loss.", ""]
    lines += [f"![{fname}]({fname})" for _, fname, _ in PLOTS]
    lines += ["", "Run directories:", ""] + [f"- {n}: {r.path}" for n, r in zip(names, runs)] + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
