"""Parameter-server algorithms beside async-local-sgd: asgd, dude-asgd (running mean of every
worker's latest gradient) and fedbuff (buffered, staleness-weighted deltas): invariants, one-worker
reductions, determinism, heterogeneous speeds, budget, bad options."""

import pytest
import torch

import farsync
from conftest import without_wall_time
from farsync.algorithms import ParameterServerAlgorithm, get_algorithm
from farsync.algorithms.options import takes
from farsync.algorithms.async_server import DuDeASGD, FedBuff
from farsync.comm import SimCluster
from farsync.config import ConfigError

QUAD = {
    "name": "quad", "seed": 2,
    "task": {"name": "quadratic", "dim": 8, "zeta": 2.0, "sigma": 0.1},
    "cluster": {"workers": 4, "step_time": "1s", "speeds": [1, 1, 1, 4]},
    "algorithm": {"name": "dude-asgd", "inner": {"name": "sgd", "lr": 0.2}},
    "train": {"steps": 40, "batch_size": 2, "eval_every": 20, "log_every": 10},
}
LOGREG = {
    "name": "logreg", "seed": 1,
    "task": {"name": "logreg", "dataset": "breast_cancer", "split": "label-sorted"},
    "cluster": {"workers": 3, "step_time": "1s", "speeds": [1, 2, 3]},
    "algorithm": {"name": "fedbuff", "sync_every": 4, "buffer_size": 2, "inner": {"name": "sgd", "lr": 0.1},
                  "outer": {"name": "sgd", "lr": 1.0}},
    "train": {"steps": 24, "batch_size": 8, "eval_every": 12, "log_every": 4},
}


def with_(cfg, section, **kv):
    return {**cfg, section: {**cfg[section], **kv}}


def one_worker(cfg):
    return with_(cfg, "cluster", workers=1, speeds=None)


def final_model(r):
    return torch.load(r.run_dir / "model.pt", weights_only=True)


