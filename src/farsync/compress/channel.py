"""A channel: one compressor with its state and the generator of its random draws.

Every algorithm that compresses sends through a `Channel` (the reducers of collective algorithms,
CHOCO / DoCoM-SGT's public copies, TiCoPD's mirrors)::

    ch = Channel(compressor, rank)                # rank seeds stochastic rounding: 1_000_003 + rank
    payload, state = ch.encode(x, state)          # state None on first use: compressor.init(x)
    y = ch.decode(payload, like=x)                # in x's shape and dtype
    ch.state_dict() / ch.load_state_dict(...)     # its state and generator travel in checkpoints

``ch.state`` is where its user keeps the compressor state: one (a reducer), or one per message
stream or graph edge (the user decides the layout). What an algorithm may do with the compressor
is read from its capabilities (`Compressor.lossless`, ``summable``, ``stateful``,
``global_copy``), never from its type. DeMo's DCT top-k is its own transform (algorithms/demo.py),
not a compressor of `farsync.compress`.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Compressor, Payload


class Channel:
    """Compressor + its state + its generator."""

    def __init__(self, comp: Compressor, rank: int = 0):
        self.comp = comp
        self.state: Any = None
        self.gen = torch.Generator().manual_seed(1_000_003 + rank)  # stochastic rounding

    def encode(self, x: torch.Tensor, state: Any) -> tuple[Payload, Any]:
        """(payload of x, the compressor's new state); `state` None: a fresh one for x."""
        if state is None:
            state = self.comp.init(x)
        return self.comp.encode(x, state, self.gen)

    def decode(self, payload: Payload, like: torch.Tensor) -> torch.Tensor:
        """decode(payload) in the shape and dtype of `like`."""
        return self.comp.decode(payload).reshape(like.shape).to(like.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"compress_state": self.state, "compress_gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state.get("compress_state")
        if "compress_gen" in state:
            self.gen.set_state(state["compress_gen"])

    def __repr__(self) -> str:
        return f"Channel({self.comp!r})"
