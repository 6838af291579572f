"""Compressors, reducers and DeMo's DCT on a CUDA device against the same code on the CPU (a device sanity check).

    python benchmarks/harness.py gpu_check [--profile gpu|quick] [--out DIR] [--only "int4*" ...]

Every compressor encodes and decodes the same tensor on both devices (CPU generators, so the
same random draws): metrics, the largest difference and the payload's bytes. PowerSGD and the
reducers run in a 1-worker simulated cluster with the tensors on the device; DeMo's chunked DCT
does an encode/decode round trip there (metric: the largest error). One run per check, labelled
by its spec. Profile ``gpu`` (the default) needs a CUDA device; profile ``quick`` compares the CPU
with itself (``device=cpu``: a smoke test of the script on a machine without a GPU, every
difference 0). Not part of `make test` (CI has no GPU).
"""

import torch

import harness
from farsync.comm import SimCluster
from farsync.compress import COMPRESSORS, PowerSGD, build_compressor, build_reducer
from farsync.compress.dct import ChunkedDCT

COMPRESSOR_SPECS = [{"name": n} for n in COMPRESSORS if n != "none"] + [
    {"name": "int4", "rotate": 64}, {"name": "int8", "rounding": "stochastic"}, {"name": "topk", "ratio": 0.05, "error_feedback": "ef"},
    {"name": "topk", "ratio": 0.05, "error_feedback": "ef21"}, {"name": "topk", "ratio": 0.05, "error_feedback": "econtrol"},
]
REDUCER_SPECS = [{"name": "powersgd", "rank": 2}, {"name": "int4", "collective": "reduce_scatter", "error_feedback": "ef"},
                 {"name": "int8", "rounding": "stochastic"}]
SHAPES = [(64, 48), (48,), (32, 3, 3, 3)]

PROFILES = {"gpu": {}, "quick": {"params": {"device": "cpu"}}}
PARAMS = {"device": "cuda"}
SEEDS = None  # fixed generators
CONFIG_OVERRIDES = False
RESULTS = ()  # a check, not a result: its rows are for the session that ran it


def label(kind: str, spec: dict) -> str:
    return " ".join([kind, spec["name"], *(f"{k}={v}" for k, v in spec.items() if k != "name")])


def jobs(args) -> list[dict]:
    dev = args.params["device"]
    out = [{"run": label("compressor", s), "seed": None, "device": dev, "config": {"check": "compressor", "spec": s, "device": dev}}
           for s in COMPRESSOR_SPECS]
    out += [{"run": label("reducer", s), "seed": None, "device": dev, "config": {"check": "reducer", "spec": s, "device": dev}}
            for s in REDUCER_SPECS]
    return out + [{"run": "dct round trip", "seed": None, "device": dev, "config": {"check": "dct", "device": dev}}]


def device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: device {name!r} but no CUDA device here (to compare the CPU with itself: --profile quick or --set device=cpu)")
    return torch.device(name)


def check_compressor(spec: dict, dev: torch.device) -> dict:
    x = torch.randn(64 * 1000 + 3, generator=torch.Generator().manual_seed(0))
    comp = build_compressor(spec)
    outs = []
    for d in (torch.device("cpu"), dev):
        xd = x.to(d)
        payload, _ = comp.encode(xd, comp.init(xd), torch.Generator().manual_seed(1))
        out = torch.empty_like(xd)
        comp.decode_into(payload.unpack(payload.pack()), out)
        assert out.device.type == d.type, (out.device, d)
        outs.append(out.cpu())
    return {"max |cpu - device|": (outs[0] - outs[1]).abs().max().item(), "bytes": payload.nbytes}


def check_reducer(spec: dict, dev: torch.device) -> dict:
    flat = torch.randn(sum(torch.Size(s).numel() for s in SHAPES), generator=torch.Generator().manual_seed(2))
    outs = []
    for d in (torch.device("cpu"), dev):
        red = build_reducer(spec, SHAPES)
        if spec["name"] == "powersgd":
            assert isinstance(red, PowerSGD), type(red)
        outs.append(SimCluster(1).run(lambda comm: red.reduce(comm, flat.to(d)).cpu())[0])
    return {"max |cpu - device|": (outs[0] - outs[1]).abs().max().item()}


def check_dct(dev: torch.device) -> dict:
    dct = ChunkedDCT((96, 96), 64)
    m = torch.randn(96, 96)
    return {"max error": (dct.decode(dct.encode(m.to(dev))).cpu() - m).abs().max().item()}


def run_one(job: dict) -> dict:
    cfg = job["config"]
    dev = device(cfg["device"])
    if cfg["check"] == "compressor":
        return check_compressor(cfg["spec"], dev)
    if cfg["check"] == "reducer":
        return check_reducer(cfg["spec"], dev)
    return check_dct(dev)


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
