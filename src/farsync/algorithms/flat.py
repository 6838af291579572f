"""Flat buffers: a list of tensors as one contiguous message on the wire, and back."""

from __future__ import annotations

import torch


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors (all of one dtype) into one flat buffer - one message on the wire."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"parameters of several dtypes ({sorted(map(str, dtypes))}) are not supported")
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy consecutive slices of `flat` into `tensors` (inverse of `flatten`)."""
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def copy_into(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """dst[i] <- src[i] for every i, outside autograd."""
    with torch.no_grad():
        for d, s in zip(dst, src):
            d.copy_(s)
