"""Async Local-SGD: delayed Nesterov, DyLU, any-source receive order, budget, determinism, reductions."""

import pytest
import torch

import farsync
from conftest import without_wall_time
from farsync.algorithms import get_algorithm
from farsync.algorithms.delayed_nesterov import DelayedNesterov
from farsync.comm import NetworkModel, SimCluster, TimeModel
from farsync.config import ConfigError

TINY = {
    "name": "tiny", "seed": 1,
    "task": {"name": "shakespeare-gpt", "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8},
    "cluster": {"workers": 3, "step_time": "1s", "speeds": [1, 2, 4]},
    "algorithm": {"name": "async-local-sgd", "sync_every": 8, "inner": {"name": "adamw", "lr": 0.003}},
    "train": {"steps": 30, "batch_size": 4, "eval_every": 15, "log_every": 5},
}


def with_(section, **kv):
    return {**TINY, section: {**TINY[section], **kv}}


@pytest.mark.parametrize("n", [1, 3, 4])
def test_delayed_nesterov_over_n_identical_arrivals_is_one_nesterov_step_on_their_mean(n):
    torch.manual_seed(0)
    p0 = torch.randn(5, 3, dtype=torch.float64)
    dn_p = p0.clone().requires_grad_()
    ref_p = p0.clone().requires_grad_()
    dn = DelayedNesterov([dn_p], lr=0.7, momentum=0.9, period=n)
    ref = torch.optim.SGD([ref_p], lr=0.7, momentum=0.9, nesterov=True)
    for _ in range(4):  # four periods, a different pseudo-gradient each
        g = torch.randn(5, 3, dtype=torch.float64)
        for _ in range(n):
            dn_p.grad = g.clone()
            dn.step()
        ref_p.grad = g.clone()
        ref.step()
        torch.testing.assert_close(dn_p, ref_p, rtol=1e-13, atol=1e-13)
    assert dn.state[dn_p]["arrivals"] == 4 * n
    torch.testing.assert_close(dn.state[dn_p]["momentum_buffer"], ref.state[ref_p]["momentum_buffer"], rtol=1e-13, atol=1e-13)


def test_delayed_nesterov_steps_plainly_between_momentum_updates():
    p = torch.zeros(2, requires_grad=True)
    dn = DelayedNesterov([p], lr=1.0, momentum=0.5, period=2)
    p.grad = torch.tensor([2.0, 4.0])
    dn.step()  # arrival 1 of 2: p -= g / N, momentum untouched
    assert p.tolist() == [-1.0, -2.0] and dn.state[p]["momentum_buffer"].tolist() == [0.0, 0.0]
    p.grad = torch.tensor([2.0, 0.0])
    dn.step()  # arrival 2: m = B / N = [2, 2]; p -= g / N + beta m = [1, 0] + [1, 1]
    assert p.tolist() == [-3.0, -3.0] and dn.state[p]["momentum_buffer"].tolist() == [2.0, 2.0]
    state = dn.state_dict()
    fresh = DelayedNesterov([torch.zeros(2, requires_grad=True)], lr=1.0, momentum=0.5, period=2)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["state"][0]["arrivals"] == 2


@pytest.mark.parametrize("kwargs,msg", [({"lr": 0}, "lr must be > 0"), ({"momentum": 1.0}, "momentum must be in [0, 1)"),
                                        ({"period": 0}, "period must be an integer >= 1")])
def test_delayed_nesterov_rejects_bad_hyperparameters(kwargs, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace(")", r"\)")):
        DelayedNesterov([torch.zeros(1, requires_grad=True)], **kwargs)


def test_recv_any_takes_messages_in_virtual_send_order():
    """Rank r computes for the given number of steps before sending: arrivals follow the clocks,
    not the ranks or the threads' order; equal send times go to the lower rank first."""
    work = {1: 3, 2: 1, 3: 2, 4: 1}

    def fn(comm):
        if comm.rank == 0:
            got = []
            for _ in range(2 * len(work)):
                t = torch.zeros(1)
                src = comm.recv_any(t)
                got.append((src, t.item()))
            return got
        for k in range(2):
            comm.compute(work[comm.rank])
            comm.send(torch.tensor([10.0 * comm.rank + k]), 0)

    free = NetworkModel(bandwidth_bps=float("inf"), latency_s=0.0)  # a send takes no time
    got = SimCluster(5, free, TimeModel(step_time_s=1.0)).run(fn)[0]
    # send times (rank): 1 (2), 1 (4), 2 (2), 2 (3), 2 (4), 3 (1), 4 (3), 6 (1)
    assert [src for src, _ in got] == [2, 4, 2, 3, 4, 1, 3, 1]
    assert all(v == 10 * s + k for (s, v), k in zip(got, [0, 0, 1, 0, 1, 0, 1, 1]))


def test_dylu_round_lengths_scale_with_measured_speed():
    def fn(comm):
        model = torch.nn.Linear(2, 1)
        algo = get_algorithm("async-local-sgd")(model, torch.optim.SGD(model.parameters(), lr=0.1), comm, sync_every=8)
        if comm.rank == 0:
            before = [algo.round_length(w) for w in (1, 2, 3)]
            algo.step_time = {1: 0.5, 2: 1.0, 3: 2.0}
            after = [algo.round_length(w) for w in (1, 2, 3)]
            algo.step_time[3] = 1.6  # 8 * 0.5 / 1.6 = 2.5 -> 2
            return before, after, algo.round_length(3)

    before, after, slow = SimCluster(4).run(fn)[0]
    assert before == [8, 8, 8]  # nothing measured yet: H
    assert after == [8, 4, 2] and slow == 2


def test_dylu_off_keeps_h_for_everyone():
    def fn(comm):
        model = torch.nn.Linear(2, 1)
        algo = get_algorithm("async-local-sgd")(model, torch.optim.SGD(model.parameters(), lr=0.1), comm, sync_every=8,
                                                options={"dylu": False})
        if comm.rank == 0:
            algo.step_time = {1: 0.5, 2: 1.0, 3: 2.0}
            return [algo.round_length(w) for w in (1, 2, 3)]

    assert SimCluster(4).run(fn)[0] == [8, 8, 8]


def test_run_spends_the_token_budget_and_dylu_balances_the_workers(tmp_path):
    r = farsync.run(TINY, out=tmp_path / "a", progress=False)
    s = r.summary
    assert s["status"] == "completed" and s["steps"] == 30
    assert s["tokens"] == 30 * 3 * 4 * 16  # steps x workers x batch x block: a synchronous run's tokens
    server, *workers = s["compute_time_s_per_worker"]
    assert server == 0.0
    steps = [c / v for c, v in zip(workers, [1, 2, 4])]  # 1 s per step x speed factor
    assert sum(steps) == 90
    # every worker computes until about the end; the slowest ends within one of its (short) rounds
    assert max(workers) - min(workers) <= 8
    assert s["compute_utilization"] > 0.9
    assert [m["step"] for m in r.metrics][-1] == 30 and "eval_loss" in r.metrics[-1]
    assert all(m["updates"] > 0 for m in r.metrics)


def test_async_runs_are_deterministic(tmp_path):
    cfg = with_("cluster", stragglers=[{"rank": 0, "factor": 3.0, "start": "5s", "end": "20s"}])
    a = farsync.run(cfg, out=tmp_path / "a", progress=False)
    b = farsync.run(cfg, out=tmp_path / "b", progress=False)
    assert without_wall_time(a.metrics) == without_wall_time(b.metrics)
    ma, mb = (torch.load(x.run_dir / "model.pt", weights_only=True) for x in (a, b))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    c = farsync.run(TINY, out=tmp_path / "c", progress=False)  # the straggler changes the arrival order
    assert without_wall_time(c.metrics) != without_wall_time(a.metrics)


def test_one_worker_is_diloco_with_one_worker(tmp_path):
    """One worker: the server applies Nesterov (N = 1) to each round's pseudo-gradient - DiLoCo."""
    one = {"cluster": {"workers": 1, "step_time": "1s"}, "train": {**TINY["train"], "steps": 32, "eval_every": 16, "log_every": 8}}
    a = farsync.run({**TINY, **one}, out=tmp_path / "a", progress=False)
    d = farsync.run({**TINY, **one, "algorithm": {**TINY["algorithm"], "name": "diloco"}}, out=tmp_path / "d", progress=False)
    ma, md = (torch.load(x.run_dir / "model.pt", weights_only=True) for x in (a, d))
    assert all(torch.equal(ma[k], md[k]) for k in ma)  # DN with N = 1 does torch SGD's arithmetic
    ea = [m["eval_loss"] for m in a.metrics if "eval_loss" in m]
    assert ea == [m["eval_loss"] for m in d.metrics if "eval_loss" in m] and len(ea) == 2
    assert [m["train_loss"] for m in a.metrics] == [m["train_loss"] for m in d.metrics]


def test_bad_async_configs_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="cannot be checkpointed"):
        farsync.run(with_("train", checkpoint_every=10), out=tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="sends pseudo-gradients uncompressed"):
        farsync.run(with_("algorithm", compress={"name": "int8"}), out=tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="period"):
        farsync.run(with_("algorithm", period=0), out=tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists()


def test_wrap_refuses_a_server_based_algorithm():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="runs a parameter server and its own loop"):
        farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "async-local-sgd", comm=object())
