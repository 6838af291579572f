"""Communication graphs and mixing matrices: spectral-gap oracles, W invariants, time-varying graphs."""

import math
from collections import Counter

import pytest
import torch

from farsync.topology import (
    TimeVarying, Topology, build_topology, complete, erdos_renyi, exponential, hypercube, ring,
    spectral_gap, star, torus,
)

GRAPHS = {
    "complete1": complete(1), "complete6": complete(6), "ring2": ring(2), "ring3": ring(3),
    "ring10": ring(10), "torus4x4": torus(4, 4), "torus2x3": torus(2, 3), "torus3x5": torus(3, 5),
    "hypercube8": hypercube(8), "hypercube16": hypercube(16), "exponential8": exponential(8),
    "exponential12": exponential(12), "star7": star(7), "er12": erdos_renyi(12, 0.3, seed=0),
}


def assert_mixing(W: torch.Tensor, top: Topology):
    """Symmetric, doubly stochastic, nonnegative, positive exactly on edges and the diagonal."""
    n = top.n
    assert W.dtype == torch.float64 and W.shape == (n, n)
    assert torch.equal(W, W.T)
    ones = torch.ones(n, dtype=torch.float64)
    torch.testing.assert_close(W.sum(0), ones, rtol=0, atol=1e-12)
    torch.testing.assert_close(W.sum(1), ones, rtol=0, atol=1e-12)
    assert (W >= 0).all()
    support = top.adjacency() + torch.eye(n, dtype=torch.float64) > 0
    assert torch.equal(W > 0, support)


# --- oracles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("top, rho", [
    (ring(8), 0.19526), (ring(16), 0.05075), (ring(32), 0.01281), (torus(4, 4), 0.4), (complete(8), 1.0),
])
def test_spectral_gap_oracles(top, rho):
    assert top.spectral_gap() == pytest.approx(rho, abs=1e-5)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 9, 12, 20, 33, 64])
def test_ring_closed_form(n):
    assert ring(n).spectral_gap() == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / n)) / 3, abs=1e-12)


def test_uniform_complete_is_exact_average():
    for n in (1, 2, 3, 7, 8, 10):
        avg = torch.full((n, n), 1 / n, dtype=torch.float64)
        assert torch.equal(complete(n).mixing_matrix("uniform"), avg)
        torch.testing.assert_close(complete(n).mixing_matrix(), avg, rtol=0, atol=1e-15)  # MH: 1/n up to rounding


def test_disconnected_graph_has_zero_gap():
    top = Topology.from_edges(4, [(0, 1), (2, 3)])
    assert not top.is_connected()
    assert top.spectral_gap() == pytest.approx(0.0, abs=1e-12)
    assert spectral_gap(torch.ones(1, 1, dtype=torch.float64)) == 1.0


# --- invariants ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_mixing_matrix_invariants(name):
    top = GRAPHS[name]
    assert top.is_connected()
    assert list(top.edges) == sorted(set(top.edges)) and all(i < j for i, j in top.edges)
    assert_mixing(top.mixing_matrix(), top)
    if top.is_regular():
        assert_mixing(top.mixing_matrix("uniform"), top)
        assert top.spectral_gap(top.mixing_matrix("uniform")) > 0
    else:
        with pytest.raises(ValueError, match="regular"):
            top.mixing_matrix("uniform")
    assert top.n == 1 or top.spectral_gap() > 0
    L = top.laplacian()
    assert torch.equal(L.sum(1), torch.zeros(top.n, dtype=torch.float64))
    assert [top.degree(i) for i in range(top.n)] == [len(top.neighbors(i)) for i in range(top.n)]


def test_bad_weights_and_edges():
    with pytest.raises(ValueError, match="metropolis-hastings"):
        ring(5).mixing_matrix("max-degree")
    with pytest.raises(ValueError, match=r"\(0, 4\)"):
        Topology.from_edges(4, [(0, 4)])


# --- constructors --------------------------------------------------------------------------------


