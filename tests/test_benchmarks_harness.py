"""The benchmark harness (benchmarks/harness.py): every module follows its interface, its flags refuse bad
values with the valid ones, rows carry provenance and replace their (run, seed), every stored result file
is read by some benchmark, and every figure of docs/img is drawn from them or named as not (no training)."""

import importlib
import json
import subprocess
import sys
import types
from datetime import datetime
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
harness = importlib.import_module("harness")

PROVENANCE = {"commit", "dirty", "torch", "device", "threads", "date", "python", "cpu_count"}
ROW = {"benchmark", "run", "seed", "profile", "config", "metrics", "provenance"}


def modules():
    return {name: harness.load(name) for name in harness.benchmarks()}


def test_every_benchmark_module_follows_the_interface():
    mods = modules()
    assert {"streaming", "async_heterogeneity", "async_local_sgd_gpt", "gpu_check"} <= set(mods)
    assert "harness" not in mods and not any(n.startswith("_") for n in mods)
    problems = {name: harness.interface_problems(mod) for name, mod in mods.items()}
    assert {n: p for n, p in problems.items() if p} == {}


def test_interface_problems_finds_a_broken_module():
    mod = types.ModuleType("broken", "A broken benchmark.")
    mod.PROFILES = {"cpu": {"params": {"nope": 1}, "bogus": 1}}
    mod.PARAMS, mod.FIGURES, mod.RESULTS = {}, {"x.png": "x"}, ()
    problems = "\n".join(harness.interface_problems(mod))
    for expected in ("no SEEDS", "no jobs", "no `quick` profile", "unknown key(s) bogus", "nope not in PARAMS",
                     "FIGURES without figure()", "which RESULTS does not name"):
        assert expected in problems


def test_list_names_every_benchmark(capsys):
    assert harness.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in harness.benchmarks():
        assert f"\n{name}: " in "\n" + out
    assert "not a benchmark module" not in out


