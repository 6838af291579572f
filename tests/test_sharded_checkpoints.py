"""Sharded checkpoints (``train.checkpoint_format: sharded``, checkpoint_shards.py): every process
writes its own part with torch.distributed.checkpoint; a killed run resumes bitwise on the same
layout, on the simulator, and as replica groups of another size (same per-worker batch)."""

import json

import pytest
import torch

import farsync
from farsync.checkpoint import load_latest
from farsync.checkpoint_shards import load_shard, save_shards
from farsync.cli import main
from farsync.comm.faults import FAULT_ENV
from farsync.config import load_config

from test_replica_groups import CFG, assert_close_runs, cfg_file, model, records

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_thread")]

SHARDED = ["--set", "train.checkpoint_format=sharded"]


def strip(run_dir):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "sim_time_s")} for r in records(run_dir)]


def test_structure_round_trip_in_one_process(tmp_path):
    state = {"model": {"w": torch.randn(3, 2), "b": torch.zeros(2, dtype=torch.float64)}, "step": 7,
             "algorithm": {"opt": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(4)}},
                                   "param_groups": [{"lr": 0.1, "params": [0]}]}, "rounds": (1, None, "x")},
             "rng": torch.get_rng_state()}
    save_shards(tmp_path / "c.dcp", 1, state)
    back = load_shard(tmp_path / "c.dcp", 1)
    assert back.keys() == state.keys() and back["step"] == 7 and back["algorithm"]["rounds"] == (1, None, "x")
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["model"]["b"].dtype == torch.float64
    assert torch.equal(back["algorithm"]["opt"]["state"][0]["exp_avg"], torch.ones(4))
    assert torch.equal(back["rng"], state["rng"])
    with pytest.raises(Exception, match="holds no state of worker 0"):
        load_shard(tmp_path / "c.dcp", 0)


def test_killed_sharded_run_resumes_bitwise_on_torch_and_on_the_simulator(tmp_path, monkeypatch, capfd):
    cfg = cfg_file(tmp_path, train={**CFG["train"], "checkpoint_every": 3})
    ref = farsync.run(cfg, out=tmp_path / "ref", progress=False)
    monkeypatch.setenv(FAULT_ENV, "1:8")
    assert main(["launch", "--nproc", "2", str(cfg), "--out", str(tmp_path / "a"), *SHARDED]) != 0
    monkeypatch.delenv(FAULT_ENV)
    path, ckpt, _ = load_latest(tmp_path / "a")
    assert ckpt["step"] == 6 and "workers" not in ckpt and ckpt["shards"] == "step-00000006.dcp"
    shards = sorted(p.name for p in (path.parent / ckpt["shards"]).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each process wrote its own part
    assert set(ckpt["manifest"]) == set(shards)
    for d in ("b", "c"):  # the same checkpoint, to resume once on each backend
        import shutil

        shutil.copytree(tmp_path / "a", tmp_path / d)
    assert main(["launch", "--nproc", "2", "--resume", str(tmp_path / "b")]) == 0
    assert strip(tmp_path / "b") == strip(ref.run_dir)
    a, b = model(tmp_path / "b"), model(ref.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # on the simulator: each simulated worker reads its own part
    assert main(["run", "--resume", str(tmp_path / "c"), "--quiet"]) == 0
    assert strip(tmp_path / "c") == strip(ref.run_dir)
    # a corrupted shard: named, and the previous intact checkpoint (step 3) is used
    shard = tmp_path / "a" / "checkpoints" / "step-00000006.dcp" / "__1_0.distcp"
    shard.write_bytes(b"\0" + shard.read_bytes()[1:])
    capfd.readouterr()
    assert main(["launch", "--nproc", "2", "--resume", str(tmp_path / "a")]) == 0
    err = capfd.readouterr().err
    assert "__1_0.distcp is corrupted" in err and "step-00000003.pt" in err
    assert strip(tmp_path / "a") == strip(ref.run_dir)


def test_grouped_run_resumes_with_another_group_size_and_the_same_batch(tmp_path, monkeypatch):
    cfg = cfg_file(tmp_path)
    sim = farsync.run(cfg, out=tmp_path / "sim", overrides=["train.batch_size=8"], progress=False)
    monkeypatch.setenv(FAULT_ENV, "1:8")
    assert main(["launch", "--groups", "2", "--nproc-per-group", "2", str(cfg), "--out", str(tmp_path / "g"), *SHARDED]) != 0
    monkeypatch.delenv(FAULT_ENV)
    shards = sorted(p.name for p in (tmp_path / "g" / "checkpoints" / "step-00000006.dcp").iterdir())
    assert len(shards) == 5  # metadata + one file per process (members j > 0 write no state)
    # 2 groups of 2 with batch 4 each -> 2 single processes with batch 8: the same workers
    assert main(["launch", "--nproc", "2", "--resume", str(tmp_path / "g"),
                 "--set", "cluster.group_size=1", "--set", "train.batch_size=8"]) == 0
    assert_close_runs(tmp_path / "g", sim.run_dir)


def test_group_size_changes_only_with_the_batch_and_sharded_needs_the_torch_backend(tmp_path, monkeypatch, capsys):
    cfg = cfg_file(tmp_path)
    monkeypatch.setenv(FAULT_ENV, "1:8")
    assert main(["launch", "--groups", "2", "--nproc-per-group", "2", str(cfg), "--out", str(tmp_path / "g")]) != 0
    monkeypatch.delenv(FAULT_ENV)
    capsys.readouterr()
    assert main(["launch", "--nproc", "2", "--resume", str(tmp_path / "g"), "--set", "cluster.group_size=1"]) == 2
    assert "may change only together, keeping 8" in capsys.readouterr().err
    with pytest.raises(Exception, match="checkpoint_format: sharded is written by each process of cluster.backend: torch"):
        load_config(cfg_file(tmp_path, train={**CFG["train"], "checkpoint_format": "sharded"}))
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["status"].startswith("failed")
