"""Encode+decode throughput of each compressor on a 64 MB float32 tensor vs a plain copy (issue 4).

    python benchmarks/harness.py compression_throughput [--profile full|quick] [--set repeats=7] [--set mb=64] [--only RUN ...]

GB/s = input bytes / (encode + decode time), median of ``repeats``. Two baselines, measured once per
process before its first compressor (the ``copy`` row): "copy" is `y.copy_(x)` into an existing
tensor (the memory-bandwidth limit), "clone" is `x.clone()` (the result in freshly allocated memory:
on Linux, a buffer this large is mmapped and page-faulted anew on every call). Compressors are
timed both ways: `decode` returns a new tensor, `decode_into` writes into an existing one (what the
reducers do, with a buffer reused across contributions); each row also holds the baselines its
ratios use. Target (issue 4): casts and int8 >= 0.25x of copy speed. Run with --parallel 1 (the
default): parallel runs would time each other.
"""

import statistics
import time

import torch

import harness

SPECS = [
    {"name": "bf16"}, {"name": "fp16"}, {"name": "int8"}, {"name": "int4"}, {"name": "int4", "rotate": 64},
    {"name": "fp8"}, {"name": "qsgd"}, {"name": "terngrad"}, {"name": "topk", "ratio": 0.01},
    {"name": "randomk", "ratio": 0.01}, {"name": "sign"}, {"name": "topk", "ratio": 0.01, "error_feedback": "ef"},
]

PROFILES = {"full": {}, "quick": {"params": {"mb": 4, "repeats": 2}}}
PARAMS = {"mb": 64, "repeats": 5}
SEEDS = None
CONFIG_OVERRIDES = False
RESULTS = ()  # the numbers are in docs/benchmarks.md (printed rows of runs before the harness)
_STATE: dict = {}  # per process: the tensors and the baselines, measured before the first compressor


def label(spec: dict) -> str:
    return "-".join([spec["name"], *(f"{k}{v}" for k, v in spec.items() if k != "name")])


def jobs(args) -> list[dict]:
    p = args.params
    return [{"run": "copy", "seed": None, "config": {"compressor": "copy", **p}}] + \
           [{"run": label(spec), "seed": None, "config": {"compressor": spec, **p}} for spec in SPECS]


def timeit(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def baselines(mb: int, repeats: int) -> dict:
    key = (mb, repeats)
    if _STATE.get("key") != key:
        n = mb * 2**20 // 4
        x = torch.randn(n, generator=torch.Generator().manual_seed(0))
        y = torch.empty_like(x)
        gb = x.numel() * 4 / 1e9
        copy = gb / timeit(lambda: y.copy_(x), repeats)
        clone = gb / timeit(lambda: x.clone(), repeats)
        _STATE.update(key=key, x=x, y=y, gb=gb, copy=copy, clone=clone, gen=torch.Generator().manual_seed(1))
    return _STATE


def run_one(job: dict) -> dict:
    from farsync.compress import build_compressor

    cfg = job["config"]
    st = baselines(cfg["mb"], cfg["repeats"])
    base = {"copy GB/s": round(st["copy"], 2), "clone GB/s": round(st["clone"], 2)}
    if cfg["compressor"] == "copy":
        return base
    x, y, gb, gen = st["x"], st["y"], st["gb"], st["gen"]
    comp = build_compressor(cfg["compressor"])
    state = comp.init(x)

    def fresh():
        payload, _ = comp.encode(x, state, gen)
        comp.decode(payload)

    def into():
        payload, _ = comp.encode(x, state, gen)
        comp.decode_into(payload, y)

    rate, rate_into = gb / timeit(fresh, cfg["repeats"]), gb / timeit(into, cfg["repeats"])
    return {"GB/s": round(rate, 3), "vs_clone": round(rate / st["clone"], 3), "into GB/s": round(rate_into, 3),
            "into vs_copy": round(rate_into / st["copy"], 3), **base}


def finish(rows: list[dict], args) -> None:
    print("\n| compressor | GB/s (vs clone) | into buffer: GB/s (vs copy) |\n|---|---|---|")
    for r in rows:
        m = r["metrics"]
        if "GB/s" in m:
            print(f"| {r['run']} | {m['GB/s']:.2f} ({m['vs_clone']:.2f}) | {m['into GB/s']:.2f} ({m['into vs_copy']:.3f}) |")
        else:
            print(f"| {r['run']} | copy {m['copy GB/s']:.2f}, clone {m['clone GB/s']:.2f} | |")


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
