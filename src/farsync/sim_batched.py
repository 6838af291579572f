"""The batched simulator: identical workers as one stacked model (``cluster.batched: true``).

The threaded simulator (`comm/sim.py`) runs each worker's Python - its forward, backward, algorithm
step and every collective's bookkeeping - one worker at a time. For workers that run the same
model, the same elementwise optimizer and an algorithm whose values do not depend on timing, the
n workers are one program over stacked tensors:

    theta      one tensor per parameter with a leading worker dimension [n, ...]
               (ddp: one copy, every worker holds the same parameters)
    g, loss    = vmap(grad_and_value(task loss))(theta, batches)    # torch.func: worker i on its own batch
    ddp        g_bar = (g_0 + ... + g_{n-1}) / n in rank order; clip; InnerOpt.step(theta, g_bar)
    local-sgd  InnerOpt.step(theta, g) (stacked); every H steps theta_i <- (1/n) sum_j theta_j
    diloco     InnerOpt.step(theta, g); every H steps delta = (1/n) sum_i (phi - theta_i),
               phi <- OuterOpt.step(phi, delta), theta_i <- phi
    dsgd       x_i <- sum_j W_ij x_j + (InnerOpt.step(x_i, g_i) - x_i)   (cta; atc: mix after the step)

An elementwise optimizer (torch's SGD, Adam, AdamW) applied to a stacked parameter updates each
worker's slice as it would update that worker's own tensor, so the stacked step is the n workers'
steps. Sums over workers run in rank order, as the threaded simulator reduces.

Timing without re-implementing the clock: the engine writes each worker's communication log -
the events `retime.CommRecorder` records from the threaded run, identical (tested) - and a
background thread plays it, as it grows, on the run's own `SimCluster` (`retime.replay`), with
dummy payloads. Clocks, bytes, blocked time, ``transfers.csv`` and utilization are therefore the
threaded simulator's own, for any network, speeds or stragglers. The replay is woken when the trainer
waits for it - at each logging step (the metrics row needs the clocks) and at the end - so the two
seldom compete for Python's interpreter lock.

Not batched (refused before work, with the reason): other algorithms, compression, optimizers
that are not elementwise (Muon, parameter-free steps, averaging wrappers), models with
floating-point buffers or dropout, checkpoints and resume, churn, ``cluster.parallel``, and the
options ``ddp_steps`` and a QSR ``sync_every``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .algorithms.base import outer_step
from .comm import SimCluster
from .comm.timing import spans_of
from .optim import build_optimizer
from .retime import replay

ALGORITHMS = ("ddp", "local-sgd", "diloco", "dsgd")
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def refusals(algorithm: str, options: dict[str, Any], inner: dict[str, Any], model: nn.Module) -> list[str]:
    """Why this algorithm / inner optimizer / model cannot run batched (empty: it can)."""
    out = []
    if algorithm not in ALGORITHMS:
        out.append(f"algorithm {algorithm!r} (batched: {', '.join(ALGORITHMS)})")
    if options.get("compress") is not None:
        out.append("algorithm.compress (compressed payloads are not batched)")
    if not isinstance(options.get("sync_every", 1), int):
        out.append("a QSR sync_every (its round length follows the lr; use an integer H)")
    if options.get("ddp_steps"):
        out.append("local-sgd's ddp_steps")
    if inner.get("name") not in OPTIMIZERS:
        out.append(f"inner optimizer {inner.get('name')!r} (batched: the elementwise {', '.join(OPTIMIZERS)})")
    if any(b.is_floating_point() for b in model.buffers()):
        out.append("a model with floating-point buffers (BatchNorm statistics)")
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()) or any(
            getattr(m, "dropout", 0) for m in model.modules() if not isinstance(m, nn.Dropout)):
        out.append("dropout (each threaded worker draws its own masks from its own RNG)")
    if any(not p.requires_grad for p in model.parameters()):
        out.append("frozen parameters")
    return out


class _LossOf(nn.Module):
    """``loss_fn(model, batch)`` as a module, so that `functional_call` swaps the model's
    parameters for the whole loss (a task may read a parameter without calling ``forward``)."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


