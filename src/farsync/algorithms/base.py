"""The interface every distributed training algorithm implements.

An `Algorithm` wraps one worker's model and inner optimizer and a `Communicator`. It is used in an
ordinary training loop::

    loss.backward()
    algo.step()        # one inner step: counts compute, communicates when due, updates params
    algo.zero_grad()

and knows nothing about the backend. ``eval_params()`` temporarily puts the evaluation point
(e.g. DiLoCo's global parameters) into the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..comm import Communicator
from ..compress import Compressor, GatherReducer, MeanReducer, Reducer, build_reducer
from ..optim import OptimizerWrapper, build_optimizer, set_stats_reducer, step_kwargs
from .replicas import Buffers
from .sync_schedule import QSR, RoundClock, parse_sync_every

OuterSpec = dict[str, Any] | Callable[[list[torch.Tensor]], torch.optim.Optimizer]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Algorithm:
    """Base class. Subclasses implement `_step` and may override `eval_params` and state."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    uses_outer: ClassVar[bool] = False
    uses_sync_every: ClassVar[bool] = False
    server_based: ClassVar[bool] = False  # rank 0 is a parameter server, ranks 1..n train (async_loop.py)
    uses_topology: ClassVar[bool] = False  # decentralized: talks to graph neighbours (cluster.topology)
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init_subclass__(cls, **kwargs):
        """An algorithm without a class docstring shows its module's (the update rule, the paper,
        the deviations), so ``help(farsync.DiLoCo)`` gives the rule: one text, in one place."""
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("__doc__"):
            cls.__doc__ = sys.modules[cls.__module__].__doc__

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        comm: Communicator,
        *,
        sync_every: int | QSR | dict = 1,
        outer: OuterSpec | None = None,
        grad_clip: float | None = None,
        options: BaseModel | dict | None = None,
        compress: dict[str, Any] | Compressor | Reducer | None = None,
    ):
        sync_every = parse_sync_every(sync_every)
        self.model = model
        self.optimizer = optimizer
        self.comm = comm
        self.sync_every = sync_every
        self.rounds = RoundClock(sync_every)
        self.grad_clip = grad_clip
        self.options = options if isinstance(options, BaseModel) else self.Options(**(options or {}))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = Buffers(model, comm)  # BatchNorm statistics etc.: the policy in replicas.py
        self.local_step = 0  # inner steps taken by this worker
        self.reducer = self._build_reducer(compress)
        if comm.world_size > 1 and not self.server_based:  # parameter-free step sizes agree across workers
            set_stats_reducer(optimizer, self._mean_stats)
        self._loss: torch.Tensor | None = None
        self._closure: Callable[[], torch.Tensor] | None = None

    def _build_reducer(self, compress: dict[str, Any] | Compressor | Reducer | None) -> Reducer:
        if isinstance(compress, Reducer):
            return compress
        if isinstance(compress, Compressor):
            return GatherReducer(compress, self.comm.rank)
        if compress is None:
            return MeanReducer()
        return build_reducer(compress, [tuple(p.shape) for p in self.params], self.comm.rank)

    @classmethod
    def check_config(cls, inner: dict[str, Any], compress: dict[str, Any] | None) -> None:
        """Raise ValueError if the inner optimizer / compressor config cannot work with this algorithm."""

    @classmethod
    def check_options(cls, sync_every: int, options: BaseModel) -> None:
        """Raise ValueError if the algorithm's options do not fit `sync_every` (checked before training)."""

    @classmethod
    def check_model(cls, model: nn.Module, options: BaseModel) -> None:
        """Raise ValueError if the options cannot work on `model` (e.g. more fragments than
        blocks); the runner calls it on a freshly built model before it writes anything."""

    # ------------------------------------------------------------------ loop API
    def step(self, loss: torch.Tensor | None = None, closure: Callable[[], torch.Tensor] | None = None) -> None:
        """One inner step (call after ``loss.backward()``). `loss` (the mini-batch loss) and
        `closure` (recomputes it and its gradients on the same batch at the current parameters)
        reach inner optimizers that need them (SPS, MoMo; AdGD with ``same_batch``)."""
        self.comm.compute()
        self._loss, self._closure = loss, closure
        self._step()
        self.local_step += 1

    @property
    def initial_batches(self) -> int:
        """Mini-batches whose mean gradient the first step should get (the training loop
        accumulates them before the first ``step()``; DoCoM-SGT's large initial batch b0)."""
        return 1

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
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step(**step_kwargs(self.optimizer, self._loss, self._closure))

    def _mean_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Average an optimizer's scalar statistics over workers (`farsync.optim.stats`)."""
        buf = stats.to(self.params[0].device)
        self.comm.all_reduce(buf, op="sum")
        return buf.cpu() / self.comm.world_size

    def _mean(self, flat: torch.Tensor) -> torch.Tensor:
        """Average `flat` over workers through the reducer (compressed if configured); may overwrite `flat`."""
        return self.reducer.reduce(self.comm, flat)

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

    def log_metrics(self, rows: list[dict[str, float]]) -> dict[str, float]:
        """Extra numbers for the metrics row, given every worker's logged counters (`rows`, one
        dict per rank: loss, bytes_sent, clock_s, ...). Called on every rank at each logging step,
        before rank 0 evaluates (decentralized algorithms gather their average model here)."""
        return {}

    @contextmanager
    def eval_params(self) -> Iterator[nn.Module]:
        """The model holding the parameters to evaluate (default: the local parameters, at the
        inner optimizer's evaluation point when it is an averaging wrapper such as GPA)."""
        with evaluation_point([self.optimizer]):
            yield self.model

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "local_step": self.local_step,
            "optimizer": self.optimizer.state_dict(),
            "reducer": self.reducer.state_dict(),
            "rounds": self.rounds.state_dict(),
            "buffers": self.buffers.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.local_step = state["local_step"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.reducer.load_state_dict(state["reducer"])
        self.rounds.load_state_dict(state["rounds"])
        self.buffers.load_state_dict(state.get("buffers"))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def build_outer(params: list[torch.Tensor], outer: OuterSpec) -> torch.optim.Optimizer:
        return outer(params) if callable(outer) else build_optimizer(params, outer)


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


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors (all of one dtype) into one flat buffer - one message on the wire."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"parameters of several dtypes ({sorted(map(str, dtypes))}) are not supported")
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy consecutive slices of `flat` into `tensors` (inverse of `flatten`)."""
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n