def test_dry_run_of_every_profile_prints_jobs(capsys, tmp_path):
    for name, mod in modules().items():
        for profile in mod.PROFILES:
            assert harness.main([name, "--profile", profile, "--dry-run", "--out", str(tmp_path)]) == 0
            lines = capsys.readouterr().out.splitlines()
            jobs = [json.loads(line) for line in lines]
            assert jobs, (name, profile)
            assert all({"run", "seed", "config"} <= j.keys() for j in jobs), (name, profile)
            assert len({(j["run"], j["seed"]) for j in jobs}) == len(jobs), f"{name} {profile}: duplicate (run, seed)"
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_script_entry_point_is_the_harness():
    out = subprocess.run([sys.executable, "benchmarks/streaming.py", "--dry-run", "--only", "ddp"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["run"] for line in out.splitlines()] == ["ddp"]


def test_only_patterns_select_and_unknown_labels_are_refused(capsys):
    assert harness.main(["streaming", "--dry-run", "--only", "diloco-int4*", "ddp"]) == 0
    runs = [json.loads(line)["run"] for line in capsys.readouterr().out.splitlines()]
    assert runs == ["ddp", "diloco-int4", "diloco-int4-rs"]
    with pytest.raises(SystemExit) as e:
        harness.main(["streaming", "--dry-run", "--only", "ddp", "no-such-run"])
    msg = str(e.value)
    assert "'no-such-run' matches no run" in msg and "runs: ddp, diloco," in msg and "speculative-int4" in msg


def test_bad_flags_are_refused_with_the_valid_choices(capsys):
    with pytest.raises(SystemExit):
        harness.main(["streaming", "--profile", "nope", "--dry-run"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "'cpu', 'gpu', 'quick'" in err
    with pytest.raises(SystemExit):
        harness.main(["compression_pareto", "--seeds", "1", "--dry-run"])
    assert "compression_pareto has no seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        harness.main(["sim_overhead", "--set", "cluster.workers=2", "--dry-run"])
    assert "not a parameter of sim_overhead (parameters: workers, steps, repeats)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        harness.main(["sim_overhead", "--set", "workers", "--dry-run"])
    assert "--set needs KEY=VALUE, got 'workers'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        harness.main(["no_such_benchmark", "--dry-run"])
    assert "unknown benchmark 'no_such_benchmark'" in str(e.value) and "streaming" in str(e.value)


def test_set_changes_parameters_and_config_overrides(capsys):
    assert harness.main(["bandwidth_sweep", "--dry-run", "--only", "ddp *", "--set", "bandwidths=[1Gbps]",
                         "--set", "cluster.device=cuda"]) == 0
    jobs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [j["run"] for j in jobs] == ["ddp 1Gbps"]
    assert "cluster.device=cuda" in jobs[0]["config"]["overrides"]


def test_a_real_run_writes_a_row_with_provenance(tmp_path, capsys):
    assert harness.main(["compression_throughput", "--profile", "quick", "--only", "copy", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row.keys() == ROW
    assert (row["benchmark"], row["run"], row["seed"], row["profile"]) == ("compression_throughput", "copy", None, "quick")
    assert row["config"]["mb"] == 4 and row["metrics"]["copy GB/s"] > 0
    prov = row["provenance"]
    assert prov.keys() == PROVENANCE | {"wall_s"} and prov["wall_s"] >= 0
    assert prov["torch"] == torch.__version__ and prov["device"] == "cpu" and prov["threads"] >= 1
    assert datetime.fromisoformat(prov["date"]).tzinfo is not None
    assert prov["commit"] is None or len(prov["commit"]) >= 7


def test_rows_replace_their_run_and_seed(tmp_path, monkeypatch):
    fake = types.ModuleType("fake_bench", "A fake benchmark: its metric is its seed times ten.")
    fake.run_one = lambda job: {"x": 10 * job["seed"]}
    monkeypatch.setitem(sys.modules, "fake_bench", fake)
    monkeypatch.setattr(harness, "benchmarks", lambda: ["fake_bench"])
    kept = {"benchmark": "fake_bench", "run": "b", "seed": 0, "profile": "p", "config": {}, "metrics": {"x": -1},
            "provenance": None}
    (tmp_path / "results.jsonl").write_text(json.dumps(kept) + "\n")
    args = types.SimpleNamespace(benchmark="fake_bench", profile="p", parallel=1, out=tmp_path)
    job = lambda run, seed: {"run": run, "seed": seed, "config": {}}  # noqa: E731
    harness.run_jobs(fake, [job("a", 0), job("a", 1)], args)
    harness.run_jobs(fake, [job("a", 1), job("b", 1)], args)  # (a, 1) again: replaced, not appended
    rows = harness.read_rows(fake, tmp_path / "results.jsonl")
    assert [(r["run"], r["seed"], r["metrics"]["x"]) for r in rows] == [("b", 0, -1), ("a", 0, 0), ("a", 1, 10), ("b", 1, 10)]
    assert all(r["provenance"] is not None for r in rows[1:])


def test_every_stored_result_file_is_read_by_a_benchmark():
    mods = modules()
    files = sorted(p for p in harness.RESULTS_DIR.iterdir() if p.suffix in (".json", ".jsonl"))
    assert files and not [p.name for p in harness.RESULTS_DIR.iterdir() if p.suffix not in (".json", ".jsonl")]
    for path in files:
        readers = [m for m in mods.values() if path.stem in m.RESULTS]
        assert readers, f"{path.name}: no benchmark names {path.stem!r} in RESULTS"
        assert harness.stored(path.stem) == path
        for mod in readers:
            rows = harness.read_rows(mod, path)
            assert rows, path.name
            for r in rows:
                assert r.keys() >= ROW and isinstance(r["run"], str) and isinstance(r["metrics"], dict), (path.name, r)
                assert r["benchmark"] == mod.__name__
                assert r["provenance"] is None or r["provenance"].keys() >= PROVENANCE
            assert len({(r["run"], r["seed"]) for r in rows}) == len(rows), f"{path.name}: duplicate (run, seed)"


def test_legacy_eager_rows_read_under_todays_names():
    mod = harness.load("streaming")
    rows = {r["run"]: r for r in harness.read_rows(mod, harness.stored("eager_lr035_cpu"))}
    assert set(rows) == {"diloco", "eager", "speculative", "delayed"}
    assert rows["speculative"]["config"]["recorded"]["run"] == "eager"  # tentative: then eager-diloco's default
    assert "algorithm.name=speculative-diloco" in rows["speculative"]["config"]["overrides"]
    assert rows["eager"]["config"]["recorded"]["run"] == "eager-committed"
    assert not any("proxy_step" in o for r in rows.values() for o in r["config"]["overrides"])


def test_every_docs_figure_is_drawn_from_stored_results_or_named_as_not(tmp_path):
    figures = {png: name for name, mod in modules().items() for png in getattr(mod, "FIGURES", {})}
    pngs = {p.name for p in harness.IMG_DIR.glob("*.png")}
    assert not set(figures) & set(harness.NOT_FROM_RESULTS)
    assert pngs == set(figures) | set(harness.NOT_FROM_RESULTS)
    drawn, skipped = harness.figures(img_dir=tmp_path)
    assert skipped == []
    assert sorted(png for png, _ in drawn) == sorted(figures)
    for png in figures:
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
