"""Optimizers, wrappers and learning-rate schedules.

Wrappers around any torch optimizer (one convention: the parameters hold the gradient point,
``opt.eval()`` / ``opt.train()`` switch to the evaluation point and back; `wrapper.py`): `GPA`,
`EMANesterov`, `Lookahead`.

Selectable from a config (``{name: gpa, base: {name: adamw, lr: 0.001}, mu_x: 0.9967, mu_y: 0.7}``;
``schedule-free`` is GPA with Schedule-Free weighting, ``mu_y`` its momentum). Plain optimizers:

An optimizer config is ``{name: <registry name>, lr: <float>, **kwargs}``; kwargs are the
keyword arguments of the torch optimizer class and are checked against its signature, so a typo
is an error that lists the valid names.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch

from .adgd import AdGD
from .dadapt import DAdaptAdam, DAdaptSGD
from .dog import DoG, DoWG
from .ema_nesterov import EMANesterov
from .gpa import GPA, GPAReference
from .lookahead import Lookahead
from .muon import MuonWithAdamW
from .polyak import SPS, MoMo
from .prodigy import Prodigy
from .poly_average import PolyAverage
from .stats import GlobalStats, innermost, set_stats_reducer, step_kwargs
from .schedules import SCHEDULES, lr_lambda
from .wrapper import OptimizerWrapper

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adamax": torch.optim.Adamax,
    "adafactor": torch.optim.Adafactor,
    "muon": MuonWithAdamW,  # torch.optim.Muon for 2-D hidden weights + AdamW (option `adamw`) for the rest
    # parameter-free / adaptive step sizes (scalar statistics averaged over workers: stats.py)
    "prodigy": Prodigy,
    "dadapt-sgd": DAdaptSGD,
    "dadapt-adam": DAdaptAdam,
    "dog": DoG,
    "dowg": DoWG,
    "adgd": AdGD,
    "sps": SPS,
    "momo": MoMo,
}

WRAPPERS: dict[str, tuple[type[OptimizerWrapper], dict[str, Any]]] = {
    # name: (class, fixed keyword arguments); a config is {name, base: {optimizer config}, **kwargs}
    "gpa": (GPA, {}),
    "schedule-free": (GPA, {"weighting": "schedule-free", "mu_x": 0.0}),
    "ema-nesterov": (EMANesterov, {}),
    "lookahead": (Lookahead, {}),
    "poly-average": (PolyAverage, {}),
}


def optimizer_kwargs(name: str) -> list[str]:
    """Keyword arguments accepted by the optimizer `name` (besides params)."""
    cls = get_optimizer_class(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params", "named_params")]


def get_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(sorted(OPTIMIZERS))}") from None


def _wrapper_kwargs(name: str) -> list[str]:
    cls, fixed = WRAPPERS[name]
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "optimizer", *fixed)]


DEFAULT_OUTER: dict[str, Any] = {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}  # DiLoCo's outer step


def default_outer() -> dict[str, Any]:
    """A fresh copy of the default outer optimizer config (SGD lr 0.7, Nesterov momentum 0.9)."""
    return dict(DEFAULT_OUTER)


def check_optimizer_config(cfg: dict[str, Any], where: str) -> None:
    """Raise ValueError if `cfg` names an unknown optimizer, unknown keyword or lr <= 0; a wrapper
    ({name: gpa, base: {...}, mu_x: ...}) has its base checked the same way and its own
    hyperparameters checked by building it once on a dummy parameter."""
    choices = ", ".join(sorted([*OPTIMIZERS, *WRAPPERS]))
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ValueError(f"{where}: missing 'name'; valid choices: {choices}")
    if cfg["name"] in WRAPPERS:
        valid = _wrapper_kwargs(cfg["name"])
        bad = sorted(set(cfg) - {"name", "base"} - set(valid))
        if bad:
            raise ValueError(f"{where}: unknown option(s) {bad} for wrapper {cfg['name']!r}; valid: base, {', '.join(valid)}")
        if "base" not in cfg:
            raise ValueError(f"{where}: wrapper {cfg['name']!r} needs 'base', the optimizer it wraps (e.g. base: {{name: adamw, lr: 0.001}})")
        check_optimizer_config(cfg["base"], f"{where}.base")
        try:
            build_optimizer([("w", torch.zeros(2, 2, requires_grad=True))], cfg)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        return
    if cfg["name"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg['name']!r}; valid choices: {choices}")
    valid = optimizer_kwargs(cfg["name"])
    bad = sorted(set(cfg) - {"name"} - set(valid))
    if bad:
        raise ValueError(f"{where}: unknown option(s) {bad} for optimizer {cfg['name']!r}; valid: {', '.join(valid)}")
    lr = cfg.get("lr")
    if lr is None and not issubclass(OPTIMIZERS[cfg["name"]], GlobalStats):  # parameter-free ones default lr
        raise ValueError(f"{where}: 'lr' is required")
    if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or not math.isfinite(lr)):
        raise ValueError(f"{where}.lr must be a finite number > 0, got {lr!r}")
    _check_numbers(cfg, inspect.signature(get_optimizer_class(cfg["name"]).__init__).parameters, where)
    try:  # the optimizer's own checks (betas, ranges), before any training
        build_optimizer([("w", torch.zeros(2, 2, requires_grad=True))], cfg)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


def _check_numbers(cfg: dict[str, Any], signature: Any, where: str) -> None:
    """A keyword whose default is a number must get a number (text such as 'abc' is refused by
    name; numbers written as 3e-4 load as numbers, see `farsync.yamlio`)."""
    for key, value in cfg.items():
        param = signature.get(key)
        if param is None or isinstance(param.default, bool) or not isinstance(param.default, (int, float)):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{key} must be a number, got {value!r}")


def build_optimizer(params: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer (or wrapper around its ``base``) that `cfg` describes, over `params`
    (tensors, or ``model.named_parameters()``: `muon` needs the names to route parameters)."""
    params = list(params)
    if cfg["name"] in WRAPPERS:
        cls, fixed = WRAPPERS[cfg["name"]]
        kwargs = {k: v for k, v in cfg.items() if k not in ("name", "base")}
        return cls(build_optimizer(params, cfg["base"]), **fixed, **kwargs)
    cls = get_optimizer_class(cfg["name"])
    if cls is MuonWithAdamW:
        return cls(params, **{k: v for k, v in cfg.items() if k != "name"})
    if params and isinstance(params[0], tuple):
        params = [p for _, p in params]
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k != "name"}
    return cls(params, **kwargs)


