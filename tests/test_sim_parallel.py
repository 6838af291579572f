"""The simulator spread over processes (``cluster.parallel``, `farsync.comm.sim_parallel`): every
parallel setting gives the same run - metrics, summary, transfers, model - bit for bit at one
number of threads; what it cannot do is refused before work; failures in another process reach
the caller."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import farsync
from farsync.comm import SimCluster
from farsync.comm.sim import SimDeadlock
from farsync.config import ConfigError
from farsync.retime import retime
from farsync.runner import run

GPT = {"name": "shakespeare-gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8,
       "dropout": 0.1}
BASE = {
    "name": "p", "seed": 0, "task": {"name": "quadratic", "dim": 64},
    "cluster": {"workers": 4, "bandwidth": "1Gbps", "latency": "1ms", "threads": 1,
                "time_model": {"params": 1e8, "layers": 4, "step_time": "20ms", "bucket_size": "40MB"},
                "stragglers": [{"rank": 3, "factor": 2.0, "start": "0.1s", "end": "0.3s"}]},
    "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.05}},
    "train": {"steps": 16, "batch_size": 4, "eval_every": 8, "log_every": 4},
}
ALGOS = {
    "ddp-gpt": ({"name": "ddp", "inner": {"name": "adamw", "lr": 0.01}}, GPT),
    "diloco": ({"name": "diloco", "sync_every": 4}, None),
    "streaming": ({"name": "streaming-diloco", "sync_every": 6, "fragments": 2, "delay": 1,
                   "fragment_rule": "contiguous"}, {"name": "logreg"}),
    "eager": ({"name": "eager-diloco", "sync_every": 4}, None),
    "demo": ({"name": "decoupled-momentum", "inner": {"name": "sgd", "lr": 0.05}}, GPT),
}


def config(tmp_path: Path, algo: dict, task: dict | None, **cluster) -> Path:
    cfg = json.loads(json.dumps(BASE))
    cfg["algorithm"] = {**cfg["algorithm"], **algo}
    if task is not None:
        cfg["task"] = task
    cfg["cluster"].update(cluster)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def outputs(d: Path) -> tuple:
    metrics = [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
               for line in (d / "metrics.jsonl").read_text().splitlines()]
    s = json.loads((d / "summary.json").read_text())
    for k in ("wall_time_s", "steps_per_s", "tokens_per_s"):
        s.pop(k, None)
    model = torch.load(d / "model.pt")
    return metrics, s, (d / "transfers.csv").read_text(), {k: v.tolist() for k, v in model.items()}


@pytest.mark.parametrize("algo", list(ALGOS), ids=list(ALGOS))
def test_every_parallel_setting_gives_the_same_run(tmp_path, algo):
    cfg = config(tmp_path, *ALGOS[algo])
    one = run(str(cfg), out=tmp_path / "p1", progress=False)
    assert one.status == "completed"
    want = outputs(tmp_path / "p1")
    for p in (2, 4):
        got = run(str(cfg), overrides=[f"cluster.parallel={p}"], out=tmp_path / f"p{p}", progress=False)
        assert got.status == "completed"
        assert outputs(tmp_path / f"p{p}") == want, f"parallel={p}"
    assert len(want[0]) == 4 and want[1]["bytes_sent_per_worker"][0] > 0


def test_a_parallel_run_is_retimed_like_a_one_process_run(tmp_path):
    """The other processes' communication logs come back: retime works on a parallel run."""
    cfg = config(tmp_path, *ALGOS["diloco"])
    run(str(cfg), out=tmp_path / "a", progress=False)
    run(str(cfg), overrides=["cluster.parallel=3"], out=tmp_path / "b", progress=False)
    new = ["cluster.bandwidth=20Mbps", "cluster.latency=30ms"]
    retime(tmp_path / "a", new, tmp_path / "ra")
    retime(tmp_path / "b", new, tmp_path / "rb")
    ra, rb = outputs(tmp_path / "ra"), outputs(tmp_path / "rb")
    assert ra[0] == rb[0] and ra[2] == rb[2]
    assert ra[1]["sim_time_s"] == rb[1]["sim_time_s"] > json.loads((tmp_path / "a" / "summary.json").read_text())["sim_time_s"]


