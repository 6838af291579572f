"""Compressors, reducers and DeMo's DCT on a CUDA device against the same code on the CPU.

    python benchmarks/gpu_check.py          # needs a GPU; prints one JSON line per check

Every compressor encodes and decodes the same tensor on both devices (CPU generators, so the
same random draws); prints the largest difference. PowerSGD and the reducers run in a 1-worker
simulated cluster with CUDA tensors. Not part of `make test` (CI has no GPU).
"""

import json

import torch

from farsync.comm import SimCluster
from farsync.compress import COMPRESSORS, PowerSGD, build_compressor, build_reducer
from farsync.compress.dct import ChunkedDCT

SPECS = [{"name": n} for n in COMPRESSORS if n != "none"] + [
    {"name": "int4", "rotate": 64}, {"name": "int8", "rounding": "stochastic"}, {"name": "topk", "ratio": 0.05, "error_feedback": "ef"},
    {"name": "topk", "ratio": 0.05, "error_feedback": "ef21"}, {"name": "topk", "ratio": 0.05, "error_feedback": "econtrol"},
]


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cuda")
    x = torch.randn(64 * 1000 + 3, generator=torch.Generator().manual_seed(0))
    for spec in SPECS:
        comp = build_compressor(spec)
        outs = []
        for d in ("cpu", dev):
            xd = x.to(d)
            payload, _ = comp.encode(xd, comp.init(xd), torch.Generator().manual_seed(1))
            out = torch.empty_like(xd)
            comp.decode_into(payload.unpack(payload.pack()), out)
            assert out.device.type == torch.device(d).type
            outs.append(out.cpu())
        diff = (outs[0] - outs[1]).abs().max().item()
        print(json.dumps({"check": spec, "max |cpu - cuda|": diff, "bytes": payload.nbytes}), flush=True)
    shapes = [(64, 48), (48,), (32, 3, 3, 3)]
    flat = torch.randn(sum(torch.Size(s).numel() for s in shapes), generator=torch.Generator().manual_seed(2))
    for spec in [{"name": "powersgd", "rank": 2}, {"name": "int4", "collective": "reduce_scatter", "error_feedback": "ef"},
                 {"name": "int8", "rounding": "stochastic"}]:
        outs = []
        for d in ("cpu", dev):
            red = build_reducer(spec, shapes)
            outs.append(SimCluster(1).run(lambda comm: red.reduce(comm, flat.to(d)).cpu())[0])
        print(json.dumps({"check": spec, "max |cpu - cuda|": (outs[0] - outs[1]).abs().max().item()}), flush=True)
    dct = ChunkedDCT((96, 96), 64)
    m = torch.randn(96, 96)
    diff = (dct.decode(dct.encode(m.to(dev))).cpu() - m).abs().max().item()
    print(json.dumps({"check": "DCT round trip on cuda", "max error": diff}), flush=True)
    assert isinstance(build_reducer({"name": "powersgd"}, shapes), PowerSGD)


if __name__ == "__main__":
    main()
