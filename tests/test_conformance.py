"""The conformance suite, generated from the algorithm registry: a newly registered algorithm is
checked without writing a test. Golden trajectories (tests/golden/trajectories.json) pin every
algorithm's run bit for bit; regenerate them only on purpose, with

    FARSYNC_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_conformance.py -k golden
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from pydantic import Field

import farsync
from farsync.algorithms import ALGORITHMS, CollectiveAlgorithm
from farsync.algorithms.base import DDPOptions

from conformance import (check_declared_bytes, check_determinism, check_gloo_matches_simulator, check_one_worker_is_inner,
                         check_resume, declared_bytes, dumps_golden, tiny_config, trajectory)

GOLDEN = Path(__file__).parent / "golden" / "trajectories.json"
REGENERATE = os.environ.get("FARSYNC_REGENERATE_GOLDEN") == "1"
CHECKPOINTABLE = sorted(n for n, c in ALGORITHMS.items() if c.checkpointable)


@pytest.mark.parametrize("name", CHECKPOINTABLE)
def test_crash_and_resume_reproduce_the_run(name, tmp_path, monkeypatch):
    check_resume(name, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_a_run_is_a_pure_function_of_config_and_seed(name, tmp_path):
    check_determinism(name, tmp_path)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_an_unknown_option_is_refused_naming_it(name):
    cfg = tiny_config(name)
    cfg["algorithm"]["no_such_option"] = 1
    with pytest.raises(farsync.ConfigError, match=f"unknown key 'no_such_option' for algorithm '{name}'"):
        farsync.load_config(cfg)


@pytest.mark.parametrize("name", sorted(n for n, c in ALGORITHMS.items() if not c.checkpointable))
def test_parameter_server_algorithms_refuse_checkpoints(name):
    with pytest.raises(farsync.ConfigError, match="cannot be checkpointed"):
        farsync.load_config(tiny_config(name, checkpoint_every=6))


DECLARED = sorted(n for n in ALGORITHMS if declared_bytes(n) is not None)


def test_the_algorithms_that_declare_their_calls():
    assert DECLARED == ["choco-sgd", "co2", "ddp", "delayed-diloco", "diloco", "docom-sgt", "dsgd", "eager-diloco",
                        "gradient-tracking", "local-sgd", "sparta", "speculative-diloco", "streaming-diloco", "ticopd",
                        "zo-shared"]


@pytest.mark.parametrize("name", DECLARED)
def test_bytes_sent_match_the_declared_calls_under_the_cost_model(name, tmp_path):
    check_declared_bytes(name, tmp_path)


@pytest.mark.parametrize("name", sorted(n for n, c in ALGORITHMS.items() if c.one_worker_is_inner))
def test_one_worker_reduces_to_its_inner_optimizer(name, tmp_path):
    check_one_worker_is_inner(name, tmp_path)


def test_the_one_worker_reductions_declared():
    assert sorted(n for n, c in ALGORITHMS.items() if c.one_worker_is_inner) == [
        "asgd", "choco-sgd", "ddp", "dsgd", "dude-asgd", "fspda", "local-sgd", "sparta", "ticopd"]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_golden_trajectory(name, tmp_path):
    got = trajectory(name, tmp_path)
    table = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if REGENERATE:
        table[name] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(dumps_golden(table))
        return
    assert name in table, f"no golden trajectory for {name!r}: record one with FARSYNC_REGENERATE_GOLDEN=1 (see this module)"
    want = table[name]
    assert got["status"] == want["status"] == "completed"
    for g, w in zip(got["steps"], want["steps"]):
        assert g == w, f"{name}: step {w[0]} is [step, train_loss, eval_loss, bytes_sent, bytes_received, sim_time_s] = {g}, golden {w}"
    assert len(got["steps"]) == len(want["steps"])
    assert got["model_sha256"] == want["model_sha256"], f"{name}: final model differs from the golden one"


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_the_docstring_follows_the_template(name):
    """docs/architecture.md, "The docstring template": the first paragraph names the algorithm
    and the update rule is a literal block; help() on the class shows it."""
    import sys

    cls = ALGORITHMS[name]
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert f"`{name}`" in doc.strip().split("\n\n")[0], f"{name}: the first paragraph does not name it"
    assert "::\n" in doc, f"{name}: no literal block with the update rule"
    assert cls.__doc__, f"{name}: no class docstring for help()"


def test_every_registered_algorithm_has_a_golden_trajectory():
    if REGENERATE:
        pytest.skip("regenerating")
    assert sorted(json.loads(GOLDEN.read_text())) == sorted(ALGORITHMS)


# ---------------------------------------------------------------- the suite catches a broken algorithm
class LeakyOptions(DDPOptions):
    beta: float = Field(0.9, ge=0.0, lt=1.0, description="heavy-ball momentum")


class LeakyHeavyBall(CollectiveAlgorithm):
    """A toy: DDP with heavy-ball momentum v = beta v + g applied through the inner optimizer, whose
    momentum buffer v is deliberately left out of `state_dict` (the bug the suite must catch)."""

    name = "leaky-heavy-ball"
    summary = "test only: a momentum buffer missing from state_dict"
    Options = LeakyOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.velocity = [torch.zeros_like(p) for p in self.params]

    def _step(self) -> None:
        self._average_gradients()
        with torch.no_grad():
            for p, v in zip(self.params, self.velocity):
                v.mul_(self.options.beta).add_(p.grad)
                p.grad.copy_(v)
        self._optimizer_step()


def test_the_suite_fails_for_an_algorithm_that_drops_a_buffer_from_its_state(tmp_path, monkeypatch):
    monkeypatch.setitem(ALGORITHMS, LeakyHeavyBall.name, LeakyHeavyBall)
    check_determinism(LeakyHeavyBall.name, tmp_path / "det")  # deterministic: only resume exposes it
    with pytest.raises(AssertionError, match="leaky-heavy-ball: resumed metrics differ"):
        check_resume(LeakyHeavyBall.name, tmp_path / "resume", monkeypatch)

    class Fixed(LeakyHeavyBall):  # the same algorithm with its buffer in the state passes
        def state_dict(self):
            return {**super().state_dict(), "velocity": [v.clone() for v in self.velocity]}

        def load_state_dict(self, state):
            super().load_state_dict(state)
            for v, s in zip(self.velocity, state["velocity"]):
                v.copy_(s)

    monkeypatch.setitem(ALGORITHMS, LeakyHeavyBall.name, Fixed)
    check_resume(LeakyHeavyBall.name, tmp_path / "fixed", monkeypatch)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_help_shows_the_update_rule(name):
    doc = ALGORITHMS[name].__doc__ or ""
    assert f"`{name}`" in doc and "::" in doc  # the module docstring: its name and a rule block


def _gloo_checked_elsewhere() -> set[str]:
    from test_distributed import ALGOS  # test_torch_backend_matches_simulator_bitwise_with_two_workers

    return {spec["name"] for spec in ALGOS.values()}


# Parameter-server algorithms are left out: on gloo their workers' messages arrive in real time order,
# not the simulator's virtual-time order (docs/architecture.md), so only their byte counts agree.
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(CHECKPOINTABLE) - _gloo_checked_elsewhere()))
def test_gloo_matches_the_simulator_bitwise(name, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun workers (one thread each): the same float sums
    try:
        check_gloo_matches_simulator(name, tmp_path)
    finally:
        torch.set_num_threads(n)
