"""Learning-rate schedules: shapes at key steps, SGDR against torch's CosineAnnealingWarmRestarts,
WSD's plateau and end point, config validation, and the schedule a run actually follows."""

import math

import pytest
import torch

import farsync
from farsync.config import ConfigError
from farsync.optim import SCHEDULES, lr_lambda


def approx(x):
    return pytest.approx(x, abs=1e-12)


def test_all_schedules_exported():
    assert SCHEDULES == ("constant", "cosine", "linear", "wsd", "sgdr")


def test_constant_with_warmup():
    f = lr_lambda("constant", 100, warmup_steps=4)
    assert [f(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert f(10_000) == 1.0


def test_cosine_key_steps():
    f = lr_lambda("cosine", 100, warmup_steps=0, min_lr_ratio=0.1)
    assert f(0) == approx(1.0)
    assert f(50) == approx(0.55)
    assert f(25) == approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(100) == approx(0.1) and f(150) == approx(0.1)


def test_linear_decays_to_zero_by_default_after_warmup():
    f = lr_lambda("linear", 110, warmup_steps=10)
    assert f(0) == approx(0.1) and f(9) == approx(1.0)
    assert f(10) == approx(1.0) and f(60) == approx(0.5) and f(109) == approx(0.01)
    assert f(110) == approx(0.0)
    g = lr_lambda("linear", 100, min_lr_ratio=0.2)
    assert g(50) == approx(0.6) and g(100) == approx(0.2)


def test_wsd_is_constant_until_the_decay_then_reaches_min_lr_ratio():
    f = lr_lambda("wsd", 100, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2)
    assert [f(t) for t in range(10)] == [approx((t + 1) / 10) for t in range(10)]
    assert all(f(t) == 1.0 for t in range(10, 81))  # stable phase: the decay starts at step 80
    assert f(81) < 1.0
    assert f(90) == approx(0.55)
    assert f(99) == approx(0.1 + 0.9 / 20)  # the last step taken
    assert f(100) == approx(0.1)  # reached at total_steps, like cosine and linear
    vals = [f(t) for t in range(80, 101)]
    assert all(a > b for a, b in zip(vals, vals[1:]))  # strictly decreasing, linear
    assert all(d == approx(0.9 / 20) for d in (a - b for a, b in zip(vals, vals[1:])))


def test_wsd_edge_fractions():
    assert all(lr_lambda("wsd", 50, decay_fraction=0.0)(t) == 1.0 for t in range(60))
    full, lin = lr_lambda("wsd", 50, 5, 0.1, decay_fraction=1.0), lr_lambda("linear", 50, 5, 0.1)
    assert [full(t) for t in range(51)] == [approx(lin(t)) for t in range(51)]  # decays from the warm-up's end


def test_sgdr_key_steps():
    f = lr_lambda("sgdr", 1000, cycle_steps=10, cycle_mult=2)
    assert f(0) == approx(1.0) and f(5) == approx(0.5)
    assert f(10) == approx(1.0) and f(20) == approx(0.5)  # second cycle: 20 steps
    assert f(30) == approx(1.0) and f(50) == approx(0.5) and f(70) == approx(1.0)
    g = lr_lambda("sgdr", 10, warmup_steps=3, min_lr_ratio=0.2, cycle_steps=4)
    assert [g(t) for t in range(3)] == [approx(1 / 3), approx(2 / 3), approx(1.0)]
    assert [g(t) for t in (3, 5, 7, 11, 15)] == [approx(1.0), approx(0.6), approx(1.0), approx(1.0), approx(1.0)]


@pytest.mark.parametrize("t0,mult,min_ratio,warmup", [(5, 1, 0.0, 0), (3, 2, 0.1, 0), (4, 3, 0.05, 7), (1, 2, 0.0, 2)])
def test_sgdr_matches_torch_cosine_annealing_warm_restarts(t0, mult, min_ratio, warmup):
    base = 0.3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=t0, T_mult=mult, eta_min=min_ratio * base)
    f = lr_lambda("sgdr", 10, warmup_steps=warmup, min_lr_ratio=min_ratio, cycle_steps=t0, cycle_mult=mult)
    for t in range(300):
        assert base * f(warmup + t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), t
        opt.step()
        ref.step()


@pytest.mark.parametrize("kwargs,msg", [
    ({"name": "cosinus"}, "unknown lr schedule"),
    ({"name": "sgdr", "cycle_steps": 5, "cycle_mult": 0}, "cycle_mult must be an integer >= 1, got 0"),
    ({"name": "sgdr", "cycle_steps": 0}, "cycle_steps, an integer >= 1"),
    ({"name": "sgdr"}, "cycle_steps, an integer >= 1"),
    ({"name": "wsd", "decay_fraction": 1.5}, r"decay_fraction must be in \[0, 1\], got 1.5"),
])
def test_lr_lambda_rejects_bad_values(kwargs, msg):
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=msg):
        lr_lambda(name, 100, **kwargs)


