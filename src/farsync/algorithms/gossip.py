"""Neighbour exchange, gossip averaging and the base class of decentralized algorithms.

A decentralized algorithm has no all-reduce: at step t worker i exchanges one flat buffer with
each neighbour j in the communication graph G_t (`farsync.topology`) and mixes what it holds::

    mix_i(x) = sum_j W_ij x_j          (j over i and its neighbours; W symmetric doubly stochastic)

`exchange` posts all its non-blocking sends and receives, peer by peer in ascending rank order,
and only then waits: nothing blocks before everything is posted, so it cannot deadlock on gloo,
and the simulator matches the messages deterministically. On each edge both endpoints post in the
same order (the lower rank's send first), which a backend that serializes the operations of one
pair of ranks (NCCL's per-pair stream) also needs. Bytes are the point-to-point accounting of the
`Communicator`: every edge carries one message of the buffer's size in each direction, so a
worker sends deg_i(t) * numel * element_size bytes per exchange.

Evaluation: the models differ across workers, so `Decentralized` evaluates their average
xbar = (1/n) sum_i x_i and reports the consensus error (1/n) sum_i ||x_i - xbar||^2. Both come
from an all-gather of the flat parameters over the control plane (like logging: not counted in
bytes or time, identical on both backends), done on every rank in `log_metrics(rows)`, which the
training loop calls at each logging step. `eval_params()` is collective: the loop's evaluation
step enters it on every rank (it reuses the average when `log_metrics` / `consensus_error()`
already gathered it at this step).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from ..comm import Communicator
from ..topology import TimeVarying, Topology, build_topology
from .base import Algorithm, flatten, swapped_params, unflatten_into
from .options import EveryStep, OnGraph, takes

TopologySpec = Topology | TimeVarying | dict[str, Any] | str | None


_PLAIN_SGD = {"momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False}


def check_plain_sgd_config(name: str, inner: dict[str, Any]) -> None:
    """Raise ValueError unless the inner optimizer config is plain SGD: algorithms that step along
    their own direction (a gradient tracker, a primal-dual direction) use only its lr."""
    extra = {k: v for k, v in inner.items() if k not in ("name", "lr")}
    if inner.get("name") != "sgd" or any(_PLAIN_SGD.get(k, object()) != v for k, v in extra.items()):
        raise ValueError(f"algorithm.inner: {name} steps along its own direction with plain SGD's lr; "
                         f"use {{name: sgd, lr: ...}} without momentum or weight decay (got {inner!r})")


def require_plain_sgd(name: str, optimizer: torch.optim.Optimizer) -> None:
    """The same check on a built optimizer (for `wrap`)."""
    if not isinstance(optimizer, torch.optim.SGD) or any(
        g["momentum"] or g["weight_decay"] or g["nesterov"] or g["maximize"] for g in optimizer.param_groups
    ):
        raise ValueError(f"{name} needs a plain torch.optim.SGD inner optimizer (no momentum, no weight decay); "
                         f"got {type(optimizer).__name__}")


def check_gossip_compressor(name: str, compress: dict[str, Any] | None) -> None:
    """Raise ValueError unless `compress` is an elementwise compressor usable on messages to graph
    neighbours (no all-reduce collective, no powersgd, no error feedback: the public copies /
    mirrors of these methods already carry the compression error)."""
    if compress is None:
        return
    if compress.get("name") == "powersgd":
        raise ValueError(f"algorithm {name!r}: algorithm.compress cannot be powersgd (a low-rank all-reduce scheme); "
                         "use an elementwise compressor such as topk, randomk or int8")
    if "collective" in compress:
        raise ValueError(f"algorithm {name!r} sends to graph neighbours: algorithm.compress.collective does not apply; remove it")
    if compress.get("error_feedback", "none") != "none":
        raise ValueError(f"algorithm {name!r} keeps public copies that compensate the compression error: "
                         f"error_feedback must be none; remove algorithm.compress.error_feedback (got {compress['error_feedback']!r})")


class PlainSGDInner:
    """Mixin of an algorithm that steps along its own direction (a gradient tracker, a primal-dual
    direction) with plain SGD's lr: the inner optimizer must be plain SGD (checked on the config
    and on the built optimizer)."""

    @classmethod
    def check_inner(cls, inner: dict[str, Any]) -> None:
        check_plain_sgd_config(cls.name, inner)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        require_plain_sgd(self.name, self.optimizer)


def exchange(comm: Communicator, x: torch.Tensor, peers: list[int]) -> dict[int, torch.Tensor]:
    """Send `x` to every rank in `peers` and receive each peer's tensor (same shape and dtype).

    Every peer must call it with this rank among its peers; returns {peer: received tensor}.
    Every transfer has finished when it returns (the backends read `x` until then).
    """
    return exchange_each(comm, {j: x for j in peers})


def exchange_each(comm: Communicator, sends: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Send ``sends[j]`` to each peer j and receive a tensor shaped like it from j (the message
    may differ per peer); the posting order of `exchange`."""
    received = {j: torch.empty_like(sends[j]) for j in sorted(sends)}
    works = []
    for j, buf in received.items():  # per edge: the lower rank sends first, the higher receives first
        if comm.rank < j:
            works += [comm.isend(sends[j], j), comm.irecv(buf, j)]
        else:
            works += [comm.irecv(buf, j), comm.isend(sends[j], j)]
    for w in works:
        w.wait()
    return received


