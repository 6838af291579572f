"""The algorithm contract (issue 19): one Options model per algorithm checked by one path for the
YAML config and `farsync.wrap`; the three base classes; one compression channel with capabilities;
fault injection as a Communicator wrapper; evaluation as an explicit step on every rank."""

from __future__ import annotations

import pytest
import torch

import farsync
from farsync.algorithms import ALGORITHMS, CollectiveAlgorithm, Decentralized, ParameterServerAlgorithm
from farsync.algorithms.base import DDPOptions
from farsync.algorithms.options import AlgorithmOptions, EveryStep, takes, validate_options
from farsync.algorithms.server import Assignment, Report
from farsync.cli import main
from farsync.comm import CommunicatorWrapper, SimCluster
from farsync.comm.faults import FAULT_ENV, FaultInjector, InjectedFault, from_env, parse_fault
from farsync.compress import EF21, Cast, Channel, ErrorFeedback, Identity, IntQuant, TopK

QUAD = {"task": {"name": "quadratic", "dim": 4, "sigma": 0.1, "zeta": 1.0},
        "cluster": {"workers": 2, "step_time": "10ms"},
        "train": {"steps": 6, "batch_size": 2, "eval_every": 3, "log_every": 3}}


# ---------------------------------------------------------------- options: one path
def test_every_algorithm_is_one_of_the_three_shapes_and_its_options_are_an_algorithm_options_model():
    for name, cls in ALGORITHMS.items():
        bases = [b for b in (CollectiveAlgorithm, Decentralized, ParameterServerAlgorithm) if issubclass(cls, b)]
        assert len(bases) == 1, (name, bases)
        assert issubclass(cls.Options, AlgorithmOptions), name
        for key, field in cls.Options.model_fields.items():
            assert field.description, f"{name}.{key} has no description"


@pytest.mark.parametrize("spec,message", [
    ({"name": "diloco", "outer": {"name": "sps"}}, "outer: 'sps' needs the mini-batch loss"),
    ({"name": "dsgd", "compress": {"name": "int8"}}, "'dsgd' does not compress what it sends"),
    ({"name": "streaming-diloco", "sync_every": 6, "fragments": 4}, r"sync_every \(6\) must be a multiple of fragments \(4\)"),
    ({"name": "diloco", "fragmnts": 2}, "unknown key 'fragmnts' for algorithm 'diloco'"),
])
def test_the_yaml_config_and_wrap_refuse_the_same_options_with_the_same_reason(spec, message):
    """The drift a review found (``outer: {name: sps}`` refused by the config, accepted by wrap)
    cannot come back: both go through `validate_options`."""
    with pytest.raises(farsync.ConfigError, match=message):
        farsync.load_config({**QUAD, "algorithm": {**spec, "inner": {"name": "sgd", "lr": 0.1}}})
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=message):
        farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), dict(spec), comm=object())


@pytest.mark.parametrize("spec,message,ignored", [
    ({"name": "ddp", "outer": {"lr": 0.5}}, "algorithm 'ddp' has no outer optimizer", "algorithm.outer"),
    ({"name": "ddp", "sync_every": 5}, "'ddp' synchronizes every step", "algorithm.sync_every"),
])
def test_another_algorithms_key_is_refused_by_wrap_and_dropped_with_a_note_by_a_config(spec, message, ignored):
    """A YAML config runs under any algorithm.name (one config, several algorithms); in code the
    same key is a mistake."""
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=message):
        farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), dict(spec), comm=object())
    cfg = farsync.load_config({**QUAD, "algorithm": {**spec, "inner": {"name": "sgd", "lr": 0.1}}})
    assert cfg.notes() == [f"note: algorithm 'ddp' does not use {ignored} (options of other algorithms); ignored"]


def test_what_an_algorithm_takes_is_read_from_its_options():
    get = ALGORITHMS.get
    assert takes(get("diloco"), "outer") and takes(get("diloco"), "sync_every") and takes(get("diloco"), "compress")
    assert not takes(get("ddp"), "outer") and not takes(get("ddp"), "sync_every") and takes(get("ddp"), "compress")
    assert takes(get("dsgd"), "topology") and not takes(get("dsgd"), "compress") and takes(get("choco-sgd"), "compress")
    assert not takes(get("asgd"), "sync_every") and takes(get("fedbuff"), "outer")
    opts = validate_options(get("streaming-diloco"), {"sync_every": 4, "fragments": 2})
    assert (opts.sync_every, opts.fragments, opts.outer["name"]) == (4, 2, "sgd")


def test_an_options_model_outside_the_contract_is_refused_when_the_class_is_written():
    from pydantic import BaseModel

    class Plain(BaseModel):
        beta: float = 0.5

    with pytest.raises(TypeError, match="Options must subclass farsync.algorithms.options.AlgorithmOptions"):
        type("Broken", (CollectiveAlgorithm,), {"name": "broken", "Options": Plain, "_step": lambda self: None})


def test_farsync_list_an_algorithm_shows_its_keys_defaults_and_descriptions(capsys):
    assert main(["list", "streaming-diloco"]) == 0
    out = capsys.readouterr().out
    assert "fragments" in out and "(default 1)" in out and "outer optimizer" in out and "sync_every" in out
    assert main(["list", "no-such-algo"]) == 2
    assert "unknown algorithm 'no-such-algo'" in capsys.readouterr().err


