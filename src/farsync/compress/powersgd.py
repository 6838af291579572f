"""PowerSGD (Vogels, Karimireddy, Jaggi 2019), with the semantics of PyTorch's DDP hook
(`torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook`), which the tests use as an oracle.

The averaged buffer is split into the parameters' tensors; each is viewed as a matrix
M (shape[0] x rest) and compressed when (rows + cols) * r * min_compression_rate < rows * cols,
with r = min(rows, cols, rank); the others are all-reduced as they are. With error feedback
(e = input - approximation, kept per worker) the step is::

    M += e                                      # error feedback
    Q  = orthonormalize(Q_prev) (warm start) or orthonormalize(randn) (first step / no warm start)
    P  = M Q;  all-reduce(sum) P;  P = orthonormalize(P)
    Q  = M^T P;  all-reduce Q / n
    M_hat = P Q^T;   e = M - M_hat               (uncompressed tensors: e = local - mean, as the hook)

Bytes per sync: r (rows + cols) floats per compressed matrix plus the uncompressed tensors, in
three all-reduces. Orthonormalization: Gram-Schmidt for r <= 2, QR otherwise (as the hook).
The first Q comes from ``torch.manual_seed(numpy.random.RandomState(seed).randint(1e9))``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..comm import Communicator
from .collective import Reducer


def orthonormalize(m: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Orthonormal columns of a batch of matrices (b, n, r), in place."""
    r = m.shape[2]
    if r <= 2:
        for i in range(r):
            col = m[:, :, i : i + 1]
            col /= torch.norm(col, dim=1, keepdim=True) + eps
            if i + 1 < r:
                rest = m[:, :, i + 1 :]
                rest -= torch.sum(col * rest, dim=1, keepdim=True) * col
    else:
        m.copy_(torch.linalg.qr(m).Q)
    return m


class PowerSGD(Reducer):
    """Low-rank averaging of a flat buffer laid out as `shapes` (one instance per worker)."""

    def __init__(self, shapes: list[tuple[int, ...]], rank: int = 4, warm_start: bool = True,
                 error_feedback: bool = True, min_compression_rate: float = 2.0, seed: int = 0):
        if rank < 1:
            raise ValueError(f"powersgd rank must be >= 1, got {rank}")
        self.shapes, self.rank = [tuple(s) for s in shapes], rank
        self.warm_start, self.error_feedback = warm_start, error_feedback
        self.min_compression_rate = min_compression_rate
        self.rng = np.random.RandomState(seed)
        self.error: torch.Tensor | None = None
        self.qs: list[torch.Tensor] | None = None
        sizes = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.plan = []  # (index, rows, cols, r) of the matrices to compress, grouped by shape like the hook
        by_shape: dict[tuple[int, int], list[int]] = {}
        self.uncompressed = []
        for i, s in enumerate(self.shapes):
            rows = s[0] if s else 1
            cols = sizes[i] // rows
            r = min(rows, cols, rank)
            if (rows + cols) * r * min_compression_rate < rows * cols:
                by_shape.setdefault((rows, cols), []).append(i)
            else:
                self.uncompressed.append(i)
        for (rows, cols), idxs in by_shape.items():
            self.plan += [(i, rows, cols, min(rows, cols, rank)) for i in idxs]

    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, cached = self.rng.get_state()
        rng = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached}
        return {"error": self.error, "qs": self.qs, "rng": rng}  # tensors and numbers only (weights_only loads)

    def load_state_dict(self, state: dict) -> None:
        self.error, self.qs = state["error"], state["qs"]
        r = state["rng"]
        self.rng.set_state(("MT19937", r["keys"].numpy().astype(np.uint32), r["pos"], r["has_gauss"], r["cached"]))

    def _view(self, flat: torch.Tensor, i: int) -> torch.Tensor:
        return flat[self.offsets[i] : self.offsets[i + 1]]

    def reduce(self, comm: Communicator, x: torch.Tensor) -> torch.Tensor:
        """Return the PowerSGD average of `x` (a flat buffer) over the workers."""
        n = comm.world_size
        m_flat = x.clone()
        if self.error_feedback:
            if self.error is None:
                self.error = torch.zeros_like(m_flat)
            m_flat += self.error
        local = m_flat.clone()
        # uncompressed tensors: plain mean
        if self.uncompressed:
            unc = torch.cat([self._view(m_flat, i) for i in self.uncompressed])
            comm.all_reduce(unc, op="sum")
            unc /= n
            off = 0
            for i in self.uncompressed:
                v = self._view(m_flat, i)
                v.copy_(unc[off : off + v.numel()])
                off += v.numel()
        if self.plan:
            mats = [self._view(m_flat, i).view(1, rows, cols) for i, rows, cols, _ in self.plan]
            if self.qs is None or not self.warm_start:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.rng.randint(1_000_000_000))
                    qs = [orthonormalize(torch.randn(1, cols, r, dtype=x.dtype).to(x.device)) for _, _, cols, r in self.plan]
            else:
                qs = [orthonormalize(q.clone()) for q in self.qs]
            p_flat = torch.cat([torch.bmm(m, q).reshape(-1) for m, q in zip(mats, qs)])
            comm.all_reduce(p_flat, op="sum")
            ps, off = [], 0
            for _, rows, _, r in self.plan:
                ps.append(orthonormalize(p_flat[off : off + rows * r].view(1, rows, r).clone()))
                off += rows * r
            q_flat = torch.cat([torch.bmm(m.transpose(1, 2), p).reshape(-1) for m, p in zip(mats, ps)])
            comm.all_reduce(q_flat, op="sum")
            q_flat /= n
            self.qs, off = [], 0
            for _, _, cols, r in self.plan:
                self.qs.append(q_flat[off : off + cols * r].view(1, cols, r).clone())
                off += cols * r
            for m, p, q in zip(mats, ps, self.qs):
                m.copy_(torch.bmm(p, q.transpose(1, 2)))
        if self.error_feedback:
            self.error = local - m_flat
        return m_flat
