"""Reducers: how an algorithm averages one flat buffer over the workers, through a compressor.

Every algorithm calls one `Reducer` at each synchronization::

    mean = reducer.reduce(comm, x)     # (1/n) sum_r C(x_r), identical on every worker; x may be overwritten
    pending = reducer.start(comm, x)   # the same, non-blocking: compute on, then mean = pending.wait()
    reducer.state_dict() / reducer.load_state_dict(state)   # residuals, RNG, PowerSGD's Q: in checkpoints

- `MeanReducer`: no compression, ``all_reduce(mean)`` (exact up to the sum's order).
- `GatherReducer(C)`: every worker packs its payload C(x_r) into one uint8 buffer, the buffers are
  all-gathered ((n-1) x payload per worker), and every worker decodes each contribution and
  averages them in float32, in rank order - never summed in compressed form. A bare bf16/fp16 cast
  is summable and all-reduces in its own dtype instead (x/n cast, summed, cast back; like torch's
  bf16_compress_hook).
- `ScatterReducer(C)`: the same average with the bytes of a ring all-reduce (2(n-1)/n x payload),
  a compressed reduce-scatter followed by a compressed all-gather (as ZeRO++'s qgZ)::

      x (zero-padded) = [x^0 | x^1 | ... | x^(n-1)]        # n shards of S values
      worker r: p_r^j = C(x_r^j) for each shard j          # error feedback (EF) acts here
      all_to_all: worker j receives p_0^j ... p_(n-1)^j    # (n-1)/n x payload
      worker j: m^j = (1/n) sum_r decode(p_r^j)            # float32, rank order
      worker j: q^j = C(m^j)                               # with EF: the shard owner's own residual
      all_gather q^0 ... q^(n-1); mean = [decode(q^0) | ... | decode(q^(n-1))]   # (n-1)/n x payload

  Contributions are still decoded and summed in float32; the price is a second compression of the
  mean. With error feedback (EF) both compressions keep residuals: each worker one per shard it
  sends, each shard owner one for its mean (worker and server error compensation, as in the
  compressed all-reduce of 1-bit Adam, Tang et al. 2021). EF21 and EControl keep a global copy of
  the mean and are not supported here.
- `PowerSGD` (powersgd.py): low-rank, linear: all-reduces its factors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..comm import Communicator
from .base import Compressor, Payload
from .channel import Channel


class Pending:
    """A started reduction: ``wait()`` blocks until it has arrived and returns the mean (once).

    ``own``: this worker's contribution as the others receive it (its decoded payload), or None
    when that is the input itself (no compression). Eager DiLoCo's own-term correction uses it."""

    def __init__(self, finish: Callable[[], torch.Tensor], own: Callable[[], torch.Tensor] | None = None):
        self._finish, self._result, self._own = finish, None, own

    @property
    def own(self) -> torch.Tensor | None:
        if callable(self._own):
            self._own = self._own()
        return self._own

    def wait(self) -> torch.Tensor:
        if self._result is None:
            self._result = self._finish()
        return self._result


class Reducer:
    """Averages a flat buffer over workers. Subclasses implement `reduce` (blocking) or `start`
    (non-blocking, where the collectives allow it); stateless by default."""

    compressed = True  # False only when the result is the exact mean

    def reduce(self, comm: Communicator, x: torch.Tensor) -> torch.Tensor:
        return self.start(comm, x).wait()

    def start(self, comm: Communicator, x: torch.Tensor) -> Pending:
        """Issue the reduction; by default it completes at once (blocking)."""
        out = self.reduce(comm, x)
        return Pending(lambda: out)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MeanReducer(Reducer):
    """No compression: ``all_reduce(x, mean)`` in place."""

    compressed = False

    def reduce(self, comm, x):
        comm.all_reduce(x, op="mean")
        return x

    def start(self, comm, x):
        work = comm.all_reduce(x, op="mean", async_op=True)
        return Pending(lambda: (work.wait(), x)[1])


