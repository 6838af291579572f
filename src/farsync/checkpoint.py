"""Checkpoints: one file per checkpoint, written by rank 0, with every worker's state.

``RUN_DIR/checkpoints/step-00000040.pt`` holds ``{"format", "config", "step", "workers",
"metrics"}``; ``workers[r]`` is rank r's model, algorithm state (inner and outer optimizer,
global copy, ...), LR scheduler, data sampler position, torch RNG state and communication
counters. Files are written to a temporary name and renamed (atomic on POSIX), the last
`KEEP` are kept, and they are read with ``torch.load(weights_only=True)`` (no arbitrary code).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
KEEP = 2


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which file and why."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    return sorted(d.glob("step-*.pt")) if d.is_dir() else []


def save_checkpoint(run_dir: str | Path, payload: dict[str, Any]) -> Path:
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step-{payload['step']:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-KEEP]:
        old.unlink()
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        older = [p for p in list_checkpoints(path.parent.parent) if p != path]
        hint = f"; the previous checkpoint {older[-1]} is intact: delete {path} to resume from it" if older else ""
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated ({type(exc).__name__}: {exc}){hint}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a farsync checkpoint of format {FORMAT}")
    return ckpt


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys
