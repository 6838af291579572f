"""Progress of a run: a live bar on a terminal, plain lines at a steady interval elsewhere.

On a terminal (stderr is a TTY) a rich progress bar shows step, ETA, losses and bytes. When stderr
is not a terminal (batch schedulers, nohup, ``make demo | tee``) a plain line is printed at most
every `interval` seconds (``FARSYNC_PROGRESS_EVERY``, default 30 s), and always at the last step::

    [demo-diloco] step 120/1000 (12%)  train loss 2.3456  eval loss 2.4011  1,234 tokens/s  sim 12.3 s  ETA 3m 05s

`SimWatch` does the same for ``farsync.simulate``, whose loop is the user's own (no total is
known): while the call runs, a line every `interval` seconds, the first after one interval, so a
short call prints nothing::

    [simulate] 1,024 workers  steps 37-38 (2.1 steps/s)  sim clock 4.512 s  sent 1.2 GB  running 30s
"""

from __future__ import annotations

import os
import sys
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .units import format_bytes, format_duration, format_loss

INTERVAL_ENV = "FARSYNC_PROGRESS_EVERY"


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "30")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds >= 0, got {raw!r}") from None
    if not value >= 0:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value


class ProgressBar:
    def __init__(self, total: int, enabled: bool = True, label: str = "train", interval: float | None = None, start: int = 0):
        self.console = Console(file=sys.stderr)
        self.total, self.label, self.start = total, label, start  # start: steps done before (a resumed run)
        self.enabled = enabled
        self.plain = enabled and not self.console.is_terminal
        self.interval = _interval() if interval is None else interval
        self._progress = None
        self._last_print: float | None = None
        self._t0 = time.perf_counter()
        if enabled and not self.plain:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(label, total=total, info="")

    def __enter__(self):
        self._t0 = time.perf_counter()
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, record: dict) -> None:
        if self.plain:
            self._plain_line(step, record)
        if self._progress is None:
            return
        info = f"loss {format_loss(record['train_loss'])}"
        if "eval_loss" in record:
            info += f"  eval {format_loss(record['eval_loss'])}"
        info += f"  sent {format_bytes(record['bytes_sent'])}"
        self._progress.update(self._task, completed=step, info=info)

    def _plain_line(self, step: int, record: dict) -> None:
        now = time.perf_counter()
        if not (self._last_print is None or now - self._last_print >= self.interval or step >= self.total):
            return
        self._last_print = now
        rate = (step - self.start) / max(now - self._t0, 1e-9)  # steps per second since this process started
        tokens_per_step = record.get("tokens", 0) / step if step else 0
        line = f"[{self.label}] step {step}/{self.total} ({100 * step / self.total:.0f}%)  train loss {format_loss(record['train_loss'])}"
        if "eval_loss" in record:
            line += f"  eval loss {format_loss(record['eval_loss'])}"
        line += f"  {rate * tokens_per_step:,.0f} tokens/s"
        if "sim_time_s" in record:
            line += f"  sim {record['sim_time_s']:.4g} s"
        line += f"  ETA {format_duration((self.total - step) / rate) if rate > 0 else '?'}"
        print(line, file=sys.stderr, flush=True)


class SimWatch:
    """Context: while a simulated cluster runs, print a progress line on stderr every `interval`
    seconds (default ``FARSYNC_PROGRESS_EVERY``, 30 s). Reads the cluster's per-worker step counts
    and counters without taking its lock (a line may be a step behind)."""

    def __init__(self, cluster, enabled: bool = True, interval: float | None = None, label: str = "simulate"):
        self.cluster, self.enabled, self.label = cluster, enabled, label
        self.interval = _interval() if interval is None else interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.enabled:
            self._t0 = time.perf_counter()
            self._thread = threading.Thread(target=self._watch, daemon=True, name="sim-progress")
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(max(self.interval, 0.05)):
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        c = self.cluster
        steps = list(c.steps_done)
        stats = list(c.stats)
        elapsed = time.perf_counter() - self._t0
        lo, hi = min(steps), max(steps)
        done = f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
        return (f"[{self.label}] {c.world_size:,} workers  steps {done} ({lo / max(elapsed, 1e-9):.3g} steps/s)  "
                f"sim clock {max(s.clock_s for s in stats):.4g} s  sent {format_bytes(sum(s.bytes_sent for s in stats))}  "
                f"running {format_duration(elapsed)}")
