"""`farsync plan`: compute utilization of a deployment over bandwidths, without training.

For a deployment (parameters, layers, step time or device + MFU + tokens per step), M workers
and an algorithm, the planner plays the clock of a run of ``steps`` inner steps with the same
engine as the simulator (`comm/timing.py` for per-layer release and buckets, `comm/cost.py`
for the time of a call) and returns

    CU(bandwidth) = compute time / wall time          # 0.8: 80% of the time is spent computing

at each bandwidth, and the smallest bandwidth that reaches each target CU (bisection on a log
scale; CU only grows with bandwidth). All workers are alike, so one worker's clock is the run's.
Schedules (as the algorithms issue and wait; `docs/architecture.md`, "The clock"):

- ``ddp``: every step, the gradient (all layers) in buckets during the backward; the step ends
  when compute has ended and the last bucket has arrived.
- ``diloco``: every H steps, the pseudo-gradient in buckets during the last step's backward;
  blocking.
- ``streaming-diloco``: F strided fragments (fragment p: layers p, p+F, ...); the k-th
  synchronization (fragment (k-1) mod F) is released in the backward of step kH/F - tau and
  waited for at the end of step kH/F. ``overlap: eager`` (the eager-updates paper's 1-outer-step
  overlap): released at step kH/F, waited for one round (H steps) later.
- ``eager-diloco``: ``streaming-diloco`` with F = 1 and ``overlap: eager``.

Payload per synchronization: params x (share of the layers carried) x bits / 8, reduced with a
ring all-reduce (each worker sends 2(M-1)/M of it). Latency (default 0: the papers' tables fit
best with none) delays each bucket's arrival; the buckets of one call pipeline it.
"""

from __future__ import annotations

import json
import math

import numpy as np
from dataclasses import asdict, dataclass, field
from typing import Any

from .comm.cost import NetworkModel
from .comm.timing import StepLayout, buckets
from .deployment import PRESETS, TimeModelConfig, describe
from .units import format_bandwidth, format_seconds, parse_bandwidth, parse_duration

ALGORITHMS = ("ddp", "diloco", "streaming-diloco", "eager-diloco")
TARGETS = (0.5, 0.8, 0.9, 0.95, 0.99)
OVERLAPS = ("tau", "eager")


