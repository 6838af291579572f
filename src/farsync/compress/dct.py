"""Chunked 2-D DCT-II and per-chunk top-k, as DeMo uses them (Peng et al., arXiv 2411.19870).

A tensor is viewed as a matrix (rows = first dim, cols = the rest; vectors: one row). Each dim is
cut into chunks of the largest divisor of its size that is <= `chunk` (the size itself if it has no
such divisor but 1... then 1), every (c1 x c2) chunk is transformed with the orthonormal DCT-II,
C = D1 X D2^T, and the top-k coefficients by magnitude of each chunk are kept.
"""

from __future__ import annotations

import math

import torch


def chunk_size(n: int, target: int) -> int:
    """The largest divisor of n that is <= target (n itself when n <= target)."""
    if n <= target:
        return n
    return max(d for d in range(1, target + 1) if n % d == 0)


def dct_matrix(n: int, dtype=torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n): D[k, j] = a_k cos(pi (j + 1/2) k / n)."""
    j = torch.arange(n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)[:, None]
    d = torch.cos(math.pi * (j + 0.5) * k / n) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


class ChunkedDCT:
    """Encode a tensor into per-chunk DCT coefficients (n_chunks, c1*c2) and back."""

    def __init__(self, shape: tuple[int, ...], chunk: int = 64):
        rows = shape[0] if len(shape) > 1 else 1
        cols = math.prod(shape[1:]) if len(shape) > 1 else (shape[0] if shape else 1)
        self.shape, self.rows, self.cols = tuple(shape), rows, cols
        self.c1, self.c2 = chunk_size(rows, chunk), chunk_size(cols, chunk)
        self.d1, self.d2 = dct_matrix(self.c1), dct_matrix(self.c2)

    @property
    def coeffs_per_chunk(self) -> int:
        return self.c1 * self.c2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        m = x.reshape(self.rows // self.c1, self.c1, self.cols // self.c2, self.c2).float()
        c = torch.einsum("ij,ajbk,lk->abil", self.d1.to(m.device), m, self.d2.to(m.device))  # (row chunks, col chunks, c1, c2)
        return c.reshape(-1, self.c1 * self.c2)

    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        c = coeffs.reshape(self.rows // self.c1, self.cols // self.c2, self.c1, self.c2)
        m = torch.einsum("ij,abil,lk->ajbk", self.d1.to(c.device), c, self.d2.to(c.device))
        return m.reshape(self.shape)


def topk_per_chunk(coeffs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of the k largest-magnitude coefficients of each chunk (row)."""
    k = max(1, min(k, coeffs.shape[-1]))
    idx = coeffs.abs().topk(k, dim=-1, sorted=False).indices
    return idx, coeffs.gather(-1, idx)


def scatter_mean(n_chunks: int, per_chunk: int, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """Dense (n_chunks, per_chunk) coefficients; duplicates (several workers) are averaged."""
    out = torch.zeros(n_chunks, per_chunk, dtype=torch.float32, device=val.device)
    return out.scatter_reduce_(-1, idx.long(), val.float(), reduce="mean", include_self=False)
