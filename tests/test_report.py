"""`farsync compare` reports: what each run was (Runs table from config.yaml), legends naming what
differs, train and eval loss on every plot, the bytes axis from the first synchronization, times
and utilization in human units, and the same formatting in `farsync sweep`."""

import json
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import yaml

import farsync
import farsync.report as report
import farsync.sweep as sweep_mod
import farsync.units as units
from farsync.config import load_config
from farsync.report import LoadedRun, compare, first_sync_bytes, load_run, loss_figure, run_labels
from farsync.units import (format_bytes, format_seconds, format_seconds_column, format_utilization, time_unit)

TINY = {
    "seed": 3,
    "task": {"name": "shakespeare-gpt", "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8},
    "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "log_every": 1},
}
STREAM = dict(TINY, name="stream",
              cluster={"workers": 2, "bandwidth": "100Mbps", "latency": "5ms"},
              algorithm={"name": "streaming-diloco", "sync_every": 2, "fragments": 2, "outer": {"lr": 0.5},
                         "inner": {"name": "adamw", "lr": 0.003, "weight_decay": 0.1}})
DIL = dict(TINY, name="dil",
           cluster={"workers": 2, "bandwidth": 1e9, "latency": "5ms", "speeds": [1, 2]},
           algorithm={"name": "diloco", "sync_every": 3, "inner": {"name": "adamw", "lr": 0.003}})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = farsync.run(STREAM, out=root / "stream", progress=False)
    b = farsync.run(DIL, out=root / "dil", progress=False)
    assert a.status == b.status == "completed"
    return root, [a.run_dir, b.run_dir]


# ---------------------------------------------------------------- units
def test_times_in_human_units():
    assert format_seconds(0.0123) == "12.3 ms"
    assert format_seconds(90) == "1.5 min"
    assert format_seconds(0.1) == "0.1 s"  # a step time, as the time models state it
    assert format_seconds(45.678) == "45.7 s"
    assert format_seconds(9000) == "2.5 h"
    assert format_seconds(3.43e-7) == "0.343 us"
    assert format_seconds(0) == "0 s" and format_seconds(None) == "-"
    assert time_unit(0.151) == ("s", 1.0) and time_unit(0.151, whole=True) == ("ms", 1e-3)
    assert time_unit(90, whole=True) == ("min", 60.0) and time_unit(5e-7, whole=True) == ("us", 1e-6)
    # a column in one unit, the shortest time's
    assert format_seconds_column([0.0505, 0.151, None, 0]) == ["50.5 ms", "151 ms", "-", "0 s"]
    assert format_seconds_column([0.343, 2.5]) == ["0.343 s", "2.5 s"]
    assert format_seconds_column([1e-3, 3600]) == ["1 ms", "1 h"]  # too far apart for one unit


def test_utilization_and_bytes_formats():
    assert format_utilization(0.9871) == "98.71%" and format_utilization(1.0) == "100.00%"
    assert format_utilization(8.166e-5) == "0.0082%" and format_utilization(None) == "-"
    assert format_bytes(65408) == "65.41 kB" and format_bytes(784896) == "784.90 kB" and format_bytes(5) == "5 B"
    assert format_bytes(1e5, digits=3) == "100 kB" and format_bytes(2.5e6, digits=3) == "2.5 MB"
    assert format_bytes(3e9, digits=3) == "3 GB" and format_bytes(None) == "-"


def test_sweep_and_compare_share_the_formatters():
    for name in ("format_bytes", "format_utilization", "format_seconds_column", "format_loss"):
        assert getattr(sweep_mod, name) is getattr(units, name) is getattr(report, name)


# ---------------------------------------------------------------- legends
def test_legends_name_what_differs_in_human_units():
    base = load_config(dict(DIL, cluster=dict(DIL["cluster"], bandwidth="1Gbps"))).to_dict()
    same_bw = load_config(DIL).to_dict()  # 1e9 == '1Gbps': not a difference
    assert run_labels(["a", "b"], [base, same_bw]) == ["a", "b"]
    slow = load_config(DIL, ["cluster.bandwidth=1e8"]).to_dict()
    assert run_labels(["a", "b"], [base, slow]) == ["a (bandwidth=1 Gbps)", "b (bandwidth=100 Mbps)"]
    stream = load_config(STREAM).to_dict()
    assert run_labels(["s", "d"], [stream, load_config(DIL).to_dict()], max_keys=2) == [
        "s (algorithm=streaming-diloco, sync_every=2, +4 more)", "d (algorithm=diloco, sync_every=3, +4 more)"]
    # a section set in one run and not in the other is one entry, written compactly
    int8 = load_config(DIL, ["algorithm.compress={name: int8, block: 64}"]).to_dict()
    assert run_labels(["a", "b"], [load_config(DIL).to_dict(), int8]) == ["a (compress=none)", "b (compress=int8(block=64))"]


# ---------------------------------------------------------------- report.md of two real runs
def test_report_states_each_runs_setup(two_runs, tmp_path):
    root, dirs = two_runs
    text = compare(dirs, tmp_path / "cmp").read_text()
    runs = text[text.index("## Runs"):text.index("Time models")]
    row = {name: next(line for line in runs.splitlines() if line.startswith(f"| {name} |")) for name in ("stream", "dil")}
    cells = {k: [c.strip() for c in v.strip("|").split("|")] for k, v in row.items()}
    assert cells["stream"][1:] == [
        "streaming-diloco: sync_every=2, fragments=2", "adamw (lr=0.003, weight_decay=0.1)",
        "sgd (lr=0.5, momentum=0.9, nesterov)", "2", "100 Mbps, 5 ms latency", "6 steps, batch 4"]
    assert cells["dil"][1:] == [
        "diloco: sync_every=3", "adamw (lr=0.003, weight_decay=0.01 default)", "sgd (lr=0.7, momentum=0.9, nesterov)",
        "2", "1 Gbps, 5 ms latency, speeds [1, 2]", "6 steps, batch 4"]
    # the results table: times of the column in one unit, utilization in percent
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    times = format_seconds_column([s["sim_time_s"] for s in summaries])
    for s, t in zip(summaries, times):
        assert (f"| {format_bytes(s['bytes_sent_total'])} |" in text and f"| {t} | {format_utilization(s['compute_utilization'])} |"
                in text)
    assert all(re.fullmatch(r"[0-9.]+ (us|ms|s|min|h)", t) for t in times)
    assert "Legends: stream (algorithm=streaming-diloco, sync_every=2" in text and "dil (algorithm=diloco, sync_every=3" in text
    assert "- all runs: " not in text and text.count("timed as the run's own") == 2  # the bandwidths differ
    for png in ("loss_vs_steps.png", "loss_vs_bytes.png", "loss_vs_time.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"![{png}]({png})" in text


def test_runs_that_share_a_name_and_a_run_without_config(two_runs, tmp_path):
    root, dirs = two_runs
    old = tmp_path / "old"
    shutil.copytree(dirs[1], old)
    (old / "config.yaml").unlink()
    text = compare([dirs[1], old], tmp_path / "cmp").read_text()
    assert "| dil [dil] | diloco |" in text and "| dil [old] | diloco |" in text
    assert "| dil [old] | diloco | - | - | 2 | - | - (no config.yaml) |" in text


# ---------------------------------------------------------------- plots
def test_every_loss_plot_has_train_and_eval_loss(two_runs):
    _, dirs = two_runs
    runs = [load_run(d) for d in dirs]
    legends = run_labels([r.label for r in runs], [r.config for r in runs])
    fig = loss_figure(runs, legends, "step")
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # per run: train (thin) and eval (markers), in one color
    for i, r in enumerate(runs):
        train, ev = ax.lines[2 * i], ax.lines[2 * i + 1]
        assert train.get_color() == ev.get_color() and train.get_alpha() < 1 and ev.get_marker() == "o"
        assert list(train.get_xdata()) == [m["step"] for m in r.metrics if "train_loss" in m]
        assert list(ev.get_ydata()) == [m["eval_loss"] for m in r.metrics if "eval_loss" in m]
        assert ev.get_label() == legends[i]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [*legends, "eval loss", "train loss (mean over workers)"]
    plt.close(fig)
    fig = loss_figure(runs, legends, "sim_time_s", "simulated wall-clock")  # tens of ms: an axis in ms
    ax = fig.axes[0]
    assert ax.get_xlabel() == "simulated wall-clock (ms)"
    assert max(ax.lines[1].get_xdata()) == pytest.approx(runs[0].metrics[-1]["sim_time_s"] * 1e3)
    plt.close(fig)


def test_bytes_axis_starts_at_the_first_synchronization(two_runs):
    _, dirs = two_runs
    runs = [load_run(d) for d in dirs]
    first = min(m["bytes_sent"] for r in runs for m in r.metrics if m["bytes_sent"] > 0)
    assert any(m["bytes_sent"] == 0 for r in runs for m in r.metrics)  # steps before the first sync
    assert first_sync_bytes(runs) == first
    fig = loss_figure(runs, ["a", "b"], "bytes_sent")
    ax = fig.axes[0]
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    assert ax.get_xscale() == "log" and lo >= first and lo == pytest.approx(first)
    assert hi >= max(m["bytes_sent"] for r in runs for m in r.metrics)
    assert all(min(line.get_xdata()) >= first for line in ax.lines)  # no point at 0 bytes
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert labels and all(re.fullmatch(r"[0-9.]+ (B|kB|MB|GB|TB)", x) for x in labels), labels
    plt.close(fig)


def test_bytes_axis_of_a_run_with_a_step_zero_eval():
    metrics = [{"step": 0, "bytes_sent": 0, "sim_time_s": 0.0, "eval_loss": 5.0},
               {"step": 1, "bytes_sent": 0, "sim_time_s": 1.0, "train_loss": 4.9},
               {"step": 2, "bytes_sent": 4_000_000, "sim_time_s": 2.0, "train_loss": 4.0, "eval_loss": 4.1},
               {"step": 4, "bytes_sent": 8_000_000_000, "sim_time_s": 90.0, "train_loss": 3.0, "eval_loss": 3.1}]
    run = LoadedRun(path=Path("x"), summary={"name": "x"}, metrics=metrics)
    assert first_sync_bytes([run]) == 4_000_000
    fig = loss_figure([run], ["x"], "bytes_sent")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_xlim()[0] == pytest.approx(4e6) and ax.get_xscale() == "log"
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "10 MB" in ticks and "1 GB" in ticks
    plt.close(fig)
    fig = loss_figure([run], ["x"], "sim_time_s", "simulated wall-clock")
    assert fig.axes[0].get_xlabel() == "simulated wall-clock (min)"
    plt.close(fig)


# ---------------------------------------------------------------- sweep prints what compare prints
def test_sweep_and_compare_print_the_same_numbers(tmp_path):
    cfg = {"name": "q", "task": {"name": "quadratic", "dim": 500}, "cluster": {"workers": 2, "step_time": "10ms", "latency": "1ms"},
           "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.1}},
           "train": {"steps": 20, "batch_size": 2, "eval_every": 5, "log_every": 5}}
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rep = sweep_mod.sweep([str(path)], ["cluster.bandwidth=1Mbps"], out=tmp_path / "sw", target_loss=26)
    run_dir = tmp_path / "sw" / "q" / "bandwidth=1Mbps"
    s = json.loads((run_dir / "summary.json").read_text())
    row = next(line for line in rep.read_text().splitlines() if line.startswith("| q |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    want = [format_bytes(s["bytes_sent_total"]), format_seconds(s["sim_time_s"]), format_utilization(s["compute_utilization"])]
    assert cells[3:6] == want and cells[5].endswith("%") and cells[4].endswith(" s")
    text = compare([run_dir], tmp_path / "cmp").read_text()
    assert f"| {want[0]} | 1.00x | {format_bytes(s['peak_bytes_per_sync'])} | {want[1]} | {want[2]} |" in text


def test_time_axis_goes_logarithmic_when_runs_are_far_apart():
    def run(name, end):
        ms = [{"step": s, "bytes_sent": 10 * s, "sim_time_s": end * s / 4, "train_loss": 5.0 - s, "eval_loss": 5.0 - s}
              for s in range(5)]
        return LoadedRun(path=Path(name), summary={"name": name}, metrics=ms)

    near = loss_figure([run("a", 2.0), run("b", 30.0)], ["a", "b"], "sim_time_s", "simulated wall-clock")
    assert near.axes[0].get_xscale() == "linear" and near.axes[0].get_xlabel() == "simulated wall-clock (s)"
    far = loss_figure([run("a", 0.1), run("b", 25.0)], ["a", "b"], "sim_time_s", "simulated wall-clock")
    ax = far.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "simulated wall-clock (s, log scale)"
    assert all(min(line.get_xdata()) > 0 for line in ax.lines)  # the points at 0 s are left out
    plt.close(near)
    plt.close(far)


def test_long_sections_are_short_in_legends():
    cfg = {"name": "q", "task": {"name": "quadratic", "dim": 16}, "algorithm": {"name": "ddp"},
           "cluster": {"workers": 2, "time_model": "1b"}}
    own = load_config(cfg, ["cluster.time_model=null", "cluster.step_time=5ms"]).to_dict()
    assert run_labels(["q", "q"], [load_config(cfg).to_dict(), own]) == [
        "q (step_time=none, time_model=1b)", "q (step_time=5 ms, time_model=none)"]