def test_degrees():
    assert ring(2).edges == ((0, 1),) and ring(1).edges == ()
    assert all(torus(4, 5).degree(i) == 4 for i in range(20))
    assert torus(4, 4).neighbors(0) == [1, 3, 4, 12]
    for n, d in [(2, 1), (8, 3), (16, 4), (32, 5)]:
        assert all(hypercube(n).degree(i) == d for i in range(n))
        assert all(exponential(n).degree(i) == 2 * d - 1 for i in range(n))
    assert hypercube(8).neighbors(5) == [1, 4, 7]
    assert exponential(8).neighbors(0) == [1, 2, 4, 6, 7]
    assert exponential(12).is_regular() and exponential(12).neighbors(0) == [1, 2, 4, 8, 10, 11]
    s = star(6)
    assert s.degree(0) == 5 and all(s.degree(i) == 1 for i in range(1, 6))
    assert len(complete(7).edges) == 21


def test_hypercube_needs_power_of_two():
    with pytest.raises(ValueError, match="power of 2.*n=12"):
        hypercube(12)


def test_erdos_renyi_deterministic_and_connected():
    a, b, c = erdos_renyi(20, 0.2, seed=3), erdos_renyi(20, 0.2, seed=3), erdos_renyi(20, 0.2, seed=4)
    assert a == b and a.edges != c.edges
    assert a.is_connected() and c.is_connected()
    assert 0 < len(a.edges) < 190
    with pytest.raises(ValueError, match="p=0.01"):
        erdos_renyi(30, 0.01, seed=0)
    with pytest.raises(ValueError, match="p=0"):
        erdos_renyi(5, 0.0)


# --- time-varying --------------------------------------------------------------------------------


def test_time_varying_is_pure_function_of_seed_and_step():
    for mode, p in (("bernoulli", 0.5), ("one-edge", 1.0)):
        a = TimeVarying(complete(8), mode, p, seed=7)
        b = TimeVarying(complete(8), mode, p, seed=7)  # the other endpoint, computing independently
        seq = [a.active_edges(t) for t in range(30)]
        torch.manual_seed(123)  # global RNG state must not matter
        assert [b.active_edges(t) for t in reversed(range(30))] == seq[::-1]
        assert len(set(seq)) > 10  # different steps give different edge sets
        c = TimeVarying(complete(8), mode, p, seed=8)
        assert [c.active_edges(t) for t in range(30)] != seq


def test_one_edge_covers_base_uniformly():
    base = complete(5)
    tv = TimeVarying(base, "one-edge", seed=0)
    steps = 4000
    counts = Counter()
    for t in range(steps):
        edges = tv.active_edges(t)
        assert len(edges) == 1 and edges[0] in base.edges
        counts[edges[0]] += 1
    expected = steps / len(base.edges)  # 400, std ~19
    assert set(counts) == set(base.edges)
    assert all(abs(c - expected) < 0.25 * expected for c in counts.values())


def test_bernoulli_edge_frequency():
    base, p, steps = ring(8), 0.3, 2000
    tv = TimeVarying(base, "bernoulli", p, seed=1)
    counts = Counter(e for t in range(steps) for e in tv.active_edges(t))
    assert set(counts) <= set(base.edges)
    assert sum(counts.values()) / (steps * len(base.edges)) == pytest.approx(p, abs=0.02)
    assert all(abs(counts[e] / steps - p) < 0.05 for e in base.edges)
    assert TimeVarying(base, "bernoulli", 1.0).active_edges(5) == base.edges


def test_active_subgraph_mixing_matrix():
    for tv in (TimeVarying(torus(3, 4), "bernoulli", 0.3, seed=2), TimeVarying(complete(6), "one-edge")):
        for t in range(20):
            W, g = tv.mixing_matrix(t), tv.graph(t)
            assert g.edges == tv.active_edges(t)
            assert_mixing(W, g)
            for i in range(tv.n):
                if g.degree(i) == 0:
                    assert W[i, i] == 1.0
    W = TimeVarying(complete(6), "one-edge").mixing_matrix(0)
    assert sorted(W[W > 0].tolist()) == [0.5] * 4 + [1.0] * 4


