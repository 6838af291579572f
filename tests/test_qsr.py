"""The Quadratic Synchronization Rule: round lengths, the steps it syncs at, the reduction to a
fixed H, resume, bad input."""

import pytest
import torch

import farsync
from conftest import assert_crash_and_resume_reproduce, without_wall_time
from farsync.algorithms import get_algorithm
from farsync.algorithms.sync_schedule import QSR
from farsync.comm import SimCluster


def test_round_length_is_max_of_base_and_alpha_over_lr_squared():
    q = QSR(rule="qsr", base=2, alpha=0.125)
    assert [q.round_length(lr) for lr in (0.5, 0.125, 0.0625, 0.03125, 0.01)] == [2, 2, 4, 16, 156]


@pytest.mark.parametrize("name", ["local-sgd", "diloco"])
def test_syncs_after_rounds_whose_length_comes_from_the_lr_at_their_first_step(name):
    lrs = [0.125] * 4 + [0.0625] * 4 + [0.03125] * 30  # lr of steps 1, 2, ...

    def fn(comm):
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=lrs[0])
        algo = get_algorithm(name)(model, opt, comm, sync_every={"rule": "qsr", "base": 2, "alpha": 0.125})
        synced = []
        for step, lr in enumerate(lrs, start=1):
            opt.param_groups[0]["lr"] = lr
            model(torch.ones(1, 3)).sum().backward()
            calls = comm.stats.n_calls
            algo.step()
            algo.zero_grad()
            if comm.stats.n_calls > calls:
                synced.append(step)
        return synced

    # rounds: steps 1-2 and 3-4 at lr 1/8 (H = 2); 5-8 at 1/16 (H = 4); then H = 16 from step 9
    assert SimCluster(2).run(fn)[0] == [2, 4, 8, 24]


TINY = {
    "name": "q", "seed": 2,
    "task": {"name": "logreg", "dataset": "breast_cancer"},
    "cluster": {"workers": 3},
    "algorithm": {"name": "diloco", "sync_every": 4, "inner": {"name": "sgd", "lr": 0.1}},
    "train": {"steps": 40, "batch_size": 8, "eval_every": 20, "log_every": 4,
              "lr_schedule": {"name": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.1}},
}


def test_qsr_with_a_tiny_alpha_is_the_fixed_base_period(tmp_path):
    fixed = farsync.run(TINY, out=tmp_path / "f", progress=False)
    qsr = farsync.run({**TINY, "algorithm": {**TINY["algorithm"], "sync_every": {"rule": "qsr", "base": 4, "alpha": 1e-6}}},
                      out=tmp_path / "q", progress=False)
    assert without_wall_time(qsr.metrics) == without_wall_time(fixed.metrics)


def test_qsr_rounds_grow_as_the_cosine_schedule_decays_and_survive_resume(tmp_path, monkeypatch):
    cfg = {**TINY, "algorithm": {**TINY["algorithm"], "sync_every": {"rule": "qsr", "base": 2, "alpha": 0.2}},
           "train": {**TINY["train"], "checkpoint_every": 20}}
    full = assert_crash_and_resume_reproduce(cfg, tmp_path, monkeypatch, "0:27")
    fixed = farsync.run({**TINY, "algorithm": {**TINY["algorithm"], "sync_every": 2}}, out=tmp_path / "fixed", progress=False)
    assert full.summary["bytes_sent_total"] < fixed.summary["bytes_sent_total"]  # fewer, longer rounds late on


@pytest.mark.parametrize("algo,msg", [
    ({"sync_every": {"rule": "qsr", "base": 0, "alpha": 0.1}}, "base"),
    ({"sync_every": {"rule": "qsr", "base": 2, "alpha": -1}}, "alpha"),
    ({"sync_every": {"rule": "linear", "base": 2, "alpha": 0.1}}, "rule"),
    ({"name": "streaming-diloco", "sync_every": {"rule": "qsr", "base": 2, "alpha": 0.1}}, "needs an integer sync_every"),
])
def test_bad_sync_every_fails_before_training(algo, msg):
    with pytest.raises(farsync.ConfigError, match=msg):
        farsync.load_config({**TINY, "algorithm": {**TINY["algorithm"], **algo}})


def test_warmup_rounds_are_base_long_and_the_last_round_is_cut_to_the_steps_left():
    """As the authors' LocalOptimizer.adjust_h: H = H_base while step < warmup_steps (the tiny warm-up lr would
    give one round longer than the run), min(H, steps left) after, so the run ends with an average."""
    q = QSR(rule="qsr", base=2, alpha=0.125, warmup_steps=4, total_steps=20)
    assert q.round_length(1e-4, start=0) == 2 and q.round_length(1e-4, start=3) == 2
    assert q.round_length(0.03125, start=4) == 16 and q.round_length(0.03125, start=10) == 10
    assert q.round_length(0.5, start=19) == 1


def test_a_config_fills_warmup_and_total_steps_and_the_run_ends_synchronized(tmp_path):
    cfg = {**TINY, "algorithm": {**TINY["algorithm"], "sync_every": {"rule": "qsr", "base": 2, "alpha": 0.5}},
           "train": {**TINY["train"], "lr_schedule": {"name": "cosine", "warmup_steps": 6, "min_lr_ratio": 0.1}}}
    every = farsync.load_config(cfg).algorithm.sync_every
    assert (every["warmup_steps"], every["total_steps"]) == (6, 40)
    own = farsync.load_config({**cfg, "algorithm": {**cfg["algorithm"], "sync_every": {
        "rule": "qsr", "base": 2, "alpha": 0.5, "warmup_steps": 0, "total_steps": 100}}}).algorithm.sync_every
    assert (own["warmup_steps"], own["total_steps"]) == (0, 100)  # given values are kept
    run = farsync.run(cfg, out=tmp_path / "q", progress=False)
    # alpha / lr >= 5 everywhere, so without the warm-up rule the first round would be >= 25 steps long; with it the
    # workers sync every 2 steps while step < 6, then in rounds cut so that the last one ends at step 40
    assert run.summary["bytes_sent_total"] > 0
    fixed2 = farsync.run({**cfg, "algorithm": {**TINY["algorithm"], "sync_every": 2}}, out=tmp_path / "f", progress=False)
    assert run.summary["bytes_sent_total"] < fixed2.summary["bytes_sent_total"]
