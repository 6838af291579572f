"""CO2 (Sun et al., arXiv 2401.16265): a plain per-worker reference written from the rule (lists and
loops, no farsync), the reductions (delayed-diloco without penalty and clipping, clipping that never
binds, the penalty as an outer-lr rescale, one worker = SGD on one-step-stale gradients), the
overlap, convergence and the refused options."""

import pytest
import torch

import farsync
from farsync.algorithms import get_algorithm
from farsync.algorithms.options import validate_options
from farsync.comm import SimCluster
from test_eager import overlap_cfg
from test_streaming import loss_fn, net

INNER_LR = 0.05


def run_farsync(name, workers, steps, H, outer, inner_lr=INNER_LR, **options):
    """Train `name` on `workers` simulated workers; per rank: (local params, eval params, outer momentum)."""
    def fn(comm):
        model = net()
        algo = get_algorithm(name)(model, torch.optim.SGD(model.parameters(), lr=inner_lr), comm, sync_every=H,
                                   outer=outer, options=options)
        for _ in range(steps):
            loss_fn(model, comm.rank).backward()
            algo.step()
            algo.zero_grad()
        with algo.eval_params() as m:
            ev = [p.detach().clone() for p in m.parameters()]
        bufs = [algo.outer_optimizer.state[g].get("momentum_buffer") for g in algo.global_params]
        return [p.detach().clone() for p in model.parameters()], ev, bufs

    return SimCluster(workers).run(fn)


def reference(workers, steps, H, lr, beta, nesterov, penalty, clip):
    """CO2 written out: every worker's parameters as a list of tensors, the all-reduce as a sum in
    rank order / M, the outer momentum as one list, the round-t average applied at the end of t+1."""
    models = [net() for _ in range(workers)]
    inner = [torch.optim.SGD(m.parameters(), lr=INNER_LR) for m in models]
    thetas = [list(m.parameters()) for m in models]
    x = [p.detach().clone() for p in thetas[0]]  # the global point every worker starts the round from
    m = None  # the outer momentum, one tensor per parameter
    in_flight = None  # mean(t-1): the average started at the end of the previous round
    for step in range(1, steps + 1):
        for r in range(workers):
            loss_fn(models[r], r).backward()
            inner[r].step()
            inner[r].zero_grad()
        if step % H:
            continue
        deltas = [[xj - p.detach() for xj, p in zip(x, thetas[r])] for r in range(workers)]
        mean = []
        for j in range(len(x)):
            s = deltas[0][j].clone()
            for r in range(1, workers):
                s = s + deltas[r][j]
            mean.append(s / workers)
        if in_flight is not None:
            g = [d / penalty for d in in_flight]
            m = [gj.clone() for gj in g] if m is None else [beta * mj + gj for mj, gj in zip(m, g)]
            if clip is not None:
                m = [mj.clamp(-clip, clip) for mj in m]
            x = [xj - lr * ((gj + beta * mj) if nesterov else mj) for xj, gj, mj in zip(x, g, m)]
        in_flight = mean
        with torch.no_grad():
            for r in range(workers):
                for p, xj in zip(thetas[r], x):
                    p.copy_(xj)
    return x, m


def sgd(lr, momentum, nesterov=False):
    return {"name": "sgd", "lr": lr, "momentum": momentum, "nesterov": nesterov}


@pytest.mark.parametrize("workers,nesterov,penalty,clip", [(3, False, 2.0, 0.004), (3, True, 1.5, 0.004),
                                                           (3, False, 1.0, None), (1, False, 3.0, 0.004)])
def test_matches_the_plain_reference(workers, nesterov, penalty, clip):
    steps, H, lr, beta = 40, 5, 0.8, 0.6
    got = run_farsync("co2", workers, steps, H, sgd(lr, beta, nesterov), gap_penalty=penalty,
                      clip=clip is not None, clip_threshold=clip or 1.0)
    x, m = reference(workers, steps, H, lr, beta, nesterov, penalty, clip)
    for local, ev, bufs in got:
        for a, b, c, d in zip(local, ev, x, m):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)  # the next round starts at x
            torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-14)  # evaluated there
        for a, b in zip(bufs, m):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if clip is not None:  # the clipping really bound somewhere
        assert any(bool((b.abs() == clip).any()) for b in got[0][2])


@pytest.mark.parametrize("nesterov", [False, True])
def test_without_penalty_and_clipping_it_is_delayed_diloco_bit_for_bit(nesterov):
    outer = sgd(0.7, 0.9, nesterov)
    co2 = run_farsync("co2", 3, 30, 5, outer, gap_penalty=1.0, clip=False)
    delayed = run_farsync("delayed-diloco", 3, 30, 5, outer)
    for (a_local, a_ev, a_buf), (b_local, b_ev, b_buf) in zip(co2, delayed):
        assert all(torch.equal(a, b) for a, b in zip(a_local + a_ev + a_buf, b_local + b_ev + b_buf))


