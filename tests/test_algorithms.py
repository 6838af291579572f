"""Reductions between DDP, Local SGD and DiLoCo, invariants and byte counts."""

import pytest
import torch

from farsync.tasks.classification import LogReg, LogRegParams
from farsync.tasks.quadratic import Quadratic, QuadraticParams

from conftest import train_sim

SGD = {"name": "sgd", "lr": 0.1}
OUTER_PLAIN = {"name": "sgd", "lr": 1.0}


def max_rel_diff(a, b):
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in zip(a, b))


def plain_training(task, inner, steps, batch_size=2):
    torch.manual_seed(0)
    model = task.build_model()
    from farsync.optim import build_optimizer

    opt = build_optimizer(model.parameters(), inner)
    sampler = task.sampler(0, batch_size)
    for _ in range(steps):
        task.loss(model, sampler.next_batch()).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "task",
    [
        Quadratic(QuadraticParams(dim=6, sigma=0.5), 1, seed=0),
        LogReg(LogRegParams(dataset="breast_cancer", dtype="float64"), 1, seed=0),
    ],
    ids=["quadratic", "logreg"],
)
def test_diloco_one_worker_h1_outer_sgd1_equals_inner_optimizer(task):
    inner = {"name": "adamw", "lr": 0.01, "weight_decay": 0.01}
    (res,), _ = train_sim("diloco", 1, 40, inner, outer=OUTER_PLAIN, sync_every=1, task=task)
    ref = plain_training(task, inner, 40)
    # phi - (phi - theta) rounds to theta except for rare 1-ulp cases (when phi - theta is not exact).
    assert max_rel_diff(res[0], ref) < 1e-6
    assert max_rel_diff(res[1], ref) < 1e-6


def test_diloco_h1_outer_sgd1_inner_sgd_equals_ddp(quad4):
    dil, _ = train_sim("diloco", 4, 30, SGD, outer=OUTER_PLAIN, sync_every=1, task=quad4)
    ddp, _ = train_sim("ddp", 4, 30, SGD, task=quad4)
    for r in range(4):
        assert max_rel_diff(dil[r][0], ddp[r][0]) < 1e-6


def test_local_sgd_h1_equals_ddp_for_sgd(quad4):
    loc, _ = train_sim("local-sgd", 4, 30, SGD, sync_every=1, task=quad4)
    ddp, _ = train_sim("ddp", 4, 30, SGD, task=quad4)
    for r in range(4):
        assert max_rel_diff(loc[r][0], ddp[r][0]) < 1e-6


def test_diloco_outer_sgd1_equals_local_sgd(quad4):
    """Outer SGD with lr 1 and no momentum turns DiLoCo into parameter averaging."""
    dil, _ = train_sim("diloco", 4, 40, SGD, outer=OUTER_PLAIN, sync_every=5, task=quad4)
    loc, _ = train_sim("local-sgd", 4, 40, SGD, sync_every=5, task=quad4)
    for r in range(4):
        assert max_rel_diff(dil[r][1], loc[r][1]) < 1e-6


def test_ddp_equals_sgd_on_the_mean_gradient(quad4):
    """DDP step = SGD on the average of the workers' stochastic gradients (computed here directly)."""
    ddp, _ = train_sim("ddp", 4, 10, SGD, task=quad4)
    torch.manual_seed(0)
    x = quad4.build_model().x.detach().clone()
    samplers = [quad4.sampler(r, 2) for r in range(4)]
    for _ in range(10):
        grads = []
        for s in samplers:
            a, b, z = s.next_batch()
            grads.append(a * (x - b) + z)
        x = x - 0.1 * torch.stack(grads).mean(0)
    assert max_rel_diff(ddp[0][0], [x]) < 1e-12


def test_diloco_workers_hold_identical_global_params_and_differ_locally(quad4):
    res, _ = train_sim("diloco", 4, 23, SGD, sync_every=5, task=quad4)  # 3 local steps after the last sync
    for r in range(1, 4):
        assert torch.equal(res[r][1][0], res[0][1][0])
        assert not torch.equal(res[r][0][0], res[0][0][0])


def test_outer_nesterov_changes_the_trajectory(quad4):
    plain, _ = train_sim("diloco", 4, 20, SGD, outer=OUTER_PLAIN, sync_every=5, task=quad4)
    nest, _ = train_sim("diloco", 4, 20, SGD, sync_every=5, task=quad4)  # default outer: SGD 0.7 Nesterov 0.9
    assert not torch.allclose(plain[0][1][0], nest[0][1][0])


@pytest.mark.parametrize("name,syncs", [("ddp", 20), ("local-sgd", 4), ("diloco", 4)])
def test_bytes_per_sync_are_ring_all_reduce_of_all_parameters(quad4, name, syncs):
    _, cluster = train_sim(name, 4, 20, SGD, sync_every=5 if name != "ddp" else 1, task=quad4)
    d_bytes = 6 * 8  # dim 6, float64
    per_sync = 2 * 3 * d_bytes // 4
    for s in cluster.stats:
        assert s.bytes_sent == syncs * per_sync
        assert s.n_calls == syncs and s.peak_bytes_per_sync == per_sync


def test_local_sgd_post_local_phase_and_state_reset(quad4):
    post, _ = train_sim("local-sgd", 4, 20, SGD, sync_every=5, task=quad4, options={"ddp_steps": 20})
    ddp, _ = train_sim("ddp", 4, 20, SGD, task=quad4)
    assert max_rel_diff(post[0][0], ddp[0][0]) == 0.0  # same code path as DDP while in the DDP phase
    mom = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    keep, _ = train_sim("local-sgd", 4, 20, mom, sync_every=5, task=quad4)
    reset, _ = train_sim("local-sgd", 4, 20, mom, sync_every=5, task=quad4, options={"reset_inner_state": True})
    assert not torch.allclose(keep[0][1][0], reset[0][1][0])
