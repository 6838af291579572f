"""Eager, speculative and naive-delayed DiLoCo, and eager overlap on Streaming DiLoCo fragments:
slow per-worker references written from the spec, the one-worker reductions, the closed form,
overlap, resume."""

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


def run_farsync(name, workers, steps, H, outer=OUTER, compress=None, **options):
    def fn(comm):
        model = net()
        algo = get_algorithm(name)(model, torch.optim.SGD(model.parameters(), lr=0.05), comm, sync_every=H, outer=outer,
                                   compress=compress, options=options)
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


def run_reference(variant, workers, steps, H, comp=None, outer_fn=None):
    """The three variants written out per worker with explicit lists, no communicator. With a
    compressor `comp`, the average is of the decoded payloads (float32, rank order) and each
    worker's own term is its decoded payload (what the others received). Also returns each
    round's pseudo-gradients and averages."""
    outer_sgd_ = outer_fn or outer_sgd
    models = [net() for _ in range(workers)]
    inner = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    thetas = [list(m.parameters()) for m in models]
    phis = [[nn.Parameter(p.detach().clone(), requires_grad=False) for p in thetas[0]] for _ in range(workers)]
    outers = [outer_sgd_(phi) for phi in phis]
    starts = [[p.detach().clone() for p in thetas[0]] for _ in range(workers)]
    flat = lambda ts: torch.cat([t.detach().reshape(-1) for t in ts])  # noqa: E731
    prev_mean, prev_own = None, [None] * workers
    history = []  # per round: (deltas, mean)
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
        owns = deltas if comp is None else [comp.decode(comp.encode(d, {})[0]).to(d.dtype) for d in deltas]
        if comp is None:
            mean = deltas[0].clone()
            for d in deltas[1:]:
                mean += d
            mean /= workers
        else:
            acc = torch.zeros(deltas[0].shape, dtype=torch.float32)
            for d in deltas:
                acc += comp.decode(comp.encode(d, {})[0])
            mean = (acc / workers).to(deltas[0].dtype)
        history.append((deltas, mean))
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
                    copy_opt = outer_sgd_(copy_phi)
                    copy_opt.load_state_dict(copy.deepcopy(outers[r].state_dict()))  # load_state_dict shares tensors
                    apply(copy_opt, copy_phi, proxy)
                    starts[r] = [g.detach().clone() for g in copy_phi]
            with torch.no_grad():
                for p, s_ in zip(thetas[r], starts[r]):
                    p.copy_(s_)
        prev_mean, prev_own = mean, owns
    return ([[p.detach().clone() for p in th] for th in thetas], starts, [[g.detach().clone() for g in phi] for phi in phis],
            history)


@pytest.mark.parametrize("name,options,variant", [("speculative-diloco", {}, "tentative"),
                                                  ("eager-diloco", {}, "committed"),
                                                  ("delayed-diloco", {}, "delayed")])
def test_matches_the_slow_reference(name, options, variant):
    workers, steps, H = 3, 40, 5
    got = run_farsync(name, workers, steps, H, **options)
    thetas, starts, phis, _ = run_reference(variant, workers, steps, H)
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


@pytest.mark.parametrize("name", ["speculative-diloco", "eager-diloco"])
def test_eager_with_one_worker_is_diloco(name):
    inner = {"name": "adamw", "lr": 0.05}
    (eager,), _ = train_sim(name, 1, 30, inner, outer=OUTER, sync_every=5)
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


