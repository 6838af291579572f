"""Runs under faults an operator's cluster produces: a second writer, signals, a full disk, flipped
bits, killed launchers, hard kills; and strict JSON. Every scenario is bounded in time."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import farsync
from farsync.checkpoint import list_checkpoints
from farsync.cli import main
from farsync.rundir import RunDirLock, read_metrics

from conftest import without_wall_time

CFG = {
    "name": "f", "seed": 1,
    "task": {"name": "shakespeare-gpt", "n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8, "eval_windows": 4},
    "cluster": {"workers": 2},
    "algorithm": {"name": "diloco", "sync_every": 5, "inner": {"name": "adamw", "lr": 0.003}},
    "train": {"steps": 400, "batch_size": 2, "eval_every": 100, "log_every": 10, "checkpoint_every": 50},
}


def write(tmp_path, cfg, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def start(argv, **kw):
    env = {**os.environ, "FARSYNC_PROGRESS_EVERY": "3600"}  # same thread count as this process: same floats
    return subprocess.Popen([sys.executable, "-m", "farsync.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def wait_for_lines(path, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not get {n} lines in {timeout} s")


def strict_load(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- one writer per run directory
def test_a_second_writer_exits_2_at_once_naming_the_holder(tmp_path, capsys):
    path = write(tmp_path, dict(CFG, train=dict(CFG["train"], steps=100)))
    run = tmp_path / "r"
    assert main(["run", str(path), "--out", str(run), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".farsync-lock"}
    lock = RunDirLock(run).acquire()  # as another process's `farsync run --resume` would hold it
    try:
        t0 = time.time()
        assert main(["run", "--resume", str(run), "--set", "train.steps=200", "--quiet"]) == 2
        assert time.time() - t0 < 10
        err = capsys.readouterr().err
        assert f"is in use by pid {os.getpid()} on" in err and "since" in err
        assert main(["launch", "--resume", str(run)]) == 2
    finally:
        lock.release()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".farsync-lock"} == before  # untouched


@pytest.mark.slow
def test_concurrent_processes_and_sigterm_then_resume_equals_the_uninterrupted_run(tmp_path, capsys):
    path = write(tmp_path, CFG)
    whole = farsync.run(path, out=tmp_path / "whole", progress=False)
    run = tmp_path / "r"
    proc = start(["run", path, "--out", run])
    wait_for_lines(run / "metrics.jsonl", 6, proc)
    t0 = time.time()
    assert main(["run", "--resume", str(run), "--quiet"]) == 2  # the second writer
    assert time.time() - t0 < 10
    assert f"is in use by pid {proc.pid}" in capsys.readouterr().err
    proc.send_signal(signal.SIGTERM)  # preemption
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    s = strict_load((run / "summary.json").read_text())
    step = int(s["status"].removeprefix("failed: terminated by SIGTERM at step "))
    assert step < CFG["train"]["steps"] and step % CFG["train"]["log_every"] == 0
    assert list_checkpoints(run)[-1].name == f"step-{step:08d}.pt"  # a checkpoint at the stop
    records = read_metrics(run / "metrics.jsonl")
    assert records[-1]["step"] == step
    assert main(["run", "--resume", str(run), "--quiet"]) == 0
    assert without_wall_time(read_metrics(run / "metrics.jsonl")) == without_wall_time(whole.metrics)
    assert (run / "transfers.csv").read_text() == (whole.run_dir / "transfers.csv").read_text()


def test_never_writes_into_a_users_directory(tmp_path, capsys):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own config\n")
    assert main(["run", str(write(tmp_path, CFG)), "--out", str(mine), "--quiet"]) == 2
    assert "is not empty (config.yaml) and was not made by farsync" in capsys.readouterr().err
    assert (mine / "config.yaml").read_text() == "my own config\n" and sorted(p.name for p in mine.iterdir()) == ["config.yaml"]
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = dict(CFG, train=dict(CFG["train"], steps=20, checkpoint_every=0))
    assert main(["run", str(write(tmp_path, cfg)), "--out", str(empty), "--quiet"]) == 0  # empty is fine


# ---------------------------------------------------------------- write errors
def test_a_full_disk_gives_one_line_exit_1_a_summary_and_no_tmp_files(tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a 2 MB tmpfs needs root")
    try:
        cfg = dict(CFG, task=dict(CFG["task"], n_embd=96, n_layer=2, n_head=2),  # a checkpoint of ~6 MB
                   train=dict(CFG["train"], steps=40, eval_every=0, checkpoint_every=20))
        assert main(["run", str(write(tmp_path, cfg)), "--out", str(mnt / "r"), "--quiet"]) == 1
        out = capsys.readouterr().out
        want = f"failed: no space left on device while writing {mnt / 'r' / 'checkpoints' / 'step-00000020.pt'}"
        assert want in out
        s = strict_load((mnt / "r" / "summary.json").read_text())
        assert s["status"] == want and s["steps"] == 20
        assert not list((mnt / "r").rglob("*.tmp"))
        assert [r["step"] for r in read_metrics(mnt / "r" / "metrics.jsonl")] == [10, 20]
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_an_injected_write_error_on_metrics_is_reported(tmp_path, monkeypatch, capsys):
    from farsync import rundir

    real = rundir.MetricsLog.write
    calls = []

    def failing(self, record):
        calls.append(record["step"])
        if len(calls) == 3:
            raise rundir.write_error(OSError(errno.EIO, "Input/output error"), self.path)
        real(self, record)

    monkeypatch.setattr(rundir.MetricsLog, "write", failing)
    cfg = dict(CFG, train=dict(CFG["train"], steps=60, checkpoint_every=0))
    assert main(["run", str(write(tmp_path, cfg)), "--out", str(tmp_path / "r"), "--quiet"]) == 1
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == f"failed: input/output error while writing {tmp_path / 'r' / 'metrics.jsonl'}"
    assert [r["step"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [10, 20]


def test_a_partial_last_line_is_skipped_and_dropped_on_resume(tmp_path):
    cfg = dict(CFG, train=dict(CFG["train"], steps=100))
    whole = farsync.run(cfg, out=tmp_path / "w", progress=False)
    os.environ["FARSYNC_FAULT"] = "1:75"
    try:
        farsync.run(cfg, out=tmp_path / "r", progress=False)
    finally:
        del os.environ["FARSYNC_FAULT"]
    with open(tmp_path / "r" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 80, "tok')  # a kill in the middle of a line
    assert read_metrics(tmp_path / "r" / "metrics.jsonl")[-1]["step"] == 70
    assert farsync.run(resume=tmp_path / "r", progress=False).status == "completed"
    assert without_wall_time(read_metrics(tmp_path / "r" / "metrics.jsonl")) == without_wall_time(whole.metrics)


# ---------------------------------------------------------------- integrity
def test_a_one_bit_flip_in_the_newest_checkpoint_falls_back_to_the_older(tmp_path, monkeypatch, capsys):
    cfg = dict(CFG, train=dict(CFG["train"], steps=200))
    whole = farsync.run(cfg, out=tmp_path / "w", progress=False)
    monkeypatch.setenv("FARSYNC_FAULT", "0:160")
    farsync.run(cfg, out=tmp_path / "r", progress=False)
    monkeypatch.delenv("FARSYNC_FAULT")
    older, newest = list_checkpoints(tmp_path / "r")
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, in the middle of the tensor data
    newest.write_bytes(bytes(data))
    assert main(["run", "--resume", str(tmp_path / "r"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"warning: checkpoint {newest} is corrupted (its SHA-256 differs" in err
    assert f"resuming from the previous intact checkpoint {older}" in err
    assert without_wall_time(read_metrics(tmp_path / "r" / "metrics.jsonl")) == without_wall_time(whole.metrics)


def test_no_intact_checkpoint_says_so_and_leaves_the_run_unchanged(tmp_path, monkeypatch, capsys):
    cfg = dict(CFG, train=dict(CFG["train"], steps=200))
    monkeypatch.setenv("FARSYNC_FAULT", "0:160")
    farsync.run(cfg, out=tmp_path / "r", progress=False)
    monkeypatch.delenv("FARSYNC_FAULT")
    summary = (tmp_path / "r" / "summary.json").read_bytes()
    metrics = (tmp_path / "r" / "metrics.jsonl").read_bytes()
    a, b = list_checkpoints(tmp_path / "r")
    a.write_bytes(a.read_bytes()[:100])  # truncated
    b.write_bytes(b.read_bytes()[:-1] + b"x")
    assert main(["run", "--resume", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint to resume from" in err and a.name in err and b.name in err
    assert "is intact" not in err
    assert "is unchanged (its summary.json still says 'failed: InjectedFault" in err
    assert (tmp_path / "r" / "summary.json").read_bytes() == summary
    assert (tmp_path / "r" / "metrics.jsonl").read_bytes() == metrics


# ---------------------------------------------------------------- complete transfers.csv after resume
@pytest.mark.slow
def test_transfers_after_a_hard_kill_and_resume_equal_the_uninterrupted_run(tmp_path):
    path = write(tmp_path, CFG)
    whole = farsync.run(path, out=tmp_path / "whole", progress=False)
    run = tmp_path / "r"
    proc = start(["run", path, "--out", run])
    wait_for_lines(run / "metrics.jsonl", 12, proc)  # past the checkpoints of steps 50 and 100
    proc.kill()
    proc.communicate(timeout=60)
    assert not (run / "summary.json").exists() and list_checkpoints(run)
    assert farsync.run(resume=run, progress=False).status == "completed"
    assert (run / "transfers.csv").read_text() == (whole.run_dir / "transfers.csv").read_text()


def test_transfers_of_dsgd_on_a_ring_after_a_clean_failure_and_resume(tmp_path, monkeypatch):
    cfg = dict(CFG, cluster={"workers": 4, "topology": "ring"}, algorithm={"name": "dsgd", "inner": {"name": "sgd", "lr": 0.1}},
               train=dict(CFG["train"], steps=60, checkpoint_every=20))
    farsync.run(cfg, out=tmp_path / "w", progress=False)
    monkeypatch.setenv("FARSYNC_FAULT", "2:47")
    assert farsync.run(cfg, out=tmp_path / "r", progress=False).status.startswith("failed: InjectedFault")
    monkeypatch.delenv("FARSYNC_FAULT")
    assert farsync.run(resume=tmp_path / "r", progress=False).status == "completed"
    assert (tmp_path / "r" / "transfers.csv").read_text() == (tmp_path / "w" / "transfers.csv").read_text()


# ---------------------------------------------------------------- strict JSON
def test_non_finite_values_are_null_and_named(tmp_path):
    cfg = {"name": "nan", "task": {"name": "quadratic", "dim": 4, "sigma": 0.0}, "cluster": {"workers": 2},
           "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 1e30}},
           "train": {"steps": 40, "batch_size": 1, "eval_every": 0, "log_every": 2}}
    res = farsync.run(cfg, out=tmp_path / "r", progress=False)
    assert res.status.startswith("failed: non-finite loss at step")
    records = [strict_load(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_loss"] is None and records[-1]["non_finite"] == ["train_loss"]
    s = strict_load((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == res.status


# ---------------------------------------------------------------- the launcher owns its processes
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_launcher_leaves_no_process_of_the_run(tmp_path, sig):
    cfg = dict(CFG, train=dict(CFG["train"], steps=100000))
    run = tmp_path / "r"
    proc = start(["launch", write(tmp_path, cfg), "--out", run], start_new_session=True)
    wait_for_lines(run / "metrics.jsonl", 3, proc, timeout=180)
    procs = json.loads((run / "processes.json").read_text())
    assert sorted(p["role"] for p in procs) == ["launcher", "torchrun", "worker", "worker"]
    assert {p["rank"] for p in procs if p["role"] == "worker"} == {0, 1}
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(p["pid"]) for p in procs):
        time.sleep(0.2)
    assert not [p for p in procs if alive(p["pid"])]
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
    s = json.loads((run / "summary.json").read_text())
    assert s["status"].startswith("failed: terminated by SIGTERM at step")  # SIGKILL: torchrun got SIGTERM


@pytest.mark.distributed
def test_rank0_dying_mid_training_gets_a_summary_from_the_launcher(tmp_path, monkeypatch, capsys):
    cfg = dict(CFG, train=dict(CFG["train"], steps=60, checkpoint_every=20))
    monkeypatch.setenv("FARSYNC_FAULT", "0:35")  # rank 0's process exits without cleanup
    assert main(["launch", str(write(tmp_path, cfg)), "--out", str(tmp_path / "r")]) != 0
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"].startswith("failed: the worker processes exited with code") and "last logged step 30" in s["status"]
    assert "failed before training started" not in capsys.readouterr().out


def test_async_algorithms_refuse_checkpoints_saying_why():
    with pytest.raises(farsync.ConfigError, match="cannot be checkpointed: its server and workers"):
        farsync.load_config(dict(CFG, algorithm={"name": "async-local-sgd", "sync_every": 5}))