# ---------------------------------------------------------------- parameter server messages
def test_the_parameter_server_headers_round_trip_through_their_float64_tensors():
    r = Report(steps=5, loss_sum=2.5, compute_s=0.25, finite=False, bytes_sent=1234, bytes_received=99, lrs=(0.1, 0.01))
    assert Report.from_tensor(r.tensor()) == r and r.tensor().numel() == Report.FIXED + 2
    a = Assignment(steps=0, progress=3.5)
    assert Assignment.from_tensor(a.tensor()) == a and a.tensor().numel() == Assignment.SIZE
    assert all(not c.checkpointable for c in ALGORITHMS.values() if issubclass(c, ParameterServerAlgorithm))


# ---------------------------------------------------------------- one compression channel
def test_compressor_capabilities_say_what_an_algorithm_may_do_with_them():
    assert Identity().lossless and Identity().summable and Cast("bfloat16").summable
    assert not IntQuant(8).summable and not IntQuant(8).stateful
    assert ErrorFeedback(TopK(0.5)).stateful and not ErrorFeedback(TopK(0.5)).global_copy
    assert EF21(TopK(0.5)).stateful and EF21(TopK(0.5)).global_copy


def test_a_channel_keeps_its_state_and_generator_and_restores_them_exactly():
    x = torch.linspace(-1, 1, 64)
    a = Channel(IntQuant(8, rounding="stochastic"), rank=1)
    p1, a.state = a.encode(x, a.state)
    b = Channel(IntQuant(8, rounding="stochastic"), rank=1)
    b.load_state_dict(a.state_dict())
    p2, _ = a.encode(x, a.state)
    p3, _ = b.encode(x, b.state)
    assert torch.equal(a.decode(p2, x), b.decode(p3, x))  # the same draws after the restore
    assert a.decode(p1, x).shape == x.shape and a.decode(p1, x).dtype == x.dtype


# ---------------------------------------------------------------- fault injection
def test_fault_injection_is_a_communicator_wrapper_that_fires_at_its_step_only():
    assert parse_fault(None) is None and parse_fault("1:8") == (1, 8)
    for bad in ("1", "a:b", "1:0", "-1:3"):
        with pytest.raises(ValueError, match=FAULT_ENV):
            parse_fault(bad)
    cluster = SimCluster(2)

    def worker(comm):
        w = FaultInjector(comm, rank=1, step=3)
        assert isinstance(w, CommunicatorWrapper) and (w.rank, w.world_size) == (comm.rank, comm.world_size)
        t = torch.ones(2)
        for step in (1, 2, 3):
            w.begin_step(step)
            w.all_reduce(t)  # forwarded: counted by the wrapped communicator
        return t.tolist()

    with pytest.raises(InjectedFault, match="rank 1 killed at step 3"):
        cluster.run(worker)

    resumed = SimCluster(2)

    def resumed_worker(comm):  # a run resumed at step 3: never killed
        w = FaultInjector(comm, rank=1, step=3)
        for step in (3, 4):
            w.begin_step(step)
        return "ok"

    assert resumed.run(resumed_worker) == ["ok", "ok"]


def test_from_env_wraps_only_when_asked(monkeypatch):
    comm = object.__new__(CommunicatorWrapper)
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert from_env(comm) is comm
    monkeypatch.setenv(FAULT_ENV, "0:2")
    comm.rank, comm.world_size = 0, 1
    assert isinstance(from_env(comm), FaultInjector)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # a process torchrun restarted is not killed again
    assert from_env(comm) is comm


# ---------------------------------------------------------------- evaluation on every rank
class AveragedEvaluation(CollectiveAlgorithm):
    """Test only: local SGD without averaging, evaluated at the workers' average model, which
    `eval_params` gathers (a collective: every rank must enter it)."""

    name = "averaged-evaluation"
    summary = "test only"
    Options = DDPOptions

    def _step(self) -> None:
        self._optimizer_step()

    def eval_params(self):
        from contextlib import contextmanager

        from farsync.algorithms.base import swapped_params

        @contextmanager
        def ctx():
            xs = self.comm.all_gather_object([p.detach().clone() for p in self.params])
            avg = [sum(ps) / len(xs) for ps in zip(*xs)]
            with swapped_params(self.params, avg):
                yield self.model

        return ctx()


def test_every_rank_enters_the_evaluation_step(tmp_path, monkeypatch):
    monkeypatch.setitem(ALGORITHMS, AveragedEvaluation.name, AveragedEvaluation)
    run = farsync.run({**QUAD, "algorithm": {"name": "averaged-evaluation", "inner": {"name": "sgd", "lr": 0.1}}},
                      out=tmp_path / "r", progress=False)
    assert run.status == "completed", run.status  # rank 0 alone in a collective would deadlock the simulator
    assert [m["step"] for m in run.metrics if "eval_loss" in m] == [3, 6]


def test_every_step_options_fix_sync_every_to_one():
    assert EveryStep().sync_every == 1
    with pytest.raises(ValueError, match="synchronizes every step"):
        EveryStep(sync_every=2)
