"""`farsync sweep`: grid parsing, validation before work, the table, time to target, reuse."""

import json

import yaml

import farsync
from farsync.cli import main
from farsync.sweep import split_values, time_to_target

CFG = {
    "name": "q", "task": {"name": "quadratic", "dim": 500},
    "cluster": {"workers": 2, "step_time": "10ms", "latency": "1ms"},
    "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.1}},
    "train": {"steps": 20, "batch_size": 2, "eval_every": 5, "log_every": 5},
}


def write(tmp_path, run_name, **algo):
    p = tmp_path / f"{run_name}.yaml"
    p.write_text(yaml.safe_dump({**CFG, "name": run_name, "algorithm": {**CFG["algorithm"], **algo}}))
    return p


def test_split_values_keeps_mappings_whole():
    assert split_values("1Mbps, 1Gbps,{name: int8, block: 64},[1, 2]") == ["1Mbps", "1Gbps", "{name: int8, block: 64}", "[1, 2]"]


def test_time_to_target_is_the_first_eval_at_or_below_it():
    ms = [{"sim_time_s": 1.0, "eval_loss": 3.0}, {"sim_time_s": 2.0}, {"sim_time_s": 3.0, "eval_loss": 1.5}, {"sim_time_s": 4.0, "eval_loss": 1.0}]
    assert time_to_target(ms, 2.0) == 3.0 and time_to_target(ms, 0.5) is None and time_to_target(ms, None) is None


def test_sweep_over_bandwidth_utilization_rises_with_bandwidth(tmp_path, capsys):
    ddp, loc = write(tmp_path, "ddp"), write(tmp_path, "local", name="local-sgd", sync_every=5)
    out = tmp_path / "sweep"
    assert main(["sweep", str(ddp), str(loc), "--grid", "cluster.bandwidth=1Mbps,10Mbps,1Gbps", "--target-loss", "26", "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [(r["config"], r["cluster.bandwidth"]) for r in rows] == [(c, b) for c in ("ddp", "local") for b in ("1Mbps", "10Mbps", "1Gbps")]
    for c in ("ddp", "local"):
        util = [r["compute_utilization"] for r in rows if r["config"] == c]
        assert util[0] < util[1] < util[2]
        losses = {r["final_eval_loss"] for r in rows if r["config"] == c}
        assert len(losses) == 1  # bandwidth changes time, not the trajectory
    by = {(r["config"], r["cluster.bandwidth"]): r for r in rows}
    assert by[("local", "1Mbps")]["compute_utilization"] > by[("ddp", "1Mbps")]["compute_utilization"]
    assert all(r["time_to_target_s"] is not None for r in rows)
    assert (out / "utilization.png").exists() and (out / "time_to_target.png").exists()
    assert "| ddp | 1Mbps |" in (out / "report.md").read_text()
    # a second call reuses the completed runs
    mtime = (out / "ddp" / "bandwidth=1Mbps" / "summary.json").stat().st_mtime
    farsync.sweep.sweep([str(ddp)], ["cluster.bandwidth=1Mbps"], out=out)
    assert (out / "ddp" / "bandwidth=1Mbps" / "summary.json").stat().st_mtime == mtime


def test_a_bad_grid_value_fails_before_any_run(tmp_path, capsys):
    ddp = write(tmp_path, "ddp")
    assert main(["sweep", str(ddp), "--grid", "cluster.bandwidth=1Gbps,fast", "--out", str(tmp_path / "s")]) == 2
    assert "malformed bandwidth 'fast'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["sweep", str(ddp), "--grid", "cluster.bandwidth", "--out", str(tmp_path / "s")]) == 2
    assert "--grid needs KEY=V1,V2" in capsys.readouterr().err
