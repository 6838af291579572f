"""Eager and naive-delayed DiLoCo: slow references, the one-worker reduction, overlap, resume."""

import pytest
import torch
from torch import nn

import farsync
from conftest import assert_crash_and_resume_reproduce, train_sim
from farsync.algorithms import get_algorithm
from farsync.comm import SimCluster
from test_streaming import TINY, loss_fn, net

OUTER = {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}


def run_farsync(name, workers, steps, H):
    def fn(comm):
        model = net()
        algo = get_algorithm(name)(model, torch.optim.SGD(model.parameters(), lr=0.05), comm, sync_every=H, outer=OUTER)
        for _ in range(steps):
            loss_fn(model, comm.rank).backward()
            algo.step()
            algo.zero_grad()
        with algo.eval_params() as m:
            glob = [p.detach().clone() for p in m.parameters()]
        return [p.detach().clone() for p in model.parameters()], glob

    return SimCluster(workers).run(fn)


def run_reference(eager, workers, steps, H):
    """Both variants written out per worker with explicit lists, no communicator."""
    models = [net() for _ in range(workers)]
    inner = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    thetas = [list(m.parameters()) for m in models]
    phis = [[nn.Parameter(p.detach().clone(), requires_grad=False) for p in thetas[0]] for _ in range(workers)]
    outers = [torch.optim.SGD(phi, lr=0.7, momentum=0.9, nesterov=True) for phi in phis]
    flat = lambda ts: torch.cat([t.detach().reshape(-1) for t in ts])  # noqa: E731
    prev_mean, prev_own = None, [None] * workers
    for t in range(1, steps + 1):
        for r in range(workers):
            loss_fn(models[r], r).backward()
            inner[r].step()
            inner[r].zero_grad()
        if t % H:
            continue
        deltas = [flat(phis[r]) - flat(thetas[r]) for r in range(workers)]
        mean = deltas[0].clone()
        for d in deltas[1:]:
            mean += d
        mean /= workers
        for r in range(workers):
            if eager:  # own fresh delta / M + the others' previous ones / M
                others = workers * prev_mean - prev_own[r] if prev_mean is not None else torch.zeros_like(mean)
                grad = (deltas[r] + others) / workers
            else:
                grad = prev_mean
            if grad is not None:
                off = 0
                for g in phis[r]:
                    g.grad = grad[off : off + g.numel()].view_as(g).clone()
                    off += g.numel()
                outers[r].step()
            with torch.no_grad():
                for p, g in zip(thetas[r], phis[r]):
                    p.copy_(g)
        prev_mean, prev_own = mean, deltas
    return [[p.detach().clone() for p in th] for th in thetas], [[g.detach().clone() for g in phi] for phi in phis]


@pytest.mark.parametrize("name", ["eager-diloco", "delayed-diloco"])
def test_matches_the_slow_reference(name):
    workers, steps, H = 3, 40, 5
    got = run_farsync(name, workers, steps, H)
    thetas, phis = run_reference(name == "eager-diloco", workers, steps, H)
    for r, (local, glob) in enumerate(got):
        for a, b in zip(local, thetas[r]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(glob, phis[r]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if name == "eager-diloco":  # each worker's phi carries its own latest delta: they differ
        assert not torch.equal(got[0][1][0], got[1][1][0])
    else:
        assert all(torch.equal(got[0][1][0], g[1][0]) for g in got)


def test_eager_with_one_worker_is_diloco():
    inner = {"name": "adamw", "lr": 0.05}
    (eager,), _ = train_sim("eager-diloco", 1, 30, inner, outer=OUTER, sync_every=5)
    (dil,), _ = train_sim("diloco", 1, 30, inner, outer=OUTER, sync_every=5)
    moved = max((a - b).abs().max().item() for a, b in zip(dil[1], eager[1]))
    for a, b in zip(eager[1], dil[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # float32: mean(t-1) + (D(t) - D(t-1)) vs D(t)
    assert moved < 1e-5


def test_delayed_with_one_worker_is_diloco_with_a_one_round_delayed_outer_step():
    """delayed-diloco == DiLoCo whose outer step at round t uses round t-1's pseudo-gradient."""
    workers, steps, H = 1, 30, 5
    (got,) = run_farsync("delayed-diloco", workers, steps, H)
    model = net()
    inner = torch.optim.SGD(model.parameters(), lr=0.05)
    theta = list(model.parameters())
    phi = [nn.Parameter(p.detach().clone(), requires_grad=False) for p in theta]
    outer = torch.optim.SGD(phi, lr=0.7, momentum=0.9, nesterov=True)
    waiting = None
    for t in range(1, steps + 1):
        loss_fn(model, 0).backward()
        inner.step()
        inner.zero_grad()
        if t % H == 0:
            fresh = [(g - p).detach().clone() for g, p in zip(phi, theta)]
            if waiting is not None:
                for g, d in zip(phi, waiting):
                    g.grad = d
                outer.step()
            waiting = fresh
            with torch.no_grad():
                for p, g in zip(theta, phi):
                    p.copy_(g)
    for a, b in zip(got[1], phi):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)


def overlap_cfg(name):
    cfg = {**TINY, "algorithm": {**TINY["algorithm"], "name": name}}
    # 1 s per inner step; one all-reduce of the ~16k-parameter GPT takes about 2.5 s at 100 kbit/s.
    return {**cfg, "cluster": {"workers": 3, "step_time": "1s", "bandwidth": "100kbps", "latency": "0s"}}


def test_the_all_reduce_hides_behind_the_next_inner_phase(tmp_path):
    runs = {n: farsync.run(overlap_cfg(n), out=tmp_path / n, progress=False).summary for n in ("diloco", "eager-diloco", "delayed-diloco")}
    d, e, n = runs["diloco"], runs["eager-diloco"], runs["delayed-diloco"]
    assert min(d["blocked_time_s_per_worker"]) > 0  # DiLoCo waits for every all-reduce
    assert e["blocked_time_s_per_worker"] == n["blocked_time_s_per_worker"] == [0.0] * 3  # < H steps to hide
    assert e["sim_time_s"] == n["sim_time_s"] == 24.0 < d["sim_time_s"]  # 24 steps of 1 s, nothing exposed
    assert e["bytes_sent_total"] == n["bytes_sent_total"] == d["bytes_sent_total"]
    assert e["compute_utilization"] == 1.0 > d["compute_utilization"]


@pytest.mark.parametrize("name", ["eager-diloco", "delayed-diloco"])
def test_crash_and_resume_reproduce_the_uninterrupted_run(tmp_path, monkeypatch, name):
    cfg = {**TINY, "algorithm": {**TINY["algorithm"], "name": name, "compress": {"name": "int8", "error_feedback": "ef"}},
           "train": {**TINY["train"], "log_every": 3, "checkpoint_every": 9}}  # a checkpoint in mid-round, all-reduce in flight
    assert_crash_and_resume_reproduce(cfg, tmp_path, monkeypatch, "1:14")
