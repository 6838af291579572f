import pytest
import torch

from farsync.algorithms import get_algorithm
from farsync.comm import SimCluster
from farsync.optim import build_optimizer
from farsync.tasks.quadratic import Quadratic, QuadraticParams


def without_wall_time(metrics):
    """Metrics records without the host's wall-clock time (the only field that differs between
    two runs of one config on the simulator)."""
    return [{k: v for k, v in m.items() if k != "wall_time_s"} for m in metrics]


def assert_crash_and_resume_reproduce(cfg, tmp_path, monkeypatch, fault, check_checkpoint=None):
    """Run `cfg` whole; run it again with FARSYNC_FAULT=`fault` (rank:step), check that it failed
    (and `check_checkpoint(run_dir)`), resume it, and assert the metrics equal the whole run's."""
    import farsync

    full = farsync.run(cfg, out=tmp_path / "full", progress=False)
    monkeypatch.setenv("FARSYNC_FAULT", fault)
    assert farsync.run(cfg, out=tmp_path / "crashed", progress=False).status.startswith("failed: InjectedFault")
    monkeypatch.delenv("FARSYNC_FAULT")
    if check_checkpoint is not None:
        check_checkpoint(tmp_path / "crashed")
    resumed = farsync.run(resume=tmp_path / "crashed", progress=False)
    assert without_wall_time(resumed.metrics) == without_wall_time(full.metrics)
    return full


def train_sim(name, workers, steps, inner, *, outer=None, sync_every=1, task=None, batch_size=2, options=None):
    """Train `name` on the simulated cluster; return (per-rank local params, eval params, cluster)."""
    task = task or Quadratic(QuadraticParams(dim=6, sigma=0.5, zeta=1.0), workers, seed=0)
    cluster = SimCluster(workers)

    def fn(comm):
        torch.manual_seed(0)
        model = task.build_model()
        opt = build_optimizer(model.parameters(), inner)
        kwargs = {"sync_every": sync_every, "options": options}
        if outer is not None:
            kwargs["outer"] = outer
        algo = get_algorithm(name)(model, opt, comm, **kwargs)
        sampler = task.sampler(comm.rank, batch_size)
        for _ in range(steps):
            task.loss(model, sampler.next_batch()).backward()
            algo.step()
            algo.zero_grad()
        local = [p.detach().clone() for p in model.parameters()]
        with algo.eval_params() as m:
            ev = [p.detach().clone() for p in m.parameters()]
        return local, ev

    return cluster.run(fn), cluster


@pytest.fixture
def quad4():
    return Quadratic(QuadraticParams(dim=6, sigma=0.5, zeta=1.0), 4, seed=0)


def tiny_net():
    """The small float64 MLP (5 -> 8 -> 2) the optimizer tests train."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


def regression_batch(t):
    """Batch t of a fixed float64 regression stream: (16 x 5 inputs, 16 x 2 targets)."""
    g = torch.Generator().manual_seed(t)
    return torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)