def same_model(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def evals(r):
    return [m["eval_loss"] for m in r.metrics if "eval_loss" in m]


def steps_per_worker(r, speeds):
    _server, *workers = r.summary["compute_time_s_per_worker"]
    return [round(c / s) for c, s in zip(workers, speeds)]  # 1 s per step x the speed factor


# ------------------------------------------------------------------ dude-asgd's running mean
@pytest.mark.parametrize("average_over", ["all", "reported"])
def test_dude_running_mean_equals_the_mean_of_the_buffered_gradients_after_every_event(average_over):
    n, d = 4, 50

    def fn(comm):
        model = torch.nn.Linear(d - 1, 1).double()
        algo = DuDeASGD(model, torch.optim.SGD(model.parameters(), lr=0.1), comm, options={"average_over": average_over})
        if comm.rank != 0:
            return None
        gen = torch.Generator().manual_seed(0)
        errs = []
        for event in range(60):
            w = int(torch.randint(1, n + 1, (1,), generator=gen)) if event >= 2 else event + 1  # two unreported at first
            g = torch.randn(d, generator=gen, dtype=torch.float64) * 10 ** float(torch.randint(-3, 4, (1,), generator=gen))
            out = algo._aggregate(w, g)
            assert torch.equal(algo.G[w - 1], g)  # G_i = the latest gradient of worker i
            rows = algo.G[algo.reported] if average_over == "reported" else algo.G
            ref = rows.sum(0) / (n if average_over == "all" else len(rows))
            errs.append(float((algo.G_bar() - ref).abs().max()))
            assert torch.equal(out, algo.G_bar())
        return errs

    errs = SimCluster(n + 1).run(fn)[0]
    assert max(errs) < 1e-12


def test_dude_running_mean_holds_in_a_full_run(tmp_path, monkeypatch):
    """The same invariant on every arrival of a real (simulated) run with heterogeneous speeds."""
    errs = []
    orig = DuDeASGD._aggregate

    def checked(self, worker, g):
        out = orig(self, worker, g)
        errs.append(float((self.G_bar() - self.G.double().mean(0)).abs().max()))
        return out

    monkeypatch.setattr(DuDeASGD, "_aggregate", checked)
    r = farsync.run(QUAD, out=tmp_path / "a", progress=False)
    assert r.summary["status"] == "completed"
    assert len(errs) == 40 * 4 and max(errs) < 1e-12


def test_dude_zero_before_first_report_vs_reported_average():
    """G_i = 0 until worker i reports: the first step is lr g / n (average_over: all) or lr g."""
    def fn(comm, average_over):
        model = torch.nn.Linear(1, 1, bias=False).double()
        algo = DuDeASGD(model, torch.optim.SGD(model.parameters(), lr=1.0), comm, options={"average_over": average_over})
        if comm.rank == 0:
            return algo._aggregate(2, torch.tensor([4.0], dtype=torch.float64)).item()

    assert SimCluster(5).run(lambda c: fn(c, "all"))[0] == 1.0
    assert SimCluster(5).run(lambda c: fn(c, "reported"))[0] == 4.0


# ------------------------------------------------------------------ one-worker reductions
def test_one_worker_dude_equals_asgd_equals_sgd_bitwise(tmp_path):
    """One worker: G_bar = g, so dude-asgd steps x -= lr g on every arrival like asgd, which is
    plain SGD (ddp with one worker) on the same batches, bit for bit."""
    cfg = one_worker(with_(QUAD, "task", sigma=0.5))
    dude = farsync.run(cfg, out=tmp_path / "dude", progress=False)
    asgd = farsync.run(with_(cfg, "algorithm", name="asgd"), out=tmp_path / "asgd", progress=False)
    sgd = farsync.run(with_(cfg, "algorithm", name="ddp"), out=tmp_path / "sgd", progress=False)
    assert same_model(final_model(dude), final_model(asgd)) and same_model(final_model(dude), final_model(sgd))
    assert evals(dude) == evals(asgd) == evals(sgd) and len(evals(dude)) == 2
    assert [m["train_loss"] for m in dude.metrics] == [m["train_loss"] for m in sgd.metrics]
    assert dude.metrics[-1]["updates"] == 40 and dude.summary["steps"] == 40


def test_one_worker_asgd_follows_the_lr_schedule_like_sgd(tmp_path):
    cfg = one_worker(with_(with_(QUAD, "train", lr_schedule={"name": "cosine", "warmup_steps": 5}), "algorithm", name="asgd",
                           inner={"name": "adamw", "lr": 0.05}))
    a = farsync.run(cfg, out=tmp_path / "a", progress=False)
    s = farsync.run(with_(cfg, "algorithm", name="ddp"), out=tmp_path / "s", progress=False)
    assert same_model(final_model(a), final_model(s)) and evals(a) == evals(s)
    assert [m["lr"] for m in a.metrics] == [m["lr"] for m in s.metrics]


def test_one_worker_fedbuff_with_k1_is_diloco_with_one_worker(tmp_path):
    """One worker, K = 1: tau = 0, weight 1, one outer step per round on its pseudo-gradient - DiLoCo
    with one worker and the same outer optimizer, bit for bit; with outer SGD lr 1 that is x - (x - y),
    i.e. plain local training (local-sgd with one worker) up to rounding."""
    cfg = one_worker(with_(LOGREG, "algorithm", buffer_size=1))
    fb = farsync.run(cfg, out=tmp_path / "fb", progress=False)
    alg = {k: v for k, v in cfg["algorithm"].items() if k != "buffer_size"}
    dl = farsync.run({**cfg, "algorithm": {**alg, "name": "diloco"}}, out=tmp_path / "dl", progress=False)
    assert same_model(final_model(fb), final_model(dl)) and evals(fb) == evals(dl)
    assert [m["train_loss"] for m in fb.metrics] == [m["train_loss"] for m in dl.metrics]
    assert fb.metrics[-1]["updates"] == 24 // 4
    plain = {k: v for k, v in alg.items() if k != "outer"}
    ls = farsync.run({**cfg, "algorithm": {**plain, "name": "local-sgd"}}, out=tmp_path / "ls", progress=False)
    for k, v in final_model(ls).items():
        torch.testing.assert_close(final_model(fb)[k], v, rtol=1e-5, atol=1e-6)
    # Nesterov outer (the default) also reduces to DiLoCo
    nest = {**alg, "outer": {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}}
    fbn = farsync.run({**cfg, "algorithm": {**nest, "buffer_size": 1}}, out=tmp_path / "fbn", progress=False)
    dln = farsync.run({**cfg, "algorithm": {**nest, "name": "diloco"}}, out=tmp_path / "dln", progress=False)
    assert same_model(final_model(fbn), final_model(dln))


def test_fedbuff_steps_once_per_k_arrivals_with_one_worker(tmp_path):
    cfg = one_worker(with_(LOGREG, "algorithm", buffer_size=3))
    r = farsync.run(cfg, out=tmp_path / "a", progress=False)
    assert r.summary["status"] == "completed"
    assert [m["updates"] for m in r.metrics] == [0, 0, 1, 1, 1, 2]  # a round of 4 steps per record; K = 3
    assert all(m["staleness"] == 0 for m in r.metrics)


# ------------------------------------------------------------------ staleness weights
def test_fedbuff_staleness_weight():
    def fn(comm, p):
        model = torch.nn.Linear(1, 1)
        algo = FedBuff(model, torch.optim.SGD(model.parameters(), lr=0.1), comm, sync_every=2,
                       outer={"name": "sgd", "lr": 1.0}, options={"buffer_size": 2, "staleness_power": p})
        if comm.rank == 0:
            return [algo.staleness_weight(t) for t in (0, 3, 8)], algo.buffer_size

    assert SimCluster(3).run(lambda c: fn(c, 0.5))[0] == ([1.0, 0.5, 1 / 3], 2)
    assert SimCluster(3).run(lambda c: fn(c, 0.0))[0] == ([1.0, 1.0, 1.0], 2)


def test_fedbuff_buffer_default_is_the_number_of_workers():
    def fn(comm):
        model = torch.nn.Linear(1, 1)
        algo = FedBuff(model, torch.optim.SGD(model.parameters(), lr=0.1), comm, sync_every=2, outer={"name": "sgd", "lr": 1.0})
        return algo.buffer_size if comm.rank == 0 else None

    assert SimCluster(4).run(fn)[0] == 3


# ------------------------------------------------------------------ runs: determinism, speeds, budget
@pytest.mark.parametrize("cfg", [QUAD, with_(QUAD, "algorithm", name="asgd"), LOGREG], ids=["dude-asgd", "asgd", "fedbuff"])
def test_async_server_runs_are_deterministic_and_spend_the_budget(tmp_path, cfg):
    a = farsync.run(cfg, out=tmp_path / "a", progress=False)
    b = farsync.run(cfg, out=tmp_path / "b", progress=False)
    assert a.summary["status"] == "completed"
    assert without_wall_time(a.metrics) == without_wall_time(b.metrics)
    assert same_model(final_model(a), final_model(b))
    n, steps = cfg["cluster"]["workers"], cfg["train"]["steps"]
    assert sum(steps_per_worker(a, cfg["cluster"]["speeds"])) == steps * n  # train.steps x n inner steps
    assert a.metrics[-1]["step"] == steps and "eval_loss" in a.metrics[-1]
    assert a.summary["tokens"] == steps * n * cfg["train"]["batch_size"]


@pytest.mark.parametrize("name", ["dude-asgd", "asgd", "fedbuff"])
def test_slow_worker_contributes_fewer_updates(tmp_path, name):
    alg = {"name": name, "inner": {"name": "sgd", "lr": 0.2}}
    if name == "fedbuff":
        alg |= {"sync_every": 2, "buffer_size": 2, "outer": {"name": "sgd", "lr": 1.0}}
    r = farsync.run({**QUAD, "algorithm": alg}, out=tmp_path / "a", progress=False)
    steps = steps_per_worker(r, [1, 1, 1, 4])
    assert sum(steps) == 160
    assert all(s >= 3 * steps[3] for s in steps[:3]), steps  # speed 4: about a quarter of the others' steps
    assert r.metrics[-1]["staleness"] > 0  # with 4 workers, arrivals are stale


def test_dude_converges_under_heterogeneity_where_asgd_is_biased(tmp_path):
    """Label-sorted-like heterogeneity (zeta large) plus a slow worker: asgd over-weights the fast
    workers' objectives; dude-asgd uses every worker's latest gradient on every step."""
    cfg = with_(with_(QUAD, "task", zeta=5.0, sigma=0.0), "train", steps=150, eval_every=150, log_every=50)
    dude = farsync.run(cfg, out=tmp_path / "d", progress=False)
    asgd = farsync.run(with_(cfg, "algorithm", name="asgd"), out=tmp_path / "a", progress=False)
    assert dude.summary["final_eval_loss"] < 0.1 * asgd.summary["final_eval_loss"]


# ------------------------------------------------------------------ bad options
@pytest.mark.parametrize("alg,msg", [
    ({"name": "fedbuff", "sync_every": 4, "buffer_size": 0}, "buffer_size"),
    ({"name": "fedbuff", "sync_every": 4, "staleness_power": -1}, "staleness_power"),
    ({"name": "fedbuff", "sync_every": 4, "compress": {"name": "int8"}}, "fedbuff sends pseudo-gradients uncompressed"),
    ({"name": "dude-asgd", "average_over": "some"}, "average_over"),
    ({"name": "asgd", "compress": {"name": "int8"}}, "asgd sends gradients uncompressed"),
    ({"name": "dude-asgd", "inner": {"name": "momo", "lr": 0.1}}, "no loss or closure"),
])
def test_bad_options_fail_before_training(tmp_path, alg, msg):
    with pytest.raises(ConfigError, match=msg):
        farsync.run({**QUAD, "algorithm": {"inner": {"name": "sgd", "lr": 0.1}, **alg}}, out=tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()


def test_checkpointing_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot be checkpointed"):
        farsync.run(with_(QUAD, "train", checkpoint_every=10), out=tmp_path / "a", progress=False)


def test_wrap_refuses_the_server_algorithms():
    model = torch.nn.Linear(2, 1)
    for name in ("asgd", "dude-asgd", "fedbuff"):
        with pytest.raises(ValueError, match="runs a parameter server and its own loop"):
            farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), name, comm=object())
    assert issubclass(get_algorithm("dude-asgd"), ParameterServerAlgorithm) and takes(get_algorithm("fedbuff"), "outer")


def test_fedbuff_staleness_weighting_changes_a_multi_worker_run(tmp_path):
    a = farsync.run(LOGREG, out=tmp_path / "a", progress=False)
    b = farsync.run(with_(LOGREG, "algorithm", staleness_power=0.0), out=tmp_path / "b", progress=False)
    assert a.metrics[-1]["staleness"] > 0 and not same_model(final_model(a), final_model(b))
