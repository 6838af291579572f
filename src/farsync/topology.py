"""Communication graphs for decentralized training and their mixing (gossip) matrices.

A topology is an undirected simple graph on workers 0..n-1. A mixing matrix W is symmetric and
doubly stochastic (rows and columns sum to 1), with W_ij > 0 only on edges and the diagonal; one
gossip step is x_i <- sum_j W_ij x_j.

Weights:
  * "metropolis-hastings" (default): W_ij = 1 / (1 + max(deg_i, deg_j)) on edges,
    W_ii = 1 - sum_{j != i} W_ij. Valid on any graph.
  * "uniform": W = (I + A) / (deg + 1), only for regular graphs. On the complete graph this is
    exactly 11^T/n, so DSGD with it is DDP (MH gives 1/n too, up to rounding on the diagonal).

Spectral gap: with eigenvalues 1 = lambda_1 >= ... >= lambda_n of W,
rho = 1 - max(|lambda_2|, |lambda_n|). Both weightings have W_ii > 0, so rho > 0 iff the graph
is connected; one gossip step shrinks the distance to the average by a factor <= 1 - rho. Ring with MH weights
(every W_ij = 1/3): eigenvalues (1 + 2 cos(2 pi k / n)) / 3, so rho = 1 - (1 + 2 cos(2 pi / n)) / 3
for n >= 3 (0.19526 at n=8, 0.05075 at n=16, 0.01281 at n=32). 4x4 torus: 0.4. Complete: 1.

Time-varying graphs (`TimeVarying`): at step t the active edges are a pure function of (seed, t),
so both endpoints of an edge compute the same set without talking: "bernoulli" keeps each edge of
a base graph independently with probability p, "one-edge" picks exactly one edge uniformly.
The mixing matrix at step t is MH on the active subgraph; idle workers get W_ii = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

WEIGHTS = ("metropolis-hastings", "uniform")
_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class Topology:
    """Undirected graph on n nodes; `edges` is a sorted tuple of (i, j) with i < j."""

    n: int
    edges: tuple[tuple[int, int], ...]
    name: str = "graph"

    @classmethod
    def from_edges(cls, n: int, edges, name: str = "graph") -> Topology:
        """Normalise (order endpoints, drop duplicates) and validate an edge list."""
        if n < 1:
            raise ValueError(f"{name}: n must be >= 1, got {n}")
        es = sorted({(min(i, j), max(i, j)) for i, j in edges})
        for i, j in es:
            if i == j or i < 0 or j >= n:
                raise ValueError(f"{name}: bad edge ({i}, {j}) for n={n}")
        return cls(n, tuple(es), name)

    @cached_property
    def _adj(self) -> list[list[int]]:
        adj: list[list[int]] = [[] for _ in range(self.n)]
        for i, j in self.edges:
            adj[i].append(j)
            adj[j].append(i)
        return [sorted(a) for a in adj]

    def neighbors(self, i: int) -> list[int]:
        return list(self._adj[i])

    def degree(self, i: int) -> int:
        return len(self._adj[i])

    def adjacency(self) -> torch.Tensor:
        a = torch.zeros(self.n, self.n, dtype=torch.float64)
        for i, j in self.edges:
            a[i, j] = a[j, i] = 1.0
        return a

    def laplacian(self) -> torch.Tensor:
        a = self.adjacency()
        return torch.diag(a.sum(1)) - a

    def is_regular(self) -> bool:
        return len({self.degree(i) for i in range(self.n)}) == 1

    def is_connected(self) -> bool:
        seen, stack = {0}, [0]
        while stack:
            for j in self._adj[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return len(seen) == self.n

    def mixing_matrix(self, weights: str = "metropolis-hastings") -> torch.Tensor:
        """Symmetric doubly stochastic W (float64, n x n); see the module docstring."""
        if weights == "uniform":
            if not self.is_regular():
                raise ValueError(f"weights='uniform' needs a regular graph; {self.name} is not "
                                 "(use weights='metropolis-hastings')")
            return (torch.eye(self.n, dtype=torch.float64) + self.adjacency()) / (self.degree(0) + 1)
        if weights != "metropolis-hastings":
            raise ValueError(f"unknown weights {weights!r}; choose from {WEIGHTS}")
        w = torch.zeros(self.n, self.n, dtype=torch.float64)
        for i, j in self.edges:
            w[i, j] = w[j, i] = 1.0 / (1 + max(self.degree(i), self.degree(j)))
        return w + torch.diag(1.0 - w.sum(1))

    def mixing_row(self, i: int, weights: str = "metropolis-hastings") -> torch.Tensor:
        """Row i of `mixing_matrix` (the same values, bit for bit) in O(n + degree) instead of O(n^2)."""
        if weights == "uniform":
            if not self.is_regular():
                raise ValueError(f"weights='uniform' needs a regular graph; {self.name} is not "
                                 "(use weights='metropolis-hastings')")
            row = torch.zeros(self.n, dtype=torch.float64)
            row[i] = 1.0
            row[self._adj[i]] += 1.0
            return row / (self.degree(0) + 1)
        if weights != "metropolis-hastings":
            raise ValueError(f"unknown weights {weights!r}; choose from {WEIGHTS}")
        row = torch.zeros(self.n, dtype=torch.float64)
        for j in self._adj[i]:
            row[j] = 1.0 / (1 + max(self.degree(i), self.degree(j)))
        row[i] = 1.0 - row.sum()
        return row

    def spectral_gap(self, W: torch.Tensor | None = None) -> float:
        return spectral_gap(self.mixing_matrix() if W is None else W)


def spectral_gap(W: torch.Tensor) -> float:
    """rho = 1 - max(|lambda_2|, |lambda_n|) of a symmetric W (1.0 for a single node)."""
    lam = torch.linalg.eigvalsh(W.to(torch.float64))  # ascending
    if len(lam) == 1:
        return 1.0
    return 1.0 - max(abs(lam[-2].item()), abs(lam[0].item()))


def complete(n: int) -> Topology:
    return Topology.from_edges(n, [(i, j) for i in range(n) for j in range(i + 1, n)], "complete")


def ring(n: int) -> Topology:
    """Cycle i ~ i+1 mod n. n=2 is a single edge, n=1 has no edges."""
    return Topology.from_edges(n, [(i, (i + 1) % n) for i in range(n) if n > 1], "ring")


def torus(rows: int, cols: int) -> Topology:
    """2-D wrap-around grid, node (r, c) = r*cols + c; 4 neighbours when rows, cols >= 3."""
    if rows < 1 or cols < 1:
        raise ValueError(f"torus: rows and cols must be >= 1, got rows={rows}, cols={cols}")
    idx = lambda r, c: (r % rows) * cols + c % cols  # noqa: E731
    es = [(idx(r, c), idx(r, c + 1)) for r in range(rows) for c in range(cols)]
    es += [(idx(r, c), idx(r + 1, c)) for r in range(rows) for c in range(cols)]
    return Topology.from_edges(rows * cols, [(i, j) for i, j in es if i != j], f"torus{rows}x{cols}")


def _log2(n: int, name: str) -> int:
    if n < 1 or n & (n - 1):
        raise ValueError(f"{name}: n must be a power of 2, got n={n}")
    return n.bit_length() - 1


def hypercube(n: int) -> Topology:
    """i ~ i xor 2^k; degree log2(n). n must be a power of 2."""
    return Topology.from_edges(n, [(i, i ^ (1 << k)) for i in range(n) for k in range(_log2(n, "hypercube"))],
                               "hypercube")


def exponential(n: int) -> Topology:
    """Static exponential graph (Ying et al. 2021), undirected: i ~ i +- 2^k mod n for 2^k < n.
    For n a power of 2 the degree is 2 log2(n) - 1."""
    ks = range((n - 1).bit_length())  # 2^k < n
    return Topology.from_edges(n, [(i, (i + (1 << k)) % n) for i in range(n) for k in ks], "exponential")


def star(n: int) -> Topology:
    """Node 0 linked to every other node."""
    return Topology.from_edges(n, [(0, j) for j in range(1, n)], "star")


def erdos_renyi(n: int, p: float, seed: int = 0, max_tries: int = 100) -> Topology:
    """G(n, p), redrawn until connected; deterministic for a seed."""
    if not 0 < p <= 1:
        raise ValueError(f"erdos-renyi: p must be in (0, 1], got p={p}")
    g = torch.Generator().manual_seed(seed)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for _ in range(max_tries):
        keep = torch.rand(len(pairs), generator=g, dtype=torch.float64) < p
        top = Topology.from_edges(n, [e for e, k in zip(pairs, keep.tolist()) if k], f"erdos-renyi(p={p})")
        if top.is_connected():
            return top
    raise ValueError(f"erdos-renyi: no connected graph on n={n} nodes in {max_tries} draws with p={p}; "
                     f"increase p (connectivity needs p above about ln(n)/n = {math.log(max(n, 2)) / n:.3g})")


def splitmix64(x: int) -> int:
    """One step of the splitmix64 hash of a 64-bit integer (the shared seeds of graphs and algorithms)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def step_generator(seed: int, t: int) -> torch.Generator:
    """A torch.Generator that depends only on (seed, t): every worker gets the same stream."""
    return torch.Generator().manual_seed(splitmix64(splitmix64(seed & _M64) ^ (t & _M64)))