def check_outer_config(cfg: dict[str, Any], where: str) -> None:
    """`check_optimizer_config` for an outer optimizer (DiLoCo's): it steps on a pseudo-gradient,
    so it cannot route parameters by name (muon) or need a mini-batch loss / closure (SPS, MoMo,
    AdGD with same_batch)."""
    check_optimizer_config(cfg, where)
    if uses_muon(cfg):
        raise ValueError(f"{where}: muon routes parameters by name and works as the inner optimizer only")
    needs = config_step_needs(cfg)
    if needs:
        raise ValueError(f"{where}: {cfg['name']!r} needs the mini-batch {' and '.join(needs)}, which an outer step on a pseudo-gradient does not have")


def config_step_needs(cfg: dict[str, Any]) -> tuple[str, ...]:
    """What the optimizer `cfg` describes needs in ``step`` besides gradients (`GlobalStats.step_needs`:
    "loss", "closure"), found by building it on a dummy parameter."""
    return getattr(innermost(build_optimizer([torch.zeros(2, 2, requires_grad=True)], cfg)), "step_needs", ())


def uses_muon(cfg: dict[str, Any]) -> bool:
    """True if `cfg` (or a wrapper's base, recursively) is the `muon` optimizer."""
    return cfg.get("name") == "muon" or (isinstance(cfg.get("base"), dict) and uses_muon(cfg["base"]))
