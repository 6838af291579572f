"""Eager and naive-delayed DiLoCo: slow references, the one-worker reduction, overlap, resume."""

import copy

import pytest
import torch
from torch import nn

import farsync
from conftest import assert_crash_and_resume_reproduce, train_sim
from farsync.algorithms import get_algorithm
from farsync.comm import SimCluster
from test_streaming import TINY, loss_fn, net

OUTER = {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}


def run_farsync(name, workers, steps, H, **options):
    def fn(comm):
        model = net()
        algo = get_algorithm(name)(model, torch.optim.SGD(model.parameters(), lr=0.05), comm, sync_every=H, outer=OUTER,
                                   options=options)
        for _ in range(steps):
            loss_fn(model, comm.rank).backward()
            algo.step()
            algo.zero_grad()
        with algo.eval_params() as m:
            ev = [p.detach().clone() for p in m.parameters()]
        return [p.detach().clone() for p in model.parameters()], ev, [g.detach().clone() for g in algo.global_params]

    return SimCluster(workers).run(fn)


def outer_sgd(params):
    return torch.optim.SGD(params, lr=0.7, momentum=0.9, nesterov=True)


def apply(opt, params, grad):
    off = 0
    for g in params:
        g.grad = grad[off : off + g.numel()].view_as(g).clone()
        off += g.numel()
    opt.step()


def run_reference(variant, workers, steps, H):
    """The three variants written out per worker with explicit lists, no communicator."""
    models = [net() for _ in range(workers)]
    inner = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    thetas = [list(m.parameters()) for m in models]
    phis = [[nn.Parameter(p.detach().clone(), requires_grad=False) for p in thetas[0]] for _ in range(workers)]
    outers = [outer_sgd(phi) for phi in phis]
    starts = [[p.detach().clone() for p in thetas[0]] for _ in range(workers)]
    flat = lambda ts: torch.cat([t.detach().reshape(-1) for t in ts])  # noqa: E731
    prev_mean, prev_own = None, [None] * workers
    for t in range(1, steps + 1):
        for r in range(workers):
            loss_fn(models[r], r).backward()
            inner[r].step()
            inner[r].zero_grad()
        if t % H:
            continue
        if variant == "tentative" and prev_mean is not None:
            for r in range(workers):  # the real step with last round's true average comes first
                apply(outers[r], phis[r], prev_mean)
        ref = phis if variant == "tentative" else starts  # tentative: measured against the true phi
        deltas = [flat(ref[r]) - flat(thetas[r]) for r in range(workers)]
        mean = deltas[0].clone()
        for d in deltas[1:]:
            mean += d
        mean /= workers
        for r in range(workers):
            others = workers * prev_mean - prev_own[r] if prev_mean is not None else torch.zeros_like(mean)
            proxy = (deltas[r] + others) / workers  # own fresh delta / M + the others' previous ones / M
            if variant == "committed":
                apply(outers[r], phis[r], proxy)
                starts[r] = [g.detach().clone() for g in phis[r]]
            else:
                if variant == "delayed" and prev_mean is not None:  # the real step with last round's average
                    apply(outers[r], phis[r], prev_mean)
                if variant == "delayed":
                    starts[r] = [g.detach().clone() for g in phis[r]]
                else:  # tentative: a step with the proxy on a copy decides the next start point
                    copy_phi = [nn.Parameter(g.detach().clone(), requires_grad=False) for g in phis[r]]
                    copy_opt = outer_sgd(copy_phi)
                    copy_opt.load_state_dict(copy.deepcopy(outers[r].state_dict()))  # load_state_dict shares tensors
                    apply(copy_opt, copy_phi, proxy)
                    starts[r] = [g.detach().clone() for g in copy_phi]
            with torch.no_grad():
                for p, s_ in zip(thetas[r], starts[r]):
                    p.copy_(s_)
        prev_mean, prev_own = mean, deltas
    return [[p.detach().clone() for p in th] for th in thetas], starts, [[g.detach().clone() for g in phi] for phi in phis]


@pytest.mark.parametrize("name,options,variant", [("eager-diloco", {}, "tentative"),
                                                  ("eager-diloco", {"proxy_step": "committed"}, "committed"),
                                                  ("delayed-diloco", {}, "delayed")])
def test_matches_the_slow_reference(name, options, variant):
    workers, steps, H = 3, 40, 5
    got = run_farsync(name, workers, steps, H, **options)
    thetas, starts, phis = run_reference(variant, workers, steps, H)
    for r, (local, ev, glob) in enumerate(got):
        for a, b in zip(local, thetas[r]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(ev, starts[r]):  # evaluation point: the start point of the next round
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(glob, phis[r]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    same_phi = all(torch.equal(got[0][2][0], g[2][0]) for g in got)
    same_start = all(torch.equal(got[0][1][0], g[1][0]) for g in got)
    # eager: each worker starts from its own estimate; tentative keeps one true phi, committed does not
    assert same_phi == (variant != "committed") and same_start == (variant == "delayed")


@pytest.mark.parametrize("proxy_step", ["tentative", "committed"])
def test_eager_with_one_worker_is_diloco(proxy_step):
    inner = {"name": "adamw", "lr": 0.05}
    (eager,), _ = train_sim("eager-diloco", 1, 30, inner, outer=OUTER, sync_every=5, options={"proxy_step": proxy_step})
    (dil,), _ = train_sim("diloco", 1, 30, inner, outer=OUTER, sync_every=5)
    assert all(torch.equal(a, b) for a, b in zip(eager[1], dil[1]))  # the proxy is Delta(t) itself
    assert all(torch.equal(a, b) for a, b in zip(eager[0], dil[0]))


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
