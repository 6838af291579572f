"""The interface every distributed training algorithm implements, and its collective base.

An `Algorithm` wraps one worker's model and inner optimizer and a `Communicator`. It is used in an
ordinary training loop::

    loss.backward()
    algo.step()        # one inner step: counts compute, communicates when due, updates params
    algo.zero_grad()

and knows nothing about the backend. ``eval_params()`` temporarily puts the evaluation point
(e.g. DiLoCo's global parameters) into the model; every rank enters it at an evaluation step.

Three shapes, three base classes, each with what it needs and nothing else:

- `CollectiveAlgorithm` (here): SPMD; every worker takes part in each all-reduce. Rounds of
  ``sync_every`` steps, the reducer of ``compress`` (`farsync.compress`). DDP, Local SGD, DiLoCo,
  Streaming / eager / delayed DiLoCo, DeMo.
- `Decentralized` (gossip.py): messages to graph neighbours only.
- `ParameterServerAlgorithm` (server.py): rank 0 a server, ranks 1..n workers, each at its own pace.

What an algorithm accepts is its ``Options`` model (options.py); its buffers are in
``state_dict`` (the conformance suite checks both for every registered algorithm).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from ..comm import Communicator
from ..comm.base import local_tensor
from ..comm.timing import spans_of
from ..compress import Compressor, GatherReducer, MeanReducer, Reducer, build_reducer
from ..optim import OptimizerWrapper, build_optimizer, set_stats_reducer, step_kwargs
from ..optim.stats import GlobalStats, innermost
from .flat import flatten, unflatten_into
from .options import AlgorithmOptions, Compressible, EveryStep, validate_options
from .replicas import Buffers
from .sync_schedule import RoundClock

OuterSpec = dict[str, Any] | Callable[[list[torch.Tensor]], torch.optim.Optimizer]


class DDPOptions(EveryStep, Compressible):
    """sync_every is 1; ``compress`` compresses the averaged gradients."""


class Algorithm:
    """Root of every algorithm: the loop API (`step`, `zero_grad`, `eval_params`, `log_metrics`),
    options, state. Subclasses implement `_step` and may override evaluation and state."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type[AlgorithmOptions]] = EveryStep
    no_compress: ClassVar[str | None] = None  # why ``compress`` is refused, in the algorithm's words
    checkpointable: ClassVar[bool] = True  # False: refused by declaration (train.checkpoint_every)
    one_worker_is_inner: ClassVar[bool] = False  # with one worker it is its inner optimizer, bit for bit (tested)
    grad_scaler_ok: ClassVar[bool] = False  # its only use of .grad is the inner optimizer's step: fp16 loss scaling works
    timing_dependent: ClassVar[str | None] = None  # why its trajectory depends on timing (refused by `farsync retime`)
    forward_only: ClassVar[bool] = False  # True: the loop runs no backward; step() gets the loss and a no-grad closure on the batch

    def __init_subclass__(cls, **kwargs):
        """An algorithm without a class docstring shows its module's (the update rule, the paper,
        the deviations), so ``help(farsync.DiLoCo)`` gives the rule: one text, in one place."""
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("__doc__"):
            cls.__doc__ = sys.modules[cls.__module__].__doc__
        if not (isinstance(cls.Options, type) and issubclass(cls.Options, AlgorithmOptions)):
            raise TypeError(f"{cls.__name__}.Options must subclass farsync.algorithms.options.AlgorithmOptions "
                            f"(built from its parts: EveryStep or Periodic, OuterOptimized, Compressible, OnGraph)")

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        comm: Communicator,
        options: BaseModel | dict | None = None,
        *,
        grad_clip: float | None = None,
        **fields: Any,
    ):
        """`options`: the algorithm's Options (or a dict of them); keyword `fields` (sync_every=...,
        outer=..., compress=..., topology=..., own options) are merged into it."""
        if isinstance(options, self.Options) and not fields:
            self.options = options
        else:
            given = options.model_dump() if isinstance(options, BaseModel) else dict(options or {})
            self.options = validate_options(type(self), {**given, **fields})
        self.model = model
        self.optimizer = optimizer
        self.comm = comm
        self.sync_every = self.options.sync_every
        self.grad_clip = grad_clip
        self.trainable = [p for p in model.parameters() if p.requires_grad]  # what the inner optimizer steps
        with torch.no_grad():  # a sharded parameter (FSDP2 in a replica group): the algorithm works on its local shard
            self.params = [local_tensor(p) for p in self.trainable]
        self.buffers = Buffers(model, comm)  # BatchNorm statistics etc.: the policy in replicas.py
        self.local_step = 0  # inner steps taken by this worker
        self._loss: torch.Tensor | None = None
        self._closure: Callable[[], torch.Tensor] | None = None
        self.grad_scaler: torch.amp.GradScaler | None = None  # fp16 (`use_grad_scaler`)
        self.skipped_steps = 0  # fp16: inner steps skipped on an inf/NaN gradient
        comm.register_state(self.shared_state, self.load_shared_state)  # churn / fault tolerance: what a returning worker copies

    # ------------------------------------------------------------------ checks (before training)
    @classmethod
    def check_inner(cls, inner: dict[str, Any]) -> None:
        """Raise ValueError if the inner optimizer config cannot work with this algorithm (the YAML
        path; `wrap` checks the built optimizer in ``__init__``)."""

    @classmethod
    def check_compress(cls, compress: Any) -> None:
        """Raise ValueError if this (given, non-None) ``compress`` cannot work with this algorithm."""

    @classmethod
    def check_model(cls, model: nn.Module, options: BaseModel) -> None:
        """Raise ValueError if the options cannot work on `model` (e.g. more fragments than
        blocks); the runner calls it on a freshly built model before it writes anything."""

    @classmethod
    def declared_calls(cls, model: nn.Module, steps: int, degree: int, options: BaseModel) -> list[tuple[str, int]] | None:
        """The data-plane calls one worker makes in `steps` inner steps, as (kind, payload bytes)
        for `comm.base.wire_bytes` (``degree``: its neighbours, decentralized algorithms), so
        that the cost model prices them; the conformance suite checks the measured bytes against
        it. None where it is not declared (compressed, buffers, timing-dependent rounds)."""
        return None

    @staticmethod
    def _plain_payload(model: nn.Module, options: BaseModel) -> int | None:
        """Bytes of the flat parameters when nothing else travels (no compression, no buffers)."""
        if getattr(options, "compress", None) is not None or any(b.is_floating_point() for b in model.buffers()):
            return None
        return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ loop API
    def step(self, loss: torch.Tensor | None = None, closure: Callable[[], torch.Tensor] | None = None) -> None:
        """One inner step (call after ``loss.backward()``). `loss` (the mini-batch loss) and
        `closure` (recomputes it and its gradients on the same batch at the current parameters)
        reach inner optimizers that need them (SPS, MoMo; AdGD with ``same_batch``)."""
        self.comm.compute()
        self._loss, self._closure = loss, closure
        self._step()
        self.local_step += 1
        self.comm.end_step(self.local_step)

    @property
    def initial_batches(self) -> int:
        """Mini-batches whose mean gradient the first step should get (the training loop
        accumulates them before the first ``step()``; DoCoM-SGT's large initial batch b0)."""
        return 1

    def use_grad_scaler(self, scaler: torch.amp.GradScaler) -> None:
        """fp16 loss scaling (`farsync.microbatch`): gradients arrive multiplied by the scale s
        (``scaler.scale(loss).backward()``); the inner optimizer step unscales them (after DDP's
        all-reduce), clips, skips the step on inf/NaN and updates s. Its state is in ``state_dict``."""
        if not self.grad_scaler_ok:
            from . import ALGORITHMS

            ok = ", ".join(sorted(n for n, c in ALGORITHMS.items() if c.grad_scaler_ok))
            raise ValueError(f"{self.name} uses the gradients beyond its inner optimizer's step, so fp16 loss scaling "
                             f"would reach them scaled; train.precision: fp16 works with {ok} (bf16 needs no scaler)")
        opt = innermost(self.optimizer)
        if getattr(opt, "step_needs", ()) or isinstance(opt, GlobalStats):
            raise ValueError(f"{type(opt).__name__} computes its step size from statistics of the gradients (or a "
                             "closure); it cannot take fp16-scaled gradients: use train.precision: bf16")
        self.grad_scaler = scaler

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _step(self) -> None:
        raise NotImplementedError

    def _local_grads(self) -> list[torch.Tensor]:
        """Every parameter's ``.grad`` (zeros where missing), clipped to ``grad_clip`` if set: the
        local gradient g_i of algorithms that build their own direction from it."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        return [p.grad for p in self.params]

    def _optimizer_step(self) -> None:
        scaler = self.grad_scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)  # .grad / s; notes an inf/NaN
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)  # sharded: the norm over the whole model
        kwargs = step_kwargs(self.optimizer, self._loss, self._closure)
        if scaler is None:
            self.optimizer.step(**kwargs)
            return
        scale = scaler.get_scale()
        scaler.step(self.optimizer, **kwargs)  # skipped if an inf/NaN was found
        scaler.update()
        self.skipped_steps += scaler.get_scale() < scale  # dynamic scaling lowers s exactly when it skipped

    def _agree_on_optimizer_stats(self) -> None:
        """Parameter-free step sizes (`farsync.optim.stats`) average their scalar statistics over
        the workers, so every worker takes the same step size."""
        if self.comm.world_size > 1:
            set_stats_reducer(self.optimizer, self._mean_stats)

    def _mean_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Average an optimizer's scalar statistics over workers (`farsync.optim.stats`)."""
        buf = stats.to(self.params[0].device)
        self.comm.all_reduce(buf, op="mean")  # the sum, then / n (over the live workers under churn)
        return buf.cpu()

    def log_metrics(self, rows: list[dict[str, float]]) -> dict[str, float]:
        """Extra numbers for the metrics row, given every worker's logged counters (`rows`, one
        dict per rank: loss, bytes_sent, clock_s, ...). Called on every rank at each logging step."""
        return {}

    @contextmanager
    def eval_params(self) -> Iterator[nn.Module]:
        """The model holding the parameters to evaluate (default: the local parameters, at the
        inner optimizer's evaluation point when it is an averaging wrapper such as GPA). Every rank
        enters it at an evaluation step (it may communicate); rank 0 evaluates."""
        with evaluation_point([self.optimizer]):
            yield self.model

    # ------------------------------------------------------------------ state
    def shared_state(self) -> dict[str, Any]:
        """What a worker that comes back copies from a live one (`Communicator.register_state`):
        the model and this algorithm's state (global parameters, inner and outer optimizer,
        round counters). Data position, RNG and counters stay the worker's own."""
        return {"model": self.model.state_dict(), "algorithm": self.state_dict()}

    def load_shared_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.load_state_dict(state["algorithm"])

    def state_dict(self) -> dict[str, Any]:
        state = {
            "local_step": self.local_step,
            "optimizer": self.optimizer.state_dict(),
            "buffers": self.buffers.state_dict(),
        }
        if self.grad_scaler is not None:
            state["grad_scaler"] = {**self.grad_scaler.state_dict(), "skipped_steps": self.skipped_steps}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.local_step = state["local_step"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffers.load_state_dict(state.get("buffers"))
        if self.grad_scaler is not None and "grad_scaler" in state:
            scaler_state = dict(state["grad_scaler"])
            self.skipped_steps = scaler_state.pop("skipped_steps")
            self.grad_scaler.load_state_dict(scaler_state)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def build_outer(params: list[torch.Tensor], outer: OuterSpec) -> torch.optim.Optimizer:
        return outer(params) if callable(outer) else build_optimizer(params, outer)


class CollectiveAlgorithm(Algorithm):
    """SPMD algorithms that average over all workers: rounds of ``sync_every`` inner steps
    (`RoundClock`) and the reducer of ``compress`` (exact mean when none)."""

    Options: ClassVar[type[AlgorithmOptions]] = DDPOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rounds = RoundClock(self.sync_every)
        self._sizes = [p.numel() for p in self.params]  # for the payload spans of `_carrying`
        self._spans: dict[tuple[int, ...] | None, tuple] = {}
        self.reducer = self._build_reducer(getattr(self.options, "compress", None))
        self._agree_on_optimizer_stats()

    def _build_reducer(self, compress: dict[str, Any] | Compressor | Reducer | None) -> Reducer:
        if isinstance(compress, Reducer):
            return compress
        if isinstance(compress, Compressor):
            return GatherReducer(compress, self.comm.rank)
        if compress is None:
            return MeanReducer()
        return build_reducer(compress, [tuple(p.shape) for p in self.params], self.comm.rank)

    def _mean(self, flat: torch.Tensor, indices: list[int] | None = None) -> torch.Tensor:
        """Average `flat` over workers through the reducer (compressed if configured); may overwrite
        `flat`. `flat` holds the parameters `indices` (all when None) of the step just computed
        (a gradient or pseudo-gradient: the clock releases it during that step's backward)."""
        with self._carrying(indices):
            return self.reducer.reduce(self.comm, flat)

    def _start_mean(self, flat: torch.Tensor, indices: list[int] | None = None, reducer: Reducer | None = None):
        """`_mean` without blocking: a `Pending` whose ``wait()`` gives the mean."""
        with self._carrying(indices):
            return (reducer or self.reducer).start(self.comm, flat)

    def _carrying(self, indices: list[int] | None = None):
        """Tell the communicator which parameters the next payload holds (`Communicator.payload`:
        a description for the clock; values are unaffected)."""
        key = None if indices is None else tuple(indices)
        if key not in self._spans:
            self._spans[key] = spans_of(self._sizes, indices)
        return self.comm.payload(self._spans[key])

    def _average_gradients(self) -> None:
        """Average the gradients as one flat buffer; a missing ``.grad`` counts as zeros."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.params]
        unflatten_into(self._mean(flatten(grads)), grads)

    def _sync_due(self) -> bool:
        """True on the step that completes a round (`sync_every` inner steps, or QSR's H)."""
        return self.rounds.ends_after(self.local_step + 1, self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "reducer": self.reducer.state_dict(), "rounds": self.rounds.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reducer.load_state_dict(state["reducer"])
        self.rounds.load_state_dict(state["rounds"])


@contextmanager
def evaluation_point(optimizers: list[torch.optim.Optimizer]) -> Iterator[None]:
    """Switch every averaging wrapper among `optimizers` to its evaluation point, then back."""
    with ExitStack() as stack:
        for opt in optimizers:
            if isinstance(opt, OptimizerWrapper):
                stack.enter_context(opt.averaged())
        yield


@contextmanager
def swapped_params(model_params: list[torch.Tensor], values: list[torch.Tensor]) -> Iterator[None]:
    """Temporarily copy `values` into `model_params`, restoring them afterwards (exactly)."""
    saved = [p.detach().clone() for p in model_params]
    with torch.no_grad():
        for p, v in zip(model_params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(model_params, saved):
                p.copy_(s)


def pseudo_gradient(global_params: list[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
    """phi - theta as one flat buffer (DiLoCo's outer gradient: it points downhill)."""
    return flatten([g.detach() for g in global_params]) - flatten([p.detach() for p in params])


def outer_step(optimizer: torch.optim.Optimizer, global_params: list[torch.Tensor], delta: torch.Tensor) -> None:
    """Step `optimizer` over `global_params` with the flat `delta` as their ``.grad``."""
    for g in global_params:
        g.grad = torch.empty_like(g)
    unflatten_into(delta, [g.grad for g in global_params])
    optimizer.step()


__all__ = ["Algorithm", "CollectiveAlgorithm", "DDPOptions", "evaluation_point", "flatten", "outer_step",
           "pseudo_gradient", "swapped_params", "unflatten_into"]
