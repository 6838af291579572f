"""``farsync explain ALGO``: an algorithm described from its own code.

Three parts, each read from the code, never written twice:
- the update rule: the algorithm's docstring (every algorithm module gives its math there);
- its options: the ``Options`` pydantic model's fields, with their defaults and descriptions
  (``farsync list ALGO`` and ``farsync list --options ALGO`` print this part alone);
- a one-line config: the ``algorithm:`` section with those defaults, in YAML flow style, ready to
  paste into a config or give to ``--set``. It validates as it stands.
"""

from __future__ import annotations

import inspect
from typing import Any

import yaml

from .algorithms import get_algorithm
from .config import DEFAULT_INNER


def _plain(value: Any) -> Any:
    """A default as YAML can write it (pydantic models and tuples as plain data)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, tuple):
        return list(value)
    return value


PLAIN_SGD = {"name": "sgd", "lr": 0.01}


def inner_for(name: str) -> dict[str, Any]:
    """An inner optimizer `name` accepts: the config default, else plain SGD (DeMo, the gradient
    trackers and primal-dual methods step along their own direction with SGD's lr)."""
    cls = get_algorithm(name)
    for inner in (DEFAULT_INNER, PLAIN_SGD):
        try:
            cls.check_inner(dict(inner))
            return dict(inner)
        except ValueError:
            continue
    raise AssertionError(f"{name} accepts neither {DEFAULT_INNER} nor {PLAIN_SGD}")  # a new check_inner: add its example


def option_lines(name: str) -> list[str]:
    """``KEY  DESCRIPTION (default VALUE)`` for ``inner`` and every option of `name`."""
    cls = get_algorithm(name)
    inner = inner_for(name)
    note = "" if inner == DEFAULT_INNER else f"; this algorithm needs plain SGD, e.g. {yaml_flow(inner)}"
    lines = [f"  {'inner':18s} the inner (local) optimizer (default {yaml_flow(DEFAULT_INNER)}{note})"]
    for key, field in cls.Options.model_fields.items():
        if key == "topology":
            lines.append(f"  {'(cluster.topology)':18s} {field.description}")
            continue
        default = field.get_default(call_default_factory=True)
        lines.append(f"  {key:18s} {field.description or ''} (default {default!r})")
    return lines


def yaml_flow(obj: Any) -> str:
    return yaml.safe_dump(obj, default_flow_style=True, sort_keys=False, width=10_000).strip()


def default_section(name: str) -> dict[str, Any]:
    """The ``algorithm:`` section of `name` with every option at its default (None left out) and an
    inner optimizer it accepts."""
    cls = get_algorithm(name)
    section: dict[str, Any] = {"name": cls.name, "inner": inner_for(name)}
    for key, field in cls.Options.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if key != "topology" and default is not None:
            section[key] = _plain(default)
    return section


def explain(name: str) -> str:
    """What ``farsync explain NAME`` prints."""
    cls = get_algorithm(name)
    rule = inspect.getdoc(cls) or "(no docstring)"
    out = [f"{cls.name}: {cls.summary}", "", "Update rule (the docstring of "
           f"{cls.__module__}.{cls.__qualname__}):", "", *("    " + line if line else "" for line in rule.splitlines()),
           "", "Options (algorithm.*):", *option_lines(name), "", "One-line config (every option at its default):",
           f"  algorithm: {yaml_flow(default_section(name))}"]
    if "topology" in cls.Options.model_fields:
        out.append("  cluster: {topology: ring}          # its graph; default: complete")
    return "\n".join(out) + "\n"