LOOP_PARAMS = 2**16  # ddp with at least this many parameters: a backward per worker (compute-bound), else one vmap


def _index(batch: Any, i: int) -> Any:
    """Worker i's batch from the stacked batches."""
    if isinstance(batch, torch.Tensor):
        return batch[i]
    return type(batch)(_index(b, i) for b in batch)


def stack_batches(batches: list[Any]) -> Any:
    """The workers' batches (tensors, or tuples / lists of tensors) stacked along a new dim 0."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(batches)
    if isinstance(first, (tuple, list)):
        return type(first)(stack_batches([b[k] for b in batches]) for k in range(len(first)))
    raise TypeError(f"batched simulation needs batches of tensors, got {type(first).__name__}")


def rank_order_mean(flat: torch.Tensor) -> torch.Tensor:
    """(x_0 + x_1 + ... + x_{n-1}) / n of the rows of `flat` [n, D], summed in rank order (the
    threaded simulator's all-reduce)."""
    acc = flat[0].clone()
    for i in range(1, flat.shape[0]):
        acc += flat[i]
    return acc.div_(flat.shape[0])


class BatchedWorkers:
    """The numerics of n workers of `algorithm` as one stacked model (see the module docstring).

    ``step(batches)`` takes one inner step on every worker (``batches``: stacked along dim 0) and
    returns the losses [n]; ``synced`` says whether it ended with an all-reduce. ``eval_values()``
    gives the evaluation point (ddp: the parameters; local-sgd: the last average; diloco: phi;
    dsgd: the average model)."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], workers: int,
                 algorithm: str, options: dict[str, Any], inner: dict[str, Any], grad_clip: float | None = None,
                 topology: Any = None):
        why = refusals(algorithm, options, inner, model)
        if why:
            raise ValueError("cannot simulate batched: " + "; ".join(why) + " (use cluster.batched: false)")
        self.n, self.algorithm, self.options, self.grad_clip = workers, algorithm, options, grad_clip
        self.model = model
        self.names = [name for name, _ in model.named_parameters()]
        init = [p.detach() for p in model.parameters()]
        self.sizes = [p.numel() for p in init]
        self.shapes = [tuple(p.shape) for p in init]
        self.shared = algorithm == "ddp"  # every DDP worker holds the same parameters: one copy
        self.loop = self.shared and sum(self.sizes) >= LOOP_PARAMS  # a large model: one backward per worker
        if self.loop:
            self.params = list(model.parameters())
        elif self.shared:
            self.params = [nn.Parameter(p.clone()) for p in init]
        else:
            self.params = [nn.Parameter(p.unsqueeze(0).repeat(workers, *([1] * p.dim()))) for p in init]
        self.optimizer = build_optimizer(list(zip(self.names, self.params)), inner)
        self.sync_every = options.get("sync_every", 1)
        self.local_step = 0
        self.synced = False
        if algorithm == "diloco":
            self.global_params = [nn.Parameter(p.clone(), requires_grad=False) for p in init]
            outer = options["outer"]
            self.outer_optimizer = outer(self.global_params) if callable(outer) else build_optimizer(self.global_params, outer)
        if algorithm == "local-sgd":
            self.averaged = [p.clone() for p in init]
        if algorithm == "dsgd":
            self._mixing(topology, options.get("weights", "metropolis-hastings"))
        loss = self._loss = _LossOf(model, loss_fn)

        def f(params, batch):
            return functional_call(loss, {f"model.{k}": p for k, p in zip(self.names, params)}, (batch,))

        self._grad = vmap(grad_and_value(f), in_dims=(None if self.shared else 0, 0), randomness="error")

    # ------------------------------------------------------------------ one step of every worker
    def step(self, batches: Any) -> torch.Tensor:
        self.local_step += 1
        self.synced = False
        if self.loop:  # ddp, large model: a backward per worker, (g_0 + g_1 + ...) / n in rank order
            losses = []
            for i in range(self.n):
                loss = self._loss(_index(batches, i))
                g = torch.autograd.grad(loss, self.params, allow_unused=True)  # worker i's whole gradient
                g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(self.params, g)]
                losses.append(loss.detach())
                if i == 0:
                    acc = [gi.clone() for gi in g]
                else:
                    for a, gi in zip(acc, g):
                        a += gi
            for p, a in zip(self.params, acc):
                p.grad = a.div_(self.n)
            losses = torch.stack(losses)
            grads = None
        else:
            grads, losses = self._grad(tuple(p.detach() for p in self.params), batches)
        if self.shared:  # ddp: the rank-order mean of the gradients, then one step of the one copy
            if grads is not None:
                g_bar = rank_order_mean(self._flat(grads))
                self._set_grads(self._split(g_bar, stacked=False))
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            self.synced = True
        elif self.algorithm == "dsgd":
            self._dsgd_step(grads)
        else:
            self._set_grads(list(grads))
            self._clip_each()
            self.optimizer.step()
            if self.local_step % self.sync_every == 0:
                self._sync()
        for p in self.params:
            p.grad = None
        return losses.detach()

    def _sync(self) -> None:
        flat = self._flat([p.detach() for p in self.params])
        self.synced = True
        if self.algorithm == "local-sgd":
            mean = rank_order_mean(flat)
            with torch.no_grad():
                for p, a, v in zip(self.params, self.averaged, self._split(mean, stacked=False)):
                    p.copy_(v.expand_as(p))
                    a.copy_(v)
            if self.options.get("reset_inner_state"):
                self.optimizer.state.clear()
            return
        phi = torch.cat([g.detach().reshape(-1) for g in self.global_params])
        delta = rank_order_mean(phi.unsqueeze(0) - flat)  # pseudo-gradients phi - theta_i
        outer_step(self.outer_optimizer, self.global_params, delta)
        with torch.no_grad():
            for p, g in zip(self.params, self.global_params):
                p.copy_(g.expand_as(p))

    # ------------------------------------------------------------------ dsgd
    def _mixing(self, topology: Any, weights: str) -> None:
        from .topology import Topology, build_topology

        topo = topology if isinstance(topology, Topology) else build_topology(topology if topology is not None else "complete", self.n)
        if not isinstance(topo, Topology):
            raise ValueError("cannot simulate batched: a time-varying topology (use cluster.batched: false)")
        if topo.n != self.n:
            raise ValueError(f"topology has {topo.n} nodes but there are {self.n} workers")
        self.topology = topo
        rows = [topo.mixing_row(i, weights) for i in range(self.n)]
        terms = [sorted({i, *topo.neighbors(i)}) for i in range(self.n)]  # summed in ascending rank order (gossip.mix)
        width = max(len(t) for t in terms)
        index = torch.zeros(self.n, width, dtype=torch.long)
        weight = torch.zeros(self.n, width, dtype=self.params[0].dtype)
        for i, t in enumerate(terms):
            index[i, :len(t)] = torch.tensor(t)
            weight[i, :len(t)] = rows[i][t].to(weight.dtype)
            index[i, len(t):] = i  # padding: weight 0
        self._index, self._weight = index, weight
        self.peers = [topo.neighbors(i) for i in range(self.n)]

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for c in range(self._index.shape[1]):
            out.add_(x[self._index[:, c]] * self._weight[:, c:c + 1])
        return out

    def _dsgd_step(self, grads) -> None:
        self._set_grads(list(grads))
        self._clip_each()
        if self.options.get("order", "cta") == "atc":
            self.optimizer.step()
            self._write(self._mix(self._flat([p.detach() for p in self.params])))
            return
        x = self._flat([p.detach() for p in self.params])
        mixed = self._mix(x)
        self.optimizer.step()
        self._write(mixed + (self._flat([p.detach() for p in self.params]) - x))

    def average(self) -> tuple[torch.Tensor, float]:
        """dsgd: the average model (flat, rank-order sum) and the consensus error (1/n) sum_i ||x_i - xbar||^2."""
        xs = self._flat([p.detach() for p in self.params])
        avg = rank_order_mean(xs)
        errors = (xs - avg).double().pow(2).sum(1).tolist()
        return avg, sum(errors) / self.n

    # ------------------------------------------------------------------ evaluation
    def eval_values(self) -> list[torch.Tensor]:
        if self.shared:
            return [p.detach() for p in self.params]
        if self.algorithm == "local-sgd":
            return self.averaged
        if self.algorithm == "diloco":
            return [g.detach() for g in self.global_params]
        return self._split(self.average()[0], stacked=False)

    def eval_model(self) -> nn.Module:
        """`model` holding the evaluation point."""
        with torch.no_grad():
            for p, v in zip(self.model.parameters(), self.eval_values()):
                p.copy_(v)
        return self.model

    # ------------------------------------------------------------------ helpers
    def _flat(self, tensors) -> torch.Tensor:
        """Stacked tensors as [n, D] (the flat buffer of every worker, in model order)."""
        return torch.cat([t.reshape(self.n, -1) for t in tensors], dim=1)

    def _split(self, flat: torch.Tensor, stacked: bool = True) -> list[torch.Tensor]:
        out, offset = [], 0
        for size, shape in zip(self.sizes, self.shapes):
            piece = flat[..., offset:offset + size]
            out.append(piece.reshape((self.n, *shape) if stacked else shape))
            offset += size
        return out

    def _write(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, self._split(flat)):
                p.copy_(v)

    def _set_grads(self, grads: list[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g.contiguous()

    def _clip_each(self) -> None:
        """Clip each worker's gradient to `grad_clip` (torch's ``clip_grad_norm_`` per worker)."""
        if self.grad_clip is None:
            return
        norms = torch.stack([torch.linalg.vector_norm(p.grad.reshape(self.n, -1), dim=1) for p in self.params], dim=1)
        total = torch.linalg.vector_norm(norms, dim=1)
        coef = torch.clamp(self.grad_clip / (total + 1e-6), max=1.0)
        for p in self.params:
            p.grad.mul_(coef.view(self.n, *([1] * (p.grad.dim() - 1))))

    def payload_bytes(self) -> int:
        return sum(self.sizes) * self.params[0].element_size()


# ---------------------------------------------------------------------- the clock: a streamed replay
class _Stream:
    """One worker's communication log as the replay reads it: it blocks until the trainer has
    written more, and ends when the trainer closes the log."""

    def __init__(self, clock: StreamedClock, rank: int):
        self.clock, self.rank = clock, rank

    def __iter__(self) -> Iterator[list]:
        c, q = self.clock, self.clock.queues[self.rank]
        while True:
            with c.cond:
                while not q and not c.closed:
                    c.cond.wait()
                if not q:
                    return
                batch = list(q)
                q.clear()
            for ev in batch:
                if ev[0] == "m":  # a logging point: the worker's counters as it issues it (a gather changes none)
                    c.mark(self.rank)
                yield ev


class StreamedClock:
    """Plays the workers' communication logs on `cluster` in a background thread, as they grow.

    ``add(rank, events)`` appends to a worker's log; ``marks(k)`` waits for every worker's
    counters at logging point k (0-based); ``close()`` ends the logs and returns each worker's
    final counters. The full logs are kept in ``logs`` (the run's ``comm_log.json.gz``)."""

    def __init__(self, cluster: SimCluster):
        self.cluster = cluster
        cluster.worker_rng = False  # the replay draws no random numbers
        n = cluster.world_size
        self.cond = threading.Condition()
        self.queues: list[deque] = [deque() for _ in range(n)]
        self.logs: list[list] = [[] for _ in range(n)]
        self.closed = False
        self._marks: list[list[dict]] = [[] for _ in range(n)]
        self._final: list[dict] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="farsync-batched-clock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._final = replay([_Stream(self, r) for r in range(self.cluster.world_size)], self.cluster)[1]
        except BaseException as err:  # noqa: BLE001 - handed to the trainer
            self._error = err
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def mark(self, rank: int) -> None:
        with self.cond:
            self._marks[rank].append(self.cluster.stats[rank].as_dict())
            self.cond.notify_all()

    def add(self, rank: int, events: list[list]) -> None:
        """Append to `rank`'s log. The replay is woken only when the trainer waits (``marks``,
        ``close``), so trainer and replay seldom compete for the interpreter lock."""
        self.logs[rank].extend(events)
        with self.cond:
            self.queues[rank].extend(events)

    def add_all(self, events: list[list]) -> None:
        """The same events for every worker."""
        for r in range(self.cluster.world_size):
            self.add(r, events)

    def marks(self, k: int) -> list[dict]:
        with self.cond:
            self.cond.notify_all()
            while not all(len(m) > k for m in self._marks):
                if self._error is not None or self._thread is None or not self._thread.is_alive() and self.closed:
                    self._raise()
                self.cond.wait(0.5)
        return [m[k] for m in self._marks]

    def close(self) -> list[dict]:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self._thread.join()
        if self._error is not None or self._final is None:
            self._raise()
        return self._final

    def abort(self) -> None:
        """Stop the replay after a failure of the trainer (its error, if any, is dropped)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.cluster._error = self.cluster._error or RuntimeError("the batched trainer stopped")
        self._thread.join(timeout=30)

    def _raise(self) -> None:
        err = self._error or RuntimeError("the batched clock's replay ended early")
        raise RuntimeError(f"the batched simulator's clock (a replay of the communication log) failed: "
                           f"{type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------- the events of each step
class StepEvents:
    """The communication-log events each worker issues, as `retime.CommRecorder` records the
    threaded run (the same lists: the replay times them the same way)."""

    def __init__(self, workers: BatchedWorkers):
        self.w = workers
        n, nbytes = workers.n, workers.payload_bytes()
        self.compute = ["c", 1.0]
        self.all_reduce = ["ar", nbytes, [list(s) for s in spans_of(workers.sizes, None)], None]
        self.metrics = ["m"]
        self.gather = ["o", "all_gather_object", None]
        self._works = [0] * n
        self._nbytes = nbytes

    def start(self) -> list[list]:
        """Before step 1: the initial broadcast of rank 0's model (more than one worker), the resume scatter."""
        return ([self.gather] if self.w.n > 1 else []) + [["o", "scatter_object", 0]]

    def step(self) -> list[list] | None:
        """The events of the step just taken, equal on every worker; None: per worker (`exchange`)."""
        if self.w.algorithm == "dsgd":
            return None
        return [self.compute, self.all_reduce] if self.w.synced else [self.compute]

    def exchange(self, rank: int) -> list[list]:
        """dsgd: compute, then a send and a receive per neighbour (the lower rank sends first), then the waits."""
        ev = [self.compute]
        k = self._works[rank]
        for j in sorted(self.w.peers[rank]):
            pair = [["is", self._nbytes, j], ["ir", self._nbytes, j]]
            for e in (pair if rank < j else pair[::-1]):
                k += 1
                ev.append(e + [k])
        ev += [["w", i] for i in range(self._works[rank] + 1, k + 1)]
        self._works[rank] = k
        return ev

    def log_point(self) -> list[list]:
        return [self.metrics, self.gather] if self.w.algorithm == "dsgd" else [self.metrics]


def add_step(clock: StreamedClock, events: StepEvents) -> None:
    same = events.step()
    if same is not None:
        clock.add_all(same)
        return
    for r in range(events.w.n):
        clock.add(r, events.exchange(r))


__all__ = ["ALGORITHMS", "BatchedWorkers", "OPTIMIZERS", "StepEvents", "StreamedClock", "add_step", "rank_order_mean",
           "refusals", "stack_batches"]


# ---------------------------------------------------------------------- the runner's loop
def check_config(cfg, model: nn.Module) -> None:
    """Raise ValueError, naming every reason, if `cfg` cannot run batched (before any work)."""
    c, t = cfg.cluster, cfg.train
    why = refusals(cfg.algorithm.name, cfg.algorithm.spec(), cfg.algorithm.inner, model)
    if t.checkpoint_every:
        why.append("train.checkpoint_every (checkpoints are not batched)")
    if c.churn:
        why.append("cluster.churn")
    if c.parallel > 1:
        why.append(f"cluster.parallel: {c.parallel} (the batched workers are one program already)")
    if why:
        raise ValueError("cluster.batched: true cannot run this config: " + "; ".join(why) +
                         "; use cluster.batched: false (the threaded simulator)")


def train_batched(cfg, task, ctx, cluster: SimCluster) -> None:
    """The training loop of `loop.train_worker` for every worker at once: the same batches,
    losses, logging steps, evaluation and metrics rows, with the clock from the streamed replay
    (`StreamedClock`). Fills `ctx` as the threaded run does (last rows, final model, comm log)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.cluster.threads or threads)  # the threaded workers' torch threads (rounding)
    try:
        _train_batched(cfg, task, ctx, cluster)
    finally:
        torch.set_num_threads(threads)


def _train_batched(cfg, task, ctx, cluster: SimCluster) -> None:
    from .comm.base import cpu_clone
    from .loop import NonFiniteLoss, tokens_so_far, write_row
    from .stopping import STOP, Terminated

    t, n = cfg.train, cfg.cluster.workers
    torch.manual_seed(cfg.seed)  # the model every threaded worker builds
    model = task.build_model().to(ctx.device)
    spec = cfg.algorithm.spec()
    workers = BatchedWorkers(model, task.loss, n, cfg.algorithm.name, spec, cfg.algorithm.inner, t.grad_clip,
                             cfg.cluster.topology)
    sched = torch.optim.lr_scheduler.LambdaLR(workers.optimizer, t.lr_schedule.lr_lambda(t.steps))
    samplers = [task.sampler(r, t.batch_size) for r in range(n)]
    events = StepEvents(workers)
    clock = StreamedClock(cluster)
    per_worker = task.tokens_per_batch(t.batch_size)
    edges = max(1, len(workers.topology.edges)) if cfg.algorithm.name == "dsgd" else 1
    try:
        clock.add_all(events.start())
        loss_sum, loss_n, first_bad = [0.0] * n, 0, [math.inf] * n
        point = 0
        wall0 = time.perf_counter()
        for step in range(1, t.steps + 1):
            lr = sched.get_last_lr()[0]
            batch = stack_batches([s.next_batch() for s in samplers])
            values = workers.step(_to(batch, ctx.device)).tolist()
            add_step(clock, events)
            sched.step()
            for r, v in enumerate(values):
                if not math.isfinite(v):
                    first_bad[r] = min(first_bad[r], step)
                loss_sum[r] += v
            loss_n += 1
            ctx.step = step
            do_eval = step == t.steps or (t.eval_every > 0 and step % t.eval_every == 0)
            if not (do_eval or step % t.log_every == 0):
                continue
            clock.add_all(events.log_point())
            stats = clock.marks(point)
            point += 1
            rows = [{"loss": loss_sum[r] / loss_n, "bad": first_bad[r], "stop": STOP.signum or 0, **stats[r]} for r in range(n)]
            loss_sum, loss_n = [0.0] * n, 0
            ctx.last_rows = rows
            bad = min(first_bad)
            failed = math.isfinite(bad)
            rec = {
                "step": step,
                "tokens": tokens_so_far(step, per_worker, n, None, rows),
                "sim_time_s": max(r["clock_s"] for r in rows),
                "bytes_sent": sum(r["bytes_sent"] for r in rows),
                "bytes_received": sum(r["bytes_received"] for r in rows),
                "train_loss": sum(r["loss"] for r in rows) / n,
                "lr": lr,
            }
            if cfg.algorithm.name == "dsgd":
                rec["consensus_error"] = workers.average()[1]
                rec["bytes_per_edge"] = rec["bytes_sent"] / edges
            if (do_eval and not failed) or step == t.steps:
                m = workers.eval_model()
                if do_eval and not failed:
                    rec["eval_loss"] = task.evaluate(m)
                if step == t.steps:
                    ctx.final_model = cpu_clone(m.state_dict())
            write_row(ctx, rec, wall0)
            if failed:
                clock.add_all([events.gather])
                raise NonFiniteLoss(f"non-finite loss at step {int(bad)}")
            stop = max(r["stop"] for r in rows) if step < t.steps else 0
            if stop:
                raise Terminated(stop)
    except BaseException:
        clock.abort()
        raise
    final = clock.close()
    ctx.last_rows = [{**f, "role": "worker"} for f in final]
    ctx.comm_log = clock.logs


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    return type(batch)(_to(b, device) for b in batch)
