"""Per-layer timing (`farsync.comm.timing`) and the simulator's bucketed, overlapped payloads.

Every expected number is computed by hand below from the rules in timing.py's docstring:
a step of compute time T is a forward (f*T, f = 1/3) then a backward over L layers from the last
to the first; layer l is ready at T*(f + (1-f)*(L-l)/L); a described payload goes in buckets filled
from the top position down, each ready when its lowest position's layer is, FIFO on the links,
each paying the NetworkModel time of its bytes.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import farsync
from farsync.comm import NetworkModel, SimCluster, TimeModel
from farsync.comm.timing import DDP_BUCKET_BYTES, WHOLE, StepLayout, buckets, spans_of

F = 1.0 / 3.0  # default forward share


def flat(x):
    """Nested tuples/lists of numbers -> one flat list (pytest.approx compares flat sequences only)."""
    if isinstance(x, (list, tuple)):
        return [v for item in x for v in flat(item)]
    return [x]


def approx(x):
    if isinstance(x, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in x):
        return _Flat(x)
    return pytest.approx(x, rel=1e-12, abs=1e-12)


class _Flat:
    """approx for nested sequences: same structure, numbers within rel 1e-12."""

    def __init__(self, want):
        self.want = want

    def __eq__(self, got):
        return _same_shape(got, self.want) and flat(got) == pytest.approx(flat(self.want), rel=1e-12, abs=1e-12)

    def __repr__(self):
        return f"approx({self.want!r})"


def _same_shape(a, b):
    if isinstance(a, (list, tuple)) != isinstance(b, (list, tuple)):
        return False
    if not isinstance(a, (list, tuple)):
        return True
    return len(a) == len(b) and all(_same_shape(x, y) for x, y in zip(a, b))


def ready_frac(layer: int, layers: int, f: float = F) -> float:
    """Fraction of the step after which layer `layer` (of `layers` equal ones) is ready."""
    return f + (1.0 - f) * (layers - layer) / layers


def assert_plan(got, want):
    assert len(got) == len(want), (got, want)
    for (gs, gr), (ws, wr) in zip(got, want):
        assert gs == approx(ws)
        assert gr == approx(wr)
    assert sum(s for s, _ in got) == approx(1.0)


# ---------------------------------------------------------------------------------------- buckets()
def test_buckets_whole_payload_four_equal_layers_four_buckets():
    lay = StepLayout(layers=4)
    got = buckets(100, WHOLE, 25, lay)
    # bucket k covers [1-(k+1)/4, 1-k/4): its lowest position is layer 3-k
    assert_plan(got, [(0.25, ready_frac(3, 4)), (0.25, ready_frac(2, 4)), (0.25, ready_frac(1, 4)), (0.25, ready_frac(0, 4))])
    assert [r for _, r in got] == approx([1 / 3 + 2 / 3 * 1 / 4, 1 / 3 + 2 / 3 * 2 / 4, 1 / 3 + 2 / 3 * 3 / 4, 1.0])
    assert got[-1][1] == approx(1.0)


def test_buckets_uneven_last_bucket_smaller():
    lay = StepLayout(layers=4)
    # 100 bytes in buckets of 40: 40, 40, 20; lowest positions 0.6 (layer 2), 0.2 (layer 0), 0 (layer 0)
    got = buckets(100, WHOLE, 40, lay)
    assert_plan(got, [(0.4, ready_frac(2, 4)), (0.4, 1.0), (0.2, 1.0)])
    # 100 bytes in buckets of 30: 30, 30, 30, 10; lowest positions 0.7 (l2), 0.4 (l1), 0.1 (l0), 0 (l0)
    got = buckets(100, WHOLE, 30, lay)
    assert_plan(got, [(0.3, ready_frac(2, 4)), (0.3, ready_frac(1, 4)), (0.3, 1.0), (0.1, 1.0)])


def test_buckets_one_bucket_cases():
    lay = StepLayout(layers=4)
    assert_plan(buckets(100, WHOLE, None, lay), [(1.0, 1.0)])  # no bucketing: one bucket, ready at the end
    assert_plan(buckets(100, WHOLE, 100, lay), [(1.0, 1.0)])  # fits exactly
    assert_plan(buckets(100, WHOLE, 1e9, lay), [(1.0, 1.0)])  # fits
    assert_plan(buckets(100, (), 25, lay), [(1.0, 1.0)])  # no spans: ready at the end
    # one layer: everything is ready at the end of the backward, whatever the bucketing
    assert_plan(buckets(100, WHOLE, 25, StepLayout()), [(0.25, 1.0)] * 4)


def test_buckets_strided_fragment():
    lay = StepLayout(layers=4)
    frag = ((0.25, 0.5), (0.75, 1.0))  # layers 1 and 3
    # one bucket: its lowest position is 0.25, layer 1
    assert_plan(buckets(100, frag, None, lay), [(1.0, ready_frac(1, 4))])
    assert buckets(100, frag, None, lay)[0][1] == approx(1 / 3 + 2 / 3 * 3 / 4)
    # two buckets of 50: [0.75, 1) (layer 3), then [0.25, 0.5) (layer 1)
    assert_plan(buckets(100, frag, 50, lay), [(0.5, ready_frac(3, 4)), (0.5, ready_frac(1, 4))])
    # span order in the argument does not matter
    assert_plan(buckets(100, frag[::-1], 50, lay), [(0.5, ready_frac(3, 4)), (0.5, ready_frac(1, 4))])
    # four buckets of 25 over a fragment of total length 0.5: lowest positions 0.875, 0.75, 0.375, 0.25
    assert_plan(buckets(100, frag, 25, lay),
                [(0.25, ready_frac(3, 4)), (0.25, ready_frac(3, 4)), (0.25, ready_frac(1, 4)), (0.25, ready_frac(1, 4))])
    # a fragment ending below the top: layer 0 only -> ready at the end
    assert_plan(buckets(100, ((0.0, 0.25),), 50, lay), [(0.5, 1.0), (0.5, 1.0)])


def test_buckets_unequal_layer_shares_and_forward_share():
    lay = StepLayout(layers=2, layer_shares=(1.0, 3.0))  # layer 0 holds [0, 0.25), layer 1 [0.25, 1)
    assert lay.shares() == approx((0.25, 0.75))
    assert lay.bounds() == approx([0.0, 0.25])
    # two buckets of 50: lowest positions 0.5 (layer 1: done 0.75 of the backward) and 0 (layer 0)
    assert_plan(buckets(100, WHOLE, 50, lay), [(0.5, F + (1 - F) * 0.75), (0.5, 1.0)])
    lay = StepLayout(layers=4, forward_share=0.5)
    assert_plan(buckets(100, WHOLE, 50, lay), [(0.5, 0.5 + 0.5 * 2 / 4), (0.5, 1.0)])
    lay = StepLayout(layers=4, forward_share=0.0)
    assert_plan(buckets(100, WHOLE, 25, lay), [(0.25, 0.25), (0.25, 0.5), (0.25, 0.75), (0.25, 1.0)])


def test_buckets_without_overlap_are_ready_at_the_end():
    lay = StepLayout(layers=4, overlap=False)
    assert_plan(buckets(100, WHOLE, 25, lay), [(0.25, 1.0)] * 4)
    assert_plan(buckets(100, ((0.25, 0.5), (0.75, 1.0)), None, lay), [(1.0, 1.0)])
    assert lay.ready(0.9) == 1.0


def test_step_layout_validation_and_layer_of():
    for bad in (dict(layers=0), dict(layers=2, layer_shares=(1.0,)), dict(layers=2, layer_shares=(1.0, 0.0)),
                dict(forward_share=1.0), dict(forward_share=-0.1)):
        with pytest.raises(ValueError):
            StepLayout(**bad)
    lay = StepLayout(layers=4)
    assert [lay.layer_of(x) for x in (0.0, 0.2499, 0.25, 0.5, 0.75, 0.999, 1.0)] == [0, 0, 1, 2, 3, 3, 3]
    assert lay.ready(0.8) == approx(ready_frac(3, 4))
    assert DDP_BUCKET_BYTES == 25 * 2**20
    assert TimeModel(step_time_s=1.0).bucket_bytes == DDP_BUCKET_BYTES
    assert TimeModel(step_time_s=1.0).layout == StepLayout()


def test_spans_of():
    assert spans_of([2, 3, 5]) == ((0.0, 1.0),)  # adjacent tensors merge
    assert spans_of([2, 3, 5], [0, 2]) == approx(((0.0, 0.2), (0.5, 1.0)))
    assert spans_of([2, 3, 5], [0, 1]) == approx(((0.0, 0.5),))
    assert spans_of([2, 3, 5], [1]) == approx(((0.2, 0.5),))
    assert spans_of([2, 3, 5], [2, 0]) == approx(((0.0, 0.2), (0.5, 1.0)))  # index order is irrelevant
    assert spans_of([2, 0, 2], [0, 2]) == ((0.0, 1.0),)  # an empty tensor in between does not break the span
    assert spans_of([2, 3, 5], []) == ()
    assert spans_of([0, 0]) == WHOLE
    assert spans_of([1, 1, 1, 1], [1, 3]) == ((0.25, 0.5), (0.75, 1.0))


# ---------------------------------------------------------------------------------------- simulator
N_ELEM = 1000  # float32 -> 4000 bytes per worker
BUCKET = 1000.0  # timed bytes -> 4 buckets of 1000 bytes
T = 1.0


def pair(bw, *, latency=0.0, layout=StepLayout(layers=4), bucket=BUCKET, speeds=(), bytes_scale=1.0):
    cluster = SimCluster(2, NetworkModel(bandwidth_bps=bw, latency_s=latency, bytes_scale=bytes_scale),
                         TimeModel(step_time_s=T, speeds=speeds, layout=layout, bucket_bytes=bucket))
    cluster.bucket_transfers = True  # a transfers row per bucket, to check each bucket's times
    return cluster


def ddp_like(steps=2, described=True):
    def fn(comm):
        t = torch.full((N_ELEM,), float(comm.rank))
        for _ in range(steps):
            comm.compute()
            if described:
                with comm.payload(((0.0, 1.0),)):
                    comm.all_reduce(t, op="mean")
            else:
                comm.all_reduce(t, op="mean")
        return t[0].item(), comm.stats.clock_s, comm.stats.blocked_time_s, comm.stats.compute_time_s
    return fn


def bucket_time_bw(d):
    """Bandwidth at which one 1000-byte bucket's all-reduce between 2 workers takes `d` seconds:
    2(n-1)/n * B*8/bw = 8000/bw."""
    return 8000.0 / d


def expected_chain(step_start, step_time, ready_fracs, d, link_free):
    """Hand FIFO: bucket k starts at max(ready_k, previous end), lasts d."""
    out, end = [], link_free
    for r in ready_fracs:
        start = max(step_start + step_time * r, end)
        end = start + d
        out.append((start, end))
    return out


R4 = [ready_frac(3, 4), ready_frac(2, 4), ready_frac(1, 4), ready_frac(0, 4)]  # 1/2, 2/3, 5/6, 1


def check_transfers(cluster, want_spans, bytes_each):
    got = cluster.transfers
    assert len(got) == 2 * len(want_spans)
    for i, (s, e) in enumerate(want_spans):
        for r in (0, 1):
            gs, ge, gr, gb = got[2 * i + r]
            assert (gs, ge) == (approx(s), approx(e))
            assert gr == r and gb == bytes_each


def test_ddp_overlap_high_bandwidth_only_the_last_bucket_is_exposed():
    d = 0.1
    cl = pair(bucket_time_bw(d))
    res = cl.run(ddp_like())
    # step 1: buckets at 0.5, 2/3, 5/6, 1.0, each 0.1 long, none waits on the previous one
    s1 = [(0.5, 0.6), (2 / 3, 2 / 3 + 0.1), (5 / 6, 5 / 6 + 0.1), (1.0, 1.1)]
    # step 2 starts at 1.1
    s2 = [(1.6, 1.7), (1.1 + 2 / 3, 1.1 + 2 / 3 + 0.1), (1.1 + 5 / 6, 1.1 + 5 / 6 + 0.1), (2.1, 2.2)]
    assert s1 == approx(expected_chain(0.0, T, R4, d, 0.0))
    assert s2 == approx(expected_chain(1.1, T, R4, d, 1.1))
    check_transfers(cl, s1 + s2, 1000)  # ring all-reduce of 4000 B between 2: each sends 4000 B, 1000 per bucket
    for mean, clock, blocked, compute in res:
        assert mean == 0.5
        assert clock == approx(2.2)
        assert blocked == approx(0.2)
        assert compute == approx(2.0)
    assert [s.bytes_sent for s in cl.stats] == [8000, 8000]


def test_ddp_overlap_low_bandwidth_buckets_queue_on_the_link():
    d = 0.5
    cl = pair(bucket_time_bw(d))
    res = cl.run(ddp_like())
    # step 1: first bucket at 0.5, then back to back: ends 1.0, 1.5, 2.0, 2.5
    s1 = [(0.5, 1.0), (1.0, 1.5), (1.5, 2.0), (2.0, 2.5)]
    # step 2: compute 2.5 -> 3.5, first bucket ready at 3.0
    s2 = [(3.0, 3.5), (3.5, 4.0), (4.0, 4.5), (4.5, 5.0)]
    assert s1 == approx(expected_chain(0.0, T, R4, d, 0.0))
    assert s2 == approx(expected_chain(2.5, T, R4, d, 2.5))
    check_transfers(cl, s1 + s2, 1000)
    for _, clock, blocked, compute in res:
        assert clock == approx(5.0)
        assert blocked == approx(3.0)  # 1.5 per step
        assert compute == approx(2.0)


def test_ddp_overlap_infinite_bandwidth_ends_at_compute_end():
    cl = pair(float("inf"))
    res = cl.run(ddp_like())
    for _, clock, blocked, _ in res:
        assert clock == approx(2.0) and blocked == 0.0
    assert [(s, e) for s, e, r, _ in cl.transfers if r == 0] == approx(
        [(0.5, 0.5), (2 / 3, 2 / 3), (5 / 6, 5 / 6), (1.0, 1.0), (1.5, 1.5), (1 + 2 / 3, 1 + 2 / 3), (1 + 5 / 6, 1 + 5 / 6), (2.0, 2.0)])


def test_buckets_of_one_call_pipeline_their_latency():
    """A bucket keeps the links busy for its bandwidth term only and arrives one latency term
    later; the next bucket may start when the links are free (NetworkModel.terms)."""
    d, a = 0.1, 0.05  # all-reduce of 2: 2(n-1)*a = 0.1 of latency after each bucket's 0.1 on the link
    cl = pair(bucket_time_bw(d), latency=a)
    res = cl.run(ddp_like(steps=1))
    # ready at 1/2, 2/3, 5/6, 1: each starts when ready (the link is free again 0.1 later), arrives 0.2 later
    want = [(r, r + 0.2) for r in (0.5, 2 / 3, 5 / 6, 1.0)]
    check_transfers(cl, want, 1000)
    for _, clock, blocked, _ in res:
        assert clock == approx(1.2) and blocked == approx(0.2)


def test_undescribed_call_starts_at_step_end():
    d = 0.1  # per 1000 B; the whole 4000 B message takes 0.4
    cl = pair(bucket_time_bw(d))
    res = cl.run(ddp_like(described=False))
    check_transfers(cl, [(1.0, 1.4), (2.4, 2.8)], 4000)
    for _, clock, blocked, _ in res:
        assert clock == approx(2.8) and blocked == approx(0.8)


def test_overlap_false_matches_undescribed_end_times():
    d = 0.1
    lay = StepLayout(layers=4, overlap=False)
    # one bucket: the very same transfers as an undescribed call
    cl = pair(bucket_time_bw(d), layout=lay, bucket=None, latency=0.01)
    res = cl.run(ddp_like())
    ref = pair(bucket_time_bw(d), layout=lay, bucket=None, latency=0.01)
    ref_res = ref.run(ddp_like(described=False))
    assert cl.transfers == ref.transfers
    assert res == ref_res
    step = 0.4 + 2 * 0.01
    check_transfers(cl, [(1.0, 1.0 + step), (2.0 + step, 2.0 + 2 * step)], 4000)
    # four buckets, no latency: they all wait for the step end and go back to back -> same clock
    cl = pair(bucket_time_bw(d), layout=lay)
    res = cl.run(ddp_like())
    s1 = [(1.0, 1.1), (1.1, 1.2), (1.2, 1.3), (1.3, 1.4)]
    s2 = [(2.4, 2.5), (2.5, 2.6), (2.6, 2.7), (2.7, 2.8)]
    check_transfers(cl, s1 + s2, 1000)
    for _, clock, blocked, _ in res:
        assert clock == approx(2.8) and blocked == approx(0.8)


def test_overlap_false_with_buckets_and_latency_ends_as_one_message():
    """Nothing overlaps: the buckets go back to back from the step end, their latencies pipeline,
    so the call ends when one 4000-byte message would (1 + 0.4 + 2(n-1)a)."""
    d, a = 0.1, 0.01
    cl = pair(bucket_time_bw(d), layout=StepLayout(layers=4, overlap=False), latency=a)
    res = cl.run(ddp_like(steps=1))
    check_transfers(cl, [(1.0 + k * d, 1.0 + (k + 1) * d + 2 * a) for k in range(4)], 1000)
    for _, clock, _, _ in res:
        assert clock == approx(1.0 + 4 * d + 2 * a)


def test_described_payload_after_another_call_is_issued_at_the_clock():
    d = 0.1

    def fn(comm):
        t = torch.ones(N_ELEM)
        comm.compute()
        comm.all_reduce(torch.ones(N_ELEM // 4))  # undescribed, blocking: 1000 B, 0.1 s, 1.0 -> 1.1
        with comm.payload(WHOLE):  # no longer "right after compute()": issued at 1.1, its buckets back to back
            comm.all_reduce(t, op="mean")
        return comm.stats.clock_s

    cl = pair(bucket_time_bw(d))
    assert cl.run(fn) == approx([1.5, 1.5])
    check_transfers(cl, [(1.0, 1.1), (1.1, 1.2), (1.2, 1.3), (1.3, 1.4), (1.4, 1.5)], 1000)


def test_nonblocking_described_payload_with_later_wait():
    def fn(comm):
        t = torch.ones(N_ELEM)
        comm.compute()
        with comm.payload(WHOLE):
            work = comm.all_reduce(t, op="mean", async_op=True)
        comm.compute(2)
        work.wait()
        return comm.stats.clock_s, comm.stats.blocked_time_s

    # slow: buckets from 0.5, 1.0 each, back to back -> end 4.5 > 3T
    cl = pair(bucket_time_bw(1.0))
    assert cl.run(fn) == [(approx(4.5), approx(1.5))] * 2
    check_transfers(cl, [(0.5, 1.5), (1.5, 2.5), (2.5, 3.5), (3.5, 4.5)], 1000)
    # fast: ends at 1.1, hidden by the two later steps -> clock 3T, nothing blocked
    cl = pair(bucket_time_bw(0.1))
    assert cl.run(fn) == [(approx(3.0), 0.0)] * 2
    check_transfers(cl, [(0.5, 0.6), (2 / 3, 2 / 3 + 0.1), (5 / 6, 5 / 6 + 0.1), (1.0, 1.1)], 1000)
    # in between: end 2.5 + 0.5 ... d=0.8 -> 0.5-1.3, 1.3-2.1, 2.1-2.9, 2.9-3.7
    cl = pair(bucket_time_bw(0.8))
    assert cl.run(fn) == [(approx(3.7), approx(0.7))] * 2


def test_two_described_fragments_in_one_step_queue_fifo():
    # top half (layers 2, 3) then bottom half (layers 0, 1) of the model, both async, 4 buckets each
    def fn(comm):
        a, b = torch.ones(N_ELEM), torch.ones(N_ELEM)
        comm.compute()
        with comm.payload(((0.5, 1.0),)):
            w1 = comm.all_reduce(a, async_op=True)
        with comm.payload(((0.0, 0.5),)):
            w2 = comm.all_reduce(b, async_op=True)
        w1.wait()
        first = comm.stats.clock_s
        w2.wait()
        return first, comm.stats.clock_s

    cl = pair(bucket_time_bw(0.1))
    res = cl.run(fn)
    # top half: lowest positions 0.875, 0.75 (layer 3), 0.625, 0.5 (layer 2) -> ready 1/2, 1/2, 2/3, 2/3
    top = expected_chain(0.0, T, [R4[0], R4[0], R4[1], R4[1]], 0.1, 0.0)
    assert top == approx([(0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9)])
    # bottom half: layers 1, 1, 0, 0 -> ready 5/6, 5/6, 1, 1, behind the top half on the link (free at 0.9)
    bottom = expected_chain(0.0, T, [R4[2], R4[2], R4[3], R4[3]], 0.1, 0.9)
    assert bottom == approx([(0.9, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.3)])
    check_transfers(cl, top + bottom, 1000)
    # the top half is done (0.9) before the compute ends (1.0): its wait costs nothing
    assert res == approx([(1.0, 1.3), (1.0, 1.3)])
    assert [st.blocked_time_s for st in cl.stats] == approx([0.3, 0.3])


def test_speeds_bucket_waits_for_the_slower_worker():
    d = 0.1
    cl = pair(bucket_time_bw(d), speeds=(1.0, 2.0))
    res = cl.run(ddp_like())
    # step 1: rank 1's step lasts 2.0, so bucket k is ready at 2*r_k: 1.0, 4/3, 5/3, 2.0
    s1 = [(1.0, 1.1), (4 / 3, 4 / 3 + 0.1), (5 / 3, 5 / 3 + 0.1), (2.0, 2.1)]
    # step 2: both start at 2.1; rank 1 ends its compute at 4.1
    s2 = [(3.1, 3.2), (2.1 + 4 / 3, 2.1 + 4 / 3 + 0.1), (2.1 + 5 / 3, 2.1 + 5 / 3 + 0.1), (4.1, 4.2)]
    assert s1 == approx(expected_chain(0.0, 2 * T, R4, d, 0.0))
    assert s2 == approx(expected_chain(2.1, 2 * T, R4, d, 2.1))
    check_transfers(cl, s1 + s2, 1000)
    (_, c0, b0, k0), (_, c1, b1, k1) = res
    assert (c0, c1) == (approx(4.2), approx(4.2))
    assert (k0, k1) == (approx(2.0), approx(4.0))
    assert b0 == approx(1.1 + 1.1)  # 1.0 -> 2.1 and 3.1 -> 4.2
    assert b1 == approx(0.1 + 0.1)


def test_bytes_scale_enters_bucketing_and_time():
    # 4000 real bytes x 2 = 8000 timed: 8 buckets of 1000 timed bytes, each 500 real bytes;
    # NetworkModel.time scales too: each bucket is 1000 timed bytes -> d
    d = 0.05
    cl = pair(bucket_time_bw(d), bytes_scale=2.0, layout=StepLayout(layers=8))
    res = cl.run(ddp_like(steps=1))
    r8 = [ready_frac(7 - k, 8) for k in range(8)]  # 1/3 + 2/3 * (k+1)/8
    want = expected_chain(0.0, T, r8, d, 0.0)
    # gaps between bucket ready times are 2/3/8 = 1/12 > 0.05: no queueing, the last ends at 1.05
    assert want[-1] == approx((1.0, 1.05))
    check_transfers(cl, want, 500)
    assert [c for _, c, _, _ in res] == approx([1.05, 1.05])
    assert [s.bytes_sent for s in cl.stats] == [4000, 4000]  # reported bytes stay the real ones


# ---------------------------------------------------------------------------------------- real algorithm
class Blocks(nn.Module):
    def __init__(self, layers: int, width: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x))
        return x


def test_ddp_algorithm_overlaps_its_gradient_all_reduce():
    L, W, steps = 4, 4, 3
    nbytes = L * (W * W + W) * 4  # 320 B of float32 gradients
    scale = 1000.0  # timed: 320000 B
    bucket = nbytes * scale / L  # 80000 timed bytes: one bucket per block
    d = 0.1
    bw = 2 * (2 - 1) / 2 * bucket * 8 / d  # one bucket's ring all-reduce between 2 workers takes d
    cluster = SimCluster(2, NetworkModel(bandwidth_bps=bw, latency_s=0.0, bytes_scale=scale),
                         TimeModel(step_time_s=T, layout=StepLayout(layers=L), bucket_bytes=bucket))
    cluster.bucket_transfers = True

    def fn(comm):
        torch.manual_seed(0)
        model = Blocks(L, W)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        algo = farsync.wrap(model, opt, "ddp", init="check")
        start = comm.stats.clock_s
        g = torch.Generator().manual_seed(comm.rank)
        for _ in range(steps):
            x = torch.randn(8, W, generator=g)
            model(x).pow(2).mean().backward()
            algo.step()
            algo.zero_grad()
        return start, comm.stats.clock_s, comm.stats.blocked_time_s, [p.detach().clone() for p in model.parameters()]

    res = cluster.run(fn)
    # high bandwidth (gaps between ready times 1/6 > 0.1): every step exposes only its last bucket
    per_step = T + d
    want = []
    for i in range(steps):
        want += expected_chain(i * per_step, T, R4, d, i * per_step)
    check_transfers(cluster, want, int(nbytes / L))
    for start, clock, blocked, params in res:
        assert start == 0.0
        assert clock == approx(steps * (T + d))
        assert blocked == approx(steps * d)
        for p, q in zip(params, res[0][3]):
            assert torch.equal(p, q)  # DDP keeps the replicas identical

    # the same run through farsync.simulate (default layout: one layer): one message at the step end
    def plain(comm):
        torch.manual_seed(0)
        model = Blocks(L, W)
        algo = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "ddp", init="check")
        for _ in range(steps):
            model(torch.ones(2, W)).sum().backward()
            algo.step()
            algo.zero_grad()
        return comm.stats.clock_s

    whole = L * d  # the 320000 timed bytes in one go
    rep = farsync.simulate(plain, workers=2, bandwidth=bw, latency=0.0, step_time=T, bytes_scale=scale)
    assert rep.sim_time_s == approx(steps * (T + whole))


def test_ranks_must_describe_a_payload_alike():
    """One rank inside comm.payload(...) and the other not: a clear collective-mismatch error."""
    cluster = SimCluster(2, NetworkModel(1e9, 0.0), TimeModel(step_time_s=1.0, layout=StepLayout(layers=4)))

    def fn(comm):
        comm.compute()
        t = torch.ones(10)
        if comm.rank == 1:
            with comm.payload(WHOLE):
                comm.all_reduce(t)
        else:
            comm.all_reduce(t)

    with pytest.raises(RuntimeError, match=r"ranks \[1\] issued this all_reduce inside comm.payload\(...\) and ranks \[0\] did not"):
        cluster.run(fn)


def test_transfers_have_one_row_per_call_by_default():
    """Outside tests a bucketed call is one transfers row per rank: its first bucket's start to its
    arrival, with all its bytes (transfers.csv stays small); the times are the bucketed ones."""
    cl = pair(bucket_time_bw(0.1))
    cl.bucket_transfers = False
    res = cl.run(ddp_like(steps=1))
    assert cl.transfers == [(approx(0.5), approx(1.1), 0, 4000), (approx(0.5), approx(1.1), 1, 4000)]
    assert [c for _, c, _, _ in res] == approx([1.1, 1.1])


# ---------------------------------------------------------------------------------------- configs and words
def test_summary_report_and_demo_state_the_time_model(tmp_path):
    from farsync.report import compare
    from farsync.runner import run

    cfg = {"name": "q", "task": {"name": "quadratic", "dim": 16},
           "cluster": {"workers": 2, "bandwidth": "10Gbps", "latency": "10ms", "time_model": "1b"},
           "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.1}},
           "train": {"steps": 4, "batch_size": 2, "eval_every": 2, "log_every": 2}}
    r = run(cfg, out=tmp_path / "a", progress=False)
    words = ("timed as a 1B-parameter, 24-layer model at 0.1 s per step, 2 workers, 10 Gbps, 10 ms latency; "
             "reductions in 25 MiB buckets overlapped with the backward")
    assert r.summary["time_model"] == words
    # 1e9 float64 values: 8e9 timed bytes in 306 buckets of 25 MiB, far more than a backward: the link is busy
    # 8e9 * 8 / 10 Gbps = 6.4 s from the first bucket (layer 23, ready at 0.1 (1/3 + 2/3/24)) on, then one latency
    # 2(n-1) * 10 ms; the next step's first bucket comes after that, so every step lasts the same
    step = 0.1 * (1 / 3 + 2 / 3 / 24) + 8e9 * 8 / 10e9 + 0.02
    assert r.summary["compute_utilization"] == pytest.approx(0.1 / step, rel=1e-9)
    own = run({**cfg, "cluster": {**cfg["cluster"], "time_model": None, "step_time": "5ms"}}, out=tmp_path / "b",
              progress=False)
    assert own.summary["time_model"].startswith("timed as the run's own 16-parameter, 1-layer model at 5 ms per step")
    report = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "report")
    text = report.read_text()
    assert words in text and "timed as the run's own 16-parameter" in text


@pytest.mark.parametrize("time_model, extra, message", [
    ("2b", {}, "unknown time_model preset '2b'; valid choices: 1b, 10b, 100b"),
    ({"params": 1e9, "step_time": "0.1s", "device": "h100"}, {}, "give step_time or device/peak_flops"),
    ("1b", {"step_time": "1s"}, "cluster.time_model replaces cluster.step_time"),
    ("1b", {"bytes_scale": 2.0}, "cluster.time_model replaces cluster.bytes_scale"),
    ({"bucket_size": "12XB"}, {}, "malformed size '12XB'"),
    ({"params": -1}, {}, "params"),
    ({"layers": 2, "layer_shares": [1, 2, 3]}, {}, "layer_shares has 3 entries but layers is 2"),
    ({"device": "tpu-v9"}, {}, "device"),
])
def test_bad_time_models_are_refused_before_work(time_model, extra, message):
    from farsync.config import ConfigError, load_config

    cfg = {"task": {"name": "quadratic"}, "cluster": {"time_model": time_model, **extra}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(cfg)


def test_device_presets_and_kaplan_step_time():
    from farsync.deployment import TimeModelConfig, resolve

    tm = TimeModelConfig.model_validate({"preset": "1b", "device": "h100", "tokens_per_step": 1e6})
    assert tm.step_time is None and tm.params == 1e9 and tm.layers == 24
    r = resolve(tm, 1000, 3, tokens_per_step=64)
    assert r["step_time_s"] == pytest.approx(6 * 1e9 * 1e6 / (989e12 * 0.6))
    assert r["bytes_scale"] == 1e6 and r["layout"].layers == 24
    assert "6 x N x tokens FLOPs on h100 at MFU 0.6" in r["description"]


def test_a_cluster_too_large_for_memory_is_refused_before_work(tmp_path, monkeypatch):
    import farsync.runner as runner
    from farsync.config import ConfigError

    cfg = {"name": "big", "task": {"name": "quadratic", "dim": 1000},
           "cluster": {"workers": 5000}, "algorithm": {"name": "ddp", "inner": {"name": "sgd", "lr": 0.1}},
           "train": {"steps": 2, "batch_size": 2}}
    monkeypatch.setattr(runner, "available_memory", lambda: 100e6)
    # 5000 x (8 x 8 kB + 256 kB) = 1.6 GB > 100 MB
    with pytest.raises(ConfigError, match=r"cluster.workers=5000 needs about 1.6\d GB on the simulator .* but 100.00 MB is available"):
        runner.run(cfg, out=tmp_path / "big", progress=False)
    assert not (tmp_path / "big").exists()