@dataclass(frozen=True)
class TimeVarying:
    """Random subgraph of `base` per step; mode "bernoulli" (each edge w.p. p) or "one-edge"."""

    base: Topology
    mode: str = "one-edge"
    p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ("bernoulli", "one-edge"):
            raise ValueError(f"time-varying mode must be 'bernoulli' or 'one-edge', got {self.mode!r}")
        if self.mode == "bernoulli" and not 0 < self.p <= 1:
            raise ValueError(f"bernoulli: p must be in (0, 1], got p={self.p}")
        if not self.base.edges:
            raise ValueError(f"time-varying graph needs a base with edges; {self.base.name} has none")

    @property
    def n(self) -> int:
        return self.base.n

    def active_edges(self, t: int) -> tuple[tuple[int, int], ...]:
        g, es = step_generator(self.seed, t), self.base.edges
        if self.mode == "one-edge":
            return (es[int(torch.randint(len(es), (1,), generator=g))],)
        keep = torch.rand(len(es), generator=g, dtype=torch.float64) < self.p
        return tuple(e for e, k in zip(es, keep.tolist()) if k)

    def graph(self, t: int) -> Topology:
        return Topology(self.n, self.active_edges(t), f"{self.mode}({self.base.name})@{t}")

    def mixing_matrix(self, t: int) -> torch.Tensor:
        """MH weights on the active subgraph at step t (idle workers: W_ii = 1)."""
        return self.graph(t).mixing_matrix()

    def expected_mixing_matrix(self, steps: int = 2000) -> torch.Tensor:
        """E[W_t]: exact for one-edge (I - L / (2|E|)), else the mean over steps 0..steps-1."""
        if self.mode == "one-edge":
            return torch.eye(self.n, dtype=torch.float64) - self.base.laplacian() / (2 * len(self.base.edges))
        return sum(self.mixing_matrix(t) for t in range(steps)) / steps

    def spectral_gap(self, steps: int = 2000) -> float:
        """Spectral gap of the expected mixing matrix."""
        return spectral_gap(self.expected_mixing_matrix(steps))


