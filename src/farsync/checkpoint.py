"""Checkpoints: one file per checkpoint, written by rank 0, with every worker's state.

``RUN_DIR/checkpoints/step-00000040.pt`` holds ``{"format", "config", "step", "workers",
"metrics", "transfers"}``; ``workers[r]`` is rank r's model, algorithm state (inner and outer
optimizer, global copy, ...), LR scheduler, data sampler position, torch RNG state and
communication counters; ``transfers`` (simulator) the communication calls issued so far, so that
a resumed run's ``transfers.csv`` is complete. Beside it, ``step-00000040.pt.sha256`` holds the
file's SHA-256, written before the checkpoint is renamed into place.

With ``train.checkpoint_format: sharded`` (torch backend) ``workers`` is replaced by ``shards``
(a directory of ``torch.distributed.checkpoint`` files that every process wrote its own part of)
and ``manifest`` (their SHA-256): `checkpoint_shards`.

Writing: temporary file, fsync, checksum, rename (atomic on POSIX); the last `KEEP` are kept; a
failed write (e.g. a full disk) removes its temporary files and raises `RunWriteError` naming the
file. Reading: ``torch.load(weights_only=True)`` (no arbitrary code) after the checksum is
verified; `load_latest` falls back to the newest intact checkpoint, with a warning naming the
ones it skipped and why.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
KEEP = 2


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which file and why."""


class RunWriteError(RuntimeError):
    """A file of the run directory could not be written (full disk, I/O error): one clear line."""


def write_error(err: OSError, path: Path) -> RunWriteError:
    what = (err.strerror or str(err)).lower() if isinstance(err, OSError) else str(err)
    return RunWriteError(f"{what} while writing {path}")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    return sorted(d.glob("step-*.pt")) if d.is_dir() else []


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(run_dir: str | Path, payload: dict[str, Any]) -> Path:
    d = checkpoint_dir(run_dir)
    path = d / f"step-{payload['step']:08d}.pt"
    tmp, tmp_sum = path.with_suffix(".pt.tmp"), checksum_path(path).with_suffix(".sha256.tmp")
    target = path
    try:
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"format": FORMAT, **payload}, buf)  # in memory first: a full disk is then a plain OSError
        data = buf.getbuffer()
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        target = checksum_path(path)
        tmp_sum.write_text(hashlib.sha256(data).hexdigest() + "\n")
        os.replace(tmp_sum, checksum_path(path))
        target = path
        os.replace(tmp, path)
    except OSError as err:
        for leftover in (tmp, tmp_sum):
            leftover.unlink(missing_ok=True)
        raise write_error(err, target) from None
    for old in list_checkpoints(run_dir)[:-KEEP]:
        old.unlink()
        checksum_path(old).unlink(missing_ok=True)
        shutil.rmtree(old.with_suffix(".dcp"), ignore_errors=True)  # a sharded checkpoint's shards
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint after verifying its checksum (CheckpointError says what is wrong)."""
    path = Path(path)
    sidecar = checksum_path(path)
    if sidecar.is_file():
        want = sidecar.read_text().strip()
        if sha256_file(path) != want:
            raise CheckpointError(f"checkpoint {path} is corrupted (its SHA-256 differs from {sidecar.name})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a farsync checkpoint of format {FORMAT}")
    if "shards" in ckpt:  # train.checkpoint_format: sharded - the workers' states are in a DCP directory
        from .checkpoint_shards import verify

        verify(path, ckpt)
        ckpt["shards_path"] = str(path.parent / ckpt["shards"])  # in memory only: where the loop reads them
    return ckpt


def load_latest(run_dir: str | Path) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest intact checkpoint of `run_dir`: (path, checkpoint, warnings about newer ones
    that were skipped). CheckpointError when there is none, or none is intact."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)} to resume from")
    skipped = []
    for path in reversed(found):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:
            skipped.append(str(err))
            continue
        warnings = [f"warning: {msg}; resuming from the previous intact checkpoint {path}" for msg in skipped]
        return path, ckpt, warnings
    raise CheckpointError("no intact checkpoint to resume from: " + "; ".join(skipped))


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
