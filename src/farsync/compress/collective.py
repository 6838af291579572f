"""Averaging a tensor over workers through a compressor.

Compressed payloads are not summed on the wire: every worker packs its payload into one uint8
buffer, the buffers are all-gathered (bytes = the real payload size), and every worker decodes
each contribution and averages them in float32, in rank order - so 4-bit contributions are never
re-quantized when summed. `none` uses a plain all-reduce; a bare bf16/fp16 cast is summable and
all-reduces in its own dtype (x/n cast, summed, cast back: like torch's bf16_compress_hook).
"""

from __future__ import annotations

import torch

from ..comm import Communicator
from .base import Compressor, Identity
from .quantize import Cast


def all_reduce_mean(
    comm: Communicator, x: torch.Tensor, comp: Compressor | None, state: dict, gen: torch.Generator | None
) -> tuple[torch.Tensor, dict]:
    """Return (mean over workers of decode(encode(x_r)), new compressor state)."""
    if comp is None or type(comp) is Identity:
        out = x.clone()
        comm.all_reduce(out, op="mean")
        return out, state
    if type(comp) is Cast:  # summable as it is: all-reduce in bf16/fp16 (like torch's bf16_compress_hook)
        low = (x / comm.world_size).to(getattr(torch, comp.dtype))
        comm.all_reduce(low, op="sum")
        return low.to(x.dtype), state
    payload, state = comp.encode(x, state, gen)
    buf = payload.pack()
    bufs = [torch.empty_like(buf) for _ in range(comm.world_size)]
    comm.all_gather(bufs, buf)
    acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for b in bufs:
        acc += comp.decode(payload.unpack(b))
    mean, state = comp.finalize(acc / comm.world_size, state)
    return mean.to(x.dtype), state
