"""Replica groups (comm/groups.py): R groups of k processes with DDP inside == the simulator with R
workers of batch k x b; the sliced all-reduce against a plain one; resume; refusals.

Equality is to float rounding: DDP averages the k members' gradients of b samples each, the
simulator takes the gradient of the mean over k x b samples. Bytes and tokens are exact.
"""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

import farsync
from farsync.cli import main
from farsync.comm.base import wire_bytes
from farsync.comm.faults import FAULT_ENV
from farsync.config import load_config
from farsync.launch import free_port

from test_distributed import CFG

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_thread")]

ALGOS = {
    "diloco": CFG["algorithm"],
    "ddp": {"name": "ddp", "inner": {"name": "adamw", "lr": 0.003}},
    # async all-reduce overlapping a step, and int8 payloads through all_gather (member 0 crosses groups)
    "streaming-diloco-int8": {"name": "streaming-diloco", "sync_every": 4, "fragments": 2, "fragment_rule": "contiguous",
                              "delay": 1, "inner": {"name": "adamw", "lr": 0.003}, "compress": {"name": "int8"}},
}


def cfg_file(tmp_path, **changes):
    cfg = {**json.loads(json.dumps(CFG)), **changes}
    p = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def model(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


def assert_close_runs(a, b):
    ra, rb = records(a), records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for key in ("bytes_sent", "bytes_received", "tokens"):
            assert x[key] == y[key], key
        for key in ("train_loss", "eval_loss"):
            assert (key in x) == (key in y)
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-5), (key, x["step"])
    ma, mb = model(a), model(b)
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_two_groups_of_two_equal_the_simulator_with_twice_the_batch(tmp_path, algo):
    cfg = cfg_file(tmp_path, algorithm=ALGOS[algo])
    sim = farsync.run(cfg, out=tmp_path / "sim", overrides=["train.batch_size=8"], progress=False)
    assert main(["launch", "--groups", "2", "--nproc-per-group", "2", str(cfg), "--out", str(tmp_path / "groups")]) == 0
    summary = json.loads((tmp_path / "groups" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["bytes_sent_per_worker"] == sim.summary["bytes_sent_per_worker"]
    assert_close_runs(tmp_path / "groups", sim.run_dir)
    procs = json.loads((tmp_path / "groups" / "processes.json").read_text())
    roles = sorted((p["role"], p.get("group")) for p in procs)
    assert roles == [("launcher", None), ("torchrun", 0), ("torchrun", 1), ("worker", 0), ("worker", 0), ("worker", 1), ("worker", 1)]


GROUPS = ["launch", "--groups", "2", "--nproc-per-group", "2"]


def strip(rs):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "sim_time_s")} for r in rs]


def kill_and_resume(tmp_path, cfg, monkeypatch) -> None:
    """A run of 2 x 2, the same run with group 1 killed at step 8 (after the checkpoint at 6), then
    resumed: its metrics and final model equal the uninterrupted run's bit for bit."""
    assert main([*GROUPS, str(cfg), "--out", str(tmp_path / "full")]) == 0
    monkeypatch.setenv(FAULT_ENV, "1:8")  # group 1's processes die at step 8; the launcher stops group 0
    assert main([*GROUPS, str(cfg), "--out", str(tmp_path / "cut")]) != 0
    assert [r["step"] for r in records(tmp_path / "cut")] == [3, 6]
    monkeypatch.delenv(FAULT_ENV)
    assert main([*GROUPS, "--resume", str(tmp_path / "cut")]) == 0
    assert strip(records(tmp_path / "cut")) == strip(records(tmp_path / "full"))
    a, b = model(tmp_path / "cut"), model(tmp_path / "full")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_grouped_run_killed_mid_run_resumes_bitwise(tmp_path, monkeypatch):
    cfg = cfg_file(tmp_path)
    kill_and_resume(tmp_path, cfg, monkeypatch)
    # with a restart allowed, both groups' torchruns restart and resume from the checkpoint
    monkeypatch.setenv(FAULT_ENV, "1:8")
    assert main([*GROUPS, str(cfg), "--out", str(tmp_path / "restarted"), "--max-restarts", "1"]) == 0
    s = json.loads((tmp_path / "restarted" / "summary.json").read_text())
    assert s["restarts"] == 1 and s["status"] == "completed"  # the fault really fired
    assert strip(records(tmp_path / "restarted")) == strip(records(tmp_path / "full"))


