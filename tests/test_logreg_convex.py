"""`logreg` as a convex benchmark: the mushroom data set (libfann-doc), full-batch sampling, and
the training objective's minimum f* (L-BFGS, cached)."""

import copy
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import farsync
from farsync.tasks import DataMissingError
from farsync.tasks import classification as cl
from farsync.tasks.classification import LogReg, LogRegParams

HAVE_MUSHROOM = all((cl.FANN_DIR / f).is_file() for f in cl.FANN_SHA256)
needs_mushroom = pytest.mark.skipif(
    not HAVE_MUSHROOM, reason=f"mushroom data not installed ({cl.FANN_INSTALL_HINT}; CI installs it)"
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test caches optima in one temporary directory (shared by this module), never in ~."""
    monkeypatch.setenv(cl.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "farsync-cache"))


def test_fann_parser_and_missing_file_message(tmp_path):
    (tmp_path / "tiny.train").write_text("3 4 2\n0 1 0 1 \n1 0 \n1 1 0 0 \n0 1 \n0 0 1 1\n0 1\n")
    X, y = cl.load_fann(str(tmp_path / "tiny.train"))
    assert X.tolist() == [[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]] and y.tolist() == [0, 1, 1]
    (tmp_path / "bad.train").write_text("3 4 2\n0 1 0 1\n1 0\n")
    with pytest.raises(ValueError, match="expected 3 rows of 4 inputs and 2 outputs"):
        cl.load_fann(str(tmp_path / "bad.train"))


def test_missing_mushroom_raises_data_missing_naming_the_apt_command(tmp_path, monkeypatch):
    monkeypatch.setattr(cl, "FANN_DIR", tmp_path / "nowhere")
    with pytest.raises(DataMissingError, match="Install it with: apt-get install -y libfann-doc"):
        LogReg(LogRegParams(dataset="mushroom"), 2, seed=0)
    cfg = {"task": {"name": "logreg", "dataset": "mushroom"}, "cluster": {"workers": 2},
           "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.1}}, "train": {"steps": 2}}
    with pytest.raises(DataMissingError, match="apt-get install -y libfann-doc"):
        farsync.run(cfg, out=tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


@needs_mushroom
def test_mushroom_checksum_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    for f in cl.FANN_SHA256:
        shutil.copy(cl.FANN_DIR / f, tmp_path / f)
    raw = bytearray((tmp_path / "mushroom.test").read_bytes())
    raw[-3] = ord("1") if raw[-3] == ord("0") else ord("0")  # flip one label
    (tmp_path / "mushroom.test").write_bytes(bytes(raw))
    monkeypatch.setattr(cl, "FANN_DIR", tmp_path)
    with pytest.raises(DataMissingError, match="mushroom.test does not match its expected SHA-256 da962d63"):
        LogReg(LogRegParams(dataset="mushroom"), 1, seed=0)


@needs_mushroom
def test_mushroom_loads_with_its_own_split():
    t = LogReg(LogRegParams(dataset="mushroom", test_fraction=0.5), 4, seed=0)
    assert t.X.shape == (4062, 125) and t.X_test.shape == (4062, 125)
    assert t.X.dtype == torch.float32 and t.X_test.dtype == torch.float64
    assert t.n_classes == 2 and set(t.y.tolist()) == {0, 1} and set(t.y_test.tolist()) == {0, 1}
    raw, _ = cl.load_fann(str(cl.FANN_DIR / "mushroom.train"))
    assert set(np.unique(raw)) == {0.0, 1.0}
    assert set(raw.sum(axis=1)) == {21.0, 22.0}  # 22 one-hot attributes; stalk-root may be missing (all 0)
    # standardized with training statistics; constant columns stay at 0 (scale 1)
    assert torch.allclose(t.X_train64.mean(0), torch.zeros(125, dtype=torch.float64), atol=1e-12)
    const = raw.std(axis=0) == 0
    assert (t.X_train64[:, torch.from_numpy(const)] == 0).all()
    assert torch.allclose(t.X_train64[:, torch.from_numpy(~const)].std(0, unbiased=False), torch.ones(int((~const).sum()), dtype=torch.float64))
    assert t.build_model()(t.X[:3]).shape == (3, 2)
    assert sum(len(s) for s in t._shards) == 4062


@pytest.mark.parametrize("split", ["iid", "label-sorted"])
def test_full_batch_sampler_returns_the_whole_shard_every_step(split):
    t = LogReg(LogRegParams(dataset="wine", split=split, full_batch=True), 3, seed=1)
    for rank in range(3):
        s = t.sampler(rank, batch_size=4)
        for _ in range(3):
            X, y = s.next_batch()
            assert torch.equal(X, t.X[t._shards[rank]]) and torch.equal(y, t.y[t._shards[rank]])
    assert sorted(torch.cat(t._shards).tolist()) == list(range(len(t.y)))
    assert t.tokens_per_batch(4) == max(len(s) for s in t._shards)
    mini = LogReg(LogRegParams(dataset="wine"), 3, seed=1)
    assert mini.sampler(0, 4).next_batch()[0].shape == (4, 13) and mini.tokens_per_batch(4) == 4


def _f(t, model):
    """The regularized training objective, written out independently, with autograd."""
    m = copy.deepcopy(model).double()
    for q in m.parameters():
        q.grad = None
    f = F.cross_entropy(m(t.X_train64), t.y) + 0.5 * t.params.l2 * m.weight.pow(2).sum()
    f.backward()
    return f.item(), m


DATASETS = ["breast_cancer", "digits", pytest.param("mushroom", marks=needs_mushroom)]


@pytest.fixture(scope="module")
def solved():
    """{dataset: task} with the optimum computed once (into the module's temporary cache)."""
    return {}


def _task(solved, dataset):
    if dataset not in solved:
        solved[dataset] = LogReg(LogRegParams(dataset=dataset), 4, seed=0)
        solved[dataset].optimum()
    return solved[dataset]


@pytest.mark.parametrize("dataset", DATASETS)
def test_optimum_is_a_stationary_minimum(solved, dataset):
    t = _task(solved, dataset)
    f_star, m = t.optimum(), t.optimal_model()
    f, m = _f(t, m)
    g = torch.cat([q.grad.flatten() for q in m.parameters()])
    assert g.norm() < 1e-8
    assert f == pytest.approx(f_star, abs=1e-15) and t.train_objective(m) == pytest.approx(f_star, abs=1e-15)
    with torch.no_grad():
        for eta in (1e-4, 1e-2, 1.0, 1e2, 1e4):  # no gradient step lowers it (beyond float64 rounding)
            step = copy.deepcopy(m)
            for q, p in zip(step.parameters(), m.parameters()):
                q -= eta * p.grad
            assert t.train_objective(step) >= f_star - 1e-15, eta
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):  # nor does a random move: strongly convex in the weights
            moved = copy.deepcopy(m)
            moved.weight += 1e-3 * torch.randn(moved.weight.shape, generator=gen, dtype=torch.float64)
            assert t.train_objective(moved) > f_star + 1e-10
    torch.manual_seed(0)
    assert t.train_objective(t.build_model()) > f_star + 0.1  # an untrained model is well above


@pytest.mark.parametrize("dataset", ["breast_cancer", "wine"])  # binary and multinomial (digits: ~30 s in sklearn)
def test_optimum_agrees_with_scikit_learn(solved, dataset):
    from sklearn.linear_model import LogisticRegression

    t = _task(solved, dataset)
    X, y, n, l2 = t.X_train64.numpy(), t.y.numpy(), len(t.y), t.params.l2
    binary = t.n_classes == 2
    # sklearn: 0.5 ||w||^2 + C sum CE. A two-class softmax's weights split as (-w/2, w/2): penalty l2/4 ||w||^2.
    sk = LogisticRegression(C=(2.0 if binary else 1.0) / (n * l2), tol=1e-12, max_iter=10_000).fit(X, y)
    m = torch.nn.Linear(X.shape[1], t.n_classes).double()
    with torch.no_grad():
        W, b = torch.from_numpy(sk.coef_), torch.from_numpy(sk.intercept_)
        m.weight.copy_(torch.cat([-W / 2, W / 2]) if binary else W)
        m.bias.copy_(torch.cat([-b / 2, b / 2]) if binary else b)
    f_sk = t.train_objective(m)
    assert t.optimum() - 1e-14 <= f_sk <= t.optimum() + 1e-9


def test_optimum_cache_hit_does_not_recompute(tmp_path, monkeypatch):
    monkeypatch.setenv(cl.CACHE_ENV, str(tmp_path / "c"))
    calls = []
    solve = LogReg._solve_optimum

    def counting(self, *a, **k):
        calls.append(self.params.dataset)
        return solve(self, *a, **k)

    monkeypatch.setattr(LogReg, "_solve_optimum", counting)
    first = LogReg(LogRegParams(dataset="iris"), 2, seed=0).optimum()
    assert calls == ["iris"] and (tmp_path / "c" / "logreg_optimum.json").is_file()
    # another task object, other seed / split / dtype / workers: the same objective, a cache hit
    again = LogReg(LogRegParams(dataset="iris", split="label-sorted", dtype="float64"), 3, seed=5)
    assert again.optimum() == first and calls == ["iris"]
    assert torch.equal(again.optimal_model().weight, LogReg(LogRegParams(dataset="iris"), 2, seed=0).optimal_model().weight)
    other = LogReg(LogRegParams(dataset="iris", l2=1e-2), 2, seed=0).optimum()
    assert calls == ["iris", "iris"] and other > first  # a stronger penalty: a higher minimum


def test_optimum_only_for_the_convex_task():
    with pytest.raises(ValueError, match="hidden = 0"):
        LogReg(LogRegParams(dataset="iris", hidden=8), 1, seed=0).optimum()
    with pytest.raises(ValueError, match="l2 > 0"):
        LogReg(LogRegParams(dataset="iris", l2=0.0), 1, seed=0).optimum()
