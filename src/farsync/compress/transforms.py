"""Compressor transformations: error feedback (EF, EF21) and a Hadamard rotation.

`ErrorFeedback(c)` (EF; Seide et al. 2014, Karimireddy et al. 2019)::

    a = e + x;   q = c(a);   e = a - decode(q);   send q

so that decode(q) + e_new == x + e_old (up to the rounding of a = e + x).

`Rotate(c, block)`: y = H D x per block of `block` (a power of two) values, where D is a fixed
random +-1 diagonal (seed) and H the orthonormal Walsh-Hadamard matrix; c compresses y and decode
applies D H (H is its own inverse). Spreads outliers before quantizing.
"""

from __future__ import annotations

import math

import torch

from .base import Compressor, Payload, blocks


class ErrorFeedback(Compressor):
    name = "ef"
    stateful = True

    def __init__(self, inner: Compressor):
        self.inner = inner

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return False

    def init(self, x):
        return {"residual": torch.zeros(x.shape, dtype=torch.float32, device=x.device), "inner": self.inner.init(x)}

    def encode(self, x, state, gen=None):
        acc = state["residual"] + x.float()
        payload, inner_state = self.inner.encode(acc, state["inner"], gen)
        residual = acc - self.inner.decode(payload)
        return payload, {"residual": residual, "inner": inner_state}

    def decode(self, payload):
        return self.inner.decode(payload)

    def decode_into(self, payload, out):
        return self.inner.decode_into(payload, out)


class EF21(Compressor):
    """EF21 (Richtarik, Sokolov, Fatkhullin 2021). Worker i keeps g_i, every worker keeps g::

        c_i = C(x_i - g_i);   g_i += decode(c_i);   send c_i
        g  += mean_j decode(c_j)          # g == mean_j g_j: the result of the average

    Must be the outermost transformation (it owns the result of the average).
    """

    name = "ef21"
    stateful = True
    global_copy = True

    def __init__(self, inner: Compressor):
        self.inner = inner

    def init(self, x):
        z = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        return {"g_local": z, "g_global": z.clone(), "inner": self.inner.init(x)}

    def encode(self, x, state, gen=None):
        payload, inner_state = self.inner.encode(x.float() - state["g_local"], state["inner"], gen)
        g_local = state["g_local"] + self.inner.decode(payload)
        return payload, {**state, "g_local": g_local, "inner": inner_state}

    def decode(self, payload):
        return self.inner.decode(payload)

    def decode_into(self, payload, out):
        return self.inner.decode_into(payload, out)

    def finalize(self, mean, state):
        g_global = state["g_global"] + mean
        return g_global.clone(), {**state, "g_global": g_global}


class EControl(Compressor):
    """EControl (Gao, Islamov, Stich; arXiv 2311.05645). Worker i keeps e_i and h_i; all keep h::

        Delta_i = C(eta * e_i + x_i - h_i)
        e_i    += x_i - h_i - Delta_i
        h_i    += Delta_i;     h += mean_j Delta_j     # result: h == mean_j h_j (= mean of h_j + Delta_j)

    eta must be small (the paper's theory: ~delta/400; a toy check diverged at eta >= 0.1 with
    delta = 0.05). Must be the outermost transformation.
    """

    name = "econtrol"
    stateful = True
    global_copy = True

    def __init__(self, inner: Compressor, eta: float = 0.01):
        if not 0 <= eta <= 1:
            raise ValueError(f"econtrol eta must be in [0, 1], got {eta}")
        self.inner, self.eta = inner, eta

    def init(self, x):
        z = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        return {"e": z, "h_local": z.clone(), "h_global": z.clone(), "inner": self.inner.init(x)}

    def encode(self, x, state, gen=None):
        x = x.float()
        v = self.eta * state["e"] + x - state["h_local"]
        payload, inner_state = self.inner.encode(v, state["inner"], gen)
        delta = self.inner.decode(payload)
        e = state["e"] + x - state["h_local"] - delta
        return payload, {**state, "e": e, "h_local": state["h_local"] + delta, "inner": inner_state}

    def decode(self, payload):
        return self.inner.decode(payload)

    def decode_into(self, payload, out):
        return self.inner.decode_into(payload, out)

    def finalize(self, mean, state):
        h_global = state["h_global"] + mean
        return h_global.clone(), {**state, "h_global": h_global}


def hadamard(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh-Hadamard transform along the last dim (a power of two)."""
    n = y.shape[-1]
    h = 1
    out = y.clone()
    while h < n:
        out = out.view(*out.shape[:-1], n // (2 * h), 2, h)
        a, b = out[..., 0, :], out[..., 1, :]
        out = torch.stack([a + b, a - b], dim=-2).view(*y.shape)
        h *= 2
    return out / math.sqrt(n)


class Rotate(Compressor):
    name = "rotate"

    def __init__(self, inner: Compressor, block: int = 64, seed: int = 0):
        if block < 1 or block & (block - 1):
            raise ValueError(f"rotation block must be a power of two, got {block}")
        self.inner, self.block, self.seed = inner, block, seed

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return self.inner.unbiased

    def _signs(self, device) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return (torch.randint(0, 2, (self.block,), generator=g) * 2 - 1).float().to(device)

    def init(self, x):
        return self.inner.init(torch.zeros(blocks(x, self.block)[0].shape, device=x.device))

    def encode(self, x, state, gen=None):
        b, n = blocks(x, self.block)
        y = hadamard(b * self._signs(b.device))
        payload, state = self.inner.encode(y, state, gen)
        return Payload(payload.tensors, {**payload.meta, "rot_shape": tuple(x.shape), "rot_n": n}), state

    def decode(self, payload):
        y = self.inner.decode(payload)
        x = hadamard(y) * self._signs(y.device)
        return x.reshape(-1)[: payload.meta["rot_n"]].reshape(payload.meta["rot_shape"])
