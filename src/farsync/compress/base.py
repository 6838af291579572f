"""The compressor interface: a tensor -> a payload of real packed tensors -> a tensor.

    state = comp.init(x)                       # per-tensor state (error-feedback residual, ...)
    payload, state = comp.encode(x, state, gen) # gen: torch.Generator for stochastic rounding
    x_hat = comp.decode(payload)               # float32, shape of x

A `Payload` holds what crosses the wire (`tensors`, counted byte for byte) and what the receiver
knows anyway (`meta`: shapes, the shared seed of random-k; not counted). `pack()` turns the
tensors into one uint8 buffer: one message per synchronization.
Compressors compose like optax transformations: ``ErrorFeedback(TopK(0.01))``,
``Rotate(Int4(block=64))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class Payload:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def pack(self) -> torch.Tensor:
        """All tensors as one flat uint8 buffer (in key order)."""
        parts = [t.contiguous().reshape(-1).view(torch.uint8) for _, t in sorted(self.tensors.items())]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)

    def unpack(self, buf: torch.Tensor) -> Payload:
        """A payload shaped like this one, with tensors read from `buf` (another worker's pack())."""
        out, offset = {}, 0
        for k, t in sorted(self.tensors.items()):
            n = t.numel() * t.element_size()
            out[k] = buf[offset : offset + n].clone().view(t.dtype).reshape(t.shape)  # clone: aligned
            offset += n
        return Payload(out, self.meta)


class Compressor:
    """Base class: stateless and deterministic unless a subclass says otherwise."""

    name: ClassVar[str] = ""
    unbiased: ClassVar[bool] = False  # E[decode(encode(x))] == x
    # Capabilities, read by every algorithm that compresses (one channel, `channel.py`):
    lossless: ClassVar[bool] = False  # decode(encode(x)) == x: the exact mean needs no compressed path
    summable: ClassVar[bool] = False  # payloads add up in their own dtype: all-reduce encode(x / n)
    stateful: ClassVar[bool] = False  # keeps a memory of past errors in its state (error feedback)
    global_copy: ClassVar[bool] = False  # its state holds a copy of the global mean (EF21, EControl)

    def init(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def encode(self, x: torch.Tensor, state: dict, gen: torch.Generator | None = None) -> tuple[Payload, dict]:
        raise NotImplementedError

    def decode(self, payload: Payload) -> torch.Tensor:
        raise NotImplementedError

    def decode_into(self, payload: Payload, out: torch.Tensor) -> torch.Tensor:
        """Write decode(payload) into `out` (float32, its shape) and return it; quantizers override
        this to skip the freshly allocated result."""
        return out.copy_(self.decode(payload))

    def finalize(self, mean: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """Turn the workers' mean of decoded payloads into the result (EF21 keeps a running sum)."""
        return mean, state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Identity(Compressor):
    """No compression: the tensor itself (float32)."""

    name = "none"
    unbiased = True
    lossless = True
    summable = True

    def encode(self, x, state, gen=None):
        return Payload({"x": x.float()}, {"shape": tuple(x.shape)}), state

    def decode(self, payload):
        return payload.tensors["x"].reshape(payload.meta["shape"])


def blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """Flatten `x` to float32, zero-pad to a multiple of `block`, view as (n_blocks, block)."""
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block), x.numel()


def stochastic_round(y: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """floor(y + u), u ~ U[0, 1): unbiased rounding to integers."""
    return torch.floor(y + uniform(y.shape, gen, y))


def uniform(shape: torch.Size | tuple[int, ...], gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """U[0, 1) draws of `like`'s dtype on `like`'s device, from `gen` on its own device (a CPU
    generator gives the same numbers whatever the tensor's device)."""
    device = gen.device if gen is not None else like.device
    return torch.rand(shape, generator=gen, dtype=like.dtype, device=device).to(like.device)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer codes < 2**bits (bits in 1, 2, 4, 8) into uint8, 8/bits codes per byte
    (code k of a byte in bits [k*bits, (k+1)*bits))."""
    per = 8 // bits
    c = codes.reshape(-1).to(torch.uint8)
    pad = (-c.numel()) % per
    if pad:
        c = torch.cat([c, c.new_zeros(pad)])
    c = c.view(-1, per)
    out = c[:, 0].clone()
    for k in range(1, per):
        out |= c[:, k] << (k * bits)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first `n` codes of `pack_bits` output, as uint8."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    c = (packed[:, None] >> shifts) & ((1 << bits) - 1)
    return c.reshape(-1)[:n]


def absmax_rows(b: torch.Tensor) -> torch.Tensor:
    """max |b| over each row, without a full-size |b| temporary."""
    return torch.maximum(b.amax(1), b.amin(1).neg())


SLAB = 1 << 19  # values per slab (2 MB of fp32): temporaries stay in cache; large enough for 2 threads per op


def scaled_slabs(b: torch.Tensor, top: float, scale_out: torch.Tensor):
    """Per slab of rows of `b`: write each row's scale absmax / `top` into `scale_out` and yield
    (start, stop, rows / scale) (rows of zeros keep scale 0 and are divided by 1)."""
    for i, j in slabs(*b.shape):
        s = torch.div(absmax_rows(b[i:j]), top, out=scale_out[i:j])
        yield i, j, b[i:j] / torch.where(s > 0, s, torch.ones_like(s))[:, None]


def slabs(n_rows: int, row: int) -> list[tuple[int, int]]:
    """(start, stop) rows of slabs of about SLAB values; every start is even (4-bit packing)."""
    step = max(2, (SLAB // max(row, 1)) // 2 * 2)
    return [(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]
