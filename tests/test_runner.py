"""End-to-end: farsync run / compare / list / demo wiring, determinism, failures, bad input."""

import json
import subprocess
import sys

import pytest
import yaml

import farsync
from farsync.cli import main

TINY_GPT = {
    "name": "tiny",
    "seed": 3,
    "task": {"name": "shakespeare-gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8},
    "cluster": {"workers": 2, "bandwidth": "100Mbps", "latency": "5ms"},
    "algorithm": {"name": "diloco", "sync_every": 3, "inner": {"name": "adamw", "lr": 0.003}},
    "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "log_every": 2},
}


def write_cfg(tmp_path, cfg, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def strip_wall(lines):
    out = []
    for line in lines:
        rec = json.loads(line)
        rec.pop("wall_time_s")
        out.append(rec)
    return out


def test_run_writes_a_complete_run_directory(tmp_path):
    cfg = write_cfg(tmp_path, TINY_GPT)
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    run_dir = tmp_path / "r"
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["task"]["chunk_chars"] == 4096  # defaults are resolved into config.yaml
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 3, 4, 6]
    for m in metrics:
        assert {"step", "tokens", "sim_time_s", "bytes_sent", "train_loss", "wall_time_s"} <= set(m)
    assert [m["step"] for m in metrics if "eval_loss" in m] == [3, 6]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 6 and s["tokens"] == 6 * 2 * 4 * 16
    n_bytes = s["n_params"] * 4
    assert s["bytes_sent_per_worker"] == [2 * (2 * 1 * n_bytes // 2)] * 2  # two syncs, ring all-reduce
    assert s["bytes_sent_total"] == sum(s["bytes_sent_per_worker"]) == metrics[-1]["bytes_sent"]
    assert s["final_eval_loss"] == metrics[-1]["eval_loss"]
    assert s["best_eval_loss"] == min(m["eval_loss"] for m in metrics if "eval_loss" in m)
    assert 0 < s["compute_utilization"] < 1 and s["sim_time_s"] > 0 and s["peak_bytes_per_sync"] == n_bytes


def test_same_config_twice_gives_identical_metrics(tmp_path):
    cfg = dict(TINY_GPT, algorithm={"name": "ddp", "inner": {"name": "adamw", "lr": 0.003}})
    a = farsync.run(cfg, out=tmp_path / "a", progress=False)
    b = farsync.run(cfg, out=tmp_path / "b", progress=False)
    la = (a.run_dir / "metrics.jsonl").read_text().splitlines()
    lb = (b.run_dir / "metrics.jsonl").read_text().splitlines()
    assert strip_wall(la) == strip_wall(lb)
    sa, sb = a.summary, b.summary
    sa.pop("wall_time_s"), sb.pop("wall_time_s")
    assert sa == sb


def test_non_finite_loss_stops_the_run_and_keeps_metrics(tmp_path):
    cfg = {
        "name": "nan",
        "task": {"name": "quadratic", "dim": 4, "dtype": "float32"},
        "cluster": {"workers": 2},
        "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 50.0}},
        "train": {"steps": 200, "batch_size": 1, "eval_every": 0, "log_every": 5},
    }
    res = farsync.run(cfg, out=tmp_path / "nan", progress=False)
    assert res.status.startswith("failed: non-finite loss at step ")
    bad_step = int(res.status.rsplit(" ", 1)[1])
    lines = (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[-1])["step"] >= bad_step > json.loads(lines[0])["step"] - 5
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == res.status and summary["steps"] == json.loads(lines[-1])["step"]
    assert main(["run", str(write_cfg(tmp_path, cfg)), "--out", str(tmp_path / "nan2"), "--quiet"]) == 1


def test_compare_writes_table_and_plots(tmp_path):
    base = dict(TINY_GPT, train=dict(TINY_GPT["train"], steps=3))
    a = farsync.run(dict(base, name="dil"), out=tmp_path / "a", progress=False)
    b = farsync.run(dict(base, name="ddp", algorithm={"name": "ddp"}), out=tmp_path / "b", progress=False)
    assert main(["compare", str(a.run_dir), str(b.run_dir), "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| dil | diloco |" in report and "| ddp | ddp |" in report
    for png in ("loss_vs_steps.png", "loss_vs_bytes.png", "loss_vs_time.png"):
        data = (tmp_path / "cmp" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("shakespeare-gpt", "logreg", "quadratic", "ddp", "local-sgd", "diloco", "adamw", "sgd"):
        assert name in out


BAD_INPUTS = [
    (["--set", "task.name=shakespear"], "unknown task 'shakespear'; valid choices: logreg, "),
    (["--set", "algorithm.name=dilocoo"], "unknown algorithm 'dilocoo'; valid choices: asgd, async-local-sgd, choco-sgd, co2, ddp, decoupled-momentum, delayed-diloco, diloco, docom-sgt, dsgd, dude-asgd, eager-diloco, fedbuff, fspda, gradient-tracking, local-sgd, sparta, speculative-diloco, streaming-diloco, ticopd, zo-shared"),
    (["--set", "algorithm.inner.name=adamm"], "unknown optimizer 'adamm'; valid choices:"),
    (["--set", "algorithm.inner.lrr=0.1"], "unknown option(s) ['lrr'] for optimizer 'adamw'"),
    (["--set", "train.stepz=3"], "train.stepz: unknown key 'stepz'"),
    (["--set", "colour=red"], "colour: unknown key 'colour'"),
    (["--set", "task.n_layers=2"], "unknown key 'n_layers' for task 'shakespeare-gpt'"),
    (["--set", "algorithm.inner.lr=0"], "algorithm.inner.lr must be a finite number > 0, got 0"),
    (["--set", "algorithm.outer.lr=-1"], "algorithm.outer.lr must be a finite number > 0, got -1"),
    (["--set", "cluster.workers=0"], "cluster.workers: Input should be greater than or equal to 1"),
    (["--set", "algorithm.sync_every=0"], "algorithm.sync_every: sync_every must be an integer >= 1 or {rule: qsr, base, alpha}, got 0"),
    (["--set", "cluster.bandwidth=fast"], "malformed bandwidth 'fast'"),
    (["--set", "cluster.latency=10 parsecs"], "malformed duration '10 parsecs'"),
    (["--set", "cluster.topology=rong"], "unknown topology name 'rong'"),
    (["--set", "cluster.topology=ring"], "algorithm 'diloco' does not use cluster.topology (decentralized algorithms do: choco-sgd, docom-sgt, dsgd, fspda, gradient-tracking, ticopd)"),
    (["--set", "train.lr_schedule.name=cosinus"], "unknown lr schedule 'cosinus'; valid choices: constant, cosine, linear"),
    (["--set", "task.eval_plays=[hamlett]"], "unknown eval_plays ['hamlett']"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS, ids=[b[0][1].split("=")[0] for b in BAD_INPUTS])
def test_bad_input_fails_before_training_with_a_clear_message(tmp_path, capsys, extra, message):
    cfg = write_cfg(tmp_path, TINY_GPT)
    out = tmp_path / "never"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists()  # nothing was started


def test_missing_config_file_and_an_unknown_algorithm_key(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg = write_cfg(tmp_path, dict(TINY_GPT, algorithm={"name": "ddp", "sync_evry": 3}))  # a typo no algorithm knows
    assert main(["run", str(cfg), "--quiet", "--out", str(tmp_path / "r")]) == 2
    assert "unknown key 'sync_evry' for algorithm 'ddp'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_console_script_exit_code_on_bad_input(tmp_path):
    cfg = write_cfg(tmp_path, TINY_GPT)
    proc = subprocess.run(
        [sys.executable, "-m", "farsync.cli", "run", str(cfg), "--set", "cluster.workers=-3"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "cluster.workers" in proc.stderr


def test_demo_configs_are_valid_and_match_the_issue():
    from importlib import resources

    from farsync.config import load_config

    cfgs = {n: load_config(str(resources.files("farsync") / "configs" / f"demo_{n}.yaml")) for n in ("ddp", "diloco")}
    assert cfgs["diloco"].algorithm.sync_every >= 20
    assert cfgs["ddp"].cluster.workers == cfgs["diloco"].cluster.workers == 4
    a, b = cfgs["ddp"].to_dict(), cfgs["diloco"].to_dict()
    a.pop("algorithm"), b.pop("algorithm"), a.pop("name"), b.pop("name")
    assert a == b  # same task, cluster and training budget: equal tokens


def test_stragglers_and_per_worker_links_change_only_the_clock(tmp_path):
    base = {
        "name": "s", "task": {"name": "quadratic", "dim": 2000}, "cluster": {"workers": 3, "step_time": "1s", "latency": 0},
        "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.1}},
        "train": {"steps": 10, "batch_size": 2, "eval_every": 0, "log_every": 5},
    }
    plain = farsync.run(base, out=tmp_path / "p", progress=False)
    slow = farsync.run({**base, "cluster": {**base["cluster"], "stragglers": [{"rank": 2, "factor": 3, "start": "2s", "end": "6s"}]}},
                       out=tmp_path / "s", progress=False)
    # DDP waits for the straggler: steps starting at t = 2 and t = 5 (clock after 2 + 3) take 3 s; t >= 6 is past the window
    assert slow.summary["sim_time_s"] == pytest.approx(plain.summary["sim_time_s"] + 2 * 2)
    assert [m["train_loss"] for m in slow.metrics] == [m["train_loss"] for m in plain.metrics]
    narrow = farsync.run({**base, "cluster": {**base["cluster"], "link_bandwidth": ["1Gbps", "1Mbps", "1Gbps"]}},
                         out=tmp_path / "n", progress=False)
    sent_bits = 8 * plain.summary["bytes_sent_per_worker"][0]  # ring all-reduce: what one worker sends, per call
    # every all-reduce runs at the slowest member's link: 1 Mbps instead of 1 Gbps (counted bytes are
    # floored to whole bytes per call, the time model is not: abs tolerance of a few bytes at 1 Mbps)
    extra = sent_bits * (1 / 1e6 - 1 / 1e9)
    assert narrow.summary["sim_time_s"] == pytest.approx(plain.summary["sim_time_s"] + extra, abs=1e-4)
    assert extra > 100 * 1e-4
    with pytest.raises(farsync.ConfigError, match="link_bandwidth has 2 entries but workers is 3"):
        farsync.load_config({**base, "cluster": {**base["cluster"], "link_bandwidth": ["1Gbps", "1Mbps"]}})
    with pytest.raises(farsync.ConfigError, match="straggler rank 3 is not a worker"):
        farsync.load_config({**base, "cluster": {**base["cluster"], "stragglers": [{"rank": 3, "factor": 2}]}})