def test_simulate_with_parallel_processes_returns_what_one_process_returns():
    def train_fn(comm):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 2)
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "diloco", comm, sync_every=3)
        g = torch.Generator().manual_seed(comm.rank)
        for _ in range(9):
            x = torch.randn(8, 6, generator=g)
            model(x).pow(2).mean().backward()
            algo.step()
            algo.zero_grad()
        return [p.detach().clone() for p in model.parameters()], torch.rand(1).item()

    reports = [farsync.simulate(train_fn, workers=4, step_time="10ms", parallel=p, threads=1) for p in (1, 2, 4)]
    for rep in reports[1:]:
        assert rep.summary() == reports[0].summary()
        for (pa, ra), (pb, rb) in zip(rep.results, reports[0].results):
            assert ra == rb and all(torch.equal(a, b) for a, b in zip(pa, pb))
    assert reports[0].results[1][1] == reports[0].results[0][1]  # each rank draws from its own copy of the RNG


@pytest.mark.parametrize("extra, message", [
    ({"algorithm": {"name": "dsgd"}, "cluster": {"topology": "ring", "parallel": 2}},
     "cluster.parallel (2) needs an algorithm that communicates by collectives only"),
    ({"algorithm": {"name": "async-local-sgd"}, "cluster": {"parallel": 2}}, "sends point-to-point messages"),
    ({"cluster": {"parallel": 5}}, "cluster.parallel must be in [1, 4] (cluster.workers), got 5"),
    ({"cluster": {"parallel": 0}}, "cluster.parallel"),
    ({"cluster": {"threads": 0}}, "cluster.threads"),
    ({"cluster": {"backend": "torch", "parallel": 2}}, "on cluster.backend: torch every worker is a process already"),
])
def test_what_parallel_cannot_do_is_refused_before_work(tmp_path, extra, message):
    cfg = json.loads(json.dumps(BASE))
    for section, values in extra.items():
        cfg[section].update(values)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=None) as err:
        run(str(p), out=tmp_path / "r", progress=False)
    assert message in str(err.value)
    assert not (tmp_path / "r").exists()


def test_messages_are_refused_on_a_spread_cluster_with_the_reason():
    with pytest.raises(RuntimeError, match="point-to-point messages are timed in the order"):
        SimCluster(2, parallel=2).run(lambda c: c.send(torch.ones(1), 1) if c.rank == 0 else c.recv(torch.ones(1), 0))
    with pytest.raises(ValueError, match=r"parallel must be in \[1, 3\]"):
        SimCluster(3, parallel=4)


def test_failures_in_another_process_reach_the_caller():
    def fails(comm):
        comm.all_reduce(torch.ones(3))
        if comm.rank == 3:
            raise ValueError("rank 3 fails")
        comm.all_reduce(torch.ones(3))

    with pytest.raises(ValueError, match="rank 3 fails") as err:
        SimCluster(4, parallel=2).run(fails)
    assert "(raised on simulated rank 3)" in err.value.__notes__

    def dies(comm):
        comm.barrier()
        if comm.rank == 2:
            os._exit(3)  # a crashed process, without a word
        comm.barrier()

    with pytest.raises(RuntimeError, match=r"simulator process of ranks 2-3 exited \(exit code 3\)"):
        SimCluster(4, parallel=2).run(dies)

    with pytest.raises(SimDeadlock, match="rank 0 in barrier over ranks"):  # rank 3 (elsewhere) never enters it
        SimCluster(4, parallel=2).run(lambda c: None if c.rank == 3 else c.barrier())


def test_an_injected_fault_in_another_process_fails_the_run_and_keeps_its_metrics(tmp_path, monkeypatch):
    cfg = config(tmp_path, *ALGOS["diloco"])
    monkeypatch.setenv("FARSYNC_FAULT", "3:10")
    res = run(str(cfg), overrides=["cluster.parallel=2"], out=tmp_path / "r", progress=False)
    assert res.status == "failed: InjectedFault: FARSYNC_FAULT: rank 3 killed at step 10"
    assert [m["step"] for m in res.metrics] == [4, 8]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == res.status
