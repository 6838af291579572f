"""Streaming DiLoCo: a slow reference, the reduction to DiLoCo, fragments, bytes, resume, bad input."""

import json

import pytest
import torch
from torch import nn

import farsync
from conftest import assert_crash_and_resume_reproduce, without_wall_time
from farsync.algorithms import get_algorithm
from farsync.algorithms.fragments import split_into_fragments
from farsync.checkpoint import latest_checkpoint, load_checkpoint
from farsync.comm import SimCluster
from farsync.runner import build_task
from farsync.tasks.gpt import GPT, GPTConfig

OUTER = {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def data(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)


def loss_fn(model, rank):
    x, y = data(rank)
    return ((model(x) - y) ** 2).mean()


def run_farsync(workers, steps, H, **options):
    options.setdefault("fragment_rule", "contiguous")  # net() has no block list to stride over

    def fn(comm):
        model = net()
        algo = get_algorithm("streaming-diloco")(model, torch.optim.SGD(model.parameters(), lr=0.05), comm,
                                                 sync_every=H, outer=OUTER, options=options)
        for _ in range(steps):
            loss_fn(model, comm.rank).backward()
            algo.step()
            algo.zero_grad()
        with algo.eval_params() as m:
            glob = [p.detach().clone() for p in m.parameters()]
        return [p.detach().clone() for p in model.parameters()], glob, algo.fragments

    return SimCluster(workers).run(fn)


def run_reference(workers, steps, H, fragments, delay=0, alpha=0.0, fragment_rule="contiguous"):
    """Streaming DiLoCo written out with explicit per-worker parameter lists, no communicator."""
    models = [net() for _ in range(workers)]
    inner = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    thetas = [list(m.parameters()) for m in models]
    frags = split_into_fragments(models[0], thetas[0], fragments, fragment_rule)
    phi = [nn.Parameter(p.detach().clone(), requires_grad=False) for p in thetas[0]]
    outer = [torch.optim.SGD([phi[i] for i in f], lr=0.7, momentum=0.9, nesterov=True) for f in frags]
    S, in_flight = H // fragments, None
    for t in range(1, steps + 1):
        for r in range(workers):
            loss_fn(models[r], r).backward()
            inner[r].step()
            inner[r].zero_grad()
        if (t + delay) % S == 0:
            k = (t + delay) // S
            f = (k - 1) % fragments
            deltas = [torch.cat([(phi[i] - thetas[r][i]).detach().reshape(-1) for i in frags[f]]) for r in range(workers)]
            mean = deltas[0].clone()
            for d in deltas[1:]:  # rank order, as the simulated all-reduce
                mean += d
            in_flight = (f, k * S, mean / workers)
        if in_flight is not None and in_flight[1] == t:
            f, _, mean = in_flight
            off = 0
            for i in frags[f]:
                phi[i].grad = mean[off : off + phi[i].numel()].view_as(phi[i]).clone()
                off += phi[i].numel()
            outer[f].step()
            with torch.no_grad():
                for r in range(workers):
                    for i in frags[f]:
                        thetas[r][i].copy_(torch.lerp(phi[i], thetas[r][i], alpha))
            in_flight = None
    return [[p.detach().clone() for p in th] for th in thetas], [p.detach().clone() for p in phi]


@pytest.mark.parametrize("fragments,delay,alpha", [(1, 0, 0.0), (2, 0, 0.0), (2, 1, 0.5), (4, 2, 0.0), (2, 2, 1.0)])
def test_matches_the_slow_reference(fragments, delay, alpha):
    H, steps, workers = 12, 50, 3
    got = run_farsync(workers, steps, H, fragments=fragments, delay=delay, alpha=alpha)
    thetas, phi = run_reference(workers, steps, H, fragments, delay, alpha)
    for r, (local, glob, _) in enumerate(got):
        for a, b in zip(local, thetas[r]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        for a, b in zip(glob, phi):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


TINY = {
    "name": "tiny", "seed": 1,
    "task": {"name": "shakespeare-gpt", "n_layer": 3, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8},
    "cluster": {"workers": 3},
    "algorithm": {"name": "diloco", "sync_every": 6, "inner": {"name": "adamw", "lr": 0.003}},
    "train": {"steps": 24, "batch_size": 4, "eval_every": 12, "log_every": 6},
}


def with_algo(**algo):
    return {**TINY, "algorithm": {**TINY["algorithm"], **algo}}


def final_params(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


@pytest.mark.parametrize("compress", [None, {"name": "int4", "block": 32, "error_feedback": "ef"}])
def test_one_fragment_no_delay_no_mixing_is_diloco_exactly(tmp_path, compress):
    dil = farsync.run(with_algo(compress=compress), out=tmp_path / "d", progress=False)
    st = farsync.run(with_algo(name="streaming-diloco", fragments=1, delay=0, alpha=0.0, compress=compress), out=tmp_path / "s", progress=False)
    assert without_wall_time(st.metrics) == without_wall_time(dil.metrics)
    a, b = final_params(st.run_dir), final_params(dil.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fragments_send_the_same_total_with_a_peak_of_the_largest_fragment(tmp_path):
    dil = farsync.run(TINY, out=tmp_path / "d", progress=False)
    st = farsync.run(with_algo(name="streaming-diloco", fragments=3, delay=1), out=tmp_path / "s", progress=False)
    assert st.summary["bytes_sent_total"] == dil.summary["bytes_sent_total"]  # every fragment syncs every H steps
    # the peak is the largest fragment's ring all-reduce: 2 (n-1)/n x 4 bytes x its size
    model = build_task(farsync.load_config(TINY)).build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    frags = split_into_fragments(model, params, 3)
    largest = max(sum(params[i].numel() for i in f) for f in frags)
    assert st.summary["peak_bytes_per_sync"] == 2 * 2 * largest * 4 // 3
    assert st.summary["peak_bytes_per_sync"] < 0.45 * dil.summary["peak_bytes_per_sync"]


def test_strided_fragments_take_every_fth_block_and_balance_the_rest():
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=4, n_head=2, n_embd=8))
    params = list(model.parameters())
    frags = split_into_fragments(model, params, 2)
    index = {id(p): i for i, p in enumerate(params)}
    for b, block in enumerate(model.blocks):
        assert all(index[id(p)] in frags[b % 2] for p in block.parameters())
    assert sorted(i for f in frags for i in f) == list(range(len(params)))  # a partition
    sizes = [sum(params[i].numel() for i in f) for f in frags]
    assert max(sizes) / min(sizes) < 1.3


def test_contiguous_fragments_partition_in_order():
    params = [torch.zeros(n) for n in (100, 1, 1, 50, 50, 3)]
    frags = split_into_fragments(nn.Module(), params, 3, "contiguous")
    assert frags == [[0], [1, 2, 3], [4, 5]]
    assert split_into_fragments(nn.Module(), params, 6, "contiguous") == [[i] for i in range(6)]
    with pytest.raises(ValueError, match=r"fragments must be in \[1, 6\]"):
        split_into_fragments(nn.Module(), params, 7)


def test_schedule_fragment_k_syncs_every_h_steps_from_step_k_plus_1_times_s():
    starts = []

    def fn(comm):
        model = net()
        algo = get_algorithm("streaming-diloco")(model, torch.optim.SGD(model.parameters(), lr=0.05), comm,
                                                 sync_every=8, options={"fragments": 4, "delay": 1, "fragment_rule": "contiguous"})
        start = algo._start
        algo._start = lambda fragment, apply_at: (starts.append((algo.local_step + 1, fragment, apply_at)), start(fragment, apply_at))
        for _ in range(16):
            loss_fn(model, 0).backward()
            algo.step()
            algo.zero_grad()

    SimCluster(1).run(fn)
    assert starts == [(2 * k - 1, (k - 1) % 4, 2 * k) for k in range(1, 9)]


def test_resume_with_a_reduction_in_flight_reproduces_the_run(tmp_path, monkeypatch):
    # S = 3, delay 1: reductions start after steps 2, 5, 8, ... and land after 3, 6, 9, ...; the
    # checkpoint after step 8 holds one in flight.
    cfg = dict(with_algo(name="streaming-diloco", fragments=2, delay=1, alpha=0.5, compress={"name": "int8", "error_feedback": "ef"}),
               train={**TINY["train"], "log_every": 4, "checkpoint_every": 8})
    def in_flight(run_dir):
        ckpt = load_checkpoint(latest_checkpoint(run_dir))
        assert ckpt["step"] == 8 and all(w["algorithm"]["pending"]["apply_at"] == 9 for w in ckpt["workers"])

    assert_crash_and_resume_reproduce(cfg, tmp_path, monkeypatch, "1:10", in_flight)


@pytest.mark.parametrize("algo,msg", [
    ({"fragments": 4}, "sync_every (6) must be a multiple of fragments (4)"),
    ({"fragments": 2, "delay": 3}, "delay must be < sync_every / fragments = 3, got 3"),
    ({"compress": {"name": "powersgd"}}, "does not support compress: powersgd"),
    ({"alpha": 1.5}, "alpha"),
    ({"fragments": 2, "fragment_rule": "random"}, "fragment_rule"),
])
def test_bad_streaming_configs_fail_before_training(tmp_path, algo, msg):
    with pytest.raises((farsync.ConfigError, ValueError), match=msg.replace("(", r"\(").replace(")", r"\)")):
        farsync.run(with_algo(name="streaming-diloco", **algo), out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "metrics.jsonl").exists() or json.loads((tmp_path / "r" / "summary.json").read_text())["status"] != "completed"


def test_eager_fragments_wait_for_their_all_reduce_only_where_they_apply_it(tmp_path):
    """Eager overlap with F = 2: fragment f's all-reduce is waited for H inner steps later, where f
    applies it, not at the next synchronization of the other fragment (the torchft round closes
    there, but on the simulator that commit is a no-op). Golden clock, from commit fa8e88c (before
    torchft rounds existed); waiting at the other fragment's sync gives 21.472 s, 19.872 s blocked."""
    import yaml

    cfg = {"name": "se", "seed": 0, "task": {"name": "logreg"},
           "cluster": {"workers": 3, "bandwidth": "1Mbps", "latency": "10ms", "bytes_scale": 2000, "step_time": "50ms",
                       "threads": 1},
           "algorithm": {"name": "streaming-diloco", "sync_every": 8, "fragments": 2, "overlap": "eager", "delay": 0,
                         "alpha": 0, "fragment_rule": "contiguous", "inner": {"name": "sgd", "lr": 0.05}},
           "train": {"steps": 32, "batch_size": 4, "eval_every": 16, "log_every": 8}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert farsync.run(str(path), out=tmp_path / "o", progress=False).status == "completed"
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["sim_time_s"] == pytest.approx(16.312, abs=1e-9)
    assert s["blocked_time_s_per_worker"] == pytest.approx([14.712] * 3, abs=1e-9)
