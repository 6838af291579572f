"""Collectives of the simulated backend against direct computation; byte counts; cost model."""

import pytest
import torch

from farsync.comm import NetworkModel, SimCluster, SimDeadlock, Straggler, TimeModel, wire_bytes

N = 4


def per_rank_tensor(rank, shape=(5, 3)):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("op", ["sum", "mean"])
def test_all_reduce_matches_direct_sum_and_counts_ring_bytes(op):
    cluster = SimCluster(N, NetworkModel(1e9, 1e-3))
    expected = sum(per_rank_tensor(r) for r in range(N))
    if op == "mean":
        expected = expected / N

    def fn(comm):
        t = per_rank_tensor(comm.rank)
        comm.all_reduce(t, op=op)
        return t

    outs = cluster.run(fn)
    for t in outs:
        torch.testing.assert_close(t, expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(t, outs[0])  # every rank gets the very same bits
    nbytes = 15 * 4
    for s in cluster.stats:
        assert s.bytes_sent == s.bytes_received == 2 * (N - 1) * nbytes // N
        assert s.payload_bytes == nbytes and s.peak_bytes_per_sync == s.bytes_sent and s.n_calls == 1


def test_all_gather_broadcast_and_p2p():
    cluster = SimCluster(N)

    def fn(comm):
        mine = per_rank_tensor(comm.rank, (2,))
        out = [torch.empty(2) for _ in range(N)]
        comm.all_gather(out, mine)
        b = per_rank_tensor(comm.rank, (3,))
        comm.broadcast(b, src=2)
        # ring of sends: r -> r+1
        recv = torch.empty(2)
        if comm.rank % 2 == 0:
            comm.send(mine, (comm.rank + 1) % N)
            comm.recv(recv, (comm.rank - 1) % N)
        else:
            comm.recv(recv, (comm.rank - 1) % N)
            comm.send(mine, (comm.rank + 1) % N)
        return out, b, recv

    outs = cluster.run(fn)
    for r, (out, b, recv) in enumerate(outs):
        for j in range(N):
            assert torch.equal(out[j], per_rank_tensor(j, (2,)))
        assert torch.equal(b, per_rank_tensor(2, (3,)))
        assert torch.equal(recv, per_rank_tensor((r - 1) % N, (2,)))
    gather_b, bcast_b, p2p_b = 8, 12, 8
    for r, s in enumerate(cluster.stats):
        pos = (r - 2) % N
        sent_bcast = bcast_b if pos < N - 1 else 0
        recv_bcast = bcast_b if pos > 0 else 0
        assert s.bytes_sent == (N - 1) * gather_b + sent_bcast + p2p_b
        assert s.bytes_received == (N - 1) * gather_b + recv_bcast + p2p_b


def test_all_to_all_delivers_chunk_r_of_each_rank_to_rank_r_and_counts_bytes():
    cluster = SimCluster(N)

    def fn(comm):
        inputs = [torch.full((3,), 10.0 * comm.rank + j) for j in range(N)]
        out = [torch.empty(3) for _ in range(N)]
        comm.all_to_all(out, inputs)
        return out

    for r, out in enumerate(cluster.run(fn)):
        assert [o.tolist() for o in out] == [[10.0 * j + r] * 3 for j in range(N)]
    for s in cluster.stats:
        assert s.bytes_sent == s.bytes_received == (N - 1) * 12  # own chunk stays local
    with pytest.raises(ValueError, match="one shape and dtype"):
        SimCluster(2).run(lambda c: c.all_to_all([torch.empty(2), torch.empty(3)], [torch.empty(2), torch.empty(2)]))


def test_wire_bytes_single_worker_is_zero():
    for kind in ("all_reduce", "all_gather", "all_to_all", "broadcast"):
        assert wire_bytes(kind, 1000, 1, 0) == (0, 0)


def test_cost_model_formulas():
    net = NetworkModel(bandwidth_bps=8e6, latency_s=0.01)  # 1 MB/s
    B, ranks = 1_000_000, list(range(4))
    assert net.time("all_reduce", B, ranks) == pytest.approx(2 * 3 / 4 * 1.0 + 2 * 3 * 0.01)
    assert net.time("all_gather", B, ranks) == pytest.approx(3 * 1.0 + 3 * 0.01)
    assert net.time("all_to_all", B, ranks) == pytest.approx(3 * 1.0 + 3 * 0.01)  # B = one chunk
    assert net.time("broadcast", B, ranks) == pytest.approx(1.0 + 3 * 0.01)
    assert net.time("send", B, [0, 1]) == pytest.approx(1.0 + 0.01)
    assert net.time("all_reduce", B, [0]) == 0.0
    scaled = NetworkModel(8e6, 0.0, bytes_scale=10.0)
    assert scaled.time("all_reduce", B, ranks) == pytest.approx(10 * 2 * 3 / 4)
    hetero = NetworkModel(8e6, 0.0, per_rank_bandwidth_bps=(8e6, 8e6, 4e6, 8e6))
    assert hetero.time("all_reduce", B, ranks) == pytest.approx(2 * 2 * 3 / 4)  # slowest link


def test_blocking_collective_synchronizes_virtual_clocks():
    net = NetworkModel(8e6, 0.0)
    cluster = SimCluster(2, net, TimeModel(step_time_s=1.0, speeds=(1.0, 3.0)))

    def fn(comm):
        comm.compute()
        comm.all_reduce(torch.zeros(250_000))  # 1 MB -> 2*(1/2)*1 s = 1 s
        return comm.stats.clock_s

    clocks = cluster.run(fn)
    assert clocks == [pytest.approx(4.0), pytest.approx(4.0)]  # start at max(1, 3) = 3, end 4
    s0, s1 = cluster.stats
    assert s0.blocked_time_s == pytest.approx(3.0) and s1.blocked_time_s == pytest.approx(1.0)
    assert s0.compute_time_s == pytest.approx(1.0) and s1.compute_time_s == pytest.approx(3.0)


def test_non_blocking_collective_overlaps_with_compute():
    net = NetworkModel(8e6, 0.0)
    cluster = SimCluster(2, net, TimeModel(step_time_s=0.25))

    def fn(comm, steps):
        t = torch.full((250_000,), float(comm.rank))
        work = comm.all_reduce(t, async_op=True)  # 1 s on the wire
        comm.compute(steps)
        work.wait()
        return comm.stats.clock_s, comm.stats.blocked_time_s, t[0].item()

    # 2 steps of compute (0.5 s) hide half the transfer; 8 steps (2 s) hide all of it.
    assert cluster.run(lambda c: fn(c, 2)) == [(pytest.approx(1.0), pytest.approx(0.5), 1.0)] * 2
    assert cluster.run(lambda c: fn(c, 8)) == [(pytest.approx(2.0), pytest.approx(0.0), 1.0)] * 2


def test_link_is_occupied_by_a_pending_transfer():
    cluster = SimCluster(2, NetworkModel(8e6, 0.0))

    def fn(comm):
        w = comm.all_reduce(torch.zeros(250_000), async_op=True)  # [0, 1] s
        comm.all_reduce(torch.zeros(250_000))  # must wait for the link: [1, 2] s
        w.wait()
        return comm.stats.clock_s

    assert cluster.run(fn) == [pytest.approx(2.0)] * 2


def test_deadlock_and_mismatch_are_reported():
    cluster = SimCluster(3)
    with pytest.raises(SimDeadlock, match="rank 0 in barrier"):
        cluster.run(lambda c: c.barrier() if c.rank == 0 else None)
    with pytest.raises(RuntimeError, match="collective mismatch"):
        cluster.run(lambda c: c.all_reduce(torch.zeros(2 + c.rank)))


def test_worker_exception_propagates_with_rank():
    def fn(comm):
        if comm.rank == 1:
            raise KeyError("boom")
        comm.barrier()

    with pytest.raises(KeyError, match="boom"):
        SimCluster(3).run(fn)


def test_each_worker_has_its_own_rng_stream_like_a_process():
    torch.manual_seed(123)

    def fn(comm):
        a = torch.rand(3)
        comm.barrier()
        return a, torch.rand(3)

    outs = SimCluster(3).run(fn)
    torch.manual_seed(123)
    first, second = torch.rand(3), torch.rand(3)
    for a, b in outs:  # each rank sees the same stream, unaffected by the others' draws
        assert torch.equal(a, first) and torch.equal(b, second)


def test_a_straggler_is_slow_only_inside_its_window():
    tm = TimeModel(0.5, stragglers=(Straggler(rank=1, factor=4.0, start_s=1.0, end_s=3.0),))
    cluster = SimCluster(2, time_model=tm)

    def fn(comm):
        starts = []
        for _ in range(6):
            starts.append(comm.stats.clock_s)
            comm.compute()
        return starts

    fast, slow = cluster.run(fn)
    assert fast == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert slow == [0.0, 0.5, 1.0, 3.0, 3.5, 4.0]  # the step started at 1.0 takes 4 x 0.5; 3.0 is past the window