TOPOLOGIES = ("complete", "ring", "torus", "hypercube", "exponential", "star", "erdos-renyi",
              "bernoulli", "one-edge")
_KEYS = {"torus": {"rows", "cols"}, "erdos-renyi": {"p", "seed"}, "bernoulli": {"p", "seed", "base"},
         "one-edge": {"seed", "base"}}


def build_topology(cfg: dict | str, n: int) -> Topology | TimeVarying:
    """From a config like {name: torus, rows: 4, cols: 4} or {name: one-edge, base: {name: ring}}."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"topology: number of workers n must be a positive integer, got {n!r}")
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
    name = str(cfg.pop("name", "")).lower().replace("_", "-")
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology name {name!r}; choose from {TOPOLOGIES}")
    bad = set(cfg) - _KEYS.get(name, set())
    if bad:
        raise ValueError(f"topology {name}: unknown key(s) {sorted(bad)}; valid keys: "
                         f"{sorted(_KEYS.get(name, set())) or 'none'}")
    if name == "torus":
        rows, cols = cfg.get("rows"), cfg.get("cols")
        for key, v in (("rows", rows), ("cols", cols)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"torus: {key} must be a positive integer, got {v!r}")
        if rows is None:  # most square factorisation when neither is given
            rows = n // cols if cols else max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        cols = cols or n // rows
        if rows * cols != n:
            raise ValueError(f"torus: rows*cols = {rows}*{cols} = {rows * cols} != n={n}")
        return torus(rows, cols)
    if name in ("erdos-renyi", "bernoulli") and "p" not in cfg:
        raise ValueError(f"topology {name}: missing key 'p' (edge probability in (0, 1])")
    if name == "erdos-renyi":
        return erdos_renyi(n, float(cfg["p"]), int(cfg.get("seed", 0)))
    if name in ("bernoulli", "one-edge"):
        base = build_topology(cfg.get("base", "complete"), n)
        if isinstance(base, TimeVarying):
            raise ValueError(f"topology {name}: base must be a static graph, got {base.mode!r}")
        return TimeVarying(base, name, float(cfg.get("p", 1.0)), int(cfg.get("seed", 0)))
    return {"complete": complete, "ring": ring, "hypercube": hypercube, "exponential": exponential,
            "star": star}[name](n)
