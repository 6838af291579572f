"""The simulator's two engines (``cluster.engine``, `farsync.comm.sim`): the workers as greenlets on
the calling thread (the default) or as threads give the same run - metrics, summary, transfers,
model - bit for bit, with collectives, point-to-point messages, a parameter server, churn and
dropout's RNG; failures, deadlocks and torch's per-thread grad mode behave as with threads."""

from __future__ import annotations

import pytest
import torch

import farsync
from farsync.comm import SimCluster
from farsync.comm.sim import SimDeadlock
from farsync.runner import run
from test_sim_parallel import ALGOS, config, outputs

CASES = {
    **{k: ALGOS[k] for k in ("ddp-gpt", "diloco", "streaming", "demo")},
    "dsgd-ring": ({"name": "dsgd", "inner": {"name": "sgd", "lr": 0.05}}, None),
    "async-local-sgd": ({"name": "async-local-sgd", "sync_every": 4}, None),
}
EXTRA = {"dsgd-ring": {"topology": "ring"}}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_greenlets_and_threads_give_the_same_run(tmp_path, case):
    cfg = config(tmp_path, *CASES[case], **EXTRA.get(case, {}))
    runs = {}
    for engine in ("greenlets", "threads"):
        res = run(str(cfg), overrides=[f"cluster.engine={engine}"], out=tmp_path / engine, progress=False)
        assert res.status == "completed", (engine, res.status)
        runs[engine] = outputs(tmp_path / engine)
    assert runs["greenlets"] == runs["threads"]
    assert len(runs["threads"][0]) >= 4


def test_churn_is_the_same_on_both_engines(tmp_path):
    cfg = config(tmp_path, *ALGOS["diloco"], churn=[{"worker": 2, "leave": 5, "join": 11}])
    got = {}
    for engine in ("greenlets", "threads"):
        assert run(str(cfg), overrides=[f"cluster.engine={engine}"], out=tmp_path / engine,
                   progress=False).status == "completed"
        got[engine] = outputs(tmp_path / engine)
    assert got["greenlets"] == got["threads"]
    assert any(m.get("participants") == [0, 1, 3] for m in got["threads"][0]), "the churn window took effect"


def test_a_worker_error_and_a_deadlock_reach_the_caller_and_stop_every_worker():
    finished = []

    def boom(comm):
        try:
            x = torch.ones(2)
            comm.all_reduce(x)
            if comm.rank == 2:
                raise ValueError("worker 2 failed")
            comm.all_reduce(x)
        finally:
            finished.append(comm.rank)  # every worker unwinds, none is left suspended

    with pytest.raises(ValueError, match="worker 2 failed") as info:
        SimCluster(4).run(boom)
    assert any("simulated rank 2" in n for n in getattr(info.value, "__notes__", []))
    assert sorted(finished) == [0, 1, 2, 3]

    def lonely(comm):
        if comm.rank == 0:
            comm.barrier()

    with pytest.raises(SimDeadlock, match="rank 0 in barrier"):
        SimCluster(2).run(lonely)


def test_each_worker_keeps_its_own_grad_mode():
    """torch's grad mode is per thread; on one thread every greenlet keeps its own across hand-offs."""

    def fn(comm):
        seen = []
        x = torch.ones(1)
        if comm.rank == 0:
            with torch.no_grad():
                comm.all_reduce(x)  # hands the baton to rank 1 inside no_grad
                seen.append(torch.is_grad_enabled())
        else:
            seen.append(torch.is_grad_enabled())
            comm.all_reduce(x)
            seen.append(torch.is_grad_enabled())
        return seen, farsync.comm.sim.current_sim_communicator() is comm

    with torch.no_grad():  # the caller's mode does not leak into the workers (as with new threads)
        got = SimCluster(2).run(fn)
        assert not torch.is_grad_enabled()  # and the caller's own is back
    assert got == [([False], True), ([True, True], True)]


def test_a_bad_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be one of"):
        SimCluster(2, engine="processes")
