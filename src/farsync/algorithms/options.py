"""An algorithm's options: its whole ``algorithm`` config section except ``name`` and ``inner``.

Every algorithm declares one pydantic model, ``Options``, built from these parts::

    class StreamingOptions(Periodic, OuterOptimized, Compressible):   # sync_every, outer, compress
        fragments: int = Field(1, ge=1, description="...")                # + its own options

- `AlgorithmOptions`: ``sync_every`` (every algorithm has one; DDP-like algorithms use `EveryStep`,
  which fixes it to 1) and nothing else; unknown keys are errors.
- `OuterOptimized`: ``outer``, the outer optimizer (config dict, default SGD lr 0.7 Nesterov 0.9,
  or a callable params -> optimizer from `farsync.wrap`).
- `Compressible`: ``compress``, a `farsync.compress` config (or a Compressor / Reducer object).
- `OnGraph`: ``topology``, the graph of a decentralized algorithm (in a YAML config it is
  ``cluster.topology``; the loop passes it in).

What an algorithm accepts is read from its model (`takes`), never from flags. One function,
`validate_options`, turns a dict into the model for the YAML config, `farsync.wrap` and the
training loops alike; `foreign_keys` says which keys of a config written for another algorithm
this one drops (the config lists them in a note).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..optim import DEFAULT_OUTER, check_outer_config
from .sync_schedule import QSR, parse_sync_every


class AlgorithmOptions(BaseModel):
    """Base of every algorithm's options. ``sync_every``: inner steps between synchronizations (or
    a QSR rule); what it means is the algorithm's."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    sync_every: int | QSR = Field(
        1, description="H: inner steps between synchronizations, or {rule: qsr, base, alpha} (algorithms/sync_schedule.py)"
    )

    @field_validator("sync_every", mode="before")
    @classmethod
    def _sync_every(cls, v):
        try:
            return parse_sync_every(v)
        except ValidationError as err:  # a bad {rule: qsr, ...}: name its field
            e = err.errors()[0]
            raise ValueError(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})") from None


class EveryStep(AlgorithmOptions):
    """Options of an algorithm that communicates at every inner step: ``sync_every`` is 1."""

    sync_every: Literal[1] = Field(1, description="1: synchronizes every inner step")

    @field_validator("sync_every", mode="before")
    @classmethod
    def _sync_every(cls, v):
        if v != 1 or isinstance(v, bool):
            raise ValueError(f"{ABSENT['sync_every']}; remove 'sync_every' (got {v!r})")
        return v


class Periodic(AlgorithmOptions):
    """Options of an algorithm that synchronizes every ``sync_every`` inner steps (a round)."""


class OuterOptimized(AlgorithmOptions):
    """``outer``: the optimizer stepped on the averaged pseudo-gradient."""

    outer: dict[str, Any] | Callable[..., Any] = Field(
        default_factory=lambda: dict(DEFAULT_OUTER), description="outer optimizer (a config without name updates the default)"
    )

    @field_validator("outer", mode="before")
    @classmethod
    def _outer(cls, v):
        if isinstance(v, dict):
            v = {**DEFAULT_OUTER, **v} if "name" not in v else dict(v)
            check_outer_config(v, "outer")  # e.g. SPS cannot be an outer optimizer
        elif not callable(v):
            raise ValueError(f"outer must be an optimizer config dict or a callable params -> optimizer, got {v!r}")
        return v


class Compressible(AlgorithmOptions):
    """``compress``: the compressor of what is sent (none: exact)."""

    compress: Any = Field(None, description="compressor of what is sent, e.g. {name: int8, block: 64, error_feedback: ef}")

    @field_validator("compress")
    @classmethod
    def _compress(cls, v):
        from ..compress import Compressor, Reducer, build_reducer

        if isinstance(v, dict):
            build_reducer(v, [])  # raises ValueError naming the bad name or option
        elif v is not None and not isinstance(v, (Compressor, Reducer)):
            raise ValueError(f"compress must be a compressor config dict, a Compressor or a Reducer, got {v!r}")
        return v


