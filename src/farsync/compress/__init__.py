"""`farsync.compress`: compressors, error feedback, and compressed averaging.

Build one from a config dict::

    {name: int8, block: 64, rounding: stochastic}
    {name: topk, ratio: 0.01, error_feedback: ef}
    {name: int4, block: 64, rotate: 64}          # Hadamard rotation on blocks of 64 first
    {name: int4, block: 64, collective: reduce_scatter}   # ring all-reduce bytes (see collective.py)
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import Compressor, Identity, Payload
from .channel import Channel
from .collective import GatherReducer, MeanReducer, Reducer, ScatterReducer, gathered_mean
from .powersgd import PowerSGD
from .quantize import FP4, FP8, QSGD, Cast, IntQuant, ScaledSign, TernGrad
from .sparsify import RandomK, TopK
from .transforms import EF21, EControl, ErrorFeedback, Rotate

COMPRESSORS: dict[str, tuple[type[Compressor], dict[str, Any]]] = {
    "none": (Identity, {}),
    "bf16": (Cast, {"dtype": "bfloat16"}),
    "fp16": (Cast, {"dtype": "float16"}),
    "int8": (IntQuant, {"bits": 8}),
    "int4": (IntQuant, {"bits": 4}),
    "fp8": (FP8, {}),
    "fp4": (FP4, {}),
    "qsgd": (QSGD, {}),
    "terngrad": (TernGrad, {}),
    "topk": (TopK, {}),
    "randomk": (RandomK, {}),
    "sign": (ScaledSign, {}),
}
ERROR_FEEDBACK = ("none", "ef", "ef21", "econtrol")


POWERSGD_OPTIONS = ("rank", "warm_start", "min_compression_rate", "seed", "error_feedback")
COLLECTIVES = {"all_gather": GatherReducer, "reduce_scatter": ScatterReducer}


def build_reducer(spec: dict[str, Any] | None, shapes: list[tuple[int, ...]], rank: int = 0) -> Reducer:
    """The reducer for ``algorithm.compress``: `build_compressor`'s spec plus ``collective:
    all_gather (default) | reduce_scatter``; or ``{name: powersgd, rank, warm_start,
    min_compression_rate, seed, error_feedback: ef|none}``, which needs the parameters' shapes.
    `rank` seeds the worker's stochastic rounding."""
    if spec is None or spec.get("name") != "powersgd":
        spec = dict(spec or {})
        collective = spec.pop("collective", "all_gather")
        if collective not in COLLECTIVES:
            raise ValueError(f"unknown collective {collective!r}; valid choices: {', '.join(COLLECTIVES)}")
        comp = build_compressor(spec or None)
        return MeanReducer() if comp is None else COLLECTIVES[collective](comp, rank)
    opts = {k: v for k, v in spec.items() if k != "name"}
    bad = sorted(set(opts) - set(POWERSGD_OPTIONS))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for compressor 'powersgd'; valid: {', '.join(POWERSGD_OPTIONS)}")
    ef = opts.pop("error_feedback", "ef")
    if ef not in ("ef", "none"):
        raise ValueError(f"powersgd error_feedback must be 'ef' or 'none', got {ef!r}")
    return PowerSGD(shapes, error_feedback=ef == "ef", **opts)


def build_compressor(spec: dict[str, Any] | None) -> Compressor | None:
    """A compressor from ``{name, **options, error_feedback: none|ef|ef21|econtrol (eta), rotate: block|null}``."""
    if spec is None:
        return None
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; valid choices: {', '.join([*COMPRESSORS, 'powersgd'])}")
    ef = spec.pop("error_feedback", "none")
    eta = spec.pop("eta", None)
    if eta is not None and ef != "econtrol":
        raise ValueError("'eta' is an option of error_feedback: econtrol")
    if ef not in ERROR_FEEDBACK:
        raise ValueError(f"unknown error_feedback {ef!r}; valid choices: {', '.join(ERROR_FEEDBACK)}")
    rotate = spec.pop("rotate", None)
    cls, fixed = COMPRESSORS[name]
    valid = [p for p in inspect.signature(cls).parameters if p not in fixed]
    bad = sorted(set(spec) - set(valid))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for compressor {name!r}; valid: {', '.join(valid + ['error_feedback', 'rotate'])}")
    comp: Compressor = cls(**fixed, **spec)
    if rotate:
        comp = Rotate(comp, block=int(rotate))
    if ef == "ef":
        comp = ErrorFeedback(comp)
    elif ef == "ef21":
        comp = EF21(comp)
    elif ef == "econtrol":
        comp = EControl(comp, eta=0.01 if eta is None else eta)
    return None if type(comp) is Identity else comp


__all__ = [
    "COMPRESSORS", "EF21", "EControl", "FP4", "FP8", "QSGD", "Cast", "Channel", "Compressor", "ErrorFeedback", "GatherReducer", "Identity",
    "IntQuant", "MeanReducer", "Payload", "PowerSGD", "RandomK", "Reducer", "Rotate", "ScaledSign", "ScatterReducer", "TernGrad",
    "TopK", "build_compressor", "build_reducer", "gathered_mean",
]
