"""The run directory's files: one writer at a time, whole records, strict JSON, atomic replaces.

- **Lock.** A process that writes a run directory holds an exclusive ``fcntl.flock`` on
  ``RUN/.farsync-lock`` (released by the kernel when the process dies, however it dies); the file
  says who holds it (pid, host, command, since). A second writer fails at once with `RunDirBusy`
  naming the holder. ``farsync launch`` holds it for its workers (``FARSYNC_LOCK_HELD`` tells rank
  0 so).
- **Ownership.** A new run goes only into a directory that does not exist, is empty, or was made
  by farsync (it holds the lock file) and holds no run yet: ``--out .`` never overwrites a user's
  ``config.yaml``.
- **Records.** ``metrics.jsonl`` gets one whole line per ``write`` (one ``write`` call, then flush):
  a reader skips a partial last line left by a kill; a resumed run rewrites the file from its
  checkpoint (temporary file + rename) before appending.
- **Strict JSON.** Non-finite floats become ``null`` and the record lists their keys under
  ``non_finite``, so strict parsers read every file.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .checkpoint import write_error

LOCK_NAME = ".farsync-lock"
LOCK_ENV = "FARSYNC_LOCK_HELD"  # set by `farsync launch` for its workers: the run directory it has locked


class RunDirBusy(ValueError):
    """Another process writes this run directory (exit code 2: nothing was done)."""


class RunDirLock:
    """An exclusive lock on a run directory, held until `release()` or the process ends."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirBusy(f"{self.path.parent} is in use by {holder}; wait for it to finish or stop it "
                             "(its processes: processes.json)") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, since {info.get('since')})"
    except (OSError, ValueError):
        return "another process"


def lock_run_dir(run_dir: Path) -> RunDirLock | None:
    """Lock `run_dir`, unless the launcher that started this process holds its lock already."""
    if os.environ.get(LOCK_ENV) and Path(os.environ[LOCK_ENV]).resolve() == Path(run_dir).resolve():
        return None
    return RunDirLock(run_dir).acquire()


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse to start a new run where it would overwrite something (see the module docstring)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a directory; choose another --out")
    if not run_dir.is_dir():
        return
    if (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; choose another --out, delete it, or --resume it")
    entries = [p.name for p in run_dir.iterdir()]
    if entries and LOCK_NAME not in entries:
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(f"--out {run_dir} is not empty ({shown}) and was not made by farsync; "
                              "choose a new or empty directory")


def strict(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with non-finite floats (top level or in lists) as None, their keys in ``non_finite``."""
    out, bad = {}, []
    for k, v in record.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
            bad.append(k)
        elif isinstance(v, list) and any(isinstance(x, float) and not math.isfinite(x) for x in v):
            out[k] = [None if isinstance(x, float) and not math.isfinite(x) else x for x in v]
            bad.append(k)
        else:
            out[k] = v
    if bad:
        out["non_finite"] = sorted(set(bad) | set(record.get("non_finite") or []))
    return out


def dumps(obj: Any, **kw) -> str:
    return json.dumps(obj, allow_nan=False, **kw)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename; on failure remove it and raise `RunWriteError`."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(err, path) from None


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    write_text_atomic(path, dumps(strict(obj), indent=2) + "\n")


class MetricsLog:
    """metrics.jsonl: rewritten from `records` (a resumed run's history, via a temporary file),
    then appended one whole line per record and flushed."""

    def __init__(self, path: Path, records: list[dict[str, Any]] | None = None, tracking: Any = None):
        self.path = path
        self.tracking = tracking  # tracking.Tracking: gets a copy of every line (it has the history already)
        self.records: list[dict[str, Any]] = []
        if records:
            write_text_atomic(path, "".join(dumps(strict(r)) + "\n" for r in records))
            self.records = [strict(r) for r in records]
        try:
            self._fh = path.open("ab" if records else "wb", buffering=0)  # unbuffered: one write() per line
        except OSError as err:
            raise write_error(err, path) from None

    def write(self, record: dict[str, Any]) -> None:
        record = strict(record)
        line = (dumps(record) + "\n").encode()
        try:
            written = self._fh.write(line)
            while written < len(line):  # a short write (rare): finish the same line
                written += self._fh.write(line[written:])
        except OSError as err:
            raise write_error(err, self.path) from None
        self.records.append(record)
        if self.tracking is not None:
            self.tracking.write(record)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Close the file and the trackers (they get the run's `summary`)."""
        try:
            self._fh.close()
        except OSError:
            pass
        if self.tracking is not None:
            self.tracking.close(summary)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a partial last line (a kill mid-write) is skipped."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return out
