"""What a new user hits first: numbers in YAML, identical replicas and the buffer policy, configs
refused before any work, one config over several algorithms, progress without a terminal,
resume to a larger budget or on the other backend, and Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import farsync
from farsync.cli import main
from farsync.config import load_config
from farsync.report import run_labels
from farsync.sweep import sweep
from farsync.units import format_loss
from farsync.yamlio import load_yaml

from conftest import assert_crash_and_resume_reproduce, without_wall_time

TINY = {
    "name": "tiny", "seed": 3,
    "task": {"name": "shakespeare-gpt", "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8},
    "cluster": {"workers": 2, "bandwidth": "100Mbps", "latency": "5ms"},
    "algorithm": {"name": "diloco", "sync_every": 3, "inner": {"name": "adamw", "lr": 0.003}},
    "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "log_every": 3},
}
BN = {  # a model with BatchNorm; worker r's inputs are shifted by r
    "name": "bn", "seed": 0, "task": {"name": "custom_tasks:BatchNormRegression"}, "cluster": {"workers": 3},
    "algorithm": {"name": "diloco", "sync_every": 4, "inner": {"name": "sgd", "lr": 0.01}},
    "train": {"steps": 12, "batch_size": 8, "eval_every": 4, "log_every": 4},
}


def write(tmp_path, text_or_cfg, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text_or_cfg if isinstance(text_or_cfg, str) else yaml.safe_dump(text_or_cfg))
    return p


# ---------------------------------------------------------------- 1. numbers in YAML
NUMBERS = [("3e-4", 3e-4), ("1E-3", 1e-3), ("1.0e3", 1000.0), (".5", 0.5), ("5.", 5.0), ("1_000.5", 1000.5),
           ("+2.5e+2", 250.0), ("-1e-2", -0.01)]


@pytest.mark.parametrize("text,value", NUMBERS)
def test_every_float_spelling_loads_as_a_number(text, value):
    got = load_yaml(text, "x")
    assert isinstance(got, float) and got == value


def test_integers_underscores_and_quoted_text():
    assert load_yaml("1_000", "x") == 1000 and isinstance(load_yaml("1_000", "x"), int)
    assert load_yaml("'3e-4'", "x") == "3e-4"  # quoted: text
    assert load_yaml("1:30", "x") == "1:30"  # no base-60 numbers
    assert load_yaml("1e", "x") == "1e"


def test_numbers_load_from_file_set_and_run_overrides(tmp_path):
    path = write(tmp_path, """
task: {name: quadratic, dim: 4}
cluster: {workers: 2}
algorithm:
  name: diloco
  sync_every: 2
  inner: {name: adamw, lr: 3e-4, weight_decay: 1e-2}
  outer: {name: sgd, lr: 7e-1, momentum: 9e-1, nesterov: true}
