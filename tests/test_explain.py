"""`farsync explain` / `farsync list --options` and the example configs (issue 24, item 4)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml

from farsync.algorithms import ALGORITHMS
from farsync.cli import main
from farsync.config import load_config
from farsync.explain import default_section, explain
from farsync.runner import run

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))
DECENTRALIZED = {name for name, cls in ALGORITHMS.items() if "topology" in cls.Options.model_fields}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_explain_prints_the_docstring_every_option_and_a_config_that_validates(name, capsys):
    cls = ALGORITHMS[name]
    assert main(["explain", name]) == 0
    out = capsys.readouterr().out
    assert out == explain(name)
    doc = inspect.getdoc(cls)
    assert doc and doc.splitlines()[0] in out  # the update rule, from the code
    for key, field in cls.Options.model_fields.items():
        if key != "topology":
            assert f"  {key} " in out, key
            if field.description:
                assert field.description in out
    line = next(ln for ln in out.splitlines() if ln.startswith("  algorithm: "))
    section = yaml.safe_load(line.removeprefix("  algorithm: "))
    assert section == default_section(name)
    cluster = {"workers": 4, **({"topology": "ring"} if name in DECENTRALIZED else {})}
    cfg = load_config({"algorithm": section, "cluster": cluster, "train": {"steps": 1000}})
    assert cfg.algorithm.name == name  # the pasted line is a valid config as it stands


def test_list_options_is_list_algorithm_and_an_unknown_name_is_refused(capsys):
    assert main(["list", "--options", "diloco"]) == 0
    by_flag = capsys.readouterr().out
    assert main(["list", "diloco"]) == 0
    assert capsys.readouterr().out == by_flag
    assert "sync_every" in by_flag and "farsync explain diloco" in by_flag
    for argv in (["explain", "nope"], ["list", "--options", "nope"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "unknown algorithm 'nope'" in err and "diloco" in err  # names the valid choices


def test_there_is_an_example_per_family():
    names = {load_config(p).algorithm.name for p in EXAMPLES}
    families = {"ddp", "local-sgd", "diloco", "streaming-diloco", "eager-diloco", "async-local-sgd",
                "decoupled-momentum", "dude-asgd", "gradient-tracking"}
    assert families <= names, families - names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_config_runs_a_few_steps(path, tmp_path):
    """As written, but narrower and shorter (the model's depth stays: fragments stride over its blocks)."""
    cfg = load_config(path)
    h = max(getattr(cfg.algorithm, "sync_every", 1) or 1, 1)
    steps = 2 * h if h > 1 else 4
    gpt = ["task.n_head=2", "task.n_embd=16", "task.block_size=16", "task.eval_windows=4"]
    tiny = [*(gpt if cfg.task.name == "shakespeare-gpt" else []), f"train.steps={steps}", "train.eval_every=0", f"train.log_every={h if h > 1 else 2}", "train.batch_size=2"]
    out = tmp_path / path.stem
    result = run(path, tiny, out=out)
    assert result.status == "completed", result.summary
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in lines if "train_loss" in r]
    assert losses and all(loss == loss and loss < 10 for loss in losses)  # finite, not blown up
