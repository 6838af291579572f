"""The training loop of server-based (asynchronous) algorithms, on any backend.

Rank 0 is the parameter server; ranks 1..n are workers training on shards 0..n-1::

    worker:  while (steps, progress := algo.pull()) has steps:
                 lr = base lr x schedule(progress)
                 steps x [loss.backward(); algo.step(); algo.zero_grad()]
                 algo.push(steps, loss sum, finite)
    server:  hand every worker a first round; then until every worker is stopped:
                 r = algo.receive()                  # next arrival, applied to phi
                 log / evaluate phi when the global step (inner steps done / n) passes a mark
                 algo.assign(r.worker, next round length or 0 once the budget is spent)

The budget is ``train.steps`` x n inner steps (the tokens of a synchronous run of train.steps
steps); metrics records use the same ``step`` (= inner steps done / n) and ``tokens`` as the
synchronous loop, plus ``updates`` (server updates so far) and ``staleness`` (mean number of
server updates between a worker's pull and its push, over the arrivals since the last record).
"""

from __future__ import annotations

import math
import time

import torch

from .comm import Communicator
from .config import Config
from .loop import NonFiniteLoss, RunContext, _to_cpu, build_algorithm, to_device
from .microbatch import MicroBatches, grad_scaler
from .tasks import Task


def train_async(comm: Communicator, cfg: Config, task: Task, ctx: RunContext) -> None:
    t = cfg.train
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(ctx.device)
    algo = build_algorithm(cfg, model, comm)
    schedule = t.lr_schedule.lr_lambda(t.steps)
    failed = False
    if comm.rank == 0:
        failed = _serve(algo, cfg, task, ctx, schedule)
    else:
        sampler = task.sampler(comm.rank - 1, t.batch_size)
        scaler = grad_scaler(t.precision, ctx.device, t.loss_scale)  # fp16 (microbatch.py)
        if scaler is not None:
            algo.use_grad_scaler(scaler)
        micro = MicroBatches(t.precision, ctx.device, scaler)

        def loss_fn(batch):
            return task.loss(model, batch)
        base_lrs = [g["lr"] for g in algo.optimizer.param_groups]
        while True:
            steps, progress = algo.pull()
            if not steps:
                break
            for g, lr in zip(algo.optimizer.param_groups, base_lrs):
                g["lr"] = lr * schedule(int(progress))
            loss_sum, finite = 0.0, True
            for _ in range(steps):
                batches = [to_device(sampler.next_batch(), ctx.device) for _ in range(t.grad_accum)]
                loss = micro.backward(loss_fn, batches)
                if t.grad_accum > 1:
                    comm.compute(t.grad_accum - 1)
                algo.step(loss, closure=micro.closure(loss_fn, model, batches))
                algo.zero_grad()
                value = loss.item()
                finite = finite and math.isfinite(value)
                loss_sum += value
            algo.push(steps, loss_sum, finite)
    rows = comm.gather_metrics({**comm.stats.as_dict(), "role": "server" if comm.rank == 0 else "worker", "failed": failed})
    if comm.rank == 0:
        ctx.last_rows = rows
    if any(r["failed"] for r in rows):
        raise NonFiniteLoss("non-finite loss reported by a worker")


def _serve(algo, cfg: Config, task: Task, ctx: RunContext, schedule) -> bool:
    """The server's side; returns True if a worker reported a non-finite loss."""
    t, comm, n = cfg.train, algo.comm, algo.n_workers
    budget = t.steps * n
    tokens_per_step = task.tokens_per_batch(t.batch_size) * t.grad_accum
    assigned = done = 0
    worker_bytes = {w: (0, 0) for w in range(1, n + 1)}
    loss_sum = loss_n = staleness = arrivals = 0
    last_step, failed = 0, False
    wall0 = time.perf_counter()

    def next_round(worker: int) -> int:
        nonlocal assigned
        steps = 0 if failed else min(algo.round_length(worker), budget - assigned)
        algo.assign(worker, steps, assigned / n)
        assigned += steps
        return steps

    active = sum(1 for w in range(1, n + 1) if next_round(w))
    while active:
        r = algo.receive()
        done += r["steps"]
        worker_bytes[r["worker"]] = (r["bytes_sent"], r["bytes_received"])
        loss_sum, loss_n = loss_sum + r["loss_sum"], loss_n + r["steps"]
        staleness, arrivals = staleness + r["staleness"], arrivals + 1
        if not r["finite"]:
            failed = True
        step = done // n
        ctx.step = step  # the server's global step (named in the summary if the run is interrupted)
        due_log = step // t.log_every > last_step // t.log_every
        due_eval = step == t.steps or (t.eval_every > 0 and step // t.eval_every > last_step // t.eval_every)
        if due_log or due_eval or failed:
            rec = {
                "step": step,
                "tokens": done * tokens_per_step,
                "sim_time_s": comm.stats.clock_s,
                "bytes_sent": comm.stats.bytes_sent + sum(b[0] for b in worker_bytes.values()),
                "bytes_received": comm.stats.bytes_received + sum(b[1] for b in worker_bytes.values()),
                "train_loss": loss_sum / max(loss_n, 1),
                "lr": algo.optimizer.param_groups[0]["lr"] * schedule(max(step - 1, 0)),
                "updates": algo.version,
                "staleness": staleness / arrivals,
            }
            if due_eval and not failed:
                rec["eval_loss"] = task.evaluate(algo.model)
            rec["wall_time_s"] = round(time.perf_counter() - wall0, 3)
            if ctx.log is not None:
                ctx.log.write(rec)
            if ctx.bar is not None:
                ctx.bar.update(step, rec)
            loss_sum = loss_n = staleness = arrivals = 0
            last_step = step
        if not next_round(r["worker"]):
            active -= 1
    ctx.final_model = _to_cpu(algo.model.state_dict())
    return failed
