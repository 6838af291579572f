"""Sharded checkpoints (``train.checkpoint_format: sharded``, torch backend): every process writes
its own worker's state with ``torch.distributed.checkpoint`` (DCP); nothing is gathered to rank 0.

    RUN_DIR/checkpoints/step-00000040.dcp/     DCP: __R_0.distcp per process, .metadata
    RUN_DIR/checkpoints/step-00000040.pt       rank 0: config, step, metrics, "shards" and the
                                               SHA-256 of every file of the .dcp directory
    RUN_DIR/checkpoints/step-00000040.pt.sha256

Worker g's state (model, algorithm, LR scheduler, sampler, RNG, counters: the dict the loop
builds) is stored under keys ``w{g}/...``: each tensor as a DCP tensor item ``w{g}/t{i}``, and the
rest of the nested structure, with ``{"__tensor__": i}`` in place of each tensor, as one bytes item
``w{g}/structure``. In a replica group (``cluster.group_size``) only member 0 writes (the members
hold one state); in a sharded group (``cluster.group_shard``) every member j writes its own shards
as worker ``{g}m{j}``, resumable on the same layout only.

Integrity is that of the full format: the ``.pt`` file is written last and renamed into place
(`checkpoint.save_checkpoint`), so a checkpoint exists only once every shard is on disk and
checksummed; `verify` checks the shards' checksums on load (a corrupted shard makes
`checkpoint.load_latest` fall back to the previous intact checkpoint). Reading needs no process
group: each worker loads only its own keys, on any layout - the torch backend with any group
size, or the simulator (a resumed run may move between them).
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from .checkpoint import CheckpointError, sha256_file


def shard_dir(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step-{step:08d}.dcp"


def _split(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj.detach().cpu().contiguous())
        return {"__tensor__": len(tensors) - 1}
    if isinstance(obj, dict):
        return {k: _split(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_split(v, tensors) for v in obj)
    return obj


def _join(obj: Any, tensors: dict[int, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if obj.keys() == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_join(v, tensors) for v in obj)
    return obj


def save_shards(path: Path, worker: int | str | None, state: dict[str, Any]) -> None:
    """Collective on the torch backend (every process calls it): write `state` as worker
    `worker`'s keys (None: this process writes nothing, e.g. a replica group's member j > 0; a
    sharded group's member writes its own part as worker ``{g}m{j}``)."""
    items: dict[str, Any] = {}
    if worker is not None:
        tensors: list[torch.Tensor] = []
        structure = _split(state, tensors)
        buf = io.BytesIO()
        torch.save(structure, buf)
        buf.seek(0)
        items = {f"w{worker}/t{i}": t for i, t in enumerate(tensors)}
        items[f"w{worker}/structure"] = buf
    with _one_process_quietly():
        dcp.save(items, checkpoint_id=str(path), no_dist=not dist.is_initialized())


def load_shard(path: str | Path, worker: int | str) -> dict[str, Any]:
    """Worker `worker`'s state from the DCP directory `path` (on any process layout). On the torch
    backend every process calls it (DCP's load is collective)."""
    meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    prefix = f"w{worker}/"
    if prefix + "structure" not in meta:
        raise CheckpointError(f"{path} holds no state of worker {worker} (cluster.workers changed, or "
                              "cluster.group_shard or the group size of a sharded group?)")
    items: dict[str, Any] = {prefix + "structure": io.BytesIO()}
    for key, m in meta.items():
        if key.startswith(prefix + "t"):
            items[key] = torch.empty(m.size, dtype=m.properties.dtype)
    with _one_process_quietly():
        dcp.load(items, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    blob = items.pop(prefix + "structure")
    blob.seek(0)
    structure = torch.load(blob, weights_only=True)
    return _join(structure, {int(k[len(prefix) + 1:]): v for k, v in items.items()})


@contextmanager
def _one_process_quietly():
    """DCP warns that it assumes one process when torch.distributed is not initialized (the
    simulator): that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def manifest(path: Path) -> dict[str, str]:
    """SHA-256 of every file of the DCP directory (written into the checkpoint's .pt)."""
    return {f.name: sha256_file(f) for f in sorted(Path(path).iterdir()) if f.is_file()}


def verify(ckpt_file: Path, ckpt: dict[str, Any]) -> None:
    """Check the shards of a sharded checkpoint against its manifest (CheckpointError if not)."""
    d = Path(ckpt_file).parent / ckpt["shards"]
    for name, want in ckpt["manifest"].items():
        f = d / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {ckpt_file}: shard {f} is missing")
        if sha256_file(f) != want:
            raise CheckpointError(f"checkpoint {ckpt_file}: shard {f} is corrupted (its SHA-256 differs from the manifest)")
