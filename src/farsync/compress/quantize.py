"""Casts and quantizers (spec: ../shared/specs/compression.md).

- `Cast(dtype)`: bf16 / fp16, 2 bytes per value.
- `IntQuant(bits, block, rounding)`: symmetric integer codes in [-(2^(b-1)-1), 2^(b-1)-1] with a
  float32 absmax scale per block of `block` values; 8 bits -> int8, 4 bits -> two codes per byte.
  Nearest rounding: |x - x_hat| <= scale/2 per value; stochastic rounding is unbiased.
- `FP8(format, block)`: per-block scale mapping the block's absmax to the format's max
  (e4m3: 448, e5m2: 57344), values cast to torch's float8 dtype (1 byte each).
- `FP4(block)`: e2m1 values {0, 0.5, 1, 1.5, 2, 3, 4, 6} x sign, per-block scale, 2 codes per byte.
- `QSGD(levels, bucket)` (Alistarh et al. 2017): per bucket of `bucket` values, its norm (fp32) and
  sign(v) * xi with xi the stochastic rounding of s|v|/||v|| in {0..s} (int8 codes); unbiased.
- `TernGrad()` (Wen et al. 2017): clip at 2.5 std, s = max|v|, codes sign(v) * Bernoulli(|v|/s) in
  {-1, 0, 1} packed 4 per byte, plus s; unbiased for the clipped vector.
- `ScaledSign()`: 1 bit per value plus one scale ||v||_1 / d (biased: use with error feedback).
"""

from __future__ import annotations

import torch

from .base import Compressor, Payload, blocks, pack_bits, scaled_slabs, slabs, stochastic_round, uniform, unpack_bits


class Cast(Compressor):
    name = "cast"
    summable = True  # bf16 / fp16 values sum as they are (like torch's bf16_compress_hook)

    def __init__(self, dtype: str = "bfloat16"):
        if dtype not in ("bfloat16", "float16"):
            raise ValueError(f"cast dtype must be 'bfloat16' or 'float16', got {dtype!r}")
        self.dtype = dtype

    def encode(self, x, state, gen=None):
        return Payload({"x": x.to(getattr(torch, self.dtype))}, {"shape": tuple(x.shape)}), state

    def decode(self, payload):
        return payload.tensors["x"].float().reshape(payload.meta["shape"])

    def decode_into(self, payload, out):
        return out.copy_(payload.tensors["x"].reshape(out.shape))


