"""`farsync retime` and re-timing sweeps: replaying a run's communication log under other network
settings gives exactly what training under them gives (metrics, summary, transfers); what cannot
be re-timed is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from farsync.cli import main
from farsync.retime import check_retimeable, read_log, retime
from farsync.runner import run

BASE = {
    "name": "r", "seed": 0, "task": {"name": "quadratic", "dim": 64},
    "cluster": {"workers": 3, "bandwidth": "1Gbps", "latency": "1ms",
                "time_model": {"params": 1e8, "layers": 4, "step_time": "20ms", "bucket_size": "40MB"}},
    "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.05}},
    "train": {"steps": 24, "batch_size": 4, "eval_every": 8, "log_every": 4},
}

ALGOS = {
    "ddp": {"name": "ddp"},
    "diloco": {"name": "diloco", "sync_every": 4},
    "streaming": {"name": "streaming-diloco", "sync_every": 6, "fragments": 2, "delay": 1, "fragment_rule": "contiguous"},
    "eager": {"name": "eager-diloco", "sync_every": 4},
    "dsgd-ring": {"name": "dsgd"},
}

NEW = ["cluster.bandwidth=20Mbps", "cluster.latency=30ms", "cluster.speeds=[1.0, 1.5, 1.0]"]


def config(tmp_path: Path, algo: dict, extra: dict | None = None) -> Path:
    cfg = json.loads(json.dumps(BASE))
    cfg["algorithm"] = {**cfg["algorithm"], **algo}
    if algo["name"] == "dsgd":
        cfg["cluster"]["topology"] = "ring"
    if algo["name"] == "streaming-diloco":  # two parameter tensors (weight, bias) to make two fragments of
        cfg["task"] = {"name": "logreg"}
    for k, v in (extra or {}).items():
        cfg["cluster"][k] = v
    p = tmp_path / f"{algo['name']}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def strip(rows):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


def same_run(a: Path, b: Path) -> None:
    ma = strip(json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines())
    mb = strip(json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines())
    assert ma == mb
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for k in ("sim_time_s", "compute_time_s_per_worker", "blocked_time_s_per_worker", "compute_utilization",
              "bytes_sent_per_worker", "bytes_received_per_worker", "peak_bytes_in_flight", "final_eval_loss", "time_model"):
        assert sa[k] == sb[k], k
    assert (a / "transfers.csv").read_text() == (b / "transfers.csv").read_text()


@pytest.mark.parametrize("algo", list(ALGOS), ids=list(ALGOS))
def test_retimed_run_equals_the_run_trained_under_the_new_settings(tmp_path, algo):
    cfg = config(tmp_path, ALGOS[algo])
    trained = run(str(cfg), out=tmp_path / "a", progress=False)
    assert trained.status == "completed"
    target = run(str(cfg), overrides=NEW, out=tmp_path / "b", progress=False)
    s = retime(tmp_path / "a", NEW, tmp_path / "c")
    same_run(tmp_path / "b", tmp_path / "c")
    assert s["retimed_from"] == str(tmp_path / "a") and s["sim_time_s"] > trained.summary["sim_time_s"]
    assert s["sim_time_s"] == target.summary["sim_time_s"]
    # and it can be re-timed again, back to where it came from
    retime(tmp_path / "c", ["cluster.bandwidth=1Gbps", "cluster.latency=1ms", "cluster.speeds=null"], tmp_path / "d")
    same_run(tmp_path / "a", tmp_path / "d")


def test_retime_to_another_time_model_and_cli(tmp_path, capsys):
    cfg = config(tmp_path, ALGOS["diloco"])
    run(str(cfg), out=tmp_path / "a", progress=False)
    sets = ["cluster.time_model=1b"]
    run(str(cfg), overrides=sets, out=tmp_path / "b", progress=False)
    assert main(["retime", str(tmp_path / "a"), "--set", sets[0], "--out", str(tmp_path / "c")]) == 0
    assert "timed as a 1B-parameter, 24-layer model at 0.1 s per step, 3 workers, 1 Gbps" in capsys.readouterr().out
    same_run(tmp_path / "b", tmp_path / "c")
    log = read_log(tmp_path / "a")
    assert len(log["workers"]) == 3 and sum(ev[0] == "c" for ev in log["workers"][0]) == 24


def test_what_cannot_be_retimed_is_refused(tmp_path, capsys):
    cfg = config(tmp_path, ALGOS["diloco"])
    run(str(cfg), out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="algorithm.sync_every would change the trajectory"):
        retime(tmp_path / "a", ["algorithm.sync_every=8"], tmp_path / "x")
    assert main(["retime", str(tmp_path / "a"), "--set", "train.steps=30", "--out", str(tmp_path / "y")]) == 2
    assert "train.steps would change the trajectory" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # a parameter-server algorithm: arrival order depends on timing
    ps = config(tmp_path, {"name": "asgd"})
    run(str(ps), out=tmp_path / "ps", progress=False)
    with pytest.raises(ValueError, match="asgd cannot be re-timed: its server takes the workers' messages in arrival order"):
        check_retimeable(tmp_path / "ps", ["cluster.bandwidth=1Mbps"])
    assert not (tmp_path / "ps" / "comm_log.json.gz").exists()
    # an existing run directory is not overwritten
    with pytest.raises(FileExistsError):
        retime(tmp_path / "a", ["cluster.bandwidth=1Mbps"], tmp_path / "a")


def test_resumed_runs_have_no_log_and_are_refused(tmp_path, monkeypatch):
    cfg = config(tmp_path, ALGOS["diloco"])
    monkeypatch.setenv("FARSYNC_FAULT", "1:12")  # worker 1 fails at step 12, after the checkpoint at step 8
    first = run(str(cfg), overrides=["train.checkpoint_every=8"], out=tmp_path / "a", progress=False)
    assert first.status.startswith("failed")
    monkeypatch.delenv("FARSYNC_FAULT")
    with pytest.raises(ValueError, match="did not complete"):
        check_retimeable(tmp_path / "a", [])
    resumed = run(None, resume=tmp_path / "a", progress=False)
    assert resumed.status == "completed"
    with pytest.raises(ValueError, match="resumed from a checkpoint"):
        check_retimeable(tmp_path / "a", [])


def test_sweep_over_bandwidth_trains_once_and_equals_training_each_point(tmp_path):
    cfg = config(tmp_path, ALGOS["streaming"])
    out = tmp_path / "sweep"
    assert main(["sweep", str(cfg), "--grid", "cluster.bandwidth=10Mbps,100Mbps,1Gbps", "--grid", "cluster.latency=1ms,20ms",
                 "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and sum(not r["retimed"] for r in rows) == 1
    for r in rows[1:]:
        point = [f"cluster.bandwidth={r['cluster.bandwidth']}", f"cluster.latency={r['cluster.latency']}"]
        trained = tmp_path / f"t-{r['cluster.bandwidth']}-{r['cluster.latency']}"
        run(str(cfg), overrides=point, out=trained, progress=False)
        same_run(trained, Path(r["run_dir"]))
    # a grid that changes the trajectory trains every point
    out2 = tmp_path / "sweep2"
    assert main(["sweep", str(cfg), "--grid", "algorithm.delay=0,1", "--grid", "cluster.bandwidth=10Mbps,1Gbps",
                 "--out", str(out2), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out2 / "sweep.jsonl").read_text().splitlines()]
    assert [r["retimed"] for r in rows] == [False, True, False, True]
