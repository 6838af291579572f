"""`farsync plan`: the planner's clock agrees with a trained simulated run of the same settings,
its answers are monotone and its errors name the bad value."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import farsync
from farsync.cli import main
from farsync.planner import bandwidth_for, plan

L = 4  # layers of the stand-in model: L equal blocks and nothing else, so fragments are whole layers


class Blocks(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(L))

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x))
        return x


def trained_cu(algorithm: str, steps: int, bandwidth: float, **options) -> float:
    """CU of a real simulated run: 2 workers, the model timed as a 1e9-parameter, L-layer model at
    0.1 s per step, bf16-sized payloads (bytes_scale halves the fp32 bytes), no latency."""
    def fn(comm):
        torch.manual_seed(0)
        model = Blocks()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        algo = farsync.wrap(model, opt, algorithm, **options)
        gen = torch.Generator().manual_seed(comm.rank)
        for _ in range(steps):
            x = torch.randn(4, 8, generator=gen)
            model(x).pow(2).mean().backward()
            algo.step()
            algo.zero_grad()
    n = L * 64
    report = farsync.simulate(fn, workers=2, bandwidth=bandwidth, latency=0.0,
                              time_model={"params": 1e9, "layers": L, "step_time": 0.1}, model_params=2 * n)
    return report.compute_utilization


CASES = [
    ("ddp", {}, {}),
    ("diloco", {"sync_every": 10}, {"sync_every": 10}),
    ("streaming-diloco", {"sync_every": 8, "fragments": 4, "delay": 1}, {"sync_every": 8, "fragments": 4, "delay": 1}),
    ("streaming-diloco", {"sync_every": 8, "fragments": 2, "delay": 0}, {"sync_every": 8, "fragments": 2, "delay": 0}),
    ("streaming-diloco", {"sync_every": 8, "fragments": 2, "overlap": "eager"}, {"sync_every": 8, "fragments": 2, "overlap": "eager"}),
    ("eager-diloco", {"sync_every": 10}, {"sync_every": 10}),
]


@pytest.mark.parametrize("algorithm, options, planned", CASES, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(CASES)])
@pytest.mark.parametrize("bandwidth", [3e9, 30e9, 300e9])
def test_plan_agrees_with_a_trained_simulated_run(algorithm, options, planned, bandwidth):
    steps = 40
    got = trained_cu(algorithm, steps, bandwidth, **options)
    p = plan(params=1e9, layers=L, step_time=0.1, workers=2, algorithm=algorithm, bits=16, latency=0.0,
             bandwidths=[bandwidth], steps=steps, **planned)
    assert p.cu[0][1] == pytest.approx(got, rel=1e-9)
    assert 0 < got <= 1


def test_ddp_overlap_hides_communication_that_the_old_clock_did_not():
    """With the reduction overlapped with the backward, DDP's CU at a bandwidth where the
    all-reduce fits into the backward is 1; without overlap (the old clock) it is not."""
    kw = dict(model="1b", workers=2, algorithm="ddp", bits=16, bandwidths=["1Tbps"])
    overlapped = plan(**kw).cu[0][1]
    at_step_end = plan(**kw, overlap_backward=False).cu[0][1]
    assert overlapped > at_step_end
    # 2 GB at 1 Tbps: 16 ms of all-reduce (M=2) after the backward ends -> 0.1 / 0.116
    assert at_step_end == pytest.approx(0.1 / (0.1 + 2e9 * 8 / 1e12 + 0.0), rel=1e-3)


def test_cu_grows_with_bandwidth_and_targets_are_consistent():
    p = plan(model="10b", algorithm="streaming-diloco", sync_every=96, fragments=16, delay=1, bits=4)
    cus = [c for _, c in p.cu]
    assert all(b >= a - 1e-12 for a, b in zip(cus, cus[1:]))
    need = [p.bandwidth_for_cu[k] for k in ("0.5", "0.8", "0.9", "0.95", "0.99")]
    assert all(v is not None for v in need) and need == sorted(need)
    got = plan(model="10b", algorithm="streaming-diloco", sync_every=96, fragments=16, delay=1, bits=4,
               bandwidths=[need[1]]).cu[0][1]
    assert got >= 0.8 and got < 0.8 + 0.01


def test_bisection_finds_the_smallest_bandwidth():
    def cu(bps):
        return min(1.0, bps / 1e9)
    assert bandwidth_for(cu, 0.5) == pytest.approx(5e8, rel=2e-4)
    assert bandwidth_for(lambda b: 0.1, 0.5) is None


def test_fewer_bits_and_more_overlap_need_less_bandwidth():
    kw = dict(model="1b", workers=2, sync_every=96, fragments=8)
    bf16 = plan(algorithm="streaming-diloco", delay=0, bits=16, **kw).bandwidth_for_cu["0.9"]
    tau1 = plan(algorithm="streaming-diloco", delay=1, bits=16, **kw).bandwidth_for_cu["0.9"]
    fp4 = plan(algorithm="streaming-diloco", delay=1, bits=4, **kw).bandwidth_for_cu["0.9"]
    eager = plan(algorithm="streaming-diloco", overlap="eager", bits=4, **kw).bandwidth_for_cu["0.9"]
    ddp = plan(model="1b", workers=2, algorithm="ddp", bits=16).bandwidth_for_cu["0.9"]
    assert ddp > bf16 > tau1 > fp4 > eager
    one = dict(kw, algorithm="streaming-diloco", delay=1, bucket_size=None)  # one message: time is bytes / bandwidth
    assert plan(bits=4, **one).bandwidth_for_cu["0.9"] == pytest.approx(plan(bits=16, **one).bandwidth_for_cu["0.9"] / 4,
                                                                       rel=3e-4)


def test_cli_json_and_table(capsys, tmp_path):
    argv = ["plan", "--params", "1e9", "--layers", "24", "--step-time", "0.1s", "--workers", "2", "--algorithm",
            "streaming-diloco", "--sync-every", "96", "--fragments", "8", "--delay", "1", "--bits", "4", "--json",
            "--plot", str(tmp_path / "cu.png")]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["bandwidth_for_cu"]) == {"0.5", "0.8", "0.9", "0.95", "0.99"}
    assert all(len(pair) == 2 and 0 <= pair[1] <= 1 for pair in out["cu"])
    assert (tmp_path / "cu.png").stat().st_size > 0
    assert main(["plan", "--model", "1b", "--algorithm", "ddp", "--bandwidth", "1Gbps,100Gbps"]) == 0
    text = capsys.readouterr().out
    assert "timed as a 1B-parameter, 24-layer model at 0.1 s per step" in text and "100 Gbps" in text


@pytest.mark.parametrize("argv, message", [
    (["--model", "1b", "--algorithm", "dsgd"], "valid choices: ddp, diloco, streaming-diloco, eager-diloco"),
    (["--model", "1b", "--algorithm", "streaming-diloco", "--fragments", "7"], "must be a multiple of fragments (7)"),
    (["--model", "1b", "--algorithm", "streaming-diloco", "--fragments", "4", "--delay", "25"], "delay must be in [0, 24]"),
    (["--model", "1b", "--algorithm", "streaming-diloco", "--fragments", "30", "--sync-every", "120"], "fragments must be in [1, 24]"),
    (["--params", "1e9", "--layers", "24"], "plan needs a step time"),
    (["--algorithm", "ddp"], "plan needs the deployment's size"),
    (["--params", "1e9", "--layers", "24", "--device", "h100"], "needs --tokens-per-step"),
    (["--model", "1b", "--bits", "0"], "bits per value must be > 0"),
])
def test_bad_settings_are_refused_naming_the_value(argv, message, capsys):
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_device_step_time_is_kaplan():
    p = plan(params=1e9, layers=24, device="h100", mfu=0.5, tokens_per_step=1e6, algorithm="ddp", bandwidths=[1e9])
    assert p.step_time_s == pytest.approx(6 * 1e9 * 1e6 / (989e12 * 0.5))
