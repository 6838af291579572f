"""`decoupled-momentum`: DeMo (Peng, Quesnelle, Kingma, arXiv 2411.19870; public code bloc97/DeMo).

Per worker and parameter tensor, with lr the inner SGD's learning rate (LR schedules apply)::

    theta *= 1 - lr * weight_decay                       # decoupled weight decay
    m      = decay * m + lr * g                          # local momentum, never all-reduced
    C      = DCT(m) on chunks (each dim cut to its largest divisor <= chunk), keep top-k per chunk
    m     -= IDCT(C)                                      # what is sent leaves the momentum
    all-gather C from all workers (values fp32, indices int16/int32, one packed message)
    u      = IDCT(scatter-mean of the gathered C)         # each coefficient averaged over the
                                                          # workers that sent it (as bloc97/DeMo)
    theta -= lr * sign(u)                                 # the inner optimizer: SGD, no momentum

Defaults as the paper: decay 0.999, chunk 64, top-k 32. With ``sign: false`` the last line is
``theta -= lr * u``; with top-k = every coefficient and sign off, m is sent in full and reset each
step, so the update is theta -= lr * (lr * mean_i g_i): SGD with step lr^2 (no momentum survives).

Each step is one round (``comm.begin_sync`` ... ``comm.commit``, `Communicator`): the new momentum
and its coefficients are computed aside, the all-gather runs, the round commits, and only then do
the momentum (minus what was sent), the weight decay and the sign step change anything: the same
operations as the lines above (the weight decay moved after the all-gather: it touches only theta,
which nothing before the sign step reads), so the simulator's runs are bit for bit what they were
(the golden trajectory). A step that does not commit (torchft: a peer failed during it) leaves the
parameters and the momentum untouched (skipped, as DDP skips it). Entries of the all-gather that
carry no work (``comm.gathered_from()``: on torchft a replica that healed at this round's quorum;
elsewhere every worker sends) are dropped before the scatter-mean.

Healing (``cluster.backend: torchft``): the shared state copied into a replica coming back is the
model, the inner optimizer, the step and the LR schedule; the momentum is not (`shared_state`). It
is each worker's own residual - its gradients minus what it has already sent - and a copy of a
peer's would send that peer's residual twice (the peer still holds and sends it). A healing
replica keeps its own: its fresh process's zeros. At the round it heals its gradient was taken on
the state it had before (work that does not count: its entry is dropped, weight 0), so its
momentum stays as it was; it applies the others' update and is bitwise equal to them from there.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..compress.dct import ChunkedDCT, scatter_mean, topk_per_chunk
from .base import CollectiveAlgorithm
from .options import EveryStep


class DeMoOptions(EveryStep):
    decay: float = Field(0.999, ge=0.0, lt=1.0, description="momentum decay")
    topk: int = Field(32, ge=1, description="coefficients kept per DCT chunk")
    chunk: int = Field(64, ge=1, description="target DCT chunk size per dimension")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled weight decay (times lr)")
    sign: bool = Field(True, description="apply sign() to the aggregated update")


class DecoupledMomentum(CollectiveAlgorithm):
    name = "decoupled-momentum"
    summary = "DeMo: local momentum, DCT top-k all-gather, sign update"
    Options = DeMoOptions
    no_compress = "compresses by itself (DCT top-k)"

    NEEDS = "decoupled-momentum needs inner: {name: sgd} without momentum or weight_decay (DeMo keeps its own momentum)"

    @classmethod
    def check_inner(cls, inner):
        if inner.get("name") != "sgd" or inner.get("momentum") or inner.get("weight_decay"):
            raise ValueError(cls.NEEDS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        opt = self.optimizer
        if not isinstance(opt, torch.optim.SGD) or any(g["momentum"] or g["weight_decay"] for g in opt.param_groups):
            raise ValueError(self.NEEDS)
        self.momentum = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.transforms = [ChunkedDCT(tuple(p.shape), self.options.chunk) for p in self.params]

    def _step(self) -> None:
        o = self.options
        self.comm.begin_sync()  # torchft: the quorum; a replica coming back heals here (before lr is read)
        lrs = {p: g["lr"] for g in self.optimizer.param_groups for p in g["params"]}
        parts, layout, kept = [], [], []
        with torch.no_grad():
            for p, m, t in zip(self.params, self.momentum, self.transforms):
                m = m.mul(o.decay)  # the candidate momentum: installed only if this step commits
                if p.grad is not None:
                    m.add_(p.grad.float(), alpha=lrs[p])
                coeffs = t.encode(m)  # (n_chunks, c1*c2)
                idx, val = topk_per_chunk(coeffs, o.topk)
                kept.append(m.sub_(t.decode(scatter_mean(coeffs.shape[0], coeffs.shape[1], idx, val))))
                idx = idx.to(torch.int16 if coeffs.shape[1] <= 32767 else torch.int32)
                parts += [idx.reshape(-1).view(torch.uint8), val.reshape(-1).view(torch.uint8)]
                layout.append((idx.shape, idx.dtype, val.shape))
            buf = torch.cat(parts)  # one message per step
            bufs = [torch.empty_like(buf) for _ in range(self.comm.world_size)]
            self.comm.all_gather(bufs, buf)
            if not self.comm.commit():  # torchft: a peer failed during the round; the step is skipped
                return
            senders = self.comm.gathered_from()  # torchft: not a replica that healed at this quorum
            if self.comm.rank in senders:  # what was sent (and counted) leaves the momentum
                for m, new in zip(self.momentum, kept):
                    m.copy_(new)
            per_worker = [self._unpack(bufs[r], layout) for r in senders]
            for i, (p, t) in enumerate(zip(self.params, self.transforms)):
                if o.weight_decay:
                    p.mul_(1 - lrs[p] * o.weight_decay)
                idx = torch.cat([w[i][0] for w in per_worker], dim=-1)
                val = torch.cat([w[i][1] for w in per_worker], dim=-1)
                n_chunks = idx.shape[0]
                u = t.decode(scatter_mean(n_chunks, t.coeffs_per_chunk, idx, val))
                p.grad = (u.sign() if o.sign else u).to(p.dtype)
        self.optimizer.step()
        self.buffers.broadcast_from_rank0()  # identical replicas: rank 0's buffers, as DDP (replicas.py)

    @staticmethod
    def _unpack(buf: torch.Tensor, layout) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out, off = [], 0
        for idx_shape, idx_dtype, val_shape in layout:
            n_idx = idx_shape.numel() * torch.tensor([], dtype=idx_dtype).element_size()
            idx = buf[off : off + n_idx].clone().view(idx_dtype).reshape(idx_shape)
            off += n_idx
            n_val = val_shape.numel() * 4
            val = buf[off : off + n_val].clone().view(torch.float32).reshape(val_shape)
            off += n_val
            out.append((idx, val))
        return out

    def state_dict(self):
        return {**super().state_dict(), "momentum": [m.clone() for m in self.momentum]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "momentum" in state:  # not in `shared_state`: a healing replica keeps its own
            for m, s in zip(self.momentum, state["momentum"]):
                m.copy_(s)

    def shared_state(self):
        """The model, the inner optimizer and the step, without the momentum: each worker's
        momentum is its own residual (see the module docstring)."""
        state = super().shared_state()
        state["algorithm"] = {k: v for k, v in state["algorithm"].items() if k != "momentum"}
        return state