def mix(x: torch.Tensor, received: dict[int, torch.Tensor], w_row: torch.Tensor, rank: int) -> torch.Tensor:
    """sum_j W_ij x_j over j in {rank} and the senders of `received` (x_rank = `x`), summed in
    ascending rank order so that every worker holding the same inputs gets the same bits."""
    terms = sorted({**received, rank: x}.items())
    out = torch.zeros_like(x)
    for j, xj in terms:
        out.add_(xj, alpha=float(w_row[j]))
    return out


class GraphOptions(EveryStep, OnGraph):
    """Options of every decentralized algorithm: one exchange per step on ``topology``."""


class GossipOptions(GraphOptions):
    """Options of an algorithm that mixes with W: the graph and its weights."""

    weights: Literal["metropolis-hastings", "uniform"] = Field(
        "metropolis-hastings", description="mixing matrix W (uniform: regular static graphs only)"
    )


class Decentralized(Algorithm):
    """Base of gossip algorithms: topology (`cluster.topology`, default complete), the mixing row
    of step t, neighbour exchange, and evaluation of the average model. An algorithm that mixes
    with W has ``weights`` in its Options (`GossipOptions`); primal-dual ones use only the edges."""

    Options = GossipOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._agree_on_optimizer_stats()
        topology: TopologySpec = self.options.topology
        n = self.comm.world_size
        if not isinstance(topology, (Topology, TimeVarying)):
            topology = build_topology(topology if topology is not None else "complete", n)
        if topology.n != n:
            raise ValueError(f"topology has {topology.n} nodes but there are {n} workers")
        self.check_topology(topology, self.options)
        self.topology = topology
        if isinstance(topology, Topology):  # static: the neighbours (and mixing row) for the whole run
            w_row = topology.mixing_row(self.comm.rank, self.options.weights) if self.mixes() else None
            self._static = (topology.neighbors(self.comm.rank), w_row)
        self._average: list[torch.Tensor] | None = None
        self._average_step = -1
        self._consensus_error = float("nan")

    @classmethod
    def mixes(cls) -> bool:
        """True if it mixes with a matrix W (its Options have ``weights``)."""
        return takes(cls, "weights")

    @classmethod
    def check_compress(cls, compress: Any) -> None:
        if isinstance(compress, dict):
            check_gossip_compressor(cls.name, compress)

    @classmethod
    def check_topology(cls, topology: Topology | TimeVarying, options: BaseModel) -> None:
        """Raise ValueError if `options` cannot work on `topology` (checked before training)."""
        if not cls.mixes():
            return
        if isinstance(topology, TimeVarying):
            if options.weights != "metropolis-hastings":
                raise ValueError(f"weights={options.weights!r} needs a static graph; time-varying topologies "
                                 "use Metropolis-Hastings weights on each step's active edges")
        else:
            topology.mixing_row(0, options.weights)  # uniform on a non-regular graph raises

    def peers(self, t: int) -> list[int]:
        """This worker's neighbours in the step-t graph (all of them on a static graph)."""
        if isinstance(self.topology, TimeVarying):
            return self.topology.graph(t).neighbors(self.comm.rank)
        return self._static[0]

    def neighbours(self, t: int) -> tuple[list[int], torch.Tensor]:
        """(this worker's neighbours, its row of W) at step t; no neighbours: W_ii = 1."""
        if isinstance(self.topology, TimeVarying):
            g = self.topology.graph(t)
            return g.neighbors(self.comm.rank), g.mixing_row(self.comm.rank)
        return self._static

    def gossip(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """sum_j W_ij(t) x_j: exchange `x` with this step's neighbours and mix."""
        peers, w_row = self.neighbours(t)
        return mix(x, exchange(self.comm, x, peers), w_row, self.comm.rank)

    # ------------------------------------------------------------------ evaluation
    def _gather_average(self) -> None:
        """Collective (control plane): the average model and the consensus error."""
        x = flatten([p.detach() for p in self.params])
        xs = [t.to(x.device) for t in self.comm.all_gather_object(x.cpu())]
        avg = xs[0].clone()
        for t in xs[1:]:
            avg += t
        avg /= len(xs)
        self._consensus_error = sum(float((t - avg).double().pow(2).sum()) for t in xs) / len(xs)
        self._average = [torch.empty_like(p) for p in self.params]
        unflatten_into(avg, self._average)
        self._average_step = self.local_step

    def consensus_error(self) -> float:
        """(1/n) sum_i ||x_i - xbar||^2 of the current local models. Collective: every rank calls it."""
        if self._average_step != self.local_step:
            self._gather_average()
        return self._consensus_error

    def log_metrics(self, rows: list[dict[str, float]]) -> dict[str, float]:
        """Consensus error and bytes per edge: all bytes sent so far over the number of (undirected)
        edges of the graph (of the base graph when it varies over time). Collective."""
        graph = self.topology.base if isinstance(self.topology, TimeVarying) else self.topology
        sent = sum(r["bytes_sent"] for r in rows)
        return {"consensus_error": self.consensus_error(), "bytes_per_edge": sent / max(1, len(graph.edges))}

    @contextmanager
    def eval_params(self) -> Iterator[torch.nn.Module]:
        """The average model (gathered now, on every rank, unless already gathered at this step)."""
        if self._average_step != self.local_step:
            self._gather_average()
        with swapped_params(self.params, self._average):
            yield self.model