TINY = {
    "name": "sched", "seed": 0,
    "task": {"name": "logreg", "dataset": "breast_cancer"},
    "cluster": {"workers": 2},
    "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.2}},
    "train": {"steps": 24, "batch_size": 8, "eval_every": 0, "log_every": 1},
}


def _with_schedule(sched):
    return {**TINY, "train": {**TINY["train"], "lr_schedule": sched}}


@pytest.mark.parametrize("sched,msg", [
    ({"name": "sgdr"}, "schedule 'sgdr' needs cycle_steps"),
    ({"name": "sgdr", "cycle_steps": 0}, "train.lr_schedule.cycle_steps: Input should be greater than or equal to 1 (got 0)"),
    ({"name": "sgdr", "cycle_steps": 5, "cycle_mult": 0}, "train.lr_schedule.cycle_mult: Input should be greater than or equal to 1 (got 0)"),
    ({"name": "sgdr", "cycle_steps": 5, "cycle_mult": 1.5}, "train.lr_schedule.cycle_mult: Input should be a valid integer"),
    ({"name": "wsd", "decay_fraction": 1.5}, "train.lr_schedule.decay_fraction: Input should be less than or equal to 1 (got 1.5)"),
    ({"name": "wsd", "decay_fraction": -0.1}, "train.lr_schedule.decay_fraction: Input should be greater than or equal to 0 (got -0.1)"),
    ({"name": "cosine", "cycle_steps": 10}, "cycle_steps applies to schedule 'sgdr' only; remove it (schedule is 'cosine')"),
    ({"name": "linear", "decay_fraction": 0.3}, "decay_fraction applies to schedule 'wsd' only"),
    ({"name": "wsdd"}, "unknown lr schedule 'wsdd'; valid choices: constant, cosine, linear, wsd, sgdr"),
])
def test_config_rejects_bad_schedule_options(sched, msg):
    with pytest.raises(ConfigError) as err:
        farsync.load_config(_with_schedule(sched))
    assert msg in str(err.value)


def test_config_accepts_and_round_trips_new_schedules():
    for sched in ({"name": "wsd", "decay_fraction": 0.1, "warmup_steps": 3},
                  {"name": "sgdr", "cycle_steps": 4, "cycle_mult": 2, "min_lr_ratio": 0.1}):
        cfg = farsync.load_config(_with_schedule(sched))
        assert farsync.load_config(cfg.to_dict()) == cfg
        for k, v in sched.items():
            assert getattr(cfg.train.lr_schedule, k) == v


@pytest.mark.parametrize("sched", [
    {"name": "wsd", "warmup_steps": 3, "decay_fraction": 0.25, "min_lr_ratio": 0.1},
    {"name": "sgdr", "cycle_steps": 4, "cycle_mult": 2, "min_lr_ratio": 0.1},
])
def test_run_follows_the_schedule(tmp_path, sched):
    res = farsync.run(_with_schedule(sched), out=tmp_path / "r", progress=False)
    kw = dict(sched)
    f = lr_lambda(kw.pop("name"), 24, **kw)
    assert [m["lr"] for m in res.metrics] == [pytest.approx(0.2 * f(m["step"] - 1), rel=1e-12) for m in res.metrics]
