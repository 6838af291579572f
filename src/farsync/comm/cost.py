"""Network and compute time models of the simulated cluster.

Communication time of one call with payload B bytes (per worker), n workers, link bandwidth bw
(bits/s, the slowest link among the participants) and per-message latency a:

    all_reduce (ring):  2(n-1)/n * B*8/bw + 2(n-1) * a
    all_gather (ring):  (n-1) * B*8/bw   + (n-1) * a
    all_to_all (pairwise exchange, B = one chunk):  (n-1) * B*8/bw + (n-1) * a
    broadcast (chain, pipelined):  B*8/bw + (n-1) * a
    send/recv:          B*8/bw + a
    barrier:            (n-1) * a

B is multiplied by `bytes_scale` before it enters these formulas, so a small model can stand in
for a larger one (time only: reported byte counts stay the real ones).

Compute time of one inner step on worker r is ``step_time * speed[r]`` where ``step_time`` is
fixed or ``flops_per_step / throughput``; ``speed[r] >= 1`` slows a worker down. A `Straggler`
multiplies one worker's step time by ``factor`` for the steps it starts at virtual times
``start_s <= t < end_s`` on its own clock. Within a step, `timing.StepLayout` says when each
layer's gradient is ready, and a described payload (``Communicator.payload``) goes in buckets of
``bucket_bytes`` that start as they are ready (`timing.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .timing import DDP_BUCKET_BYTES, StepLayout


@dataclass(frozen=True)
class NetworkModel:
    bandwidth_bps: float = 1e9
    latency_s: float = 10e-3
    bytes_scale: float = 1.0
    per_rank_bandwidth_bps: tuple[float, ...] | None = None  # overrides bandwidth_bps per rank

    def link_bandwidth(self, ranks: list[int] | tuple[int, ...]) -> float:
        if self.per_rank_bandwidth_bps is None:
            return self.bandwidth_bps
        return min(self.per_rank_bandwidth_bps[r] for r in ranks)

    def time(self, kind: str, nbytes: float, ranks: list[int] | tuple[int, ...]) -> float:
        """Seconds for one call of `kind` with `nbytes` per worker among `ranks`."""
        transfer, latency = self.terms(kind, nbytes, ranks)
        return transfer + latency

    def terms(self, kind: str, nbytes: float, ranks: list[int] | tuple[int, ...]) -> tuple[float, float]:
        """(bandwidth term, latency term) of `time`: the link is busy for the first; the second
        is delay that the buckets of one call pipeline (`timing.py`)."""
        n = len(ranks)
        bits = nbytes * self.bytes_scale * 8.0
        bw = self.link_bandwidth(ranks)
        a = self.latency_s
        if kind in ("send", "recv"):
            return bits / bw, a
        if n <= 1:
            return 0.0, 0.0
        if kind == "all_reduce":
            return 2 * (n - 1) / n * bits / bw, 2 * (n - 1) * a
        if kind in ("all_gather", "all_to_all"):
            return (n - 1) * bits / bw, (n - 1) * a
        if kind == "broadcast":
            return bits / bw, (n - 1) * a
        if kind == "barrier":
            return 0.0, (n - 1) * a
        raise ValueError(f"no cost model for communication kind {kind!r}")


@dataclass(frozen=True)
class Straggler:
    """Worker `rank` is `factor` times slower for the steps it starts at start_s <= t < end_s."""

    rank: int
    factor: float
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TimeModel:
    """Compute time per inner step: ``step_time_s * speeds[rank]`` (x a straggler's factor);
    `layout`: forward/backward over the layers; `bucket_bytes`: bucket size of a described
    payload as timed (None: one bucket); `description`: the time model in words (reports)."""

    step_time_s: float
    speeds: tuple[float, ...] = field(default_factory=tuple)
    stragglers: tuple[Straggler, ...] = field(default_factory=tuple)
    layout: StepLayout = field(default_factory=StepLayout)
    bucket_bytes: float | None = DDP_BUCKET_BYTES
    description: str = ""

    def step_time(self, rank: int, clock_s: float = 0.0) -> float:
        """Compute time of a step that worker `rank` starts at virtual time `clock_s`."""
        factor = self.speeds[rank] if self.speeds else 1.0
        for s in self.stragglers:
            if s.rank == rank and s.start_s <= clock_s < s.end_s:
                factor *= s.factor
        return self.step_time_s * factor