def _sliced_collectives(rank, world, port, out):
    from farsync.comm.groups import GroupedCommunicator, init_replica_groups

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        group = init_replica_groups(2)
        comm = GroupedCommunicator(group)
        g = comm.rank
        x = torch.arange(7, dtype=torch.float32) * (g + 1) + 0.1 * g  # 7 values: padded to 2 slices of 4
        comm.all_reduce(x, op="mean")
        y = torch.full((5, 2), float(g + 1))
        work = comm.all_reduce(y, op="sum", async_op=True)
        work.wait()
        parts = [torch.empty(3) for _ in range(comm.world_size)]
        comm.all_gather(parts, torch.full((3,), 10.0 * g))
        b = torch.full((4,), float(g))
        comm.broadcast(b, src=1)
        rows = comm.gather_metrics({"loss": float(rank), "bad": float("inf") if rank != 3 else 7.0, "stop": 0})
        out[rank] = {"rank": g, "world": comm.world_size, "member": group.rank, "x": x, "y": y, "parts": parts, "b": b,
                     "rows": rows, "sent": comm.stats.bytes_sent}
    finally:
        dist.destroy_process_group()


def test_sliced_all_reduce_equals_the_plain_one_and_members_agree():
    world, port = 4, free_port()
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_sliced_collectives, args=(world, port, out), nprocs=world, join=True)
        out = dict(out)
    for rank, o in out.items():
        g = rank // 2
        assert (o["rank"], o["world"], o["member"]) == (g, 2, rank % 2)
        base = torch.arange(7, dtype=torch.float32)
        expect = ((base * 1 + 0.0) + (base * 2 + 0.1)) / 2  # rank order, then divide: the simulator's arithmetic
        assert torch.equal(o["x"], expect)
        assert torch.equal(o["y"], torch.full((5, 2), 3.0))
        assert [p.tolist() for p in o["parts"]] == [[0.0] * 3, [10.0] * 3]
        assert torch.equal(o["b"], torch.full((4,), 1.0))
        # the group's loss is its members' mean; a non-finite step of one member is its group's
        assert [r["loss"] for r in o["rows"]] == [0.5, 2.5] and [r["bad"] for r in o["rows"]] == [float("inf"), 7.0]
        # every member books its group's cross-group bytes: as one of 2 simulated workers
        sent = [wire_bytes(k, n, 2, g, src)[0] for k, n, src in
                (("all_reduce", 28, 0), ("all_reduce", 40, 0), ("all_gather", 12, 0), ("broadcast", 16, 1))]
        assert o["sent"] == sum(sent)


SHARDED = {"diloco": CFG["algorithm"], "local-sgd": {"name": "local-sgd", "sync_every": 3, "inner": {"name": "adamw", "lr": 0.003}}}


