"""Encode+decode throughput of each compressor on a 64 MB float32 tensor vs a plain copy.

    python benchmarks/compression_throughput.py [--mb 64] [--repeats 5]

GB/s = input bytes / (encode + decode time), median of repeats. Two baselines: "copy" is
`y.copy_(x)` into an existing tensor (the memory-bandwidth limit), "clone" is `x.clone()` (the
result in freshly allocated memory: on Linux, a buffer this large is mmapped and page-faulted
anew on every call). Compressors are timed both ways: `decode` returns a new tensor, `decode_into`
writes into an existing one (what the reducers do, with a buffer reused across contributions).
Target (issue 4): casts and int8 >= 0.25x of copy speed.
"""

import argparse
import json
import statistics
import time

import torch

from farsync.compress import build_compressor

SPECS = [
    {"name": "bf16"}, {"name": "fp16"}, {"name": "int8"}, {"name": "int4"}, {"name": "int4", "rotate": 64},
    {"name": "fp8"}, {"name": "qsgd"}, {"name": "terngrad"}, {"name": "topk", "ratio": 0.01},
    {"name": "randomk", "ratio": 0.01}, {"name": "sign"}, {"name": "topk", "ratio": 0.01, "error_feedback": "ef"},
]


def timeit(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n = args.mb * 2**20 // 4
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    y = torch.empty_like(x)
    gb = x.numel() * 4 / 1e9
    copy = gb / timeit(lambda: y.copy_(x), args.repeats)
    clone = gb / timeit(lambda: x.clone(), args.repeats)
    print(json.dumps({"compressor": "copy", "GB/s": round(copy, 2), "clone GB/s": round(clone, 2),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))
    gen = torch.Generator().manual_seed(1)
    for spec in SPECS:
        comp = build_compressor(spec)
        state = comp.init(x)

        def fresh():
            payload, _ = comp.encode(x, state, gen)
            comp.decode(payload)

        def into():
            payload, _ = comp.encode(x, state, gen)
            comp.decode_into(payload, y)

        rate, rate_into = gb / timeit(fresh, args.repeats), gb / timeit(into, args.repeats)
        print(json.dumps({"compressor": spec, "GB/s": round(rate, 3), "vs_clone": round(rate / clone, 3),
                          "into GB/s": round(rate_into, 3), "into vs_copy": round(rate_into / copy, 3)}), flush=True)


if __name__ == "__main__":
    main()
