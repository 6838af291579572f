"""SPARTA (`farsync.algorithms.sparta`): a plain-loop reference, its reductions (one worker = the
inner optimizer, p = 1 = Local SGD with H = 1, p = 0 with DiLoCo = DiLoCo), the index rules, bytes,
resume with DiLoCo, convergence and refusals."""

import copy
import math
import os

import pytest
import torch

import farsync
from farsync.algorithms import get_algorithm
from farsync.algorithms.sparta import IndexStream, parts, random_k
from farsync.comm import SimCluster, wire_bytes

from conformance import model_digest, tiny_config, without_wall
from conftest import het_quadratic, train_sim

M64 = (1 << 64) - 1
SALT = {"random": 1, "bernoulli": 2, "shuffled-sequential": 3, "partitioned": 4}


# ---------------------------------------------------------------- the slow reference (no farsync)
def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def generator(seed, rule, t):
    """The shared stream of `rule` at step (or cycle) t: torch.Generator seeded by splitmix64 keys."""
    key = splitmix64((seed & M64) ^ SALT[rule])
    return torch.Generator().manual_seed(splitmix64(splitmix64(key) ^ t))


def reference_indices(seed, rule, p, d, t):
    """S_t as a Python set, written from the rule's description."""
    m = max(1, min(math.ceil(round(1 / p, 9)), d))
    if rule == "random":
        k = max(1, int(p * d + 0.5))
        return set(torch.randperm(d, generator=generator(seed, rule, t))[:k].tolist())
    if rule == "bernoulli":
        u = torch.rand(d, generator=generator(seed, rule, t))
        return {i for i in range(d) if u[i].item() < p}
    if rule == "shuffled-sequential":
        perm = torch.randperm(d, generator=generator(seed, rule, 0)).tolist()
        sizes = [d // m + (1 if c < d % m else 0) for c in range(m)]
        c = t % m
        start = sum(sizes[:c])
        return set(perm[start:start + sizes[c]])
    perm = torch.randperm(d, generator=generator(seed, rule, t // m)).tolist()  # partitioned
    return {perm[j] for j in range(d) if j % m == t % m}


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def batch(rank, t):
    g = torch.Generator().manual_seed(1000 * rank + t)
    x = torch.randn(8, 5, generator=g)
    return x, torch.randn(8, 2, generator=g) + rank  # heterogeneous targets


def loss_of(model, b):
    x, y = b
    return (model(x) - y).pow(2).mean()


def reference_run(n, steps, p, rule, seed, lr=0.05):
    """n models, SGD each, then for every chosen flat entry: the mean over workers (sum in rank order, / n)."""
    models = [net() for _ in range(n)]
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m in models]
    d = sum(q.numel() for q in models[0].parameters())
    for t in range(steps):
        for r in range(n):
            loss_of(models[r], batch(r, t)).backward()
            opts[r].step()
            opts[r].zero_grad()
        flats = [[q.detach().view(-1) for q in m.parameters()] for m in models]
        for i in sorted(reference_indices(seed, rule, p, d, t)):
            j, off = 0, i
            while off >= flats[0][j].numel():
                off -= flats[0][j].numel()
                j += 1
            acc = flats[0][j][off].clone()
            for r in range(1, n):
                acc += flats[r][j][off]
            acc /= n
            for r in range(n):
                flats[r][j][off] = acc
    return [[q.detach().clone() for q in m.parameters()] for m in models]


def sparta_run(n, steps, options, lr=0.05, seed=7):
    def fn(comm):
        model = net()  # seeds torch with 0 (the same model on every worker)
        torch.manual_seed(seed)  # the run's seed, as the training loop leaves it
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        algo = get_algorithm("sparta")(model, opt, comm, options)
        for t in range(steps):
            loss_of(model, batch(comm.rank, t)).backward()
            algo.step()
            algo.zero_grad()
        return [q.detach().clone() for q in model.parameters()]

    cluster = SimCluster(n)
    return cluster.run(fn), cluster


@pytest.mark.parametrize("rule,p", [("random", 0.1), ("bernoulli", 0.2), ("shuffled-sequential", 0.15),
                                    ("partitioned", 0.3), ("random", 1.0)])
def test_equals_the_plain_loop_reference_exactly(rule, p):
    got, _ = sparta_run(3, 12, {"fraction": p, "index": rule})
    want = reference_run(3, 12, p, rule, seed=7)  # the run's seed reaches the algorithm as torch.initial_seed()
    for r in range(3):
        for a, b in zip(got[r], want[r]):
            assert torch.equal(a, b), (rule, r)
    assert not all(torch.equal(a, b) for a, b in zip(got[0], got[1])) or p == 1.0  # sparse: the workers differ


def test_index_seed_replaces_the_run_seed():
    got, _ = sparta_run(2, 6, {"fraction": 0.2, "index_seed": 3}, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(got[0], reference_run(2, 6, 0.2, "random", seed=3)[0]))
    other, _ = sparta_run(2, 6, {"fraction": 0.2}, seed=8)  # another run seed: other indices
    assert not all(torch.equal(a, b) for a, b in zip(other[0], sparta_run(2, 6, {"fraction": 0.2}, seed=7)[0][0]))


# ---------------------------------------------------------------- the index rules
@pytest.mark.parametrize("rule", ["shuffled-sequential", "partitioned"])
def test_cyclic_rules_visit_every_entry_once_per_cycle(rule):
    d, p = 103, 0.1
    s = IndexStream(rule, p, d, seed=5)
    m = parts(p, d)
    assert m == 10
    for cycle in range(3):
        seen = torch.cat([s(t) for t in range(cycle * m, (cycle + 1) * m)])
        assert sorted(seen.tolist()) == list(range(d))
        assert [s(t).numel() for t in range(m)] == [s.size(t) for t in range(m)] == [11, 11, 11] + [10] * 7
    first, second = s(0), s(m)  # the next cycle: the same chunk (sequential) or a fresh partition
    assert torch.equal(first, second) == (rule == "shuffled-sequential")


def test_rules_are_pure_functions_of_seed_and_step():
    for rule in ("random", "bernoulli", "shuffled-sequential", "partitioned"):
        a, b, c = IndexStream(rule, 0.05, 1000, 1), IndexStream(rule, 0.05, 1000, 1), IndexStream(rule, 0.05, 1000, 2)
        assert torch.equal(a(37), b(37)) and not torch.equal(a(37), c(37))
        idx = a(37)
        assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == idx.numel()
    assert random_k(0.005, 1000) == 5 and random_k(0.005, 10) == 1 and random_k(0.0, 10) == 0
    assert IndexStream("random", 0.005, 200_000, 0)(3).numel() == 1000


# ---------------------------------------------------------------- reductions
def test_one_worker_is_its_inner_optimizer_adamw():
    task = het_quadratic(1)
    inner = {"name": "adamw", "lr": 0.05, "weight_decay": 0.01}
    (res,), _ = train_sim("sparta", 1, 25, inner, task=task, options={"fraction": 0.5})
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    sampler = task.sampler(0, 2)
    for _ in range(25):
        task.loss(model, sampler.next_batch()).backward()
        opt.step()
        opt.zero_grad()
    for a, b in zip(res[0], model.parameters()):
        assert torch.equal(a, b.detach())


def _run(cfg, tmp_path, name):
    run = farsync.run(cfg, out=tmp_path / name, progress=False)
    assert run.status == "completed", run.status
    return run


def _same_runs(a, b, drop=()):
    strip = lambda ms: [{k: v for k, v in m.items() if k not in drop} for m in without_wall(ms)]  # noqa: E731
    assert strip(a.metrics) == strip(b.metrics)
    assert model_digest(a.run_dir) == model_digest(b.run_dir)
    for key in ("bytes_sent_per_worker", "sim_time_s"):
        assert a.summary[key] == b.summary[key], key


@pytest.mark.parametrize("rule", ["random", "bernoulli", "shuffled-sequential", "partitioned"])
def test_fraction_one_is_local_sgd_with_h1_bit_for_bit(rule, tmp_path):
    cfg = tiny_config("sparta")
    cfg["algorithm"].update({"fraction": 1.0, "index": rule})
    loc = tiny_config("local-sgd")
    loc["algorithm"]["sync_every"] = 1
    run = _run(cfg, tmp_path, "sparta")
    assert {m["consensus_error"] for m in run.metrics} == {0.0}
    _same_runs(run, _run(loc, tmp_path, "local"), drop=("consensus_error",))  # losses, bytes, simulated time, model


def test_fraction_zero_with_diloco_is_diloco_bit_for_bit(tmp_path):
    cfg = tiny_config("sparta")
    cfg["algorithm"].update({"fraction": 0.0, "diloco_every": 3, "outer": {"name": "sgd", "lr": 0.7, "momentum": 0.9,
                                                                               "nesterov": True}})
    _same_runs(_run(cfg, tmp_path, "sparta"), _run(tiny_config("diloco"), tmp_path, "diloco"))


# ---------------------------------------------------------------- bytes, resume with DiLoCo
def _declared(cfg):
    from farsync.runner import build_task

    c = farsync.load_config(cfg)
    torch.manual_seed(c.seed)
    model = build_task(c).build_model()
    calls = get_algorithm("sparta").declared_calls(model, c.train.steps, 0, c.algorithm.options(None))
    n = c.cluster.workers
    return None if calls is None else [sum(wire_bytes(k, b, n, r)[0] for k, b in calls) for r in range(n)]


@pytest.mark.parametrize("options", [{"fraction": 0.3, "index": "shuffled-sequential", "diloco_every": 4},
                                     {"fraction": 0.5, "index": "partitioned"}, {"fraction": 0.25}])
def test_bytes_sent_are_the_declared_calls(options, tmp_path):
    cfg = tiny_config("sparta")
    cfg["task"]["dim"] = 10
    cfg["algorithm"].update(options)
    run = _run(cfg, tmp_path, "bytes")
    assert run.summary["bytes_sent_per_worker"] == _declared(cfg)


def test_bernoulli_declares_nothing_and_sends_a_varying_count(tmp_path):
    cfg = tiny_config("sparta", log_every=1)
    cfg["task"]["dim"] = 50
    cfg["algorithm"].update({"fraction": 0.2, "index": "bernoulli"})
    assert _declared(cfg) is None
    run = _run(cfg, tmp_path, "b")
    sent = [m["bytes_sent"] for m in run.metrics if "bytes_sent" in m]
    steps = {b - a for a, b in zip([0] + sent, sent)}
    assert len(steps) > 1


def test_sparta_diloco_crash_and_resume_reproduce_the_run(tmp_path, monkeypatch):
    cfg = tiny_config("sparta", steps=12, checkpoint_every=6)
    cfg["algorithm"].update({"fraction": 0.5, "index": "partitioned", "diloco_every": 4})
    whole = _run(copy.deepcopy(cfg), tmp_path, "whole")
    monkeypatch.setenv("FARSYNC_FAULT", "1:8")
    crashed = farsync.run(copy.deepcopy(cfg), out=tmp_path / "crashed", progress=False)
    monkeypatch.delenv("FARSYNC_FAULT")
    assert crashed.status.startswith("failed: InjectedFault"), crashed.status
    resumed = farsync.run(resume=tmp_path / "crashed", progress=False)
    _same_runs(resumed, whole)
    assert os.path.isfile(resumed.run_dir / "model.pt")


# ---------------------------------------------------------------- convergence and evaluation
def test_converges_towards_ddp_and_averaging_more_keeps_the_workers_closer(tmp_path):
    def final(algo, **opts):
        cfg = tiny_config(algo, steps=200, log_every=50)
        cfg["cluster"]["workers"] = 4
        cfg["task"].update({"dim": 20, "zeta": 1.0, "sigma": 0.1})
        cfg["algorithm"].update(opts)
        run = _run(cfg, tmp_path, algo + str(opts.get("fraction", "")))
        return run.metrics[-1]["eval_loss"], run.metrics[-1].get("consensus_error"), run.metrics[0]["eval_loss"]

    ddp, _, start = final("ddp")
    dense, c_dense, _ = final("sparta", fraction=0.5)
    sparse, c_sparse, _ = final("sparta", fraction=0.05)
    assert dense < 0.05 * start and sparse < 0.1 * start  # both train
    assert dense <= 1.05 * ddp + 1e-6  # half the entries every step: as good as DDP here (within 5%)
    assert c_dense < c_sparse  # more averaging: the local models stay closer


def test_local_evaluation_is_rank_zeros_model(tmp_path):
    cfg = tiny_config("sparta")
    cfg["algorithm"].update({"fraction": 0.25, "evaluate": "local"})
    loc = _run(copy.deepcopy(cfg), tmp_path, "local")
    cfg["algorithm"]["evaluate"] = "average"
    avg = _run(cfg, tmp_path, "avg")
    assert [m.get("train_loss") for m in loc.metrics] == [m.get("train_loss") for m in avg.metrics]  # the same training
    assert loc.metrics[-1]["eval_loss"] != avg.metrics[-1]["eval_loss"]  # evaluated at another point


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("bad,match", [
    ({"fraction": 1.5}, "fraction"), ({"fraction": -0.1}, "fraction"),
    ({"fraction": 0.0}, "fraction 0 without diloco_every never communicates"),
    ({"diloco_every": -1}, "diloco_every"), ({"index": "top-k"}, "index"), ({"evaluate": "best"}, "evaluate"),
    ({"index_seed": -3}, "index_seed"),
    ({"compress": {"name": "int8"}}, "averages its k chosen entries exactly"),
])
def test_bad_options_are_refused_naming_them(bad, match):
    cfg = tiny_config("sparta")
    cfg["algorithm"].update(bad)
    with pytest.raises(farsync.ConfigError, match=match):
        farsync.load_config(cfg)


def test_sync_every_is_refused_by_the_options():
    from farsync.algorithms.options import validate_options

    with pytest.raises(ValueError, match="synchronizes every step"):
        validate_options(get_algorithm("sparta"), {"sync_every": 4})
