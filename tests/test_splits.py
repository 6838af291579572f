"""logreg shards: the dirichlet split (determinism per seed, every sample exactly once, no empty
worker, skew growing as alpha shrinks, config validation) and the label-sorted split unchanged."""

import numpy as np
import pytest
import torch

from farsync.tasks.classification import LogReg, LogRegParams, dirichlet_shards


def dirichlet(alpha=0.5, workers=8, seed=0, dataset="digits"):
    return LogReg(LogRegParams(dataset=dataset, split="dirichlet", dirichlet_alpha=alpha), workers, seed=seed)


def mean_max_class_fraction(task: LogReg) -> float:
    """Mean over workers of the largest share one class has in the worker's shard (1: one class)."""
    return float(np.mean([torch.bincount(task.y[s], minlength=task.n_classes).max().item() / len(s)
                          for s in task._shards]))


def test_dirichlet_is_deterministic_per_seed_and_changes_with_it():
    a, b, c = dirichlet(seed=3), dirichlet(seed=3), dirichlet(seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a._shards, b._shards))
    assert any(not torch.equal(x, y) for x, y in zip(a._shards, c._shards))


@pytest.mark.parametrize("alpha", [0.01, 0.5, 100.0])
@pytest.mark.parametrize("workers", [3, 8, 16])
def test_dirichlet_uses_every_sample_exactly_once_and_leaves_no_worker_empty(alpha, workers):
    t = dirichlet(alpha, workers)
    assert len(t._shards) == workers and all(len(s) >= 1 for s in t._shards)
    assert all(s.dtype == torch.long and torch.equal(s, s.sort().values) for s in t._shards)
    assert torch.equal(torch.cat(t._shards).sort().values, torch.arange(len(t.y)))


def test_the_fix_up_fills_empty_workers_deterministically():
    """Tiny alpha on 2 classes x 3 samples over 5 workers: the draw leaves workers empty; each gets
    exactly one sample moved from the (then) largest shard, and the result repeats."""
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    shards = dirichlet_shards(y, 5, 1e-3, seed=0)
    assert all(len(s) >= 1 for s in shards) and sorted(torch.cat(shards).tolist()) == list(range(6))
    assert all(torch.equal(s, t) for s, t in zip(shards, dirichlet_shards(y, 5, 1e-3, seed=0)))
    every = dirichlet_shards(torch.arange(4) % 2, 4, 1e-3, seed=1)  # as many workers as samples
    assert sorted(len(s) for s in every) == [1, 1, 1, 1]


def test_small_alpha_gives_more_label_skew_than_large_alpha():
    """Mean over 8 workers of the max class fraction (digits, 10 classes, averaged over 3 seeds):
    alpha 0.05 -> mostly one class per worker, alpha 100 -> close to iid's ~0.1-0.15."""
    skew = {a: np.mean([mean_max_class_fraction(dirichlet(a, seed=s)) for s in range(3)]) for a in (0.05, 0.5, 100.0)}
    iid = mean_max_class_fraction(LogReg(LogRegParams(dataset="digits"), 8, seed=0))
    assert skew[0.05] > skew[0.5] > skew[100.0]
    assert skew[0.05] > 0.6 and skew[100.0] < 0.25 and iid < 0.2


def test_dirichlet_alpha_must_be_positive():
    with pytest.raises(ValueError):
        LogRegParams(split="dirichlet", dirichlet_alpha=0.0)


def test_label_sorted_is_unchanged():
    """Contiguous blocks of the label-sorted order, sizes differing by at most one."""
    t = LogReg(LogRegParams(dataset="digits", split="label-sorted", dirichlet_alpha=0.1), 8, seed=7)
    order = torch.argsort(t.y, stable=True)
    assert all(torch.equal(s, o) for s, o in zip(t._shards, order.tensor_split(8)))
    assert max(map(len, t._shards)) - min(map(len, t._shards)) <= 1
    default = LogReg(LogRegParams(dataset="digits", split="label-sorted"), 8, seed=0)
    assert all(torch.equal(s, o) for s, o in zip(default._shards, order.tensor_split(8)))