@pytest.mark.parametrize("nesterov", [False, True])
def test_clipping_that_never_binds_is_the_unclipped_rule_bit_for_bit(nesterov):
    outer = sgd(0.9, 0.5, nesterov)
    clipped = run_farsync("co2", 3, 30, 5, outer, gap_penalty=2.0, clip=True, clip_threshold=1e9)
    plain = run_farsync("co2", 3, 30, 5, outer, gap_penalty=2.0, clip=False)
    for (a_local, _, a_buf), (b_local, _, b_buf) in zip(clipped, plain):
        assert all(torch.equal(a, b) for a, b in zip(a_local + a_buf, b_local + b_buf))


def test_a_power_of_two_penalty_is_the_outer_lr_divided_by_it_bit_for_bit():
    """m = beta m + mean / 2 is (beta m' + mean) / 2 exactly: lambda = 2 is alpha / 2, a constant rescale."""
    penalized = run_farsync("co2", 3, 30, 5, sgd(1.0, 0.5), gap_penalty=2.0)
    halved = run_farsync("co2", 3, 30, 5, sgd(0.5, 0.5), gap_penalty=1.0)
    for (a, _, _), (b, _, _) in zip(penalized, halved):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_one_worker_h1_is_sgd_on_one_step_stale_gradients():
    """M = 1, H = 1, outer SGD lr 1 without momentum, inner SGD lr gamma: x(t+1) = x(t) - gamma grad f(x(t-1))."""
    steps = 25
    ((local, _, _),) = run_farsync("co2", 1, steps, 1, sgd(1.0, 0.0))
    model = net()
    x = [p.detach().clone() for p in model.parameters()]
    stale = None
    for _ in range(steps):
        with torch.no_grad():
            for p, xj in zip(model.parameters(), x):
                p.copy_(xj)
        model.zero_grad()
        loss_fn(model, 0).backward()
        fresh = [p.grad.detach().clone() for p in model.parameters()]
        if stale is not None:
            x = [xj - INNER_LR * g for xj, g in zip(x, stale)]
        stale = fresh
    for a, b in zip(local, x):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_converges_near_diloco_where_the_naive_overlap_with_the_same_outer_does_not():
    """3 workers, H = 5, outer SGD lr 1 momentum 0.5 (the public code's defaults), 1,000 steps."""
    def mean_loss(params):
        model = net()
        with torch.no_grad():
            for p, v in zip(model.parameters(), params):
                p.copy_(v)
            return sum(float(loss_fn(model, r)) for r in range(3)) / 3

    start = mean_loss(list(net().parameters()))
    run = lambda name, **o: mean_loss(run_farsync(name, 3, 1000, 5, sgd(1.0, 0.5), inner_lr=0.1, **o)[0][1])  # noqa: E731
    co2, sync = run("co2", gap_penalty=1.5, clip=True, clip_threshold=0.05), run("diloco")
    naive = run("co2")  # gap_penalty 1, no clipping: delayed-diloco with this outer
    assert co2 < 0.45 * start and co2 < 1.1 * sync  # 0.518 vs DiLoCo's 0.498 (start 1.310)
    assert naive > start  # 1.41: the one-round-stale momentum step does not converge at this lr


def test_the_all_reduce_hides_behind_the_next_inner_phase(tmp_path):
    runs = {n: farsync.run(overlap_cfg(n), out=tmp_path / n, progress=False).summary for n in ("diloco", "co2")}
    d, c = runs["diloco"], runs["co2"]
    assert min(d["blocked_time_s_per_worker"]) > 0  # DiLoCo waits for every all-reduce
    assert c["blocked_time_s_per_worker"] == [0.0] * 3 and c["sim_time_s"] == 24.0 < d["sim_time_s"]
    assert c["bytes_sent_total"] == d["bytes_sent_total"] and c["compute_utilization"] == 1.0


@pytest.mark.parametrize("options,words", [
    ({"gap_penalty": 0.5}, "gap_penalty"),
    ({"gap_penalty": 0}, "gap_penalty"),
    ({"clip_threshold": 0.0}, "clip_threshold"),
    ({"clip_threshold": -1.0}, "clip_threshold"),
    ({"clip": True, "outer": {"name": "adamw", "lr": 0.1}}, "outer SGD with momentum"),
    ({"clip": True, "outer": {"momentum": 0.0}}, "outer.momentum > 0"),
    ({"clip": True, "outer": {"weight_decay": 0.1}}, "outer.weight_decay"),
    ({"outer": {"name": "sps"}}, "outer"),
    ({"sync_every": 0}, "sync_every"),
    ({"penalty": 2.0}, "unknown key 'penalty'"),
])
def test_bad_options_are_refused_before_training(options, words):
    with pytest.raises(ValueError, match=words):
        validate_options(get_algorithm("co2"), options)


def test_a_partial_outer_config_updates_co2s_default_and_clipping_a_callable_non_sgd_is_refused():
    opts = validate_options(get_algorithm("co2"), {"outer": {"lr": 0.4}})
    assert opts.outer == {"name": "sgd", "lr": 0.4, "momentum": 0.5, "nesterov": False}
    model = net()
    with pytest.raises(ValueError, match="torch.optim.SGD"):
        SimCluster(1).run(lambda comm: get_algorithm("co2")(
            model, torch.optim.SGD(model.parameters(), lr=0.1), comm, sync_every=2, clip=True,
            outer=lambda ps: torch.optim.Adam(ps, lr=0.1)))
