"""The drop-in API (wrap, simulate), custom tasks, and the examples in reduced form."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import farsync
from farsync.config import load_config
from farsync.runner import build_cluster, build_task

ROOT = Path(__file__).resolve().parents[1]
CFG = {
    "name": "tiny",
    "seed": 3,
    "task": {"name": "shakespeare-gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8},
    "cluster": {"workers": 3, "bandwidth": "100Mbps", "latency": "5ms"},
    "algorithm": {"name": "diloco", "sync_every": 3, "inner": {"name": "adamw", "lr": 0.003}, "outer": {"lr": 0.5}},
    "train": {"steps": 9, "batch_size": 4, "eval_every": 9, "log_every": 3},
}


def test_wrap_in_a_user_loop_gives_the_same_trajectory_as_farsync_run(tmp_path):
    ran = farsync.run(CFG, out=tmp_path / "run", progress=False)
    cfg = load_config(CFG)
    task = build_task(cfg)
    step_time = build_cluster(cfg, task).time_model.step_time_s

    def user_loop(comm):  # an ordinary PyTorch loop
        torch.manual_seed(3)
        model = task.build_model()
        opt = torch.optim.AdamW(model.parameters(), lr=0.003)
        algo = farsync.wrap(model, opt, {"name": "diloco", "sync_every": 3, "outer": {"lr": 0.5}})
        sampler = task.sampler(comm.rank, 4)
        for _ in range(9):
            task.loss(model, sampler.next_batch()).backward()
            algo.step()
            algo.zero_grad()
        with algo.eval_params() as m:
            return {k: v.clone() for k, v in m.state_dict().items()}, task.evaluate(m)

    report = farsync.simulate(user_loop, workers=3, bandwidth="100Mbps", latency="5ms", step_time=step_time)
    final = torch.load(ran.run_dir / "model.pt", weights_only=True)
    for state, ev in report.results:
        assert all(torch.equal(state[k], final[k]) for k in final)
        assert ev == ran.summary["final_eval_loss"]
    s = report.summary()
    assert s["bytes_sent_per_worker"] == ran.summary["bytes_sent_per_worker"]
    assert s["sim_time_s"] == ran.summary["sim_time_s"]
    assert s["peak_bytes_per_sync"] == ran.summary["peak_bytes_per_sync"]


def test_wrap_validates_its_arguments():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def bad(kwargs):
        return lambda comm: farsync.wrap(model, opt, **kwargs)

    cases = [
        ({"algorithm": "dilocoo"}, "unknown algorithm 'dilocoo'"),
        ({"algorithm": {"name": "diloco", "inner": {"name": "sgd", "lr": 1}}}, "remove 'inner'"),
        ({"algorithm": "ddp", "outer": {"lr": 0.5}}, "has no outer optimizer"),
        ({"algorithm": "ddp", "sync_every": 5}, "synchronizes every step"),
        ({"algorithm": "diloco", "outer": {"lr": -1}}, "outer.lr must be a finite number > 0"),
        ({"algorithm": "local-sgd", "reset_inner_sate": True}, "reset_inner_sate"),
        # the same checks as a YAML config (they had drifted: SPS was accepted here, then failed at the first sync)
        ({"algorithm": "diloco", "outer": {"name": "sps"}}, "outer: 'sps' needs the mini-batch loss"),
        ({"algorithm": "streaming-diloco", "sync_every": 6, "fragments": 4}, r"sync_every \(6\) must be a multiple of fragments \(4\)"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(Exception, match=msg):
            farsync.simulate(bad(kwargs), workers=1)


def test_wrap_outside_simulate_and_torchrun_says_what_to_do(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    model = torch.nn.Linear(2, 1)
    with pytest.raises(RuntimeError, match="inside farsync.simulate"):
        farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "ddp")


def test_custom_task_from_a_user_module_runs_end_to_end(tmp_path):
    cfg = {
        "task": {"name": "custom_tasks:LineFit", "slope": 3.0},
        "cluster": {"workers": 2},
        "algorithm": {"name": "local-sgd", "sync_every": 4, "inner": {"name": "sgd", "lr": 0.1}},
        "train": {"steps": 40, "batch_size": 8, "eval_every": 20},
    }
    res = farsync.run(cfg, out=tmp_path / "r", progress=False)
    assert res.status == "completed" and res.summary["task"] == "custom_tasks:LineFit"
    assert res.summary["final_eval_loss"] < 1e-3 < res.metrics[0]["train_loss"]
    with pytest.raises(farsync.ConfigError, match="unknown key 'slop'"):
        farsync.run(dict(cfg, task={"name": "custom_tasks:LineFit", "slop": 1}), out=tmp_path / "x")


def run_example(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "examples"))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_example_plain_loop_simulated_and_under_torchrun():
    p = run_example("examples/diloco_loop.py", "--steps", 40)
    assert p.returncode == 0, p.stderr
    acc = float(p.stdout.split("accuracy of the global model: ")[1].split()[0])
    assert acc > 0.5
    p = run_example("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", 2, "examples/diloco_loop.py", "--steps", 40)
    assert p.returncode == 0, p.stderr
    accs = re.findall(r"accuracy (\d\.\d{3})", p.stdout)  # the two ranks' lines may interleave
    assert len(accs) == 2 and accs[0] == accs[1] and float(accs[0]) > 0.5  # the same global model


def test_example_custom_task(tmp_path):
    p = run_example("examples/custom_task.py", "--steps", 60, "--out", tmp_path / "r")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("completed: eval MSE")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["task"] == "sine-regression"


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)
def test_example_fashion_mnist_cnn():
    p = run_example("examples/fashion_mnist_cnn.py", "--steps", 30, "--test-samples", 1000)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout.split("test accuracy ")[1].split()[0]) > 0.3


def test_readme_own_loop_example_runs_and_is_at_most_15_lines():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it in your own training loop", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    namespace: dict = {}
    exec(compile(code, "README example", "exec"), namespace)
    report = namespace["report"]
    assert report.results[0] < 0.3 and report.bytes_sent_total == 4 * 10 * 252  # 10 syncs of 42 floats


def test_simulate_takes_stragglers_and_per_worker_links():
    def train(comm):
        model = torch.nn.Linear(4, 1)
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "ddp")
        for _ in range(4):
            model(torch.ones(2, 4)).sum().backward()
            algo.step()
            algo.zero_grad()

    plain = farsync.simulate(train, workers=2, step_time="1s", latency=0)
    slow = farsync.simulate(train, workers=2, step_time="1s", latency=0, stragglers=[farsync.Straggler(1, 2.0, 0.0, 2.0)],
                            link_bandwidth=["1Gbps", "1Gbps"])
    assert slow.sim_time_s == pytest.approx(plain.sim_time_s + 1.0)  # its step started at t = 0 takes 2 s; at t = 2 the window is over


def _slow_steps(comm, steps=6, pause=0.06):
    import time

    model = torch.nn.Linear(4, 1)
    algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "ddp")
    for _ in range(steps):
        model(torch.ones(2, 4)).sum().backward()
        time.sleep(pause)  # real time, so that the watcher sees the call run
        algo.step()
        algo.zero_grad()


def test_long_simulate_prints_progress_lines(monkeypatch, capsys):
    monkeypatch.setenv("FARSYNC_PROGRESS_EVERY", "0.1")
    report = farsync.simulate(_slow_steps, workers=3, step_time="1s", latency=0)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[simulate]")]
    assert len(lines) >= 2, lines
    m = [re.match(r"\[simulate\] 3 workers  steps (\d+)(?:-(\d+))? .*sim clock ([\d.e+-]+) s  sent (.+)  running ", ln) for ln in lines]
    assert all(m), lines
    first = [int(x.group(1)) for x in m]
    assert first == sorted(first) and first[-1] <= 6  # steps only grow and never pass the loop's
    assert max(float(x.group(3)) for x in m) <= report.sim_time_s


def test_simulate_progress_off_or_short_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("FARSYNC_PROGRESS_EVERY", "0.1")
    farsync.simulate(_slow_steps, workers=2, step_time="1s", latency=0, progress=False)
    monkeypatch.setenv("FARSYNC_PROGRESS_EVERY", "30")
    farsync.simulate(_slow_steps, workers=2, step_time="1s", latency=0)
    assert "[simulate]" not in capsys.readouterr().err
