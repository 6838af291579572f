"""`ticopd`: Two-timescale Compressed Primal-Dual (Liu, Yau, Wai; arXiv 2501.05701, 2502.08964).

A primal-dual method for min sum_i f_i(x_i) s.t. consensus, where the graph Laplacian acts on
*mirrors* x_hat that track the models through a (possibly nonlinear, biased) compressor C. With
g_i = grad f_i(x_i^t; batch_i^t), L_t the Laplacian of the step-t graph and
(L x_hat)_i = sum_{j in N_i(t)} (x_hat_i - x_hat_j), worker i computes::

    q_i         = C(x_i^t - x_hat_i^t)                       (sent to every active neighbour)
    x_i^{t+1}   = x_i^t - alpha (g_i + lam_i^t + theta (L x_hat^t)_i)
    lam_i^{t+1} = lam_i^t + eta (L x_hat^t)_i
    x_hat_i^{t+1} = x_hat_i^t + gamma q_i                    (two timescales: alpha << gamma)

Every worker keeps a mirror of each neighbour's x_hat_j, advanced by the q_j it receives with the
same rule, so the copies of x_hat_j agree bit for bit (the sender applies the decoded message it
sent, not its uncompressed value). L is symmetric, so sum_i (L x_hat)_i = 0 and sum_i lam_i = 0
at every step (lam^0 = 0; up to rounding). At a fixed point x_hat = x, L x = 0 (consensus) and
g_i = -lam_i: sum_i g_i = 0, i.e. the optimum of (1/n) sum_i f_i, with exact gradients and
heterogeneous f_i. Mirrors start at 0 on every worker (as in the authors' code), so no initial
exchange is needed.

Graphs: on a static graph each worker encodes one q_i per step and sends the same bytes to all
neighbours, so one own mirror x_hat_i serves every edge, whatever the compressor (stochastic
rounding and random-k included). On a time-varying graph (``one-edge``, ``bernoulli``) a neighbour
misses the messages of the steps its edge is idle, so mirrors are kept per edge, as the spec says:
worker i holds, for each neighbour j of the base graph, its own mirror h_ij (what j knows of x_i)
and j's mirror h_ji; an active edge exchanges C(x_i - h_ij) and C(x_j - h_ji), and
(L x_hat)_i = sum_{active j} (h_ij - h_ji) (antisymmetric per edge: sum_i lam_i = 0 still holds).
Memory: 2 deg_base(i) d values on time-varying graphs, (deg(i) + 1) d on static ones.

Options: alpha is the inner optimizer's lr (plain SGD only: its step computes x - lr (g + lam +
theta L x_hat), LR schedules included); ``eta`` (dual step), ``theta`` (weight of the Laplacian in
the primal step), ``gamma`` (mirror step, in (0, 1]). The compressor is ``algorithm.compress``
(`farsync.compress`: int8, int4, topk, randomk, qsgd, bf16, ...; default none: the difference is
sent exactly in the parameters' dtype); error feedback is not supported (the mirror is already the
memory) and decoded messages are float32. With a contractive compressor (int8's per-block absmax
scale, top-k) the error of C(x - x_hat) shrinks with x - x_hat, so exact convergence is still
possible; the tests measure it.

Deviations from the authors' code (OscarYau525/FSPDA, pcode/optim/ticopd-legacy.py): it first
mixes x <- b x + (1 - b) x_hat_i (an extra "beta"), compresses x - x_hat with its own quantizers,
and has no per-edge mirrors; here the update is the spec's three lines above.

Bytes per step per worker: each active edge carries one payload |C(d)| in each direction (exact
mode: d values of the parameters' dtype). Gradient clipping, if set, clips g_i.
Evaluation: the average model; `consensus_error()` is (1/n) sum_i ||x_i - xbar||^2.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..compress import Channel, Compressor, build_compressor
from ..topology import TimeVarying
from .base import flatten, unflatten_into
from .gossip import Decentralized, GraphOptions, PlainSGDInner, exchange_each
from .options import Compressible


class TiCoPDOptions(GraphOptions, Compressible):
    eta: float = Field(0.1, ge=0, description="dual step: lam += eta L x_hat")
    theta: float = Field(0.5, ge=0, description="weight of the Laplacian term: x -= alpha theta L x_hat")
    gamma: float = Field(0.5, gt=0, le=1, description="mirror step: x_hat += gamma C(x - x_hat)")


class TiCoPD(PlainSGDInner, Decentralized):
    one_worker_is_inner = True
    name = "ticopd"
    summary = "TiCoPD: two-timescale compressed primal-dual, Laplacian on compressed mirrors"
    Options = TiCoPDOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # compression happens here, per edge, through one channel
        compress = self.options.compress
        if isinstance(compress, Compressor):
            comp = None if compress.lossless else compress
        else:
            comp = build_compressor(compress)
        if comp is not None and comp.stateful:
            raise ValueError("ticopd: error feedback is not supported (the mirror x_hat is the memory)")
        self.channel = None if comp is None else Channel(comp, self.comm.rank)
        x = flatten([p.detach() for p in self.params])
        zeros = torch.zeros_like(x)
        self.dual = zeros.clone()  # lam_i
        self.per_edge = isinstance(self.topology, TimeVarying)
        base = self.topology.base if self.per_edge else self.topology
        nbrs = base.neighbors(self.comm.rank)
        self.mirrors = {j: zeros.clone() for j in nbrs}  # x_hat_j (per edge: h_ji)
        # own mirror: one tensor (static graph) or h_ij per base neighbour (time-varying graph)
        self.own: torch.Tensor | dict[int, torch.Tensor] = {j: zeros.clone() for j in nbrs} if self.per_edge else zeros.clone()
        self.comp_state: Any = None  # compressor state: one, or per edge (in the channel's checkpoint)

    def _own(self, j: int) -> torch.Tensor:
        return self.own[j] if self.per_edge else self.own

    def _encode(self, diff: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any, Any]:
        """(message to send, decoded message in diff's dtype, template to read replies, new state)."""
        if self.channel is None:
            return diff, diff, None, state
        payload, state = self.channel.encode(diff, state)
        return payload.pack(), self.channel.decode(payload, diff), payload, state

    def _decode(self, template: Any, buf: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.channel is None:
            return buf
        return self.channel.decode(template.unpack(buf), like)

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """Uncompressed, static graph: one message x - x_hat to each neighbour per step."""
        b = cls._plain_payload(model, options)
        return None if b is None else [("send", b)] * (degree * steps)

    def _step(self) -> None:
        o = self.options
        self._local_grads()
        x = flatten([p.detach() for p in self.params])  # x^t
        peers = self.peers(self.local_step)
        # messages q_i = C(x_i - x_hat_i): one for all neighbours (static) or one per active edge
        if self.per_edge:
            states = self.comp_state if self.comp_state is not None else {}
            sends, mine, templates = {}, {}, {}
            for j in peers:
                sends[j], mine[j], templates[j], states[j] = self._encode(x - self.own[j], states.get(j))
            self.comp_state = states
        else:
            msg, q, template, self.comp_state = self._encode(x - self.own, self.comp_state)
            sends = {j: msg for j in peers}
            mine, templates = {j: q for j in peers}, {j: template for j in peers}
        got = exchange_each(self.comm, sends)
        # (L x_hat^t)_i over the active edges, before the mirrors move
        lap = torch.zeros_like(x)
        for j in sorted(peers):
            lap.add_(self._own(j) - self.mirrors[j])
        # primal: x - alpha (g + lam + theta L x_hat) through plain SGD
        g = flatten([p.grad.detach() for p in self.params])
        unflatten_into(g + self.dual + o.theta * lap, [p.grad for p in self.params])
        self.optimizer.step()
        self.dual.add_(lap, alpha=o.eta)
        # mirrors: x_hat += gamma q on both ends of every active edge
        for j in sorted(peers):
            self.mirrors[j].add_(self._decode(templates[j], got[j], x), alpha=o.gamma)
            if self.per_edge:
                self.own[j].add_(mine[j], alpha=o.gamma)
        if not self.per_edge and peers:  # (a node without neighbours has no reader of x_hat_i)
            self.own.add_(mine[peers[0]], alpha=o.gamma)

    def state_dict(self) -> dict[str, Any]:
        clone = lambda v: {j: t.clone() for j, t in v.items()} if isinstance(v, dict) else v.clone()  # noqa: E731
        return {**super().state_dict(), "dual": self.dual.clone(), "own": clone(self.own),
                "mirrors": clone(self.mirrors), "comp_state": self.comp_state,
                "channel": None if self.channel is None else self.channel.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        dev = self.params[0].device
        move = lambda v: {int(j): t.to(dev) for j, t in v.items()} if isinstance(v, dict) else v.to(dev)  # noqa: E731
        self.dual, self.own, self.mirrors = state["dual"].to(dev), move(state["own"]), move(state["mirrors"])
        self.comp_state = state["comp_state"]
        if self.channel is not None:
            self.channel.load_state_dict(state["channel"])
