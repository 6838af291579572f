import pytest
import torch

from farsync.algorithms import get_algorithm
from farsync.comm import SimCluster
from farsync.optim import build_optimizer
from farsync.tasks.quadratic import Quadratic, QuadraticParams


@pytest.fixture
def one_thread():
    """One intra-op thread, as torchrun gives each process: simulated references then match
    torch.distributed runs bitwise (use with ``pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


def het_quadratic(workers=4, **kw):
    """The heterogeneous quadratic (d=6, sigma=0.5, zeta=1, seed 0) the algorithm tests train; `kw`
    overrides its parameters."""
    return Quadratic(QuadraticParams(**{"dim": 6, "sigma": 0.5, "zeta": 1.0, **kw}), workers, seed=0)


def run_gossip(name, task, steps, *, workers=4, inner=None, topology=None, options=None, compress=None, batch_size=2,
               before=None, after=None):
    """Train the decentralized algorithm `name` on the simulated cluster, passing the same-batch
    closure the training loop passes (`inner` default: SGD with lr 0.1; `compress` given only when
    not None). `before(algo, model)` (after backward) and `after(algo, model)` (after the step) record
    per step. Returns (per-rank dicts, cluster); each dict holds the final local "params" (and "x",
    flattened), the average model's "eval_params" (and "x_eval"), the "pre" and "post" records and
    the "consensus" error."""
    inner = {"name": "sgd", "lr": 0.1} if inner is None else inner
    cluster = SimCluster(workers)

    def fn(comm):
        torch.manual_seed(0)
        model = task.build_model()
        algo = get_algorithm(name)(model, build_optimizer(model.parameters(), inner), comm, topology=topology,
                                   options=options, **({} if compress is None else {"compress": compress}))
        sampler = task.sampler(comm.rank, batch_size)
        pre, post = [], []
        for _ in range(steps):
            batch = sampler.next_batch()
            task.loss(model, batch).backward()

            def closure(batch=batch):
                model.zero_grad(set_to_none=True)
                loss = task.loss(model, batch)
                loss.backward()
                return loss.detach()

            if before is not None:
                pre.append(before(algo, model))
            algo.step(None, closure)
            algo.zero_grad()
            if after is not None:
                post.append(after(algo, model))
        params = [p.detach().clone() for p in model.parameters()]
        with algo.eval_params() as m:
            eval_params = [p.detach().clone() for p in m.parameters()]
        return {"params": params, "x": torch.cat([p.reshape(-1) for p in params]),
                "eval_params": eval_params, "x_eval": torch.cat([p.reshape(-1) for p in eval_params]),
                "pre": pre, "post": post, "consensus": algo.consensus_error()}

    return cluster.run(fn), cluster


def gossip_cfg(name, topology="ring", *, workers=4, steps=20, task=None, **algo):
    """Config of a short run of the decentralized algorithm `name` (`algo`: its options) on `topology`."""
    return {
        "name": f"{name}-test",
        "task": task or {"name": "quadratic", "dim": 8, "zeta": 1.0},
        "cluster": {"workers": workers, "topology": topology, "step_time": "10ms"},
        "algorithm": {"name": name, "inner": {"name": "sgd", "lr": 0.2}, **algo},
        "train": {"steps": steps, "batch_size": 2, "eval_every": 10, "log_every": 5},
    }


def train_sim(name, workers, steps, inner, *, outer=None, sync_every=1, task=None, batch_size=2, options=None):
    """Train `name` on the simulated cluster; return (per-rank local params, eval params, cluster)."""
    task = task or het_quadratic(workers)
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
    return het_quadratic()


def tiny_net():
    """The small float64 MLP (5 -> 8 -> 2) the optimizer tests train."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


def regression_batch(t):
    """Batch t of a fixed float64 regression stream: (16 x 5 inputs, 16 x 2 targets)."""
    g = torch.Generator().manual_seed(t)
    return torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)