train: {steps: 1e1, batch_size: 2, eval_every: 5, log_every: 5}
""")
    cfg = load_config(path)
    assert cfg.algorithm.inner == {"name": "adamw", "lr": 3e-4, "weight_decay": 1e-2}
    assert cfg.algorithm.outer["momentum"] == 0.9 and cfg.train.steps == 10
    cfg = load_config(path, ["algorithm.inner.lr=1e-3", "algorithm.outer.lr=.5"])
    assert cfg.algorithm.inner["lr"] == 1e-3 and cfg.algorithm.outer["lr"] == 0.5
    res = farsync.run(path, overrides=["algorithm.inner.lr=1E-2"], out=tmp_path / "r", progress=False)
    assert res.status == "completed"
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["algorithm"]["inner"]["lr"] == 0.01


def test_numbers_in_a_grid(tmp_path):
    path = write(tmp_path, dict(TINY, task={"name": "quadratic", "dim": 4}, train=dict(TINY["train"], steps=3)))
    report = sweep([str(path)], ["algorithm.inner.lr=1e-3,3e-4"], out=tmp_path / "sw")
    rows = [json.loads(line) for line in (tmp_path / "sw" / "sweep.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["completed"] * 2
    lrs = [yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())["algorithm"]["inner"]["lr"] for r in rows]
    assert lrs == [1e-3, 3e-4]
    assert report.is_file()


@pytest.mark.parametrize("override,msg", [
    ("algorithm.inner.weight_decay=abc", "algorithm.inner.weight_decay must be a number, got 'abc'"),
    ("algorithm.outer.momentum=fast", "algorithm.outer.momentum must be a number, got 'fast'"),
    ("algorithm.inner.lr='3e-4'", "algorithm.inner.lr must be a finite number > 0, got '3e-4'"),
    ("train.batch_size=abc", "train.batch_size"),
])
def test_text_in_a_number_field_names_the_key(override, msg):
    with pytest.raises(farsync.ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_config(TINY, [override])


# ---------------------------------------------------------------- 2. identical replicas, buffers
ALGOS = ["ddp", "local-sgd", "diloco", "streaming-diloco", "eager-diloco", "dsgd", "decoupled-momentum"]


@pytest.mark.parametrize("name", ALGOS)
def test_wrap_makes_per_rank_seeded_replicas_identical(name):
    def fn(comm):
        torch.manual_seed(100 + comm.rank)  # a user who seeds per rank
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
        with torch.no_grad():
            model[1].running_mean.add_(comm.rank)
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), name)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        held = [g.clone() for g in getattr(algo, "global_params", [])]  # DiLoCo's phi is made from the copy
        return state, held

    results = farsync.simulate(fn, workers=3).results
    torch.manual_seed(100)
    want = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).state_dict()
    for state, held in results:
        assert all(torch.equal(state[k], want[k]) for k in want)  # rank 0's, buffers included
        assert all(torch.equal(a, b) for a, b in zip(held, results[0][1]))


def test_init_check_refuses_replicas_that_differ_and_accepts_equal_ones():
    def fn(comm, seed_per_rank):
        torch.manual_seed(comm.rank if seed_per_rank else 0)
        model = nn.Linear(3, 1)
        farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "ddp", init="check")
        return model.weight.detach().clone()

    with pytest.raises(ValueError, match=r"init='check'.*'weight' on rank\(s\) 1, 2 is not rank 0's"):
        farsync.simulate(lambda c: fn(c, True), workers=3)
    torch.manual_seed(0)
    want = nn.Linear(3, 1).weight
    res = farsync.simulate(lambda c: fn(c, False), workers=3).results
    assert all(torch.equal(r, want) for r in res)
    with pytest.raises(ValueError, match="init must be one of broadcast, check"):
        farsync.simulate(lambda c: farsync.wrap(nn.Linear(1, 1), torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1), "ddp", init="no"),
                         workers=1)


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


def bn_batch(rank, step):
    g = torch.Generator().manual_seed(10 * step + rank)
    x = torch.randn(8, 3, generator=g) + rank
    return x, x.sum(dim=1, keepdim=True)


def train_bn(name, steps, sync_every=1):
    """Per step and rank: buffers after backward (before the step) and after the step, and at the
    end the evaluated model's buffers and the local ones."""

    def fn(comm):
        model = bn_net()
        kw = {"sync_every": sync_every} if sync_every != 1 else {}
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.01), name, **kw)
        pre, post = [], []
        for t in range(steps):
            x, y = bn_batch(comm.rank, t)
            nn.functional.mse_loss(model(x), y).backward()
            pre.append([b.clone() for b in model[1].buffers()])
            algo.step()
            algo.zero_grad()
            post.append([b.clone() for b in model[1].buffers()])
        with algo.eval_params() as m:
            evaluated = [b.clone() for b in m[1].buffers()]
        return pre, post, evaluated, [b.clone() for b in model[1].buffers()]

    return farsync.simulate(fn, workers=3).results


def test_ddp_keeps_rank0s_buffers_on_every_worker_as_torch_ddp():
    res = train_bn("ddp", steps=3)
    for t in range(3):
        for rank in range(3):
            assert all(torch.equal(a, b) for a, b in zip(res[rank][1][t], res[0][0][t]))  # rank 0's, after its step
    assert not torch.equal(res[1][0][0][0], res[0][0][0][0])  # the workers' own statistics differed


