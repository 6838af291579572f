"""A live progress bar (step, ETA, loss, bytes) that stays quiet when output is not a terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .units import format_bytes


class ProgressBar:
    def __init__(self, total: int, enabled: bool = True, label: str = "train"):
        self.console = Console(file=sys.stderr)
        self.enabled = enabled and self.console.is_terminal
        self._progress = None
        if self.enabled:
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
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, record: dict) -> None:
        if self._progress is None:
            return
        info = f"loss {record['train_loss']:.4f}"
        if "eval_loss" in record:
            info += f"  eval {record['eval_loss']:.4f}"
        info += f"  sent {format_bytes(record['bytes_sent'])}"
        self._progress.update(self._task, completed=step, info=info)