@dataclass
class Plan:
    """What `plan` returns: the settings, the time model in words, CU per bandwidth and the
    bandwidth needed for each target CU (None: not reached below 10 Pbps)."""

    settings: dict[str, Any]
    time_model: str
    cu: list[tuple[float, float]]
    bandwidth_for_cu: dict[str, float | None]
    step_time_s: float
    payload_bytes: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"bandwidth_for_cu": self.bandwidth_for_cu, "cu": [list(p) for p in self.cu],
                           "settings": self.settings, "time_model": self.time_model, "step_time_s": self.step_time_s})

    def table(self) -> str:
        """The plan for people: CU per bandwidth, then the bandwidth needed per target."""
        s = self.settings
        head = [f"{s['algorithm']}: {self.time_model}",
                f"  M={s['workers']}, H={s['sync_every']}, fragments={s['fragments']}, delay={s['delay']}, "
                f"overlap={s['overlap']}, {s['bits']} bits per value, {s['steps']} steps simulated"]
        rows = ["  bandwidth      CU"] + [f"  {format_bandwidth(b):>11}  {cu:7.4f}" for b, cu in self.cu]
        need = ["  CU target   bandwidth needed"] + [
            f"  {float(k):>9.0%}   {format_bandwidth(v) if v is not None else 'not reached'}"
            for k, v in self.bandwidth_for_cu.items()]
        return "\n".join(head + rows + [""] + need)

    def plot(self, path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([b / 1e9 for b, _ in self.cu], [c for _, c in self.cu], marker="o", ms=3, label=self.settings["algorithm"])
        ax.set_xscale("log")
        ax.set_xlabel("bandwidth per worker (Gbit/s)")
        ax.set_ylabel("compute utilization")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(self.time_model.split(";")[0], fontsize=8)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def resolve_deployment(model: str | None = None, params: float | None = None, layers: int | None = None,
                       step_time: str | float | None = None, device: str | None = None, mfu: float | None = None,
                       tokens_per_step: float | None = None, peak_flops: str | float | None = None,
                       bucket_size: str | float | None = "25MiB", forward_share: float | None = None,
                       overlap_backward: bool = True) -> tuple[TimeModelConfig, float, int, float]:
    """(time model, params, layers, step time in s) of a deployment from a preset and/or fields."""
    fields: dict[str, Any] = {"preset": model} if model is not None else {}
    for k, v in {"params": params, "layers": layers, "step_time": step_time, "device": device, "mfu": mfu,
                 "tokens_per_step": tokens_per_step, "peak_flops": peak_flops, "forward_share": forward_share}.items():
        if v is not None:
            fields[k] = v
    fields["bucket_size"] = bucket_size
    fields["overlap"] = overlap_backward
    tm = TimeModelConfig(**fields)
    if tm.params is None or tm.layers is None:
        raise ValueError("plan needs the deployment's size: --model 1b|10b|100b, or --params and --layers")
    if tm.step_time is None and tm.peak() is None:
        raise ValueError("plan needs a step time: --step-time, or --device (or --peak-flops) with --tokens-per-step")
    if tm.step_time is None and tm.tokens_per_step is None:
        raise ValueError("plan with --device needs --tokens-per-step (tokens per worker per step; Kaplan: 6 N tokens FLOPs)")
    return tm, tm.params, tm.layers, tm.step_time_s(tm.params, tm.tokens_per_step or 0.0)


def check_schedule(algorithm: str, workers: int, sync_every: int, fragments: int, delay: int, overlap: str,
                   bits: float, layers: int) -> None:
    """Bad settings fail before any work, naming the value and the valid range."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r} for plan; valid choices: {', '.join(ALGORITHMS)}")
    if overlap not in OVERLAPS:
        raise ValueError(f"unknown overlap {overlap!r}; valid choices: {', '.join(OVERLAPS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not bits > 0:
        raise ValueError(f"bits per value must be > 0, got {bits}")
    if sync_every < 1:
        raise ValueError(f"sync_every (H) must be >= 1, got {sync_every}")
    if algorithm == "streaming-diloco":
        if not 1 <= fragments <= layers:
            raise ValueError(f"fragments must be in [1, {layers}] (the layers), got {fragments}")
        if sync_every % fragments:
            raise ValueError(f"sync_every ({sync_every}) must be a multiple of fragments ({fragments})")
        if overlap == "tau" and not 0 <= delay < sync_every // fragments:
            raise ValueError(f"delay must be in [0, {sync_every // fragments - 1}] (< sync_every / fragments), got {delay}")
        if overlap == "eager" and delay:
            raise ValueError(f"overlap eager overlaps a whole round; delay applies to overlap tau only (got {delay})")


def utilization(step_time_s: float, layout: StepLayout, network: NetworkModel, bucket_bytes: float | None, *,
                params: float, workers: int, algorithm: str, sync_every: int = 1, fragments: int = 1, delay: int = 0,
                overlap: str = "tau", bits: float = 16.0, steps: int | None = None) -> float:
    """Compute utilization of one run of `steps` inner steps (module docstring)."""
    if algorithm == "ddp":
        sync_every, fragments, delay, overlap = 1, 1, 0, "tau"
    elif algorithm == "diloco":
        fragments, delay, overlap = 1, 0, "tau"
    elif algorithm == "eager-diloco":
        fragments, delay, overlap = 1, 0, "eager"
    steps = steps or default_steps(sync_every)
    L = layout.layers
    frags = [[layer for layer in range(L) if layer % fragments == p] for p in range(fragments)]
    spans = [tuple((layer / L, (layer + 1) / L) for layer in frag) for frag in frags]
    size = [params * len(frag) / L * bits / 8.0 for frag in frags]
    period = sync_every // fragments
    ranks = tuple(range(workers))
    T = step_time_s
    clock = link = compute = 0.0
    due: dict[int, list[float]] = {}  # step -> end times of the reductions to wait for then
    inflight: list[list[float]] = [[] for _ in frags]  # eager: reductions in flight per fragment

    plans = []  # per fragment: (ready fractions, cumulative bandwidth terms, latency term) of its buckets
    for f in range(len(frags)):
        plan = buckets(size[f] * network.bytes_scale, spans[f], bucket_bytes, layout)
        terms = [network.terms("all_reduce", size[f] * share, ranks) for share, _ in plan]
        plans.append((np.array([r for _, r in plan]), np.cumsum([x for x, _ in terms]), terms))

    def issue(start: float, length: float, fragment: int) -> float:
        """Buckets first-in first-out on the link (as the simulator's `_complete`); the recurrence
        free_k = max(ready_k, free_(k-1)) + d_k is solved at once: free_k = D_k + max(link, max_(j<=k) ready_j - D_(j-1))."""
        nonlocal link
        ready, cum, terms = plans[fragment]
        if len(terms) == 1:
            begin = max(start + length * ready[0] if length > 0 else start, link)
            link = begin + (terms[0][0] + terms[0][1])
            return link
        times = start + length * ready if length > 0 else np.full(len(ready), start)
        before = np.concatenate(([0.0], cum[:-1]))
        free = cum[-1] + max(link, float(np.max(times - before)))
        link = free + terms[-1][1]
        return link

    for t in range(1, steps + 1):
        t0 = clock
        clock += T
        compute += T
        end_of_compute = clock
        if overlap == "eager":
            if t % period == 0:
                f = (t // period - 1) % fragments
                if inflight[f]:
                    clock = max(clock, inflight[f].pop(0))
                fresh = clock == end_of_compute
                inflight[f].append(issue(t0 if fresh else clock, T if fresh else 0.0, f))
            continue
        if (t + delay) % period == 0:
            k = (t + delay) // period
            due.setdefault(k * period, []).append(issue(t0, T, (k - 1) % fragments))
        for end in due.pop(t, []):
            clock = max(clock, end)
    return compute / clock if clock > 0 else 1.0


def default_steps(sync_every: int) -> int:
    """A run long enough that the first round's start-up does not dominate: 20 rounds, >= 100 steps."""
    return max(20 * sync_every, 100)


def plan(*, model: str | None = None, params: float | None = None, layers: int | None = None,
         step_time: str | float | None = None, device: str | None = None, mfu: float | None = None,
         tokens_per_step: float | None = None, peak_flops: str | float | None = None, workers: int = 2,
         algorithm: str = "diloco", sync_every: int = 100, fragments: int = 1, delay: int = 0, overlap: str = "tau",
         bits: float = 16.0, latency: str | float = 0.0, bandwidths: list[str | float] | None = None,
         targets: tuple[float, ...] = TARGETS, steps: int | None = None, bucket_size: str | float | None = "25MiB",
         forward_share: float | None = None, overlap_backward: bool = True) -> Plan:
    """Compute utilization of a deployment over bandwidths, and the bandwidth needed per target CU.

    ``plan(model="1b", workers=2, algorithm="streaming-diloco", sync_every=100, fragments=8, delay=1, bits=4)``."""
    tm, n, L, T = resolve_deployment(model, params, layers, step_time, device, mfu, tokens_per_step, peak_flops,
                                     bucket_size, forward_share, overlap_backward)
    if algorithm == "ddp":
        sync_every = 1
    check_schedule(algorithm, workers, sync_every, fragments, delay, overlap, bits, L)
    for x in targets:
        if not 0 < x <= 1:
            raise ValueError(f"target CU must be in (0, 1], got {x}")
    lat = parse_duration(latency)
    layout = tm.layout(L)
    grid = [parse_bandwidth(b) for b in bandwidths] if bandwidths else [10 ** (7 + i / 4) for i in range(25)]
    steps = steps or default_steps(1 if algorithm == "ddp" else sync_every)
    kw = dict(params=n, workers=workers, algorithm=algorithm, sync_every=sync_every, fragments=fragments, delay=delay,
              overlap=overlap, bits=bits, steps=steps)

    def cu(bps: float) -> float:
        return utilization(T, layout, NetworkModel(bps, lat), tm.bucket_bytes(), **kw)

    curve = [(b, cu(b)) for b in grid]
    need = {f"{x:g}": bandwidth_for(cu, x) for x in targets}
    how = f"on {tm.device or tm.peak_flops} at MFU {tm.mfu:g}" if tm.step_time is None else ""
    words = describe(n, L, T, workers=workers, latency_s=lat, how=how, bucket_bytes=tm.bucket_bytes(), overlap=tm.overlap)
    settings = {"algorithm": algorithm, "workers": workers, "sync_every": sync_every, "fragments": fragments,
                "delay": delay, "overlap": overlap, "bits": bits, "latency_s": lat, "params": n, "layers": L,
                "step_time_s": T, "steps": steps, "bucket_bytes": tm.bucket_bytes(), "overlap_backward": tm.overlap,
                "preset": model}
    return Plan(settings, words, curve, need, T, payload_bytes=n * bits / 8.0)


def bandwidth_for(cu, target: float, lo: float = 1e3, hi: float = 1e16, rel: float = 1e-4) -> float | None:
    """Smallest bandwidth (bits/s) with cu(bandwidth) >= target, by bisection on log(bandwidth)."""
    if cu(hi) < target:
        return None
    if cu(lo) >= target:
        return lo
    while hi / lo > 1 + rel:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if cu(mid) >= target else (mid, hi)
    return hi


def paper_table(deployments: tuple[str, ...] = ("1b", "10b", "100b"), workers: int = 2,
                targets: tuple[float, ...] = TARGETS) -> list[dict[str, Any]]:
    """Bandwidth needed per target CU for the Streaming DiLoCo paper's simulation settings: DDP,
    DiLoCo H=100, Streaming DiLoCo with 3-layer fragments at delay 0 and 1 (bf16 and 4 bits), eager."""
    rows = []
    for name in deployments:
        L = PRESETS[name]["layers"]
        F = L // 3
        H = F * math.ceil(100 / F)  # the multiple of F nearest above (or at) 100
        settings = [
            ("DDP, bf16", dict(algorithm="ddp", bits=16)),
            ("DiLoCo H=100, bf16", dict(algorithm="diloco", sync_every=100, bits=16)),
            (f"Streaming F={F} tau=0, bf16", dict(algorithm="streaming-diloco", sync_every=H, fragments=F, delay=0, bits=16)),
            (f"Streaming F={F} tau=1, bf16", dict(algorithm="streaming-diloco", sync_every=H, fragments=F, delay=1, bits=16)),
            (f"Streaming F={F} tau=1, 4 bits", dict(algorithm="streaming-diloco", sync_every=H, fragments=F, delay=1, bits=4)),
            (f"Streaming F={F} eager, 4 bits", dict(algorithm="streaming-diloco", sync_every=H, fragments=F, overlap="eager", bits=4)),
            ("Eager DiLoCo H=100, bf16", dict(algorithm="eager-diloco", sync_every=100, bits=16)),
        ]
        for label, kw in settings:
            p = plan(model=name, workers=workers, targets=targets, bandwidths=[1e9], **kw)
            rows.append({"deployment": name, "method": label, **{k: v for k, v in p.bandwidth_for_cu.items()},
                         "H": p.settings["sync_every"], "step_time": format_seconds(p.step_time_s)})
    return rows


__all__ = ["ALGORITHMS", "Plan", "asdict", "bandwidth_for", "paper_table", "plan", "utilization"]