def test_diloco_averages_float_buffers_at_each_sync_and_evaluates_them():
    H, steps = 2, 5  # syncs after steps 2 and 4; step 5 drifts locally
    res = train_bn("diloco", steps, sync_every=H)
    for t in (H - 1, 2 * H - 1):
        mean = torch.stack([res[r][0][t][0] for r in range(3)]).mean(0)  # running_mean before the sync
        for r in range(3):
            assert torch.allclose(res[r][1][t][0], mean, atol=1e-6)
            assert torch.equal(res[r][1][t][1], res[0][1][t][1])  # running_var identical too
            assert torch.equal(res[r][1][t][2], res[r][0][t][2])  # num_batches_tracked: local (equal anyway)
    evaluated, local = res[0][2], res[0][3]
    assert all(torch.equal(e, s) for e, s in zip(evaluated[:2], res[0][1][2 * H - 1][:2]))  # as of the last sync
    assert not torch.equal(evaluated[0], local[0])  # not the drifted local statistics


def test_bn_runner_checkpoints_identical_buffers_at_a_sync_and_resumes(tmp_path, monkeypatch):
    cfg = dict(BN, train=dict(BN["train"], checkpoint_every=4))
    full = assert_crash_and_resume_reproduce(cfg, tmp_path, monkeypatch, "1:10")
    assert full.status == "completed"
    from farsync.checkpoint import latest_checkpoint, load_checkpoint

    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "crashed"))
    assert ckpt["step"] == 8  # a sync step
    means = [w["model"]["1.running_mean"] for w in ckpt["workers"]]
    assert all(torch.equal(m, means[0]) for m in means)
    ddp = farsync.run(dict(cfg, algorithm={"name": "ddp", "inner": {"name": "sgd", "lr": 0.01}}), out=tmp_path / "ddp", progress=False)
    assert ddp.status == "completed"
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "ddp"))
    assert all(torch.equal(w["model"]["1.running_var"], ckpt["workers"][0]["model"]["1.running_var"]) for w in ckpt["workers"])