@pytest.mark.parametrize("algo", sorted(SHARDED))
def test_sharded_groups_equal_the_simulator_with_twice_the_batch(tmp_path, algo):
    """FSDP2 inside each group (cluster.group_shard): member j holds shard j of every parameter and of
    the algorithm's state, and all-reduces it with member j of the other group; the run is the
    simulator's with batch k x b to float rounding, with its bytes exactly."""
    train = {**CFG["train"], "checkpoint_every": 0, "grad_clip": 0.05}  # clipping binds: the norm is over the whole model
    cfg = cfg_file(tmp_path, algorithm=SHARDED[algo], train=train, cluster={**CFG["cluster"], "group_shard": True})
    sim = farsync.run(cfg, out=tmp_path / "sim", overrides=["train.batch_size=8", "cluster.group_shard=false"], progress=False)
    assert main([*GROUPS, str(cfg), "--out", str(tmp_path / "groups")]) == 0
    summary = json.loads((tmp_path / "groups" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["bytes_sent_per_worker"] == sim.summary["bytes_sent_per_worker"]
    assert_close_runs(tmp_path / "groups", sim.run_dir)
    assert sorted(model(tmp_path / "groups")) == sorted(model(sim.run_dir))  # the saved model is whole, not a shard


def test_a_killed_sharded_group_resumes_bitwise_from_its_members_shards(tmp_path, monkeypatch):
    """Sharded checkpoints (DCP): every member writes its own shards of the model, the inner optimizer
    and DiLoCo's state, and reads them back as DTensors; the resumed run is the uninterrupted one bit for bit."""
    train = {**CFG["train"], "checkpoint_every": 6, "checkpoint_format": "sharded"}
    cfg = cfg_file(tmp_path, train=train, cluster={**CFG["cluster"], "group_shard": True})
    kill_and_resume(tmp_path, cfg, monkeypatch)


def test_a_sharded_member_all_reduces_its_whole_shard_across_groups():
    world, port = 4, free_port()
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_sharded_collectives, args=(world, port, out), nprocs=world, join=True)
        out = dict(out)
    for rank, o in out.items():
        g, j = divmod(rank, 2)
        assert o["local"] == (5 if j == 0 else 4)  # a 9-row parameter: dim-0 chunks of 5 and 4 rows
        mine = torch.arange(9, dtype=torch.float32)[:5] if j == 0 else torch.arange(9, dtype=torch.float32)[5:]
        assert torch.equal(o["x"], ((mine + 0.0) + (mine + 1.0)) / 2)  # member j of group 0 + member j of group 1
        assert o["sent"] == wire_bytes("all_reduce", 9 * 4, 2, g, 0)[0]  # the group's bytes: the whole 9-value model
        assert "whole shards" in o["refused"]


def _sharded_collectives(rank, world, port, out):
    from farsync.comm.groups import GroupedCommunicator, init_replica_groups, local_params, shard_in_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        group = init_replica_groups(2)
        net = torch.nn.Linear(1, 9, bias=False)
        shard_in_group(net, group)
        comm = GroupedCommunicator(group)
        (w,) = local_params(net)
        x = torch.arange(9, dtype=torch.float32)[:5].clone() if group.rank == 0 else torch.arange(9, dtype=torch.float32)[5:].clone()
        x += group.index
        comm.all_reduce(x, op="mean")
        try:
            comm.all_reduce(torch.zeros(3), op="sum")
            refused = ""
        except RuntimeError as err:
            refused = str(err)
        out[rank] = {"local": w.numel(), "x": x, "sent": comm.stats.bytes_sent, "refused": refused}
    finally:
        dist.destroy_process_group()


def test_sharded_groups_refuse_what_they_do_not_carry(tmp_path):
    from farsync.comm.groups import check_shardable

    with pytest.raises(ValueError, match="floating-point buffers"):
        check_shardable(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    check_shardable(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("changes, message", [
    ({"cluster": {"workers": 2, "group_size": 2}}, "on the simulator a group of k is one worker with k times the batch"),
    ({"cluster": {"workers": 2, "backend": "torch", "group_shard": True}}, "it needs cluster.group_size >= 2 (got 1)"),
    ({"cluster": {"workers": 2, "group_size": 2, "backend": "torch", "group_shard": True}},
     "cluster.group_shard does not take train.checkpoint_format: full"),
    ({"cluster": {"workers": 2, "group_size": 2, "backend": "torch", "group_shard": True}, "algorithm": {"name": "ddp"},
      "train": {**CFG["train"], "checkpoint_every": 0}}, "cluster.group_shard does not take algorithm 'ddp'"),
    ({"cluster": {"workers": 2, "group_size": 2, "backend": "torch", "group_shard": True},
      "algorithm": {**CFG["algorithm"], "compress": {"name": "int8"}}, "train": {**CFG["train"], "checkpoint_every": 0}},
     "cluster.group_shard does not take algorithm.compress"),
    ({"cluster": {"workers": 2, "group_size": 2, "backend": "torch"}, "algorithm": {"name": "dsgd"}},
     "cluster.group_size (2) needs an algorithm that communicates by collectives only"),
])
def test_bad_group_settings_are_refused_before_work(tmp_path, changes, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(cfg_file(tmp_path, **changes))


def test_launch_refuses_mismatched_group_flags(tmp_path, capsys):
    cfg = cfg_file(tmp_path)
    assert main(["launch", "--groups", "2", str(cfg), "--out", str(tmp_path / "a")]) == 2
    assert "--groups and --nproc-per-group go together" in capsys.readouterr().err
    assert main(["launch", "--groups", "2", "--nproc-per-group", "2", "--nproc", "4", str(cfg), "--out", str(tmp_path / "b")]) == 2
    assert "either --nproc or --groups" in capsys.readouterr().err
    assert main(["launch", "--groups", "0", "--nproc-per-group", "2", str(cfg), "--out", str(tmp_path / "c")]) == 2
    assert "--groups must be >= 1, got 0" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")