# ---------------------------------------------------------------- eager as the paper (issue 20)
def test_eager_with_a_compressor_corrects_with_the_own_term_as_the_others_received_it():
    """int8 (nearest rounding, stateless): the average is of decoded payloads and the proxy
    subtracts this worker's decoded payload, so it is built from exactly what was averaged."""
    from farsync.compress import IntQuant

    workers, steps, H = 3, 30, 5
    got = run_farsync("eager-diloco", workers, steps, H, compress={"name": "int8"})
    thetas, starts, phis, _ = run_reference("committed", workers, steps, H, comp=IntQuant(8))
    for r, (local, _, glob) in enumerate(got):
        for a, b in zip(glob, phis[r]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    # subtracting the uncompressed own term instead is measurably different
    _, _, wrong, _ = run_reference("committed", workers, steps, H, comp=None)
    assert max(float((a - b).abs().max()) for a, b in zip(got[0][2], wrong[0])) > 1e-6


def test_eager_with_outer_sgd_is_the_closed_form_every_contribution_exactly_once():
    """phi_m(t) = phi(0) - lr [sum_{s<t} mean(s) + Delta_m(t) / M] with outer SGD without momentum."""
    workers, steps, H, lr = 3, 30, 5, 0.7
    plain = {"name": "sgd", "lr": lr}
    got = run_farsync("eager-diloco", workers, steps, H, outer=plain)
    _, _, _, history = run_reference("committed", workers, steps, H,
                                     outer_fn=lambda params: torch.optim.SGD(params, lr=lr))
    phi0 = torch.cat([p.detach().reshape(-1) for p in net().parameters()])
    T = len(history)
    for r, (_, _, glob) in enumerate(got):
        closed = phi0 - lr * (sum(mean for _, mean in history[: T - 1]) + history[-1][0][r] / workers)
        torch.testing.assert_close(torch.cat([g.reshape(-1) for g in glob]), closed, rtol=1e-10, atol=1e-12)


def test_eager_refuses_compressors_without_a_per_worker_term():
    for compress, message in (({"name": "powersgd"}, "powersgd has no per-worker term|does not support compress: powersgd"),
                              ({"name": "topk", "error_feedback": "ef21"}, "averages a global estimate")):
        for algo in ({"name": "eager-diloco"}, {"name": "streaming-diloco", "overlap": "eager"}):
            with pytest.raises(farsync.ConfigError, match=message):
                farsync.load_config({**TINY, "algorithm": {**TINY["algorithm"], **algo, "compress": compress}})


# ---------------------------------------------------------------- eager on Streaming DiLoCo fragments
def run_streaming(workers, steps, H, fragments, overlap, compress=None):
    def fn(comm):
        model = net()
        algo = get_algorithm("streaming-diloco")(model, torch.optim.SGD(model.parameters(), lr=0.05), comm, sync_every=H,
                                                 outer=OUTER, compress=compress, fragments=fragments,
                                                 fragment_rule="contiguous", overlap=overlap)
        for _ in range(steps):
            loss_fn(model, comm.rank).backward()
            algo.step()
            algo.zero_grad()
        return [p.detach().clone() for p in model.parameters()], [g.detach().clone() for g in algo.global_params]

    cluster = SimCluster(workers)
    return cluster.run(fn), cluster


def streaming_eager_reference(workers, steps, H, fragments, lag):
    """The spec's per-fragment eager rule, per worker, explicit lists: each worker its own phi_f
    and outer optimizer per fragment; fragment f's average arrives `lag` of its rounds later."""
    from farsync.algorithms.fragments import split_into_fragments

    models = [net() for _ in range(workers)]
    inner = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    thetas = [list(m.parameters()) for m in models]
    frags = split_into_fragments(models[0], thetas[0], fragments, "contiguous")
    phis = [[nn.Parameter(p.detach().clone(), requires_grad=False) for p in thetas[0]] for _ in range(workers)]
    outers = [[outer_sgd([phi[i] for i in f]) for f in frags] for phi in phis]
    queues = [[] for _ in frags]  # per fragment: (mean, [delta_m]) of rounds in flight
    flat = lambda ts: torch.cat([t.detach().reshape(-1) for t in ts])  # noqa: E731
    S = H // fragments
    for t in range(1, steps + 1):
        for r in range(workers):
            loss_fn(models[r], r).backward()
            inner[r].step()
            inner[r].zero_grad()
        if t % S:
            continue
        f = (t // S - 1) % fragments
        idx = frags[f]
        deltas = [flat([phis[r][i] for i in idx]) - flat([thetas[r][i] for i in idx]) for r in range(workers)]
        old = queues[f].pop(0) if len(queues[f]) == lag else None
        mean = sum(deltas[1:], deltas[0].clone()) / workers
        queues[f].append((mean, deltas))
        for r in range(workers):
            # own fresh term + the others' terms of `lag` rounds ago, each once
            others = sum((old[1][q] for q in range(workers) if q != r), torch.zeros_like(mean)) if old else torch.zeros_like(mean)
            apply(outers[r][f], [phis[r][i] for i in idx], (deltas[r] + others) / workers)
            with torch.no_grad():
                for i in idx:
                    thetas[r][i].copy_(phis[r][i])
    return [[p.detach().clone() for p in th] for th in thetas], [[g.detach().clone() for g in phi] for phi in phis]


@pytest.mark.parametrize("overlap,lag", [("eager", 1), ("eager-2", 2)])
def test_streaming_eager_matches_the_per_fragment_reference(overlap, lag):
    workers, steps, H, F = 3, 48, 8, 2
    got, _ = run_streaming(workers, steps, H, F, overlap)
    thetas, phis = streaming_eager_reference(workers, steps, H, F, lag)
    for r, (local, glob) in enumerate(got):
        for a, b in zip(local, thetas[r]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
        for a, b in zip(glob, phis[r]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert not torch.equal(got[0][1][0], got[1][1][0])  # each worker keeps its own phi_f


def test_streaming_eager_with_one_fragment_is_eager_diloco_and_with_one_worker_diloco():
    (a, b, c), _ = run_streaming(3, 30, 5, 1, "eager")
    eager = run_farsync("eager-diloco", 3, 30, 5)
    for (local, glob), (e_local, _, e_glob) in zip((a, b, c), eager):
        assert all(torch.equal(x, y) for x, y in zip(glob, e_glob)) and all(torch.equal(x, y) for x, y in zip(local, e_local))
    (one,), _ = run_streaming(1, 32, 8, 2, "eager")
    (plain,), _ = run_streaming(1, 32, 8, 2, "tau")  # tau = 0, alpha = 0: the fragment is applied at once
    assert all(torch.equal(x, y) for x, y in zip(one[1], plain[1]))


def test_streaming_eager_options_are_validated():
    base = {**TINY, "algorithm": {**TINY["algorithm"], "name": "streaming-diloco", "fragments": 2}}
    for bad, message in (({"overlap": "eager", "delay": 1}, "delay and alpha apply to overlap: tau only"),
                         ({"overlap": "eager", "alpha": 0.5}, "delay and alpha apply to overlap: tau only"),
                         ({"overlap": "full"}, "overlap"),
                         ({"delay": 3}, "overlap: eager overlaps a whole round")):
        with pytest.raises(farsync.ConfigError, match=message):
            farsync.load_config({**base, "algorithm": {**base["algorithm"], **bad}})


@pytest.mark.parametrize("overlap", ["eager", "eager-2"])
def test_streaming_eager_never_blocks_once_a_fragment_fits_in_a_round(tmp_path, overlap):
    """One fragment's all-reduce (~2.5 s / F) fits in a round of that fragment (H = 6 s): eager
    overlap hides it entirely, and at most one fragment's bytes are in flight (per worker)."""
    cfg = overlap_cfg("streaming-diloco")
    cfg["algorithm"] = {**cfg["algorithm"], "fragments": 3, "overlap": overlap}
    run = farsync.run(cfg, out=tmp_path / "eager", progress=False)
    tau = farsync.run({**cfg, "algorithm": {**cfg["algorithm"], "overlap": "tau"}}, out=tmp_path / "tau", progress=False)
    assert run.summary["blocked_time_s_per_worker"] == [0.0] * 3 and run.summary["compute_utilization"] == 1.0
    assert min(tau.summary["blocked_time_s_per_worker"]) > 0 and run.summary["sim_time_s"] == 24.0 < tau.summary["sim_time_s"]
    assert run.summary["bytes_sent_total"] == tau.summary["bytes_sent_total"]
    assert run.summary["peak_bytes_per_sync"] == tau.summary["peak_bytes_per_sync"]  # one fragment per message
    assert run.summary["peak_bytes_in_flight"] == 3 * run.summary["peak_bytes_per_sync"]  # 3 workers, one fragment each


@pytest.mark.parametrize("overlap", ["eager", "eager-2"])
def test_streaming_eager_crash_and_resume_with_all_reduces_in_flight(tmp_path, monkeypatch, overlap):
    cfg = {**TINY, "algorithm": {**TINY["algorithm"], "name": "streaming-diloco", "fragments": 3, "overlap": overlap,
                                 "compress": {"name": "int4", "error_feedback": "ef"}},
           "train": {**TINY["train"], "log_every": 3, "checkpoint_every": 9}}  # fragments' all-reduces in flight at step 9
    assert_crash_and_resume_reproduce(cfg, tmp_path, monkeypatch, "1:14")
