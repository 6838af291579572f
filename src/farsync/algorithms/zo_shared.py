"""`zo-shared`: shared-randomness zeroth-order training (Zelikman et al., "Just One Byte (per gradient)", arXiv 2306.10015, extending MeZO's SPSA, Malladi et al., arXiv 2305.17333; public code read as references: ezelikman/justonebyte app.py, princeton-nlp/MeZO large_models/trainer.py).

State per worker: the model and the inner optimizer's state; no gradient, no parameter ever
travels. Every step t, on worker i (n workers, K = ``directions``), with one closure L_i(.) that
evaluates the loss on the step's batch of worker i without gradients (the training loop passes it:
``forward_only``)::

    theta0 = copy(theta)                                        # saved, restored exactly
    for k < K:
        z_ik = randn_like(theta; seed = mix(run seed, t, i, k)) # any worker can regenerate it
        theta = theta0 + eps * z_ik;  L_plus  = L_i(theta)
        theta = theta0 - eps * z_ik;  L_minus = L_i(theta)
        g_ik  = (L_plus - L_minus) / (2 eps)                    # SPSA projected gradient, a scalar
    theta = theta0
    s_i = encode(g_i0 .. g_i,K-1)                              # fp32, or one byte each
    s   = all_gather(s_i)                                       # n * K scalars, rank order
    .grad = sum_j sum_k decode(s_jk) * z_jk / (n K)             # rebuilt from seeds: identical everywhere
    theta = InnerOpt.step(theta, .grad)                         # SGD: MeZO's ZO-SGD

``encoding: byte`` (the paper's one byte per projected gradient) is a symmetric uniform int8
quantizer on [-byte_range, byte_range]: q = clamp(round(127 g / byte_range), -127, 127), decoded
as q * byte_range / 127 (``byte_rounding: stochastic`` rounds up with probability equal to the
fraction, from a generator seeded by (run seed, t, i), so the decoded value is unbiased inside the
range). Every worker decodes the same bytes, so the models stay bitwise identical.

Options: ``eps`` (perturbation scale; 1e-3 is the One-Byte code's default, read, and MeZO's scripts'
value, second-hand), ``directions`` (K, MeZO's n-SPSA, whose default n = 1 is second-hand; the
One-Byte code's ``gradient_acc_steps`` instead sends several scalars per machine and round, each on
its own batch, where our K directions share the step's batch), ``encoding``, ``byte_range``, ``byte_rounding``,
``seed`` (the shared seed; default: the run's seed, read from ``torch.initial_seed()`` when the
algorithm is built, which the loop sets to the config's ``seed``). Other inner optimizers are
the same optimizer on the ZO estimate (Adam: MeZO's ZO-Adam); an inner optimizer that needs a
same-batch gradient closure (AdGD ``same_batch``) is refused. ``train.grad_clip`` clips the
rebuilt estimate. The perturbed losses are evaluated with the model in eval mode (MeZO's
``zo_forward``: dropout off), the logged training loss is L_i(theta) under ``torch.no_grad()``;
with ``train.grad_accum`` = k, L_i is the mean over the step's k micro-batches (bf16 autocast works;
fp16 loss scaling, replica groups and cluster.batched are refused).

Reductions: with one worker and K = 1 it is MeZO's ZO-SGD step, and with n workers it equals a
plain loop over seeds, perturbations, scalars and the update (tests/test_zo_shared.py, bit for
bit); on a quadratic the projected gradient is z . grad f up to rounding (central differences are
exact for quadratics); the workers' models stay bitwise identical.

Deviations: the direction seed is a splitmix64 hash of (seed, step, rank, k) instead of the One-Byte
code's decimal concatenation of (iteration, sample number, machine timestamp); theta is restored
from a saved copy (the One-Byte code's ``use_backup``; MeZO's in-place +eps, -2 eps, +eps restore
is not exact in floating point, and here each worker perturbs along its own z), at the cost of one
parameter copy. The update is lr * g * z / N, N the number of scalars of the step, as in MeZO's
``zo_update`` (read) and the One-Byte code's division by ``num_samples`` (read; the paper's own
equations could not be read here); that code's ``apply_all_grads`` scales it by eps once more (it
reuses ``add_perturbation``), which we do not copy. MeZO excludes biases and layer norms from weight decay; here weight decay is
the inner optimizer's, on every parameter. The exact one-byte quantizer of the paper (its range,
rounding, any scaling) is unverified: the public code sends the projected gradients as JSON floats,
and the paper's text available to us did not state the quantizer; ours is the plain symmetric int8
grid above. The simulated clock charges a step as its 2K + 1 forwards and no backward, a forward
costing 1/3 of a training step (``FORWARD_COST``: a backward ~ two forwards' FLOPs), but never
less than one training step (K = 1: exactly one).
Evaluation point: the (identical) local model. Bytes on the wire per worker per step: one
all_gather of K scalars, 4 K bytes (fp32) or K bytes (byte), i.e. (n - 1) * 4K or (n - 1) * K bytes
sent on a ring; a model with buffers (BatchNorm statistics, updated by the loop's no-grad forward)
also takes rank 0's after every step, as DDP does (one broadcast per dtype; calls then undeclared).
The metric ``zo_edge_fraction`` (byte) is the share of scalars decoded to +-byte_range so far.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field

from ..optim import WRAPPERS
from ..optim.stats import innermost
from .base import CollectiveAlgorithm
from ..topology import splitmix64
from .options import EveryStep

_M64 = (1 << 64) - 1
FORWARD_COST = 1.0 / 3.0  # a forward pass, in training steps (forward + backward ~ 3 forwards' FLOPs) for the clock


def shared_seed(*parts: int) -> int:
    """A 63-bit generator seed from integers (run seed, purpose, step, rank, direction): a
    splitmix64 chain, the same on every worker and backend."""
    h = 0
    for p in parts:
        h = splitmix64(h ^ (int(p) & _M64))
    return h >> 1


DIRECTION, ROUNDING = 0, 1  # purposes of the shared seeds


class ZOOptions(EveryStep):
    eps: float = Field(1e-3, gt=0, description="SPSA perturbation scale: losses at theta +- eps z")
    directions: int = Field(1, ge=1, le=1024, description="K: random directions (one scalar each) per worker per step")
    encoding: Literal["fp32", "byte"] = Field(
        "fp32", description="how each projected gradient travels: fp32 (4 bytes) or byte (the One-Byte int8 quantizer)")
    byte_range: float = Field(4.0, gt=0, description="byte: the quantizer's range [-r, r]; larger values are clipped")
    byte_rounding: Literal["nearest", "stochastic"] = Field(
        "nearest", description="byte: round to the nearest level, or stochastically (unbiased inside the range)")
    seed: int | None = Field(None, ge=0, description="shared seed of the directions (none: the run's seed, "
                             "torch.initial_seed() when the algorithm is built)")


def quantize_byte(g: torch.Tensor, byte_range: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """int8 levels q in [-127, 127] of the float64 scalars `g` on [-byte_range, byte_range]
    (nearest, or stochastic rounding with `generator`)."""
    x = (g.double() * (127.0 / byte_range)).clamp(-127.0, 127.0)
    if generator is None:
        q = torch.round(x)
    else:
        low = torch.floor(x)
        q = low + (torch.rand(x.shape, generator=generator, dtype=torch.float64) < (x - low)).double()
    return q.to(torch.int8)


def dequantize_byte(q: torch.Tensor, byte_range: float) -> torch.Tensor:
    """The float64 values of int8 levels `q`."""
    return q.double() * (byte_range / 127.0)


class ZOShared(CollectiveAlgorithm):
    name = "zo-shared"
    summary = "shared-randomness zeroth-order training (One Byte ZO / MeZO SPSA)"
    Options = ZOOptions
    forward_only = True  # the loop passes a no-grad loss closure and never calls backward
    no_compress = "sends one scalar per direction (encoding: byte quantizes it); there is nothing to compress"

    @classmethod
    def check_inner(cls, inner: dict[str, Any]) -> None:
        while inner.get("name") in WRAPPERS and isinstance(inner.get("base"), dict):
            inner = inner["base"]
        if inner.get("same_batch"):
            raise ValueError(f"{cls.name} has no gradients for the inner optimizer's same-batch closure "
                             f"({inner.get('name')!r} same_batch: true); remove same_batch")

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """One all_gather of K scalars per step (4 bytes each in fp32, 1 in byte)."""
        if any(True for _ in model.buffers()):  # + rank 0's buffers broadcast after every step
            return None
        per = 4 if options.encoding == "fp32" else 1
        return [("all_gather", options.directions * per)] * steps

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "closure" in getattr(innermost(self.optimizer), "step_needs", ()):
            raise ValueError(f"{self.name} cannot give {type(innermost(self.optimizer)).__name__} a gradient closure "
                             "(it computes no gradients); use an inner optimizer whose step needs only .grad")
        self.seed = self.options.seed if self.options.seed is not None else torch.initial_seed()
        self.at_edge = 0  # byte encoding: scalars decoded to +-byte_range so far (clipped, or within half a level)
        self.scalars = 0  # scalars sent so far (all workers)

    # ------------------------------------------------------------------ directions
    def direction(self, rank: int, k: int, step: int | None = None) -> list[torch.Tensor]:
        """z_{rank,k} at `step` (default: this step), one tensor per parameter, N(0, 1) in the
        parameter's dtype, drawn on the CPU (the same values on every device)."""
        t = self.local_step if step is None else step
        g = torch.Generator().manual_seed(shared_seed(self.seed, DIRECTION, t, rank, k))
        return [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in self.params]

    def _loss_at(self, closure: Callable[[], torch.Tensor]) -> float:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return float(closure())
        finally:
            self.model.train(was_training)

    def projected_gradients(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """This worker's K SPSA scalars (float64) at the current parameters, which are restored
        bit for bit afterwards."""
        o = self.options
        theta0 = [p.detach().clone() for p in self.params]
        out = torch.empty(o.directions, dtype=torch.float64)
        try:
            for k in range(o.directions):
                z = self.direction(self.comm.rank, k)
                with torch.no_grad():
                    for p, p0, zp in zip(self.params, theta0, z):
                        p.copy_(p0 + o.eps * zp)
                plus = self._loss_at(closure)
                with torch.no_grad():
                    for p, p0, zp in zip(self.params, theta0, z):
                        p.copy_(p0 - o.eps * zp)
                minus = self._loss_at(closure)
                out[k] = (plus - minus) / (2 * o.eps)
        finally:
            with torch.no_grad():
                for p, p0 in zip(self.params, theta0):
                    p.copy_(p0)
        return out

    # ------------------------------------------------------------------ wire format
    def encode(self, g: torch.Tensor) -> torch.Tensor:
        o = self.options
        if o.encoding == "fp32":
            return g.float()
        gen = None
        if o.byte_rounding == "stochastic":
            gen = torch.Generator().manual_seed(shared_seed(self.seed, ROUNDING, self.local_step, self.comm.rank))
        return quantize_byte(g, o.byte_range, gen).view(torch.uint8)

    def decode(self, s: torch.Tensor) -> torch.Tensor:
        o = self.options
        if o.encoding == "fp32":
            return s.double()
        return dequantize_byte(s.view(torch.int8), o.byte_range)

    # ------------------------------------------------------------------ step
    def _step(self) -> None:
        if self._closure is None:
            raise RuntimeError(f"{self.name} needs step(loss, closure=...): a closure returning the loss on this step's "
                               "batch (evaluated without gradients); the farsync loop passes one (forward_only)")
        o, n = self.options, self.comm.world_size
        g = self.projected_gradients(self._closure)
        if o.directions > 1:  # the step's 2K + 1 forwards at FORWARD_COST each; the loop charged one step already
            self.comm.compute((2 * o.directions + 1) * FORWARD_COST - 1.0)
        mine = self.encode(g).to(self.params[0].device)
        gathered = [torch.empty_like(mine) for _ in range(n)]
        self.comm.all_gather(gathered, mine)
        values = [self.decode(s.cpu()) for s in gathered]  # rank order, float64
        self.scalars += n * o.directions
        if o.encoding == "byte":
            self.at_edge += sum(int((v.abs() >= o.byte_range).sum()) for v in values)
        grads = [torch.zeros_like(p) for p in self.params]
        for j in range(n):
            for k in range(o.directions):
                gjk = float(values[j][k])
                for acc, zp in zip(grads, self.direction(j, k)):
                    acc.add_(zp * gjk)
        for p, acc in zip(self.params, grads):
            p.grad = acc.div_(n * o.directions)
        self._optimizer_step()
        self.buffers.broadcast_from_rank0()  # BatchNorm statistics of the no-grad forwards: rank 0's, as DDP (replicas.py)

    def log_metrics(self, rows: list[dict[str, float]]) -> dict[str, float]:
        if self.options.encoding != "byte":
            return {}
        return {"zo_edge_fraction": self.at_edge / max(self.scalars, 1)}  # share of scalars at the byte range's edge

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seed": self.seed, "at_edge": self.at_edge, "scalars": self.scalars}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seed, self.at_edge, self.scalars = state["seed"], state["at_edge"], state["scalars"]
