"""Training knobs (issue 24, item 3): train.precision (bf16 / fp16 with loss scaling),
train.grad_accum, and Streaming DiLoCo's fragments by module name."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import farsync
import tempfile
from farsync.algorithms.fragments import fragments_by_name, split_into_fragments
from farsync.config import ConfigError, load_config
from farsync.microbatch import MicroBatches, autocast, grad_scaler
from farsync.runner import build_task

from conftest import assert_crash_and_resume_reproduce, without_wall_time

GPT = {"name": "shakespeare-gpt", "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8}
CFG = {
    "name": "knobs", "seed": 3, "task": GPT, "cluster": {"workers": 2, "step_time": 0.1},
    "algorithm": {"name": "ddp", "inner": {"name": "adamw", "lr": 0.003}},
    "train": {"steps": 8, "batch_size": 4, "eval_every": 4, "log_every": 2},
}
LOGREG = {
    "name": "logreg", "seed": 1, "task": {"name": "logreg", "dataset": "breast_cancer"}, "cluster": {"workers": 2, "step_time": 0.1},
    "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.05}},
    "train": {"steps": 10, "batch_size": 8, "eval_every": 5, "log_every": 1},
}


def cfg(base, **train):
    c = copy.deepcopy(base)
    c["train"].update(train)
    return c


_TMP = tempfile.mkdtemp(prefix="farsync-knobs-")
_N = [0]


def run(c):
    _N[0] += 1
    return farsync.run(c, out=f"{_TMP}/run{_N[0]}", progress=False)


def records(result):
    return [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- precision
@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_the_linear_layers_in_the_precision_and_keeps_fp32_gradients(precision, dtype):
    task = build_task(load_config({"task": GPT, "cluster": {"workers": 2}}))
    torch.manual_seed(0)
    model = task.build_model()
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    batch = task.sampler(0, 4).next_batch()
    loss = MicroBatches(precision).backward(lambda b: task.loss(model, b), [batch])
    assert set(seen) == {dtype}
    assert loss.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        ref = task.loss(model, batch)
    if precision == "fp32":
        assert loss == ref  # no autocast: bit for bit the plain loss
    else:
        assert loss != ref and loss.item() == pytest.approx(ref.item(), rel=2e-2)  # really lower precision, still close


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; valid choices: fp32, bf16, fp16"):
        autocast("fp8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision"):
        load_config(cfg(CFG, precision="fp8"))


def test_bf16_and_fp16_runs_train_close_to_fp32_with_the_same_bytes():
    runs = {p: run(cfg(CFG, precision=p)) for p in ("fp32", "bf16", "fp16")}
    base = records(runs["fp32"])
    for p in ("bf16", "fp16"):
        rec = records(runs[p])
        assert [r["bytes_sent"] for r in rec] == [r["bytes_sent"] for r in base]  # payloads stay fp32
        assert [r["train_loss"] for r in rec] != [r["train_loss"] for r in base]
        for a, b in zip(rec, base):
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=0.02)
        assert rec[-1]["train_loss"] < rec[0]["train_loss"]
    fp16 = records(runs["fp16"])
    assert all(r["loss_scale"] == 2.0**16 and r["skipped_steps"] == 0 for r in fp16)  # no overflow at the default scale
    assert "loss_scale" not in records(runs["bf16"])[0]


@pytest.mark.parametrize("algorithm", [{"name": "ddp", "inner": {"name": "adamw", "lr": 0.003}},
                                       {"name": "diloco", "sync_every": 4, "inner": {"name": "adamw", "lr": 0.003}}])
def test_fp16_overflow_skips_the_step_halves_the_scale_and_keeps_the_workers_equal(algorithm):
    """Loss scale 2^30 overflows fp16 in the backward: every step is skipped (the model stays the
    initial one) and the scale halves each step. In DDP the decision follows the all-reduced
    gradient, so both workers skip together."""
    c = cfg({**CFG, "algorithm": algorithm}, precision="fp16", loss_scale=2.0**30, steps=6, eval_every=0)
    rec = records(run(c))
    assert [(r["step"], r["loss_scale"], r["skipped_steps"]) for r in rec] == [(2, 2.0**28, 2), (4, 2.0**26, 4), (6, 2.0**24, 6)]
    torch.manual_seed(c["seed"])
    initial = build_task(load_config(c)).build_model().state_dict()
    result = run(c)
    final = torch.load(result.run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], initial[k]) for k in initial)


def test_fp16_grad_scaler_with_wrap_on_the_simulator_keeps_ddp_replicas_equal():
    """The `wrap` path: scaler.scale(loss).backward(); algo.step() unscales after the all-reduce."""
    torch.manual_seed(0)
    xs, ys = torch.randn(2, 20, 8), torch.randn(2, 20, 1)

    def train(comm):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm="ddp")
        scaler = grad_scaler("fp16", torch.device("cpu"), init_scale=2.0**20)
        algo.use_grad_scaler(scaler)
        micro = MicroBatches("fp16", scaler=scaler)
        x, y = xs[comm.rank] * (1e3 if comm.rank == 1 else 1.0), ys[comm.rank]  # rank 1's gradients overflow first
        for _ in range(8):
            micro.backward(lambda b: torch.nn.functional.mse_loss(model(b[0]), b[1]), [(x, y)])
            algo.step()
            algo.zero_grad()
        return algo.skipped_steps, scaler.get_scale(), torch.cat([p.detach().flatten() for p in model.parameters()])

    (s0, scale0, w0), (s1, scale1, w1) = farsync.simulate(train, workers=2, progress=False).results
    assert s0 == s1 > 0 and scale0 == scale1  # both skipped the same steps
    assert torch.equal(w0, w1)


@pytest.mark.parametrize("change,message", [
    ({"algorithm": {"name": "gradient-tracking", "inner": {"name": "sgd", "lr": 0.1}}, "cluster": {"workers": 2, "topology": "ring"}},
     "gradient-tracking reads the gradients beyond its inner optimizer's step"),
    ({"algorithm": {"name": "diloco", "sync_every": 2, "inner": {"name": "prodigy"}}}, "cannot take the inner optimizer 'prodigy'"),
    ({"algorithm": {"name": "ddp", "compress": {"name": "int8"}}}, "error feedback would keep loss-scaled"),
])
def test_fp16_combinations_that_cannot_work_are_refused_before_work(change, message):
    with pytest.raises(ConfigError, match=message):
        load_config({**cfg(CFG, precision="fp16"), **change})


def test_batched_simulator_refuses_precision_and_accumulation():
    for train in ({"precision": "bf16"}, {"grad_accum": 2}):
        c = cfg(CFG, **train)
        c["cluster"] = {**c["cluster"], "batched": True}
        with pytest.raises(ConfigError, match="cluster.batched runs fp32 with one batch per step"):
            load_config(c)


def test_wrap_refuses_a_grad_scaler_where_the_gradients_are_used_beyond_the_step():
    def train(comm):
        model = torch.nn.Linear(3, 1)
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm="gradient-tracking", topology="ring")
        with pytest.raises(ValueError, match="fp16 works with .*diloco"):
            algo.use_grad_scaler(grad_scaler("fp16", torch.device("cpu")))
        return True

    assert farsync.simulate(train, workers=2, progress=False).results == [True, True]


def test_fp16_run_killed_mid_run_resumes_bitwise_with_its_loss_scale(tmp_path, monkeypatch):
    c = cfg(CFG, precision="fp16", loss_scale=2.0**22, checkpoint_every=4, steps=8)  # skips some steps before the kill
    full = assert_crash_and_resume_reproduce(c, tmp_path, monkeypatch, "1:6")
    assert 0 < full.metrics[-1]["skipped_steps"] < 8


# ---------------------------------------------------------------- gradient accumulation
def test_grad_accum_k_equals_one_batch_k_times_larger_and_charges_k_steps():
    """Micro-batches are drawn one after another, so k of b samples are the samples of one batch of
    k x b: the same trajectory to float rounding, the same tokens, k times the compute per step."""
    acc = run(cfg(LOGREG, batch_size=8, grad_accum=3))
    big = run(cfg(LOGREG, batch_size=24))
    one = run(cfg(LOGREG, batch_size=8))
    ra, rb = records(acc), records(big)
    assert [r["tokens"] for r in ra] == [r["tokens"] for r in rb] == [3 * r["tokens"] for r in records(one)]
    assert [r["bytes_sent"] for r in ra] == [r["bytes_sent"] for r in records(one)]  # one all-reduce per step
    for a, b in zip(ra, rb):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
        if "eval_loss" in a:
            assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-6)
    assert [a["train_loss"] for a in ra] != [b["train_loss"] for b in records(one)]
    assert acc.summary["compute_time_s_per_worker"] == pytest.approx([3 * 10 * 0.1] * 2)
    assert one.summary["compute_time_s_per_worker"] == pytest.approx([10 * 0.1] * 2)


def test_grad_accum_one_is_the_plain_loop_bit_for_bit():
    assert without_wall_time(records(run(cfg(CFG, grad_accum=1)))) == \
        without_wall_time(records(run(CFG)))


def test_grad_accum_run_killed_mid_run_resumes_bitwise(tmp_path, monkeypatch):
    c = {**cfg(CFG, grad_accum=2, checkpoint_every=4), "algorithm": {"name": "diloco", "sync_every": 2}}
    assert_crash_and_resume_reproduce(c, tmp_path, monkeypatch, "0:6")


# ---------------------------------------------------------------- fragments by name
def gpt(n_layer=4):
    torch.manual_seed(0)
    return build_task(load_config({"task": {**GPT, "n_layer": n_layer}, "cluster": {"workers": 2}})).build_model()


def test_fragments_by_name_equal_the_strided_rule_when_they_name_its_split():
    model = gpt()
    params = [p for p in model.parameters() if p.requires_grad]
    strided = split_into_fragments(model, params, 2, "strided")
    names = [n for n, _ in model.named_parameters()]
    by_name = [[names[i] for i in frag] for frag in strided]  # each parameter by its own name
    assert fragments_by_name(model, params, by_name) == strided
    modules = [["blocks.0", "blocks.2", "wte"], ["blocks.1", "blocks.3", "wpe", "ln_f"]]  # lm_head is tied to wte
    frags = fragments_by_name(model, params, modules)
    assert sorted(i for f in frags for i in f) == list(range(len(params)))
    assert {names[i].split(".")[0] + (("." + names[i].split(".")[1]) if names[i].startswith("blocks") else "")
            for i in frags[1]} == {"blocks.1", "blocks.3", "wpe", "ln_f"}


@pytest.mark.parametrize("fragments,message", [
    ([["blocks.0", "blocks.2"], ["blocks.1", "blocks.3"]], r"in none: wte.weight, wpe.weight, ln_f.weight"),
    ([["blocks.0", "blocks.2", "wte"], ["blocks.1", "blocks.3", "wpe", "ln_f", "lm_head"]], r"wte.weight in fragments \[0, 1\].*tied"),
    ([["blocks", "wte"], ["blocks.1", "wpe", "ln_f"]], r"in more than one \(blocks.1.ln1.weight in fragments \[0, 1\]"),
    ([["blocks.7"], ["blocks", "wte", "wpe", "ln_f"]], r"fragments\[0\]: 'blocks.7' is not a module or parameter"),
    ([[], ["blocks", "wte", "wpe", "ln_f"]], r"fragments\[0\] is empty"),
])
def test_fragments_by_name_that_miss_or_repeat_a_parameter_are_refused_before_work(tmp_path, fragments, message):
    c = {**CFG, "task": {**GPT, "n_layer": 4}, "algorithm": {"name": "streaming-diloco", "sync_every": 4, "fragments": fragments}}
    with pytest.raises(ConfigError, match=message):
        farsync.run(c, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_streaming_diloco_with_named_fragments_equals_the_same_split_by_rule():
    """Naming the strided rule's split gives the same run as the rule, bit for bit."""
    model = gpt()
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, _ in model.named_parameters()]
    named = [[names[i] for i in f] for f in split_into_fragments(model, params, 2, "strided")]
    base = {**CFG, "task": {**GPT, "n_layer": 4},
            "algorithm": {"name": "streaming-diloco", "sync_every": 4, "fragments": 2, "delay": 1, "inner": {"name": "adamw", "lr": 0.003}}}
    by_rule = run(base)
    by_name = run({**base, "algorithm": {**base["algorithm"], "fragments": named}})
    assert by_name.status == "completed"
    assert without_wall_time(by_name.metrics) == without_wall_time(by_rule.metrics)
    assert by_name.summary["peak_bytes_per_sync"] == by_rule.summary["peak_bytes_per_sync"]


@pytest.mark.parametrize("train", [{"grad_accum": 2}, {"precision": "fp16", "loss_scale": 2.0**30}])
def test_the_async_loop_takes_the_knobs(train):
    """async-local-sgd (server loop, async_loop.py): k micro-batches count k x the tokens and
    k x the compute; fp16 overflow is skipped on the workers and counted."""
    base = {**CFG, "cluster": {"workers": 2, "step_time": 0.1},
            "algorithm": {"name": "async-local-sgd", "sync_every": 2, "inner": {"name": "adamw", "lr": 0.003}}}
    plain, knob = run(base), run(cfg(base, **train))
    assert knob.status == "completed"
    if "grad_accum" in train:
        assert knob.summary["tokens"] == 2 * plain.summary["tokens"]
        assert sum(knob.summary["compute_time_s_per_worker"]) == pytest.approx(2 * sum(plain.summary["compute_time_s_per_worker"]))
    else:  # every worker step overflowed and was skipped: the served model never moved
        torch.manual_seed(base["seed"])
        initial = build_task(load_config(base)).build_model().state_dict()
        final = torch.load(knob.run_dir / "model.pt", weights_only=True)
        assert all(torch.equal(final[k], initial[k]) for k in initial)
