"""The algorithm contract as checks that any registered algorithm must pass (used by
tests/test_conformance.py, which runs them over the whole registry, and by a test that registers a
broken toy algorithm and expects them to fail).

Every check runs the real runner (config validation, `farsync.wrap`, the training loop,
checkpoints) on a tiny heterogeneous quadratic, so a check costs about 0.1 s.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

import farsync
from farsync.algorithms import ALGORITHMS, Decentralized
from farsync.algorithms.options import takes


def tiny_config(name: str, steps: int = 12, checkpoint_every: int = 0, log_every: int = 2) -> dict:
    """A valid config for algorithm `name` on a 3-worker quadratic (dim 4, noise, heterogeneity)."""
    cls = ALGORITHMS[name]
    algo = {"name": name, "inner": {"name": "sgd", "lr": 0.1}}
    if takes(cls, "sync_every"):
        algo["sync_every"] = 3
    cluster = {"workers": 3, "bandwidth": "100Mbps", "latency": "1ms", "step_time": "10ms"}
    if issubclass(cls, Decentralized):
        cluster["topology"] = "ring"
    return {"name": f"conformance-{name}", "seed": 0, "task": {"name": "quadratic", "dim": 4, "sigma": 0.1, "zeta": 1.0},
            "cluster": cluster, "algorithm": algo,
            "train": {"steps": steps, "batch_size": 2, "eval_every": log_every, "log_every": log_every,
                      "checkpoint_every": checkpoint_every}}


def without_wall(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "wall_time_s"} for m in metrics]


def model_digest(run_dir) -> str:
    state = torch.load(os.path.join(run_dir, "model.pt"), weights_only=True)
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_resume(name: str, tmp_path, monkeypatch) -> None:
    """k steps + crash + resume + k steps == 2k steps: metrics (losses, bytes, simulated time),
    the final model and the summary's counters, bit for bit."""
    cfg = tiny_config(name, steps=12, checkpoint_every=6)
    whole = farsync.run(cfg, out=tmp_path / "whole", progress=False)
    assert whole.status == "completed", whole.status
    monkeypatch.setenv("FARSYNC_FAULT", "1:8")
    crashed = farsync.run(cfg, out=tmp_path / "crashed", progress=False)
    monkeypatch.delenv("FARSYNC_FAULT")
    assert crashed.status.startswith("failed: InjectedFault"), crashed.status  # the fault really fired
    resumed = farsync.run(resume=tmp_path / "crashed", progress=False)
    assert without_wall(resumed.metrics) == without_wall(whole.metrics), f"{name}: resumed metrics differ"
    assert model_digest(resumed.run_dir) == model_digest(whole.run_dir), f"{name}: resumed final model differs"
    for key in ("bytes_sent_per_worker", "bytes_received_per_worker", "sim_time_s", "compute_time_s_per_worker"):
        assert resumed.summary[key] == whole.summary[key], f"{name}: {key} differs after resume"


def check_determinism(name: str, tmp_path) -> None:
    """The same config and seed give the same run, bit for bit (a run is a pure function of them)."""
    a = farsync.run(tiny_config(name), out=tmp_path / "a", progress=False)
    b = farsync.run(tiny_config(name), out=tmp_path / "b", progress=False)
    assert a.status == b.status == "completed", (a.status, b.status)
    assert without_wall(a.metrics) == without_wall(b.metrics)
    assert model_digest(a.run_dir) == model_digest(b.run_dir)
    assert (a.run_dir / "transfers.csv").read_text() == (b.run_dir / "transfers.csv").read_text()


def trajectory(name: str, tmp_path) -> dict:
    """What the golden fixture stores: every step's losses, bytes and simulated time (floats as
    their shortest exact repr), and the final model's SHA-256."""
    run = farsync.run(tiny_config(name, steps=12, log_every=1), out=tmp_path / "golden", progress=False)
    keys = ("step", "train_loss", "eval_loss", "bytes_sent", "bytes_received", "sim_time_s")
    return {"status": run.status, "steps": [[m.get(k) for k in keys] for m in run.metrics],
            "model_sha256": model_digest(run.run_dir)}


def dumps_golden(table: dict) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def check_gloo_matches_simulator(name: str, tmp_path) -> None:
    """Two torch.distributed (gloo) processes reproduce the simulator bit for bit: metrics (but
    time, which is real on torch), byte counts and the final model."""
    import yaml

    from farsync.cli import main

    cfg = tiny_config(name, steps=6)
    cfg["cluster"]["workers"] = 2
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sim = farsync.run(path, out=tmp_path / "sim", progress=False)
    assert main(["launch", str(path), "--out", str(tmp_path / "torch")]) == 0
    torch_run = [json.loads(line) for line in (tmp_path / "torch" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("wall_time_s", "sim_time_s")} for m in ms]  # noqa: E731
    assert strip(torch_run) == strip(sim.metrics), f"{name}: gloo metrics differ from the simulator's"
    got = json.loads((tmp_path / "torch" / "summary.json").read_text())
    assert got["bytes_sent_per_worker"] == sim.summary["bytes_sent_per_worker"]
    assert model_digest(tmp_path / "torch") == model_digest(sim.run_dir), f"{name}: gloo final model differs"


def declared_bytes(name: str) -> list[int] | None:
    """Each rank's bytes sent in `tiny_config(name)` as the algorithm declares its calls
    (`Algorithm.declared_calls`) and the cost model (`comm.base.wire_bytes`) prices them."""
    from farsync.comm import wire_bytes
    from farsync.runner import build_task

    cfg = farsync.load_config(tiny_config(name))
    cls = ALGORITHMS[name]
    torch.manual_seed(cfg.seed)
    model = build_task(cfg).build_model()
    n = cfg.cluster.workers
    graph = cfg.cluster.build_topology() if issubclass(cls, Decentralized) else None
    out = []
    for rank in range(n):
        degree = len(graph.neighbors(rank)) if graph is not None else 0
        calls = cls.declared_calls(model, cfg.train.steps, degree, cfg.algorithm.options(cfg.cluster.topology))
        if calls is None:
            return None
        out.append(sum(wire_bytes(kind, b, n, rank)[0] for kind, b in calls))
    return out


def check_declared_bytes(name: str, tmp_path) -> None:
    """The bytes each worker really sent == what the algorithm declares, priced by the cost model."""
    run = farsync.run(tiny_config(name), out=tmp_path / "bytes", progress=False)
    assert run.status == "completed", run.status
    assert run.summary["bytes_sent_per_worker"] == declared_bytes(name), f"{name}: bytes differ from its declaration"


def check_one_worker_is_inner(name: str, tmp_path) -> None:
    """With one worker the algorithm is its inner optimizer (SGD) bit for bit: a plain torch loop
    on the same model, shard and batches ends at the same parameters and evaluation loss."""
    from farsync.runner import build_task

    raw = tiny_config(name)
    raw["cluster"]["workers"] = 1
    raw["cluster"].pop("topology", None)  # one node: the complete graph
    run = farsync.run(raw, out=tmp_path / "one", progress=False)
    assert run.status == "completed", run.status
    cfg = farsync.load_config(raw)
    task = build_task(cfg)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.algorithm.inner["lr"])
    sampler = task.sampler(0, cfg.train.batch_size)
    for _ in range(cfg.train.steps):
        task.loss(model, sampler.next_batch()).backward()
        opt.step()
        opt.zero_grad()
    got = torch.load(os.path.join(run.run_dir, "model.pt"), weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(got[k], v), f"{name}: one worker differs from plain SGD in {k}"
    assert run.metrics[-1]["eval_loss"] == task.evaluate(model)