class OnGraph(AlgorithmOptions):
    """``topology``: a decentralized algorithm's communication graph (none: complete)."""

    topology: Any = Field(None, description="graph: ring, {name: torus, rows: 2}, a farsync.topology object (none: complete)")


# Why an algorithm has no such key: the message when it is given one anyway.
ABSENT = {
    "sync_every": "synchronizes every step",
    "outer": "has no outer optimizer",
    "compress": "does not compress what it sends",
    "topology": "does not use a topology (decentralized algorithms do)",
}
CONFIG_ONLY = ("grad_clip",)  # constructor arguments that are not options (train.grad_clip)


def takes(cls: type, key: str) -> bool:
    """True if algorithm `cls` accepts `key` with a value of its own choosing."""
    if key == "sync_every":
        return not issubclass(cls.Options, EveryStep)
    return key in cls.Options.model_fields


def refusal(cls: type, key: str) -> str:
    """Why algorithm `cls` refuses `key` (its own words for compress, if it has them)."""
    if key == "compress" and getattr(cls, "no_compress", None):
        return f"{cls.name} {cls.no_compress}"
    return f"algorithm {cls.name!r} {ABSENT.get(key, 'has no option ' + repr(key))}"


def validate_options(cls: type, values: dict[str, Any], where: str = "") -> AlgorithmOptions:
    """The algorithm's Options from `values` (its config section without name and inner): the one
    check of the YAML config, `farsync.wrap` and the loops. A key of another algorithm's shape
    (outer, compress, topology, sync_every != 1) is refused with the reason; any other bad value
    raises ValueError naming the key (prefixed by `where`, e.g. ``algorithm.``) and what is valid."""
    for key in ABSENT:
        given = values.get(key)
        if key in values and not takes(cls, key) and given is not None and not (key == "sync_every" and given == 1):
            raise ValueError(f"{refusal(cls, key)}; remove {where + key if where else repr(key)}")
    values = {k: v for k, v in values.items() if not (k in ABSENT and k not in cls.Options.model_fields)}
    if values.get("compress") is not None:
        cls.check_compress(values["compress"])
    try:
        return cls.Options(**values)
    except ValidationError as err:
        raise ValueError("; ".join(_message(e, cls, where) for e in err.errors())) from None


def _message(e: dict, cls: type, where: str) -> str:
    """One pydantic error as a line naming the key: ``algorithm.outer.lr must be ...``."""
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        valid = ", ".join(cls.Options.model_fields) or "(none)"
        return f"unknown key {key!r} for algorithm {cls.name!r} (valid keys: {valid})"
    msg = e["msg"].removeprefix("Value error, ")
    if repr(e.get("input")) not in msg and e["type"] != "value_error":
        msg += f" (got {e.get('input')!r})"
    if not key:
        return msg
    if msg.startswith((key + ".", key + ":")):
        return where + msg
    return f"{where}{key}: {msg}"


def foreign_keys(cls: type, values: dict[str, Any], registry: dict[str, type]) -> list[str]:
    """Keys of `values` that other algorithms of `registry` take and `cls` does not: a config
    written for one algorithm runs with another's name (the config drops them with a note).
    ``compress`` is never foreign: running uncompressed what was asked compressed would mislead."""
    known = {k for other in registry.values() for k in other.Options.model_fields}
    return [k for k in values if k != "compress" and k in known and not takes(cls, k)]


def default_of(registry: dict[str, type], key: str) -> list[Any]:
    """The defaults of `key` in the algorithms of `registry` that take it."""
    out = []
    for other in registry.values():
        field = other.Options.model_fields.get(key)
        if field is not None and takes(other, key):
            out.append(field.get_default(call_default_factory=True))
    return out
