"""Task registry. Built-in tasks register here; `get_task` also accepts ``"pkg.module:Class"``."""

from __future__ import annotations

import importlib

from .base import BatchSampler, Task, TaskParams
from .classification import LogReg
from .quadratic import Quadratic
from .shakespeare import DataMissingError, ShakespeareGPT

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a `Task` subclass available by its `name`."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task expects a Task subclass, got {cls!r}")
    TASKS[cls.name] = cls
    return cls


for _cls in (ShakespeareGPT, LogReg, Quadratic):
    register_task(_cls)


def get_task(name: str) -> type[Task]:
    if name in TASKS:
        return TASKS[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import task {name!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ValueError(f"{name!r} is not a farsync Task subclass")
        return cls
    raise ValueError(f"unknown task {name!r}; valid choices: {', '.join(sorted(TASKS))} (or 'package.module:TaskClass')")


__all__ = ["BatchSampler", "DataMissingError", "Task", "TaskParams", "TASKS", "get_task", "register_task"]
