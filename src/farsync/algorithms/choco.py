"""`choco-sgd`: CHOCO-SGD, decentralized SGD with compressed gossip (Koloskova, Stich, Jaggi,
"Decentralized Stochastic Optimization and Gossip Algorithms with Compressed Communication",
ICML 2019, arXiv 1902.00340, Algorithm 1).

Every worker i keeps its model x_i, a public copy x_hat_i (known exactly to i and to its
neighbours, who all apply the same compressed increments) and s_i = sum_j W_ij x_hat_j
(j over i and its neighbours). Step t on worker i::

    x_half = InnerOpt.step(x_i, g_i)                      (= x_i - lr g_i for SGD)
    q_i    = C(x_half - x_hat_i);  send q_i to every neighbour, receive their q_j
    x_hat_i += q_i
    s_i    += sum_j W_ij q_j                              (j including i)
    x_i     = x_half + gamma (s_i - x_hat_i)              (= x_half + gamma sum_j W_ij (x_hat_j - x_hat_i))

The local part is the inner optimizer's step, as in `dsgd` (any optimizer; SGD gives the paper's
x - lr g; gradient clipping applies there). x_hat_i = s_i = 0 at the start (the paper's
initialisation: no assumption that the workers start from one model).

Invariants: since W is doubly stochastic, sum_i s_i = sum_i x_hat_i, so the mixing step keeps the
network average: mean_i x_i = mean_i x_half after every step (up to float rounding; tested).
With no compression and gamma = 1, x_hat_i = x_half_i and x_i = sum_j W_ij x_half_j: `dsgd` with
``order: atc`` (tested). Like DSGD, CHOCO stalls at a bias on heterogeneous objectives with a
constant step size; `docom-sgt` adds gradient tracking to remove it.

Compression: ``algorithm.compress`` takes any `farsync.compress` compressor config
(``{name: topk, ratio: 0.05}``, ``{name: int8}``, ``{name: randomk, ratio: 0.1}``, ...) without
error feedback (x_hat already compensates the compression error) and without ``collective``;
absent (or ``{name: none}``): q = x_half - x_hat is sent uncompressed in the parameters' dtype.
Each worker encodes q_i once, sends the packed payload to each neighbour and everyone decodes it
(the sender too, so all hold the same q_i). Bytes per step per worker: deg_i * |C(q)|, the packed
payload's size (deg_i * d * bytes_per_element uncompressed). Stochastic rounding draws from a
per-worker generator saved in checkpoints. The convergence theory needs a contractive compressor
(top-k, quantizers); farsync's random-k is the unbiased one scaled by d/k, which is not, and can
diverge (measured: logreg breast_cancer, ratio 0.5, gamma 0.4: the models reach ~7e3 in 30 steps).

Topology: static graphs only (s_i = sum_j W_ij x_hat_j is maintained incrementally, which needs
a fixed W; a time-varying graph would need every possible neighbour's x_hat_j).
Evaluation: the average model; `consensus_error()` is (1/n) sum_i ||x_i - xbar||^2.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, Field, field_validator

from ..compress import Channel, Compressor, Reducer, build_compressor
from ..topology import TimeVarying, Topology
from .base import flatten, unflatten_into
from .gossip import Decentralized, GossipOptions, exchange, mix
from .options import Compressible


def check_unit_interval(name: str, v: float) -> float:
    if not 0 < v <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {v!r}")
    return v


class ChocoOptions(GossipOptions, Compressible):
    gamma: float = Field(0.5, description="consensus step size gamma in (0, 1] (paper: 0.2-0.5 with compression)")

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, v):
        return check_unit_interval("gamma", v)


class CompressedGossip(Decentralized):
    """Base of CHOCO-style algorithms: compressed messages to graph neighbours through the
    compressor of ``algorithm.compress`` (one `Channel`: compressor, per-message state and
    generator, all in checkpoints)."""

    @classmethod
    def check_topology(cls, topology: Topology | TimeVarying, options: BaseModel) -> None:
        if isinstance(topology, TimeVarying):
            raise ValueError(f"algorithm {cls.name!r} needs a static graph (it keeps sum_j W_ij x_hat_j with a fixed W)")
        super().check_topology(topology, options)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        compress = self.options.compress
        if isinstance(compress, Reducer):
            raise ValueError(f"{self.name} gossips through a tensor compressor; got the reducer {compress!r}")
        comp = compress if isinstance(compress, Compressor) else build_compressor(compress)
        if comp is not None and comp.stateful:
            raise ValueError(f"{self.name} does not take an error-feedback compressor (got {comp!r})")
        self.channel = None if comp is None else Channel(comp, self.comm.rank)

    @property
    def comp(self) -> Compressor | None:
        """The compressor of the messages (None: exact)."""
        return None if self.channel is None else self.channel.comp

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "channel": None if self.channel is None else self.channel.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.channel is not None:
            self.channel.load_state_dict(state["channel"])

    def send_compressed(self, diff: torch.Tensor, key: str, peers: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(q_i, {j: q_j}): q_i = decode(C(diff)) in diff's dtype, sent to `peers` as one packed
        payload per edge, and the neighbours' decoded q_j. `key` names the compressor state (one
        per message stream). Uncompressed: q_i = diff, sent as it is."""
        ch = self.channel
        if ch is None:
            return diff, exchange(self.comm, diff, peers)
        if ch.state is None:
            ch.state = {}
        payload, ch.state[key] = ch.encode(diff, ch.state.get(key))
        got = exchange(self.comm, payload.pack(), peers)
        return ch.decode(payload, diff), {j: ch.decode(payload.unpack(b), diff) for j, b in got.items()}

    def choco_gossip(self, half: torch.Tensor, hat: torch.Tensor, s: torch.Tensor, key: str) -> torch.Tensor:
        """One compressed gossip step on (half, public copy `hat`, s = W hat), updating `hat` and `s`
        in place; returns half + gamma (s - hat)."""
        peers, w_row = self.neighbours(self.local_step)
        q, received = self.send_compressed(half - hat, key, peers)
        hat.add_(q)
        s.add_(mix(q, received, w_row, self.comm.rank))
        return half + self.options.gamma * (s - hat)


class ChocoSGD(CompressedGossip):
    grad_scaler_ok = True  # .grad is read only by the inner optimizer step (fp16: microbatch.py)
    one_worker_is_inner = True
    name = "choco-sgd"
    summary = "CHOCO-SGD: decentralized SGD with compressed gossip (algorithm.compress) and public model copies"
    Options = ChocoOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.x_hat: torch.Tensor | None = None
        self.s: torch.Tensor | None = None

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """Uncompressed: one message x_half - x_hat to each neighbour per step."""
        b = cls._plain_payload(model, options)
        return None if b is None else [("send", b)] * (degree * steps)

    def _step(self) -> None:
        self._optimizer_step()  # x_half: the inner optimizer's local step
        half = flatten([p.detach() for p in self.params])
        if self.x_hat is None:
            self.x_hat, self.s = torch.zeros_like(half), torch.zeros_like(half)
        unflatten_into(self.choco_gossip(half, self.x_hat, self.s, "x"), self.params)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **{k: None if v is None else v.clone() for k, v in (("x_hat", self.x_hat), ("s", self.s))}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        dev = self.params[0].device
        for k in ("x_hat", "s"):
            setattr(self, k, None if state[k] is None else state[k].to(dev))
