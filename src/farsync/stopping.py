"""Stopping a run on a signal: preemption (SIGTERM), Ctrl-C (SIGINT), a closed terminal (SIGHUP).

The first signal only asks: `STOP` records it, and every worker reports it at the next logging
step (the control-plane gather that all ranks share), so all of them stop after the same step;
there the run writes a checkpoint (when ``train.checkpoint_every`` > 0), its metrics and its
summary (``failed: terminated by SIGTERM at step N``; SIGINT: ``failed: interrupted at step
N``) and exits with 128 + the signal number (143, 130, 129). ``farsync run --resume`` then goes on
exactly. A second signal stops at once (the simulator's workers at their next step or call),
still with metrics and summary. Algorithms with a parameter server stop at once on the first.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Terminated(BaseException):
    """The run was stopped by `signum` (raised on every rank, or in the main thread)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """The first signal received, if any (read by the training loops at each logging step)."""

    def __init__(self):
        self.signum: int | None = None


STOP = StopRequest()


def stop_status(signum: int, step: int | str) -> str:
    if signum == signal.SIGINT:
        return f"failed: interrupted at step {step}"
    return f"failed: terminated by {signal.Signals(signum).name} at step {step}"


def exit_code(exc: BaseException) -> int | None:
    if isinstance(exc, Terminated):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return None


@contextmanager
def stop_on_signals(graceful: bool = True) -> Iterator[StopRequest]:
    """Install the handlers for the duration of a run (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    STOP.signum = None

    def handler(signum, frame):
        if graceful and STOP.signum is None:
            STOP.signum = signum
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    previous: dict[int, Callable] = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield STOP
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        STOP.signum = None