# ---------------------------------------------------------------- 3. refused before any work
def refused(tmp_path, capsys, argv, msg, out=None):
    out = tmp_path / "run" if out is None else out
    assert main(["run", *map(str, argv), "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert msg in err, err
    return out


@pytest.mark.parametrize("cfg,msg", [
    (dict(TINY, algorithm=dict(TINY["algorithm"], sync_every=7)),
     "algorithm.sync_every (7) is larger than train.steps (6): the workers would never synchronize"),
    (dict(TINY, algorithm=dict(TINY["algorithm"], name="streaming-diloco", sync_every=6, fragments=3)),
     "algorithm.fragments (3) is larger than the 2 blocks of the model"),
    (dict(BN, algorithm=dict(BN["algorithm"], name="streaming-diloco", fragments=2)),
     "algorithm.fragments (2) needs blocks to stride over, but the model has no block list"),
])
def test_configs_that_cannot_do_what_they_say_exit_2_before_writing(tmp_path, capsys, cfg, msg):
    out = refused(tmp_path, capsys, [write(tmp_path, cfg)], msg)
    assert not out.exists()


def test_contiguous_fragments_stay_available(tmp_path):
    cfg = dict(TINY, algorithm=dict(TINY["algorithm"], name="streaming-diloco", sync_every=6, fragments=3,
                                    fragment_rule="contiguous"))
    assert farsync.run(cfg, out=tmp_path / "r", progress=False).status == "completed"


def test_empty_file_and_yaml_syntax_errors(tmp_path, capsys):
    out = refused(tmp_path, capsys, [write(tmp_path, "", "empty.yaml")], "empty.yaml is empty")
    assert not out.exists()
    bad = write(tmp_path, "task:\n  name: quadratic\n train: {steps: 3}\n", "bad.yaml")
    out = refused(tmp_path, capsys, [bad], f"{bad}, line 3, column 2: YAML syntax error")
    assert not out.exists()
    out = refused(tmp_path, capsys, [write(tmp_path, TINY), "--set", "train.steps=[1"], "--set train.steps=[1")
    assert not out.exists()


def test_out_that_is_a_file_or_cannot_be_made(tmp_path, capsys):
    cfg = write(tmp_path, TINY)
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    refused(tmp_path, capsys, [cfg], "is a file, not a directory", out=mine)
    assert mine.read_text() == "my notes\n"
    refused(tmp_path, capsys, [cfg], "cannot write the run directory", out=mine / "run")
    assert mine.read_text() == "my notes\n"


def test_losses_print_readably_and_a_blow_up_is_named(tmp_path, capsys):
    assert format_loss(3.14159265) == "3.1416" and format_loss(1.2345e130) == "1.2345e+130"
    assert format_loss(2.5e-7) == "2.5000e-07" and format_loss(None) == "-" and format_loss(float("nan")) == "nan"
    cfg = {"name": "blowup", "task": {"name": "quadratic", "dim": 4, "sigma": 0.0}, "cluster": {"workers": 2},
           "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 2.6}},  # L = 1: |1 - lr| > 1 diverges
           "train": {"steps": 40, "batch_size": 1, "eval_every": 0, "log_every": 5}}
    assert main(["run", str(write(tmp_path, cfg)), "--quiet", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "completed" and s["diverged"] is True and "loss diverged" in s["warning"]
    assert "warning: loss diverged" in out and "e+" in out.split("final eval loss: ")[1].split()[0]
    calm = farsync.run(dict(cfg, algorithm={"name": "ddp", "inner": {"name": "sgd", "lr": 0.5}}), out=tmp_path / "c", progress=False)
    assert "diverged" not in calm.summary


# ---------------------------------------------------------------- 4. one config, several algorithms
def test_set_algorithm_name_on_a_diloco_config_ignores_its_keys_with_a_note(tmp_path, capsys):
    cfg = dict(TINY, algorithm=dict(TINY["algorithm"], outer={"name": "sgd", "lr": 0.5}, name="streaming-diloco",
                                    fragments=2, sync_every=6))
    path = write(tmp_path, cfg)
    assert main(["run", str(path), "--quiet", "--set", "algorithm.name=ddp", "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert ("note: algorithm 'ddp' does not use algorithm.outer, algorithm.sync_every, algorithm.fragments "
            "(options of other algorithms); ignored") in err
    resolved = yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())["algorithm"]
    assert resolved["name"] == "ddp" and "fragments" not in resolved and resolved["sync_every"] == 1
    with pytest.raises(farsync.ConfigError, match="unknown key 'fragmnts'"):  # a typo is still an error
        load_config(dict(cfg, algorithm=dict(cfg["algorithm"], fragmnts=2)), ["algorithm.name=ddp"])


@pytest.mark.parametrize("algo,ignored", [
    ({"name": "ddp", "sync_every": {"rule": "qsr", "base": 2, "alpha": 0.1}}, "algorithm.sync_every"),
    ({"name": "dude-asgd", "sync_every": 4}, "algorithm.sync_every"),
    ({"name": "dude-asgd", "outer": {"name": "sgd", "lr": 1.0}}, "algorithm.outer"),
    ({"name": "fspda", "weights": "uniform"}, "algorithm.weights"),  # dsgd's mixing weights
])
def test_keys_of_other_algorithms_are_ignored_with_a_note(algo, ignored):
    cfg = load_config(dict(TINY, algorithm={**algo, "inner": {"name": "sgd", "lr": 0.1}},
                           cluster=dict(TINY["cluster"], topology="ring") if algo["name"] == "fspda" else TINY["cluster"]))
    assert cfg.notes() == [f"note: algorithm {algo['name']!r} does not use {ignored} (options of other algorithms); ignored"]
    resolved = cfg.to_dict()["algorithm"]
    assert "weights" not in resolved and resolved["sync_every"] == 1


def test_unset_removes_a_key(tmp_path, capsys):
    path = write(tmp_path, dict(TINY, algorithm=dict(TINY["algorithm"], outer={"name": "sgd", "lr": 0.5})))
    cfg = load_config(path, ["algorithm.sync_every=2"], unset=["algorithm.outer"])
    assert cfg.algorithm.outer == {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}
    assert main(["run", str(path), "--quiet", "--unset", "algorithm.outr", "--out", str(tmp_path / "r")]) == 2
    assert "--unset algorithm.outr: the config has no key 'algorithm.outr'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_sweep_over_four_algorithms_from_one_diloco_config(tmp_path):
    cfg = dict(TINY, algorithm=dict(TINY["algorithm"], sync_every=2, fragments=2), train=dict(TINY["train"], steps=4, log_every=2, eval_every=2))
    path = write(tmp_path, cfg)
    assert main(["sweep", str(path), "--grid", "algorithm.name=ddp,local-sgd,diloco,streaming-diloco",
                 "--out", str(tmp_path / "sw"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "sw" / "sweep.jsonl").read_text().splitlines()]
    assert [r["algorithm.name"] for r in rows] == ["ddp", "local-sgd", "diloco", "streaming-diloco"]
    assert all(r["status"] == "completed" for r in rows)
    by = {r["algorithm.name"]: r["bytes_sent_total"] for r in rows}
    assert by["ddp"] == 2 * by["diloco"] and by["diloco"] == by["local-sgd"] == by["streaming-diloco"]


def test_legends_name_the_keys_that_differ():
    base = load_config(TINY).to_dict()
    ddp = load_config(TINY, ["algorithm.name=ddp"]).to_dict()
    h6 = load_config(TINY, ["algorithm.sync_every=6"]).to_dict()
    assert run_labels(["tiny"] * 3, [base, ddp, h6]) == [
        "tiny (algorithm=diloco, sync_every=3)", "tiny (algorithm=ddp, sync_every=1)",
        "tiny (algorithm=diloco, sync_every=6)"]
    bw = load_config(TINY, ["cluster.bandwidth=1Gbps"]).to_dict()
    assert run_labels(["a", "b"], [base, bw]) == ["a (bandwidth=100 Mbps)", "b (bandwidth=1 Gbps)"]
    assert run_labels(["a", "b"], [base, ddp]) == ["a (algorithm=diloco)", "b (algorithm=ddp)"]  # its own defaults


# ---------------------------------------------------------------- 5. progress without a terminal
def test_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FARSYNC_PROGRESS_EVERY", "0")
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(tmp_path / "r")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[tiny] step")]
    assert [line.split()[2] for line in lines] == ["3/6", "6/6"]
    assert all("train loss" in line and "tokens/s" in line and "sim " in line and "ETA" in line for line in lines)
    monkeypatch.setenv("FARSYNC_PROGRESS_EVERY", "3600")  # at most once an hour: the first and the last
    assert main(["run", str(write(tmp_path, dict(TINY, train=dict(TINY["train"], steps=9)))), "--out", str(tmp_path / "s")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[tiny] step")]
    assert [line.split()[2] for line in lines] == ["3/9", "9/9"]


# ---------------------------------------------------------------- 6. resume: larger budget, other backend
CKPT = dict(TINY, train=dict(TINY["train"], steps=12, log_every=2, eval_every=4, checkpoint_every=4))


def test_resume_with_a_larger_budget_equals_the_uninterrupted_run(tmp_path, capsys):
    short = farsync.run(CKPT, out=tmp_path / "r", progress=False)
    assert short.status == "completed"
    longer = dict(CKPT, train=dict(CKPT["train"], steps=20))
    whole = farsync.run(longer, out=tmp_path / "whole", progress=False)
    assert main(["run", "--resume", str(tmp_path / "r"), "--set", "train.steps=20", "--quiet"]) == 0
    got = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert without_wall_time(got) == without_wall_time(whole.metrics)
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    for key in ("final_eval_loss", "bytes_sent_total", "sim_time_s", "steps", "peak_bytes_in_flight"):
        assert s[key] == whole.summary[key], key
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["steps"] == 20


def test_resume_refuses_keys_that_change_finished_steps_and_a_smaller_budget(tmp_path, capsys):
    farsync.run(CKPT, out=tmp_path / "r", progress=False)
    assert main(["run", "--resume", str(tmp_path / "r"), "--set", "algorithm.inner.lr=0.01", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "these keys cannot change on resume: algorithm.inner.lr" in err and "train.steps" in err
    assert main(["run", "--resume", str(tmp_path / "r"), "--set", "train.steps=8", "--quiet"]) == 2
    assert "train.steps (8) must be larger than the checkpoint's step (8" in capsys.readouterr().err


def test_resume_with_a_decaying_schedule_follows_the_new_total(tmp_path, capsys):
    cfg = dict(CKPT, train=dict(CKPT["train"], lr_schedule={"name": "cosine"}))
    farsync.run(cfg, out=tmp_path / "r", progress=False)
    whole = farsync.run(dict(cfg, train=dict(cfg["train"], steps=20)), out=tmp_path / "w", progress=False)
    assert main(["run", "--resume", str(tmp_path / "r"), "--set", "train.steps=20", "--quiet"]) == 0
    assert "from step 9 on the lr follows it over the new total 20 (was 12)" in capsys.readouterr().err
    got = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    want = {m["step"]: m["lr"] for m in whole.metrics}
    assert [m["lr"] for m in got if m["step"] > 8] == [want[m["step"]] for m in got if m["step"] > 8]


@pytest.mark.distributed
@pytest.mark.slow
def test_a_simulator_checkpoint_resumes_under_launch_and_back(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    path = write(tmp_path, CKPT)
    whole = farsync.run(path, out=tmp_path / "whole", progress=False)
    monkeypatch.setenv("FARSYNC_FAULT", "1:7")
    assert farsync.run(path, out=tmp_path / "sim", progress=False).status.startswith("failed: InjectedFault")
    monkeypatch.delenv("FARSYNC_FAULT")
    assert main(["launch", "--resume", str(tmp_path / "sim")]) == 0  # checkpoint of step 4, on gloo
    s = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert s["status"] == "completed" and s["backend"] == "torch"

    def losses(run_dir):
        return [(m["step"], m["train_loss"], m.get("eval_loss")) for m in
                map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]

    assert losses(tmp_path / "sim") == losses(whole.run_dir)  # gloo == simulator, bit for bit
    assert s["bytes_sent_per_worker"] == whole.summary["bytes_sent_per_worker"]
    # and back: a torch.distributed run's checkpoint goes on on the simulator
    monkeypatch.setenv("FARSYNC_FAULT", "1:7")
    assert main(["launch", str(path), "--out", str(tmp_path / "torch")]) != 0
    monkeypatch.delenv("FARSYNC_FAULT")
    res = farsync.run(resume=tmp_path / "torch", progress=False)
    assert res.status == "completed" and res.summary["backend"] == "sim"
    assert losses(tmp_path / "torch") == losses(whole.run_dir)


# ---------------------------------------------------------------- 7. Ctrl-C
@pytest.mark.slow
def test_ctrl_c_ends_a_run_with_exit_130_and_a_summary(tmp_path):
    cfg = dict(TINY, train=dict(TINY["train"], steps=100000, log_every=5, eval_every=0))
    path = write(tmp_path, cfg)
    out = tmp_path / "r"
    env = {**os.environ, "FARSYNC_PROGRESS_EVERY": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "farsync.cli", "run", str(path), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "terminate called" not in stderr and "Traceback" not in stderr
    s = json.loads((out / "summary.json").read_text())
    step = int(s["status"].removeprefix("failed: interrupted at step "))
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged and step >= logged[-1] >= 10 and s["steps"] == logged[-1]
