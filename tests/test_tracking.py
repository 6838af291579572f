"""Experiment tracking (tracking.py): every tracker's files read back equal metrics.jsonl."""

import csv
import glob
import json
import os

import pytest
import torch

import farsync
from farsync.config import ConfigError
from farsync.rundir import read_metrics
from farsync.tracking import CSVTracker, Tracking, check_trackers

CFG = {
    "name": "tracked",
    "seed": 1,
    "task": {"name": "shakespeare-gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8},
    "cluster": {"workers": 2, "bandwidth": "100Mbps", "latency": "5ms"},
    "algorithm": {"name": "diloco", "sync_every": 3, "inner": {"name": "adamw", "lr": 0.003}},
    "train": {"steps": 12, "batch_size": 4, "eval_every": 6, "log_every": 2},
}


def needs(module, extra):
    return pytest.importorskip(module, reason=f"{module} is not installed: pip install 'farsync[{extra}]'")


def scalars(directory, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def f32(x):
    return torch.tensor(x, dtype=torch.float32).item()  # TensorBoard stores float32


def test_tensorboard_and_csv_read_back_equal_metrics_jsonl(tmp_path):
    needs("tensorboard", "tensorboard")
    res = farsync.run({**CFG, "logging": ["tensorboard", "csv"]}, out=tmp_path / "r", progress=False)
    rec = read_metrics(tmp_path / "r" / "metrics.jsonl")
    evals = [r for r in rec if "eval_loss" in r]
    tb = tmp_path / "r" / "tensorboard"
    assert scalars(tb, "loss/train") == [(r["step"], f32(r["train_loss"])) for r in rec]
    assert scalars(tb, "loss/eval") == [(r["step"], f32(r["eval_loss"])) for r in evals]
    assert scalars(tb, "loss_vs_tokens/train") == [(r["tokens"], f32(r["train_loss"])) for r in rec]
    assert scalars(tb, "loss_vs_bytes/eval") == [(r["bytes_sent"], f32(r["eval_loss"])) for r in evals]
    assert scalars(tb, "loss_vs_sim_ms/train") == [(round(r["sim_time_s"] * 1e3), f32(r["train_loss"])) for r in rec]
    assert scalars(tb, "metrics/bytes_sent") == [(r["step"], f32(r["bytes_sent"])) for r in rec]
    assert scalars(tb, "lr") == [(r["step"], f32(r["lr"])) for r in rec]
    assert scalars(tb / "hparams", "final/eval_loss") == [(0, f32(res.summary["final_eval_loss"]))]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hp = EventAccumulator(str(tb / "hparams"))
    hp.Reload()
    plugin = hp.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"algorithm.sync_every" in plugin and b"task.n_embd" in plugin  # the resolved config as hparams

    with open(tmp_path / "r" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [r["step"] for r in rec]
    assert [float(r["train_loss"]) for r in rows] == [r["train_loss"] for r in rec]  # repr round trip: exact
    assert [r["eval_loss"] for r in rows] == [repr(r["eval_loss"]) if "eval_loss" in r else "" for r in rec]
    assert [int(r["bytes_sent"]) for r in rows] == [r["bytes_sent"] for r in rec]


def test_a_resumed_run_has_each_step_once(tmp_path):
    needs("tensorboard", "tensorboard")
    cfg = {**CFG, "logging": ["tensorboard", "csv"], "train": {**CFG["train"], "checkpoint_every": 4}}
    whole = farsync.run(cfg, out=tmp_path / "w", progress=False)
    os.environ["FARSYNC_FAULT"] = "1:10"
    try:
        assert farsync.run(cfg, out=tmp_path / "r", progress=False).status.startswith("failed")
    finally:
        del os.environ["FARSYNC_FAULT"]
    assert scalars(tmp_path / "r" / "tensorboard", "loss/train")[-1][0] == 8  # logged up to the crash
    assert farsync.run(resume=tmp_path / "r", progress=False).status == "completed"
    steps = [r["step"] for r in whole.metrics]
    assert [s for s, _ in scalars(tmp_path / "r" / "tensorboard", "loss/train")] == steps  # 2..12, none twice
    assert scalars(tmp_path / "r" / "tensorboard", "loss/train") == scalars(tmp_path / "w" / "tensorboard", "loss/train")
    with open(tmp_path / "r" / "metrics.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == steps


def wandb_records(path):
    """The records of a W&B offline run file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, parts = open(path, "rb").read(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            r = pb.Record()
            r.ParseFromString(parts)
            parts = b""
            yield r


def test_wandb_offline_run_holds_every_line_and_the_config(tmp_path):
    needs("wandb", "wandb")
    farsync.run({**CFG, "logging": ["wandb"]}, out=tmp_path / "r", progress=False)
    rec = read_metrics(tmp_path / "r" / "metrics.jsonl")
    (path,) = glob.glob(str(tmp_path / "r" / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = list(wandb_records(path))
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [r["step"] for r in rec]
    assert [h["train_loss"] for h in history] == [r["train_loss"] for r in rec]
    assert [h.get("eval_loss") for h in history] == [r.get("eval_loss") for r in rec]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["algorithm"]["sync_every"] == 3 and config["seed"] == 1


def test_mlflow_store_holds_every_line_params_and_status(tmp_path):
    needs("mlflow", "mlflow")
    needs("sqlalchemy", "mlflow")
    from mlflow.tracking import MlflowClient

    farsync.run({**CFG, "logging": ["mlflow"]}, out=tmp_path / "r", progress=False)
    rec = read_metrics(tmp_path / "r" / "metrics.jsonl")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("farsync").experiment_id])
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], r["train_loss"]) for r in rec]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [6, 12]
    assert run.data.params["algorithm.sync_every"] == "3" and run.data.params["task.n_embd"] == "16"
    assert run.data.tags["farsync.status"] == "completed" and run.info.status == "FINISHED"


def test_missing_package_and_unknown_tracker_are_refused_before_work(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'farsync\[tensorboard\]'"):
        farsync.run({**CFG, "logging": ["tensorboard"]}, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # nothing written
    with pytest.raises(ConfigError, match="tensorboard"):
        farsync.run({**CFG, "logging": ["tensorbored"]}, out=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="unknown tracker 'neptune'; choose from tensorboard, csv, wandb, mlflow"):
        check_trackers(["neptune"])


def test_a_failing_tracker_is_dropped_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    calls = []

    def broken(self, record):
        calls.append(record["step"])
        raise OSError("disk full")

    monkeypatch.setattr(CSVTracker, "log", broken)
    res = farsync.run({**CFG, "logging": ["csv"]}, out=tmp_path / "r", progress=False)
    assert res.status == "completed" and calls == [2]  # tried once, then turned off
    assert [r["step"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [2, 4, 6, 8, 10, 12]
    assert "logging: csv failed (OSError: disk full); it is turned off" in capsys.readouterr().err


def test_tracking_in_your_own_loop_logs_comm_stats(tmp_path):
    """farsync.Tracking in a `farsync.simulate` loop: bytes and simulated time come from comm.stats."""
    seen = {}

    def train(comm):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "ddp")
        track = Tracking(tmp_path / "mine", ["csv"], config={"lr": 0.1}) if comm.rank == 0 else None
        x, y = torch.randn(8, 4), torch.randn(8, 1)
        for step in range(1, 6):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            algo.step()
            algo.zero_grad()
            if track is not None:
                track.log(step, comm=algo.comm, train_loss=loss.item())
        if track is not None:
            track.close()
            seen.update(bytes=algo.comm.stats.bytes_sent, clock=algo.comm.stats.clock_s)

    farsync.simulate(train, workers=2, bandwidth="1Gbps", latency="1ms", step_time=0.01)
    with open(tmp_path / "mine" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert int(rows[-1]["bytes_sent"]) == seen["bytes"] > 0 and float(rows[-1]["sim_time_s"]) == seen["clock"] > 0
    assert [int(r["bytes_sent"]) for r in rows] == [seen["bytes"] * k // 5 for k in range(1, 6)]  # one all-reduce a step