class IntQuant(Compressor):
    name = "int"

    def __init__(self, bits: int = 8, block: int = 64, rounding: str = "nearest"):
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
        self.bits, self.block, self.rounding = bits, block, rounding

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return self.rounding == "stochastic"

    def encode(self, x, state, gen=None):
        qmax = 2 ** (self.bits - 1) - 1
        b, n = blocks(x, self.block)
        scale = torch.empty(b.shape[0], dtype=torch.float32, device=b.device)
        q = torch.empty(b.shape, dtype=torch.int8, device=b.device)
        for i, j, y in scaled_slabs(b, qmax, scale):  # one slab at a time, read from memory once
            y = stochastic_round(y, gen) if self.rounding == "stochastic" else y.round_()
            q[i:j].copy_(y.clamp_(-qmax, qmax))
        codes = q if self.bits == 8 else pack_bits(q + (qmax + 1), 4)  # 4 bits: 0..15, 2 per byte
        meta = {"shape": tuple(x.shape), "n": n, "n_blocks": b.shape[0]}
        return Payload({"codes": codes, "scale": scale}, meta), state

    def decode(self, payload):
        m = payload.meta
        full = self._decode_blocks(payload, torch.empty(m["n_blocks"], self.block, device=payload.tensors["scale"].device))
        return full.reshape(-1)[: m["n"]].reshape(m["shape"])

    def decode_into(self, payload, out):
        m = payload.meta
        if m["n"] != m["n_blocks"] * self.block or not out.is_contiguous():  # padded: decode, then copy
            return out.copy_(self.decode(payload).reshape(out.shape))
        self._decode_blocks(payload, out.view(m["n_blocks"], self.block))
        return out

    def _decode_blocks(self, payload, out2d):
        """out2d (n_blocks, block) = codes * scale, one slab at a time."""
        codes, scale = payload.tensors["codes"], payload.tensors["scale"]
        blk, half = self.block, 2 ** (self.bits - 1)
        for i, j in slabs(*out2d.shape):
            o = out2d[i:j]
            if self.bits == 8:
                o.copy_(codes[i:j])
            else:
                o.view(-1).copy_(unpack_bits(codes[i * blk // 2 : (j * blk + 1) // 2], 4, (j - i) * blk))
                o.sub_(half)
            o.mul_(scale[i:j, None])
        return out2d


def _check_rounding(rounding: str) -> None:
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")


def round_between(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """lo or hi (lo <= a <= hi), hi with probability (a - lo) / (hi - lo): unbiased rounding."""
    gap = hi - lo
    p = torch.where(gap > 0, (a - lo) / torch.where(gap > 0, gap, torch.ones_like(gap)), torch.zeros_like(a))
    return torch.where(uniform(a.shape, gen, a) < p, hi, lo)


class FP8(Compressor):
    """Stochastic rounding picks one of the two fp8 neighbours of |y| (codes are ordered by
    magnitude within a sign) with probabilities that make it unbiased."""

    name = "fp8"
    FORMATS = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}
    MAX_CODE = {"e4m3": 0x7E, "e5m2": 0x7B}  # largest finite magnitude

    def __init__(self, format: str = "e4m3", block: int = 64, rounding: str = "nearest"):
        if format not in self.FORMATS:
            raise ValueError(f"fp8 format must be one of {sorted(self.FORMATS)}, got {format!r}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        _check_rounding(rounding)
        self.format, self.block, self.rounding = format, block, rounding

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return self.rounding == "stochastic"

    def _stochastic(self, y: torch.Tensor, gen) -> torch.Tensor:
        dtype, _ = self.FORMATS[self.format]
        a = y.abs()
        near = a.to(dtype)
        code = near.view(torch.uint8).to(torch.int16)
        below = near.float() <= a
        lo_code = torch.where(below, code, (code - 1).clamp_(min=0))
        hi_code = torch.where(below, (code + 1).clamp_(max=self.MAX_CODE[self.format]), code)
        as_float = lambda c: c.to(torch.uint8).view(dtype).float()
        mag = round_between(a, as_float(lo_code), as_float(hi_code), gen)
        return (mag * torch.where(y < 0, -1.0, 1.0)).to(dtype)

    def encode(self, x, state, gen=None):
        dtype, fmax = self.FORMATS[self.format]
        b, n = blocks(x, self.block)
        scale = torch.empty(b.shape[0], dtype=torch.float32, device=b.device)
        codes = torch.empty(b.shape, dtype=torch.uint8, device=b.device)
        for i, j, y in scaled_slabs(b, fmax, scale):  # one slab at a time, read from memory once
            codes[i:j].copy_((self._stochastic(y, gen) if self.rounding == "stochastic" else y.to(dtype)).view(torch.uint8))
        meta = {"shape": tuple(x.shape), "n": n}
        return Payload({"codes": codes, "scale": scale}, meta), state

    def decode(self, payload):
        t, m = payload.tensors, payload.meta
        full = self._decode_blocks(payload, torch.empty(t["codes"].shape, device=t["codes"].device))
        return full.reshape(-1)[: m["n"]].reshape(m["shape"])

    def decode_into(self, payload, out):
        codes = payload.tensors["codes"]
        if payload.meta["n"] != codes.numel() or not out.is_contiguous():
            return out.copy_(self.decode(payload).reshape(out.shape))
        self._decode_blocks(payload, out.view(codes.shape))
        return out

    def _decode_blocks(self, payload, out2d):
        dtype, _ = self.FORMATS[self.format]
        codes, scale = payload.tensors["codes"], payload.tensors["scale"]
        for i, j in slabs(*out2d.shape):
            o = out2d[i:j]
            o.copy_(codes[i:j].view(dtype))
            o.mul_(scale[i:j, None])
        return out2d


class FP4(Compressor):
    """fp4 e2m1 with a float32 scale per block: values {0, 0.5, 1, 1.5, 2, 3, 4, 6} x sign, the
    block's absmax mapped to 6; nearest (ties to the lower point) or stochastic (unbiased)
    rounding on the grid; 4-bit codes (sign, 3-bit index), two per byte."""

    name = "fp4"
    GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])

    def __init__(self, block: int = 64, rounding: str = "nearest"):
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        _check_rounding(rounding)
        self.block, self.rounding = block, rounding

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return self.rounding == "stochastic"

    def encode(self, x, state, gen=None):
        b, n = blocks(x, self.block)
        scale = b.abs().amax(1, keepdim=True) / 6.0
        y = b / torch.where(scale > 0, scale, torch.ones_like(scale))
        grid = self.GRID.to(y.device)
        if self.rounding == "stochastic":
            a = y.abs()
            hi = torch.searchsorted(grid, a.contiguous()).clamp_(max=7)  # first grid point >= |y|
            lo = (hi - 1).clamp_(min=0)
            lo = torch.where(grid[hi] == a, hi, lo)
            mag = torch.where(round_between(a, grid[lo], grid[hi], gen) == grid[hi], hi, lo)
        else:
            mag = (y.abs()[..., None] - grid).abs().argmin(-1)  # nearest grid point, 0..7
        codes = mag + 8 * (y < 0)
        meta = {"shape": tuple(x.shape), "n": n, "n_blocks": b.shape[0]}
        return Payload({"codes": pack_bits(codes, 4), "scale": scale.reshape(-1)}, meta), state

    def decode(self, payload):
        t, m = payload.tensors, payload.meta
        codes = unpack_bits(t["codes"], 4, m["n_blocks"] * self.block).long()
        grid = self.GRID.to(codes.device)
        v = grid[codes % 8] * (1 - 2 * (codes >= 8).float())
        x = v.view(m["n_blocks"], self.block) * t["scale"][:, None]
        return x.reshape(-1)[: m["n"]].reshape(m["shape"])


class QSGD(Compressor):
    name = "qsgd"
    unbiased = True

    def __init__(self, levels: int = 15, bucket: int = 512):
        if not 1 <= levels <= 127:
            raise ValueError(f"qsgd levels must be in [1, 127], got {levels}")
        self.levels, self.bucket = levels, bucket

    def encode(self, x, state, gen=None):
        b, n = blocks(x, min(self.bucket, x.numel()))  # a tensor smaller than a bucket is one bucket
        norm = b.norm(dim=1, keepdim=True)
        y = b.abs() / torch.where(norm > 0, norm, torch.ones_like(norm)) * self.levels
        xi = stochastic_round(y, gen).clamp_(0, self.levels)
        codes = (torch.sign(b) * xi).to(torch.int8)
        return Payload({"codes": codes, "norm": norm.reshape(-1)}, {"shape": tuple(x.shape), "n": n}), state

    def decode(self, payload):
        t, m = payload.tensors, payload.meta
        x = t["codes"].float() * t["norm"][:, None] / self.levels
        return x.reshape(-1)[: m["n"]].reshape(m["shape"])


class TernGrad(Compressor):
    name = "terngrad"
    unbiased = True  # for the clipped vector

    def __init__(self, clip_std: float = 2.5):
        self.clip_std = clip_std

    def encode(self, x, state, gen=None):
        v = x.reshape(-1).float()
        c = self.clip_std * v.std() if v.numel() > 1 else v.abs().max()
        v = v.clamp(-c, c)
        s = v.abs().max()
        p = v.abs() / s if s > 0 else torch.zeros_like(v)
        keep = uniform(v.shape, gen, v) < p
        codes = (torch.sign(v) * keep).to(torch.int8) + 1  # {0, 1, 2}
        meta = {"shape": tuple(x.shape), "n": v.numel()}
        return Payload({"codes": pack_bits(codes, 2), "scale": s.reshape(1)}, meta), state

    def decode(self, payload):
        t, m = payload.tensors, payload.meta
        codes = unpack_bits(t["codes"], 2, m["n"]).float() - 1
        return (codes * t["scale"]).reshape(m["shape"])


class ScaledSign(Compressor):
    name = "sign"

    def encode(self, x, state, gen=None):
        v = x.reshape(-1).float()
        scale = v.abs().mean().reshape(1)
        bits = (v >= 0).to(torch.uint8)
        return Payload({"bits": pack_bits(bits, 1), "scale": scale}, {"shape": tuple(x.shape), "n": v.numel()}), state

    def decode(self, payload):
        t, m = payload.tensors, payload.meta
        sign = unpack_bits(t["bits"], 1, m["n"]).float() * 2 - 1
        return (sign * t["scale"]).reshape(m["shape"])
