"""The batched simulator (`cluster.batched: true`, farsync/sim_batched.py) against the threaded one:
the same metrics, summary, communication log, transfers and final model."""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch

from farsync.config import ConfigError
from farsync.retime import retime
from farsync.runner import run

GPT = {"name": "shakespeare-gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8}
QUAD = {"name": "quadratic", "dim": 6, "sigma": 0.5, "zeta": 1.0}


def config(algorithm, task=None, cluster=None, train=None, inner=None):
    return {"name": "b", "seed": 0, "task": task or QUAD,
            "cluster": {"workers": 5, "bandwidth": "1Gbps", "latency": "1ms", "threads": 1, "step_time": "10ms",
                        **(cluster or {})},
            "algorithm": {"inner": inner or {"name": "sgd", "lr": 0.1}, **algorithm},
            "train": {"steps": 12, "batch_size": 2, "log_every": 2, "eval_every": 4, **(train or {})}}


def both(cfg, tmp_path):
    threaded = run(cfg, out=tmp_path / "threads", progress=False)
    batched_cfg = json.loads(json.dumps(cfg))
    batched_cfg["cluster"]["batched"] = True
    batched = run(batched_cfg, out=tmp_path / "batched", progress=False)
    return threaded, batched


def close(a, b, rtol):
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isfinite(a) and abs(a - b) <= rtol * max(abs(a), abs(b), 1e-300))
    return a == b


def assert_same_run(threaded, batched, rtol):
    assert threaded.status == batched.status == "completed"
    assert len(threaded.metrics) == len(batched.metrics) > 0
    for x, y in zip(threaded.metrics, batched.metrics):
        assert list(x) == list(y)  # the same fields, in the same order
        for k in x:
            if k != "wall_time_s":
                assert close(x[k], y[k], rtol), (k, x["step"], x[k], y[k])
    for k, v in threaded.summary.items():
        if k != "wall_time_s":
            assert close(v, batched.summary[k], rtol), (k, v, batched.summary[k])
    for name in ("transfers.csv",):
        assert (threaded.run_dir / name).read_text() == (batched.run_dir / name).read_text()
    logs = [json.loads(gzip.decompress((r.run_dir / "comm_log.json.gz").read_bytes()))["workers"]
            for r in (threaded, batched)]
    assert logs[0] == logs[1]  # every worker issued the same calls: the replay times them alike
    a, b = (torch.load(r.run_dir / "model.pt") for r in (threaded, batched))
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * float(a[k].abs().max()))


@pytest.mark.parametrize("algorithm, cluster, train, inner", [
    ({"name": "ddp"}, None, None, None),
    ({"name": "ddp"}, {"time_model": {"params": 1e8, "layers": 4, "step_time": "20ms", "bucket_size": "40MB"}, "step_time": None},
     {"grad_clip": 0.5}, {"name": "adamw", "lr": 0.05, "weight_decay": 0.1}),
    ({"name": "local-sgd", "sync_every": 3, "reset_inner_state": True}, None, None, {"name": "sgd", "lr": 0.1, "momentum": 0.9}),
    ({"name": "diloco", "sync_every": 3}, {"speeds": [1, 1, 2, 1, 1.5]}, {"grad_clip": 0.5}, {"name": "adam", "lr": 0.05}),
    ({"name": "dsgd"}, {"topology": "ring"}, None, None),
    ({"name": "dsgd", "order": "atc"}, {"topology": "ring", "stragglers": [{"rank": 3, "factor": 2.0, "start": "0.02s", "end": "0.06s"}]},
     None, None),
], ids=["ddp", "ddp-adamw-clip-time-model", "local-sgd-reset", "diloco-adam-clip-speeds", "dsgd-ring", "dsgd-atc-straggler"])
def test_batched_equals_threaded_in_float64(tmp_path, algorithm, cluster, train, inner):
    cfg = config(algorithm, cluster=cluster, train=train, inner=inner)
    if cfg["cluster"].get("step_time", 0) is None:
        del cfg["cluster"]["step_time"]
    threaded, batched = both(cfg, tmp_path)
    assert_same_run(threaded, batched, rtol=1e-12)


