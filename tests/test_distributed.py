"""torch.distributed backend (gloo, 2-4 processes via `farsync launch`) against the simulator;
checkpoint/resume on both backends; restart after a killed worker; corrupted checkpoints.

Bitwise equality needs the same intra-op thread count on both sides (torchrun gives each process
one thread), so the simulated references run with torch.set_num_threads(1). With 4 workers gloo
sums in a different order than the simulator's rank order: those comparisons use 1e-6 relative.
"""

import json
import shutil

import pytest
import torch
import yaml

import farsync
from farsync.cli import main
from farsync.comm.faults import FAULT_ENV

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_thread")]

CFG = {
    "name": "tiny",
    "seed": 3,
    "task": {"name": "shakespeare-gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8},
    "cluster": {"workers": 2},
    "algorithm": {"name": "diloco", "sync_every": 3, "inner": {"name": "adamw", "lr": 0.003}},
    "train": {"steps": 12, "batch_size": 4, "eval_every": 6, "log_every": 3, "checkpoint_every": 6},
}
ALGOS = {
    "ddp": {"name": "ddp", "inner": {"name": "adamw", "lr": 0.003}},
    "local-sgd": {"name": "local-sgd", "sync_every": 3, "inner": {"name": "adamw", "lr": 0.003}},
    "diloco": CFG["algorithm"],
    "streaming-diloco": {"name": "streaming-diloco", "sync_every": 4, "fragments": 2, "fragment_rule": "contiguous", "delay": 1, "alpha": 0.5,
                         "inner": {"name": "adamw", "lr": 0.003}, "compress": {"name": "int8", "error_feedback": "ef"}},
    "eager-diloco": {**CFG["algorithm"], "name": "eager-diloco", "compress": {"name": "int8"}},
    # the paper's headline method: each fragment's fp4 all-reduce overlaps a whole round of that fragment
    "streaming-diloco-eager-fp4": {"name": "streaming-diloco", "sync_every": 4, "fragments": 2, "fragment_rule": "contiguous",
                                   "overlap": "eager", "inner": {"name": "adamw", "lr": 0.003}, "compress": {"name": "fp4"}},
    "streaming-diloco-eager-2": {"name": "streaming-diloco", "sync_every": 4, "fragments": 2, "fragment_rule": "contiguous", "overlap": "eager-2",
                                 "inner": {"name": "adamw", "lr": 0.003}},
    # parameter-free inner optimizers: their scalar statistics (Prodigy: the d numerator and ||s||_1;
    # MoMo: the loss) are all-reduced every step on both backends
    "diloco-prodigy": {**CFG["algorithm"], "inner": {"name": "prodigy"}},
    "ddp-momo": {"name": "ddp", "inner": {"name": "momo", "lr": 0.1}},
    "diloco-int4-reduce-scatter": {**CFG["algorithm"], "compress": {"name": "int4", "collective": "reduce_scatter", "error_feedback": "ef"}},
    # decentralized: isend/irecv with graph neighbours (ring(2) is one edge); the average is evaluated
    "dsgd-ring": {"name": "dsgd", "inner": {"name": "adamw", "lr": 0.003}},
    "gradient-tracking": {"name": "gradient-tracking", "inner": {"name": "sgd", "lr": 0.1}},
}
CLUSTERS = {"dsgd-ring": {"workers": 2, "topology": "ring"}}  # default: CFG["cluster"]


def cfg_file(tmp_path, **changes):
    cfg = json.loads(json.dumps(CFG))
    for k, v in changes.items():
        cfg[k] = v
    p = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def metrics(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("wall_time_s"), rec.pop("sim_time_s")  # host/real time
        out.append(rec)
    return out


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def model(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


def same_model(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def launch(*args):
    return main(["launch", *map(str, args)])


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_torch_backend_matches_simulator_bitwise_with_two_workers(tmp_path, algo):
    cfg = cfg_file(tmp_path, algorithm=ALGOS[algo], cluster=CLUSTERS.get(algo, CFG["cluster"]))
    sim = farsync.run(cfg, out=tmp_path / "sim", progress=False)
    assert launch("--nproc", 2, cfg, "--out", tmp_path / "torch") == 0
    assert metrics(tmp_path / "torch") == metrics(sim.run_dir)
    st, ss = summary(tmp_path / "torch"), sim.summary
    assert st["backend"] == "torch" and st["status"] == "completed"
    for key in ("bytes_sent_per_worker", "bytes_received_per_worker", "peak_bytes_per_sync", "final_eval_loss", "tokens"):
        assert st[key] == ss[key], key
    assert same_model(model(tmp_path / "torch"), model(sim.run_dir))


def test_torch_backend_matches_simulator_with_four_workers(tmp_path):
    cfg = cfg_file(tmp_path, cluster={"workers": 4})
    sim = farsync.run(cfg, out=tmp_path / "sim", progress=False)
    assert launch("--nproc", 4, cfg, "--out", tmp_path / "torch") == 0
    mt, ms = metrics(tmp_path / "torch"), metrics(sim.run_dir)
    assert [m["bytes_sent"] for m in mt] == [m["bytes_sent"] for m in ms]
    for a, b in zip(mt, ms):
        for key in ("train_loss", "eval_loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-6)
    assert summary(tmp_path / "torch")["bytes_sent_per_worker"] == sim.summary["bytes_sent_per_worker"]


@pytest.mark.parametrize("algo", ["dsgd", "gradient-tracking"])
def test_decentralized_on_a_ring_of_four_matches_the_simulator_bitwise(tmp_path, algo):
    """No all-reduce: every worker mixes its neighbours' messages in rank order on both backends."""
    inner = {"name": "sgd", "lr": 0.1} if algo == "gradient-tracking" else CFG["algorithm"]["inner"]
    cfg = cfg_file(tmp_path, algorithm={"name": algo, "inner": inner}, cluster={"workers": 4, "topology": "ring"})
    sim = farsync.run(cfg, out=tmp_path / "sim", progress=False)
    assert launch("--nproc", 4, cfg, "--out", tmp_path / "torch") == 0
    assert metrics(tmp_path / "torch") == metrics(sim.run_dir)
    assert summary(tmp_path / "torch")["bytes_sent_per_worker"] == sim.summary["bytes_sent_per_worker"]
    assert same_model(model(tmp_path / "torch"), model(sim.run_dir))


ASYNC = {"name": "async-local-sgd", "sync_every": 3, "inner": {"name": "adamw", "lr": 0.003}}


def test_async_local_sgd_with_one_worker_matches_the_simulator_on_the_torch_backend(tmp_path):
    """Server + one worker: one possible arrival order, so gloo and the simulator agree bitwise."""
    cfg = cfg_file(tmp_path, algorithm=ASYNC, cluster={"workers": 1}, train={**CFG["train"], "checkpoint_every": 0})
    sim = farsync.run(cfg, out=tmp_path / "sim", progress=False)
    assert launch("--nproc", 2, cfg, "--out", tmp_path / "torch") == 0
    drop = ("staleness",)
    assert [{k: v for k, v in m.items() if k not in drop} for m in metrics(tmp_path / "torch")] == \
        [{k: v for k, v in m.items() if k not in drop} for m in metrics(sim.run_dir)]
    assert same_model(model(tmp_path / "torch"), model(sim.run_dir))
    assert summary(tmp_path / "torch")["bytes_sent_per_worker"] == sim.summary["bytes_sent_per_worker"]


def test_async_local_sgd_runs_on_the_torch_backend_with_a_server_and_three_workers(tmp_path, capsys):
    cfg = cfg_file(tmp_path, algorithm=ASYNC, cluster={"workers": 3}, train={**CFG["train"], "checkpoint_every": 0})
    assert launch("--nproc", 3, cfg, "--out", tmp_path / "bad") == 2
    assert "--nproc 3 differs from the 4 processes the run needs (cluster.workers 3 plus 1 for the server)" in capsys.readouterr().err
    assert launch(cfg, "--out", tmp_path / "torch") == 0  # --nproc defaults to workers + 1
    s = summary(tmp_path / "torch")
    assert s["status"] == "completed" and s["tokens"] == 12 * 3 * 4 * 16
    assert len(s["bytes_sent_per_worker"]) == 4 and s["compute_time_s_per_worker"][0] == 0.0
    assert metrics(tmp_path / "torch")[-1]["step"] == 12


SERVER_ALGOS = {  # algorithms/async_server.py
    "dude-asgd": {"name": "dude-asgd", "inner": {"name": "adamw", "lr": 0.003}},
    "fedbuff": {"name": "fedbuff", "sync_every": 3, "buffer_size": 2, "inner": {"name": "adamw", "lr": 0.003},
                "outer": {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}},
}


@pytest.mark.parametrize("algo", sorted(SERVER_ALGOS))
def test_server_algorithms_with_one_worker_match_the_simulator_on_the_torch_backend(tmp_path, algo):
    cfg = cfg_file(tmp_path, algorithm=SERVER_ALGOS[algo], cluster={"workers": 1}, train={**CFG["train"], "checkpoint_every": 0})
    sim = farsync.run(cfg, out=tmp_path / "sim", progress=False)
    assert launch("--nproc", 2, cfg, "--out", tmp_path / "torch") == 0
    assert metrics(tmp_path / "torch") == metrics(sim.run_dir)
    assert same_model(model(tmp_path / "torch"), model(sim.run_dir))
    assert summary(tmp_path / "torch")["bytes_sent_per_worker"] == sim.summary["bytes_sent_per_worker"]


def test_dude_asgd_runs_on_the_torch_backend_with_a_server_and_two_workers(tmp_path):
    cfg = cfg_file(tmp_path, algorithm=SERVER_ALGOS["dude-asgd"], cluster={"workers": 2}, train={**CFG["train"], "checkpoint_every": 0})
    assert launch(cfg, "--out", tmp_path / "torch") == 0
    s = summary(tmp_path / "torch")
    assert s["status"] == "completed" and s["tokens"] == 12 * 2 * 4 * 16
    assert metrics(tmp_path / "torch")[-1]["updates"] == 24  # one server step per gradient


def test_resume_on_the_simulator_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = cfg_file(tmp_path)
    full = farsync.run(cfg, out=tmp_path / "full", progress=False)
    monkeypatch.setenv(FAULT_ENV, "1:8")  # rank 1 dies at step 8; the last checkpoint is step 6
    broken = farsync.run(cfg, out=tmp_path / "broken", progress=False)
    assert broken.status == "failed: InjectedFault: FARSYNC_FAULT: rank 1 killed at step 8"
    assert [m["step"] for m in broken.metrics] == [3, 6]  # metrics so far are kept
    monkeypatch.delenv(FAULT_ENV)
    assert main(["run", "--resume", str(tmp_path / "broken"), "--quiet"]) == 0
    assert metrics(tmp_path / "broken") == metrics(full.run_dir)
    assert same_model(model(tmp_path / "broken"), model(full.run_dir))
    resumed = summary(tmp_path / "broken")
    for key in ("bytes_sent_per_worker", "sim_time_s", "compute_time_s_per_worker", "final_eval_loss"):
        assert resumed[key] == full.summary[key], key


def test_resume_and_restart_on_the_torch_backend(tmp_path, monkeypatch):
    cfg = cfg_file(tmp_path)
    ref = farsync.run(cfg, out=tmp_path / "sim", progress=False)
    monkeypatch.setenv(FAULT_ENV, "1:8")
    # no restarts allowed: the job fails, then `launch --resume` finishes it
    assert launch("--nproc", 2, cfg, "--out", tmp_path / "a") != 0
    assert [m["step"] for m in metrics(tmp_path / "a")] == [3, 6]
    assert launch("--nproc", 2, "--resume", tmp_path / "a") == 0
    assert metrics(tmp_path / "a") == metrics(ref.run_dir)
    assert same_model(model(tmp_path / "a"), model(ref.run_dir))
    # one restart allowed: torchrun restarts the group, which resumes from the checkpoint
    assert launch("--nproc", 2, cfg, "--out", tmp_path / "b", "--max-restarts", 1) == 0
    s = summary(tmp_path / "b")
    assert s["restarts"] == 1 and s["status"] == "completed"  # the fault really fired
    assert s["final_eval_loss"] == ref.summary["final_eval_loss"]
    assert metrics(tmp_path / "b") == metrics(ref.run_dir)


def test_corrupted_checkpoint_is_named_and_the_previous_intact_one_is_used(tmp_path, monkeypatch, capsys):
    cfg = cfg_file(tmp_path, train=dict(CFG["train"], steps=20, checkpoint_every=6))
    full = farsync.run(cfg, out=tmp_path / "full", progress=False)
    monkeypatch.setenv(FAULT_ENV, "0:14")
    farsync.run(cfg, out=tmp_path / "r", progress=False)
    monkeypatch.delenv(FAULT_ENV)
    ckpts = sorted((tmp_path / "r" / "checkpoints").glob("step-*.pt"))
    assert [c.name for c in ckpts] == ["step-00000006.pt", "step-00000012.pt"]
    data = ckpts[-1].read_bytes()
    ckpts[-1].write_bytes(data[: len(data) // 2])  # truncated
    assert main(["run", "--resume", str(tmp_path / "r"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "step-00000012.pt is corrupted" in err and "previous intact checkpoint" in err and "step-00000006.pt" in err
    assert metrics(tmp_path / "r") == metrics(full.run_dir)


def test_resume_refuses_a_different_config(tmp_path, monkeypatch, capsys):
    cfg = cfg_file(tmp_path)
    monkeypatch.setenv(FAULT_ENV, "0:8")
    farsync.run(cfg, out=tmp_path / "r", progress=False)
    monkeypatch.delenv(FAULT_ENV)
    args = ["run", "--resume", str(tmp_path / "r"), "--set", "algorithm.inner.lr=0.01", "--set", "seed=4", "--quiet"]
    assert main(args) == 2
    assert "these keys cannot change on resume: algorithm.inner.lr, seed" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    shutil.copy(tmp_path / "r" / "config.yaml", tmp_path / "empty" / "config.yaml")
    assert main(["run", "--resume", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_bad_launch_and_checkpoint_settings(tmp_path, capsys):
    cfg = cfg_file(tmp_path)
    assert launch("--nproc", 3, cfg) == 2
    assert "--nproc 3 differs from the 2 processes the run needs (cluster.workers 2)" in capsys.readouterr().err
    bad = cfg_file(tmp_path, train=dict(CFG["train"], checkpoint_every=4))
    assert main(["run", str(bad), "--quiet"]) == 2
    assert "checkpoint_every (4) must be a multiple of log_every (3)" in capsys.readouterr().err
    torch_cfg = cfg_file(tmp_path, cluster={"workers": 2, "backend": "torch"})
    assert main(["run", str(torch_cfg), "--quiet"]) == 2
    assert "farsync launch" in capsys.readouterr().err


def test_ddp_run_resumes_from_its_own_resolved_config(tmp_path, monkeypatch):
    """config.yaml carries every default (also `outer` for ddp); resuming must accept it."""
    cfg = cfg_file(tmp_path, algorithm=ALGOS["ddp"])
    monkeypatch.setenv(FAULT_ENV, "0:8")
    farsync.run(cfg, out=tmp_path / "r", progress=False)
    monkeypatch.delenv(FAULT_ENV)
    assert main(["run", "--resume", str(tmp_path / "r"), "--quiet"]) == 0