def decoded_mean(comp: Compressor, template: Payload, bufs: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """(1/n) sum of the decoded packed payloads `bufs` (laid out as `template`, decoding to the
    shape of `like`), in float32 and rank order, through one scratch buffer."""
    acc = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
    tmp = torch.empty_like(acc)
    for b in bufs:
        acc += comp.decode_into(template.unpack(b), tmp)
    return acc.div_(len(bufs))


def start_gathered_mean(
    comm: Communicator, x: torch.Tensor, comp: Compressor | None, state: dict, gen: torch.Generator | None
) -> tuple[Callable[[], tuple[torch.Tensor, dict]], Callable[[], torch.Tensor] | None]:
    """Encode and issue the collective now (non-blocking). Returns (finish, own): finish waits
    for it and returns (mean over workers of decode(encode(x_r)), new compressor state) - the
    all-gather path; own computes x as the others receive it (None: x itself, uncompressed)."""
    if comp is None or comp.lossless:
        out = x.clone()
        work = comm.all_reduce(out, op="mean", async_op=True)
        return (lambda: (work.wait(), (out, state))[1]), None
    if comp.summable:  # summable as it is: all-reduce in bf16/fp16 (like torch's bf16_compress_hook)
        n = comm.world_size
        low = (x / n).to(getattr(torch, comp.dtype))
        own = low.to(x.dtype) * n  # before the all-reduce overwrites `low`
        work = comm.all_reduce(low, op="sum", async_op=True)
        return (lambda: (work.wait(), (low.to(x.dtype), state))[1]), (lambda: own)
    payload, state = comp.encode(x, state, gen)
    buf = payload.pack()
    bufs = [torch.empty_like(buf) for _ in range(comm.world_size)]
    work = comm.all_gather(bufs, buf, async_op=True)

    def finish() -> tuple[torch.Tensor, dict]:
        work.wait()
        mean, new_state = comp.finalize(decoded_mean(comp, payload, bufs, x), state)
        return mean.to(x.dtype), new_state

    return finish, (lambda: comp.decode(payload).reshape(x.shape).to(x.dtype))


def gathered_mean(
    comm: Communicator, x: torch.Tensor, comp: Compressor | None, state: dict, gen: torch.Generator | None
) -> tuple[torch.Tensor, dict]:
    """Blocking `start_gathered_mean`: (mean over workers of decode(encode(x_r)), new state)."""
    return start_gathered_mean(comm, x, comp, state, gen)[0]()


class _CompressorReducer(Reducer):
    """Averages through a `Channel` (compressor, its state made on first use, its generator)."""

    def __init__(self, comp: Compressor, rank: int = 0):
        self.channel = Channel(comp, rank)

    comp = property(lambda self: self.channel.comp)
    gen = property(lambda self: self.channel.gen)
    state = property(lambda self: self.channel.state, lambda self, v: setattr(self.channel, "state", v))

    def state_dict(self):
        return self.channel.state_dict()

    def load_state_dict(self, state):
        self.channel.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.comp!r})"


class GatherReducer(_CompressorReducer):
    """All-gather the packed payloads; decode and average in float32 on every worker."""

    def start(self, comm, x):
        if self.state is None:
            self.state = self.comp.init(x)
        finish, own = start_gathered_mean(comm, x, self.comp, self.state, self.gen)

        def done() -> torch.Tensor:
            out, self.state = finish()
            return out

        return Pending(done, own)


class ScatterReducer(_CompressorReducer):
    """Compressed reduce-scatter (all_to_all) + compressed all-gather of the shard means (blocking:
    the second phase needs the first's result)."""

    def __init__(self, comp: Compressor, rank: int = 0):
        if comp.global_copy:
            raise ValueError("collective: reduce_scatter supports error_feedback none or ef (EF21/EControl keep a global copy)")
        super().__init__(comp, rank)

    def start(self, comm, x):
        out, own = self._reduce(comm, x)
        return Pending(lambda: out, own)

    def reduce(self, comm, x):
        return self._reduce(comm, x)[0]

    def _reduce(self, comm, x):
        """(the mean, a function giving x as the others received it: its decoded shards)."""
        n = comm.world_size
        d = x.numel()
        size = -(-d // n)  # shard length S
        flat = torch.zeros(n * size, dtype=torch.float32, device=x.device)
        flat[:d] = x.reshape(-1)
        shards = flat.view(n, size)
        if self.state is None:
            self.state = {"shards": [self.comp.init(s) for s in shards], "mean": self.comp.init(shards[0])}
        # phase 1: compressed reduce-scatter
        payloads, states = [], []
        for j in range(n):
            p, s = self.comp.encode(shards[j], self.state["shards"][j], self.gen)
            payloads.append(p)
            states.append(s)
        sent = [p.pack() for p in payloads]
        got = [torch.empty_like(sent[comm.rank]) for _ in range(n)]
        comm.all_to_all(got, sent)
        acc = decoded_mean(self.comp, payloads[comm.rank], got, shards[0])
        # phase 2: compressed all-gather of the shard means
        q, mean_state = self.comp.encode(acc, self.state["mean"], self.gen)
        buf = q.pack()
        bufs = [torch.empty_like(buf) for _ in range(n)]
        comm.all_gather(bufs, buf)
        out = torch.empty(n, size, dtype=torch.float32, device=x.device)
        for j, b in enumerate(bufs):
            self.comp.decode_into(q.unpack(b), out[j])
        out = out.view(-1)[:d]
        self.state = {"shards": states, "mean": mean_state}

        def own() -> torch.Tensor:
            return torch.cat([self.comp.decode(p).reshape(-1) for p in payloads])[:d].to(x.dtype).reshape(x.shape)

        return out.to(x.dtype).reshape(x.shape), own