@pytest.mark.parametrize("algorithm", [{"name": "ddp"}, {"name": "diloco", "sync_every": 4}, {"name": "dsgd"}])
def test_batched_equals_threaded_on_a_gpt_to_1e6(tmp_path, algorithm):
    """float32 and one vmap: the gradients differ from the threaded workers' in the last bits, so the
    runs agree to 1e-6 (SGD with momentum; Adam would turn a last-bit difference in a near-zero
    gradient into an lr-sized difference of that parameter's update)."""
    cluster = {"workers": 3, **({"topology": "ring"} if algorithm["name"] == "dsgd" else {})}
    cfg = config(algorithm, task=GPT, cluster=cluster, train={"steps": 8, "grad_clip": 1.0},
                 inner={"name": "sgd", "lr": 0.3, "momentum": 0.9})
    threaded, batched = both(cfg, tmp_path)
    assert_same_run(threaded, batched, rtol=1e-6)
    assert batched.metrics[-1]["train_loss"] < batched.metrics[0]["train_loss"]  # it trained


@pytest.mark.parametrize("task", [QUAD, GPT], ids=["quadratic", "gpt"])
def test_batched_ddp_of_a_large_model_backward_per_worker_is_bitwise_the_threaded_run(tmp_path, monkeypatch, task):
    """A model of LOOP_PARAMS parameters or more: one backward per worker into the one copy (autograd
    sums the gradients in rank order, as the threaded all-reduce): the same bits."""
    import farsync.sim_batched as sb

    monkeypatch.setattr(sb, "LOOP_PARAMS", 0)
    cfg = config({"name": "ddp"}, task=task, cluster={"workers": 3}, train={"steps": 6, "grad_clip": 1.0},
                 inner={"name": "adamw", "lr": 0.01})
    threaded, batched = both(cfg, tmp_path)
    assert_same_run(threaded, batched, rtol=0)


def test_batched_run_can_be_retimed_as_the_threaded_one(tmp_path):
    threaded, batched = both(config({"name": "diloco", "sync_every": 3}), tmp_path)
    a = retime(threaded.run_dir, ["cluster.bandwidth=10Mbps"], tmp_path / "rt-threads")
    b = retime(batched.run_dir, ["cluster.bandwidth=10Mbps"], tmp_path / "rt-batched")
    assert a["sim_time_s"] == b["sim_time_s"] > threaded.summary["sim_time_s"]


def test_a_nonfinite_loss_stops_the_batched_run_as_the_threaded_one(tmp_path):
    threaded, batched = both(config({"name": "ddp"}, inner={"name": "sgd", "lr": 1e6}, train={"steps": 60}), tmp_path)
    assert threaded.status == batched.status and batched.status.startswith("failed: non-finite loss at step")
    assert [m["step"] for m in threaded.metrics] == [m["step"] for m in batched.metrics]
    assert json.loads((batched.run_dir / "summary.json").read_text())["status"] == batched.status


@pytest.mark.parametrize("change, words", [
    ({"algorithm": {"name": "eager-diloco", "sync_every": 4}}, "algorithm 'eager-diloco'"),
    ({"algorithm": {"name": "diloco", "sync_every": 4, "compress": {"name": "int8"}}}, "algorithm.compress"),
    ({"algorithm": {"name": "ddp", "inner": {"name": "prodigy"}}}, "inner optimizer 'prodigy'"),
    ({"task": {**GPT, "dropout": 0.1}}, "dropout"),
    ({"train": {"steps": 12, "batch_size": 2, "checkpoint_every": 4}}, "train.checkpoint_every"),
    ({"cluster": {"workers": 5, "churn": [{"worker": 1, "leave": 3, "join": 6}]}}, "cluster.churn"),
])
def test_batched_refuses_what_it_cannot_run_before_any_work(tmp_path, change, words):
    cfg = config({"name": "ddp"})
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if key != "task" else value
    cfg["cluster"]["batched"] = True
    with pytest.raises(ConfigError, match="cluster.batched: true cannot run this config") as err:
        run(cfg, out=tmp_path / "r", progress=False)
    assert words in str(err.value)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("cluster, words", [({"backend": "torch"}, "cluster.backend: torch"),
                                            ({"parallel": 2}, "cluster.parallel")])
def test_batched_config_conflicts_are_config_errors(tmp_path, cluster, words):
    cfg = config({"name": "ddp"}, cluster={"batched": True, **cluster})
    with pytest.raises(ConfigError, match=words):
        run(cfg, out=tmp_path / "r", progress=False)
