"""Sparsifiers: top-k (biased, delta = k/d contractive) and random-k (unbiased with the d/k scale;
its indices come from a seed shared by all workers, so they cost no bytes)."""

from __future__ import annotations

import torch

from .base import Compressor, Payload


def _k(ratio: float, d: int) -> int:
    return max(1, min(d, int(round(ratio * d))))


class TopK(Compressor):
    name = "topk"

    def __init__(self, ratio: float = 0.01):
        if not 0 < ratio <= 1:
            raise ValueError(f"topk ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio

    def encode(self, x, state, gen=None):
        v = x.reshape(-1).float()
        idx = v.abs().topk(_k(self.ratio, v.numel()), sorted=False).indices
        idx = idx.sort().values  # deterministic order
        return Payload({"values": v[idx], "indices": idx.to(torch.int32)}, {"shape": tuple(x.shape), "n": v.numel()}), state

    def decode(self, payload):
        t, m = payload.tensors, payload.meta
        out = torch.zeros(m["n"], dtype=torch.float32, device=t["values"].device)
        out[t["indices"].long()] = t["values"]
        return out.reshape(m["shape"])


class RandomK(Compressor):
    """Random-k with indices from ``(seed, call count)``: identical on every worker, not sent."""

    name = "randomk"
    unbiased = True

    def __init__(self, ratio: float = 0.01, seed: int = 0):
        if not 0 < ratio <= 1:
            raise ValueError(f"randomk ratio must be in (0, 1], got {ratio}")
        self.ratio, self.seed = ratio, seed

    def init(self, x):
        return {"calls": torch.zeros((), dtype=torch.int64)}

    def _indices(self, n: int, call: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + call)
        return torch.randperm(n, generator=g)[: _k(self.ratio, n)].sort().values

    def encode(self, x, state, gen=None):
        v = x.reshape(-1).float()
        call = int(state.get("calls", 0))
        idx = self._indices(v.numel(), call).to(v.device)
        scale = v.numel() / idx.numel()
        payload = Payload({"values": v[idx] * scale}, {"shape": tuple(x.shape), "n": v.numel(), "call": call})
        return payload, {"calls": torch.tensor(call + 1)}

    def decode(self, payload):
        m = payload.meta
        vals = payload.tensors["values"]
        out = torch.zeros(m["n"], dtype=torch.float32, device=vals.device)
        out[self._indices(m["n"], m["call"]).to(vals.device)] = vals
        return out.reshape(m["shape"])
