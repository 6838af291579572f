"""cluster.backend: torchft (comm/fault_tolerant.py, ft_worker.py): 3 replicas of DiLoCo on torchft's
Manager, on loopback gloo. Faults are real: FARSYNC_FAULT makes a replica SIGKILL itself.

- no fault: every replica equals the simulator (to float rounding: gloo's ring sums in another
  order) and the others (bitwise);
- kill -9 for good at step 101: the survivors go on without restart, stay bitwise equal, and equal
  the simulator with that worker leaving at step 101 (``cluster.churn``), to float rounding;
- kill -9 and a replacement (torchrun --max-restarts 1): it heals to the committed step and ends
  bitwise equal to the survivors;
- kill during the all-reduce: that round is discarded on every survivor (one commit fewer);
- refusals before any process starts.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from farsync.cli import main
from farsync.comm.faults import FAULT_ENV
from farsync.ft_worker import PACE_ENV

pytest.importorskip("torchft", reason="torchft is not installed: pip install -e '.[ft]'")
pytestmark = [pytest.mark.distributed]

CFG = {"task": {"name": "quadratic"}, "algorithm": {"name": "diloco", "sync_every": 5},
       "cluster": {"backend": "torchft", "workers": 3, "ft": {"heartbeat_timeout": "1s"}},
       "train": {"steps": 200, "log_every": 25, "eval_every": 0}}


def cfg_file(tmp_path, cfg=None, **train):
    cfg = json.loads(json.dumps(cfg or CFG))
    cfg["train"].update(train)
    p = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def replica(run, g, what="summary.json"):
    path = run / "replicas" / str(g) / what
    if what == "model.pt":
        return torch.load(path, weights_only=True)["x"]
    if what == "metrics.jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


def sim_model(tmp_path, name, steps=200, **cluster):
    cfg = json.loads(json.dumps(CFG))
    cfg["cluster"] = {"workers": 3, **cluster}
    cfg["train"]["steps"] = steps
    assert main(["run", str(cfg_file(tmp_path, cfg)), "--out", str(tmp_path / name)]) == 0
    return torch.load(tmp_path / name / "model.pt", weights_only=True)["x"]


def test_no_fault_equals_the_simulator(tmp_path):
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, steps=60)), "--out", str(run)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["backend"] == "torchft"
    models = [replica(run, g, "model.pt") for g in range(3)]
    assert all(torch.equal(models[0], m) for m in models[1:])
    for g in range(3):
        rows = replica(run, g, "metrics.jsonl")
        assert [r["participants"] for r in rows] == [3] * len(rows)
        assert replica(run, g)["committed_step"] == 60 // 5 and replica(run, g)["heals"] == []
    torch.testing.assert_close(models[0], sim_model(tmp_path, "sim", steps=60), rtol=0, atol=1e-12)


def test_kill9_for_good_survivors_equal_simulated_churn(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "2:101")
    monkeypatch.setenv(PACE_ENV, "0.005")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path)), "--out", str(run)]) == 1  # one replica never finished
    s = json.loads((run / "summary.json").read_text())
    assert s["status"].startswith("failed: 2 of 3 replicas completed") and s["replicas"][2] is None
    a, b = replica(run, 0, "model.pt"), replica(run, 1, "model.pt")
    assert torch.equal(a, b)
    for g in (0, 1):  # no restart, no heal, every round committed; two participants after the kill
        assert {k: replica(run, g)[k] for k in ("attempt", "status", "committed_step", "heals")} == \
            {"attempt": 0, "status": "completed", "committed_step": 40, "heals": []}
        parts = {r["step"]: r["participants"] for r in replica(run, g, "metrics.jsonl")}
        assert parts[100] == 3 and all(parts[t] == 2 for t in parts if t > 100)
    monkeypatch.delenv(FAULT_ENV)
    churned = sim_model(tmp_path, "churn", churn=[{"worker": 2, "leave": 101}])
    torch.testing.assert_close(a, churned, rtol=0, atol=1e-12)
    assert (a - sim_model(tmp_path, "plain")).abs().max() > 1e-6  # the kill changed the trajectory


def test_streaming_diloco_kill9_for_good_equals_simulated_churn(tmp_path, monkeypatch):
    """The all-reduce overlapping tau = 2 inner steps (H = 5, mixing alpha = 0.5): the round spans
    steps, begin_sync at its start and commit where it is applied. (The quadratic's one tensor
    allows one fragment; fragments are tested on the simulator.)"""
    algo = {"name": "streaming-diloco", "sync_every": 5, "delay": 2, "alpha": 0.5}
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": algo}
    monkeypatch.setenv(FAULT_ENV, "2:101")
    monkeypatch.setenv(PACE_ENV, "0.005")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg)), "--out", str(run)]) == 1
    a, b = replica(run, 0, "model.pt"), replica(run, 1, "model.pt")
    assert torch.equal(a, b) and replica(run, 0)["committed_step"] == 200 // 5  # a round every 5 steps
    monkeypatch.delenv(FAULT_ENV)
    sim = {**cfg, "cluster": {"workers": 3, "churn": [{"worker": 2, "leave": 101}]}}
    assert main(["run", str(cfg_file(tmp_path, sim)), "--out", str(tmp_path / "churn")]) == 0
    torch.testing.assert_close(a, torch.load(tmp_path / "churn" / "model.pt", weights_only=True)["x"], rtol=0, atol=1e-12)


def test_kill9_replacement_heals_to_the_committed_step(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "2:51")
    monkeypatch.setenv(PACE_ENV, "0.02")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, steps=800)), "--out", str(run), "--max-restarts", "1"]) == 0
    survivors = [replica(run, g) for g in (0, 1)]
    back = replica(run, 2)
    assert [s["attempt"] for s in survivors] == [0, 0] and [s["heals"] for s in survivors] == [[], []]
    assert back["attempt"] == 1 and back["status"] == "completed" and len(back["heals"]) == 1
    healed_at = back["heals"][0]
    assert 10 < healed_at < 160  # it joined mid-run, at the survivors' committed step
    rows = [r for r in replica(run, 2, "metrics.jsonl") if r["attempt"] == 1]
    first = next(r for r in rows if "healed_at_committed_step" in r)
    assert first["healed_at_committed_step"] == [healed_at] and first["step"] > 5 * healed_at
    models = [replica(run, g, "model.pt") for g in range(3)]
    assert torch.equal(models[0], models[1]) and torch.equal(models[0], models[2])
    assert all(s["committed_step"] == back["committed_step"] for s in survivors)
    parts = [r["participants"] for r in replica(run, 0, "metrics.jsonl")]
    assert 2 in parts and parts[-1] == 3  # it ran with two, then with the replacement again


def test_kill_during_the_all_reduce_discards_the_round(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "2:100:allreduce")
    monkeypatch.setenv(PACE_ENV, "0.005")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path)), "--out", str(run)]) == 1
    for g in (0, 1):
        s = replica(run, g)
        assert s["status"] == "completed" and s["committed_step"] == 200 // 5 - 1  # the round of step 100 is lost
        by_step = {r["step"]: r["committed_step"] for r in replica(run, g, "metrics.jsonl")}
        assert by_step[75] == 15 and by_step[100] == 19
    assert torch.equal(replica(run, 0, "model.pt"), replica(run, 1, "model.pt"))


@pytest.mark.parametrize("change, message", [
    ({"algorithm": {"name": "dsgd"}}, "torchft runs ddp, local-sgd, diloco, streaming-diloco"),
    ({"algorithm": {"name": "streaming-diloco", "sync_every": 5, "overlap": "eager"}}, "overlap: eager"),
    ({"algorithm": {"name": "diloco", "compress": {"name": "int8"}}}, "algorithm.compress"),
    ({"train": {"steps": 20, "log_every": 5, "checkpoint_every": 10}}, "train.checkpoint_every"),
    ({"cluster": {"backend": "torchft", "workers": 3, "group_size": 2}}, "group_size"),
    ({"cluster": {"backend": "torchft", "workers": 3, "ft": {"min_replicas": 4}}}, "min_replicas (4) exceeds"),
    ({"cluster": {"backend": "torchft", "workers": 3, "ft": {"heartbeat_timeout": "soon"}}}, "soon"),
])
def test_refusals_before_any_process(tmp_path, capsys, change, message):
    cfg = {**json.loads(json.dumps(CFG)), **change}
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg)), "--out", str(run)]) == 2
    assert message in capsys.readouterr().err and not run.exists()


def test_launch_refuses_process_counts(tmp_path, capsys):
    for extra in (["--nproc", "3"], ["--groups", "3", "--nproc-per-group", "2"]):
        assert main(["launch", *extra, str(cfg_file(tmp_path)), "--out", str(tmp_path / "x")]) == 2
        assert "one process per replica" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sigterm_to_the_launcher_stops_every_replica_with_its_summary(tmp_path):
    run = tmp_path / "ft"
    env = {**os.environ, PACE_ENV: "0.02", "RUST_LOG": "warn"}
    proc = subprocess.Popen([sys.executable, "-m", "farsync.cli", "launch", str(cfg_file(tmp_path, steps=2000)),
                             "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not all((run / "replicas" / str(g) / "metrics.jsonl").is_file() and
                      (run / "replicas" / str(g) / "metrics.jsonl").read_text().count("\n") >= 2 for g in range(3)):
            assert time.monotonic() < deadline and proc.poll() is None, "the replicas did not start logging"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    for g in range(3):
        s = replica(run, g)
        assert s["status"].startswith("failed: terminated by SIGTERM at step ") and 0 < s["step"] < 2000
        assert replica(run, g, "metrics.jsonl")  # its metrics so far are kept
    assert json.loads((run / "summary.json").read_text())["status"].startswith("failed: 0 of 3 replicas completed")