def test_expected_mixing_matrix():
    tv = TimeVarying(complete(5), "one-edge", seed=0)
    exact = tv.expected_mixing_matrix()
    empirical = sum(tv.mixing_matrix(t) for t in range(4000)) / 4000
    torch.testing.assert_close(empirical, exact, rtol=0, atol=0.02)
    assert tv.spectral_gap() == pytest.approx(1 / 4, abs=1e-12)  # complete: 1/(n-1)
    bern = TimeVarying(ring(8), "bernoulli", 0.5, seed=0)
    assert 0 < bern.spectral_gap(steps=500) < ring(8).spectral_gap()


# --- config --------------------------------------------------------------------------------------


def test_build_topology():
    assert build_topology({"name": "ring"}, 8) == ring(8)
    assert build_topology("complete", 4) == complete(4)
    assert build_topology({"name": "torus", "rows": 4, "cols": 4}, 16) == torus(4, 4)
    assert build_topology({"name": "torus"}, 12) == torus(3, 4)
    assert build_topology({"name": "torus", "cols": 3}, 12) == torus(4, 3)
    assert build_topology({"name": "erdos-renyi", "p": 0.3, "seed": 0}, 10) == erdos_renyi(10, 0.3, 0)
    assert build_topology({"name": "erdos_renyi", "p": 0.3}, 10) == erdos_renyi(10, 0.3, 0)
    tv = build_topology({"name": "one-edge", "base": {"name": "complete"}}, 6)
    assert tv == TimeVarying(complete(6), "one-edge")
    tv = build_topology({"name": "bernoulli", "p": 0.5, "base": {"name": "ring"}, "seed": 3}, 6)
    assert tv == TimeVarying(ring(6), "bernoulli", 0.5, 3)
    assert build_topology({"name": "one-edge"}, 4).base == complete(4)
    for name in ("hypercube", "exponential", "star"):
        assert build_topology({"name": name}, 8).name == name


@pytest.mark.parametrize("cfg, n, match", [
    ({"name": "mesh"}, 8, r"'mesh'.*ring"),
    ({"name": "torus", "rows": 3, "cols": 4}, 16, r"3\*4 = 12 != n=16"),
    ({"name": "torus", "rows": 0}, 16, r"rows.*0"),
    ({"name": "hypercube"}, 12, r"power of 2.*n=12"),
    ({"name": "ring", "p": 0.5}, 8, r"'p'.*none"),
    ({"name": "torus", "row": 4}, 16, r"'row'.*cols.*rows"),
    ({"name": "erdos-renyi"}, 8, r"missing key 'p'"),
    ({"name": "erdos-renyi", "p": 1.5}, 8, r"p=1.5"),
    ({"name": "bernoulli", "p": -0.1}, 8, r"p=-0.1"),
    ({"name": "one-edge", "base": {"name": "one-edge"}}, 8, r"base must be a static graph"),
    ({"name": "one-edge", "base": {"name": "complete"}}, 1, r"base with edges"),
    ({"name": "ring"}, 0, r"n must be a positive integer, got 0"),
])
def test_config_errors_name_the_bad_value(cfg, n, match):
    with pytest.raises(ValueError, match=match):
        build_topology(cfg, n)


@pytest.mark.parametrize("spec, n", [("ring", 7), ("complete", 5), ({"name": "torus", "rows": 3}, 12), ("ring", 1), ("ring", 2)])
def test_mixing_row_is_the_matrix_row_bit_for_bit(spec, n):
    """Decentralized workers take their row of W in O(n + degree) (`mixing_row`), not from the
    n x n matrix: the values must be the matrix's exactly (trajectories depend on them)."""
    g = build_topology(spec, n)
    W = g.mixing_matrix()
    assert all(torch.equal(W[i], g.mixing_row(i)) for i in range(n))
    if g.is_regular():
        U = g.mixing_matrix("uniform")
        assert all(torch.equal(U[i], g.mixing_row(i, "uniform")) for i in range(n))
