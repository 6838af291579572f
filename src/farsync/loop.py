"""The SPMD training loop that every worker runs, on any backend.

    for step in start+1 .. steps:
        loss = task.loss(model, next batch); loss.backward()   (step 1: mean over algo.initial_batches)
            (an ``algo.forward_only`` algorithm: the loss under no_grad, no backward; step gets a no-grad closure)
        algo.step(); algo.zero_grad(); lr_scheduler.step()
        every log_every steps: gather losses and counters (control plane); rank 0 evaluates and logs
        every checkpoint_every steps: gather every worker's state; rank 0 writes a checkpoint
        a signal (stopping.py) seen by any rank at a logging step: checkpoint, then all ranks stop

Rank 0 holds the run's bookkeeping in a `RunContext`; other ranks pass a context without it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .algorithms import get_algorithm
from .algorithms.options import takes
from .api import build_algorithm as api_build_algorithm
from .checkpoint import RunWriteError, save_checkpoint
from .comm import Communicator
from .comm.base import cpu_clone as _to_cpu
from .config import Config
from .microbatch import MicroBatches, autocast, grad_scaler
from .optim import build_optimizer
from .stopping import STOP, Terminated
from .tasks import Task

class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class RunContext:
    """What a worker needs beyond config and task. Fields marked rank 0 are None elsewhere."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    run_dir: Path | None = None  # rank 0
    log: Any = None  # rank 0: MetricsLog
    bar: Any = None  # rank 0: ProgressBar
    resume: dict[str, Any] | None = None  # rank 0: the loaded checkpoint
    hard_kill: bool = False  # torch backend: an injected fault (comm/faults.py) exits the process
    last_rows: list[dict[str, Any]] = field(default_factory=list)  # rank 0: last gathered counters
    final_model: dict[str, Any] | None = None  # rank 0: state_dict at the evaluation point, at the end
    step: int = 0  # rank 0: the last inner step this worker completed (a run's summary names it when interrupted)
    transfers: Callable[[], list] | None = None  # rank 0, simulator: the communication calls so far (checkpointed)
    lock: Any = None  # rank 0: the run directory's lock (rundir.RunDirLock), released when the run ends
    time_model: str = ""  # the simulator's time model in words (summary.json, report.md)
    comm_log: list[list] | None = None  # simulator: each worker's communication log (retime.py), or None
    group: Any = None  # torch backend with cluster.group_size > 1: this process's comm.groups.ReplicaGroup
    checkpoints: Path | None = None  # torch backend, every rank: RUN_DIR/checkpoints (sharded checkpoints)


def build_algorithm(cfg: Config, model: torch.nn.Module, comm: Communicator):
    """The config's algorithm around a fresh inner optimizer - by the one construction path that
    `farsync.wrap` uses too (`api.build_algorithm`)."""
    spec = cfg.algorithm.spec()
    if takes(get_algorithm(cfg.algorithm.name), "topology"):
        spec["topology"] = cfg.cluster.topology
    spec["grad_clip"] = cfg.train.grad_clip
    return api_build_algorithm(model, build_optimizer(model.named_parameters(), cfg.algorithm.inner), spec, comm)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def same_batch_closure(task: Task, model: torch.nn.Module, batch: Any) -> Callable[[], torch.Tensor]:
    """Recompute the loss and gradients on `batch` at the model's current parameters (for
    optimizers that compare two points on one batch, e.g. AdGD)."""
    return MicroBatches().closure(lambda b: task.loss(model, b), model, [batch])


def no_grad_closure(loss_fn: Callable[[Any], torch.Tensor], batches: list, precision: str,
                    device: torch.device) -> Callable[[], torch.Tensor]:
    """The loss on the step's micro-batches at the model's current parameters, without gradients
    (their mean when there are several; a forward-only algorithm's L(theta))."""

    def evaluate() -> torch.Tensor:
        with torch.no_grad():
            losses = []
            for batch in batches:
                with autocast(precision, device):
                    losses.append(loss_fn(batch))
        if len(losses) == 1:
            return losses[0].detach()
        return sum(x.float() for x in losses) / len(losses)

    return evaluate


def init_from_file(path: str | Path) -> Path:
    """The model file that ``train.init_from`` names: a run directory's model.pt, or the file."""
    path = Path(path)
    file = path / "model.pt" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"train.init_from: {file} does not exist (give a run directory with a model.pt, or a model file)")
    return file


def load_init_from(model: torch.nn.Module, path: str | Path) -> None:
    """Load the parameters (and buffers) saved at `path` into `model`; a missing or extra key, or
    a shape that differs, is refused with a message naming them."""
    file = init_from_file(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a file that is not a saved state_dict
        raise ValueError(f"train.init_from: cannot read {file} as a saved model ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"train.init_from: {file} holds a {type(state).__name__}, not a model's state_dict")
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state] + [f"unexpected {k}" for k in state if k not in own]
    problems += [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
                 for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise ValueError(f"train.init_from: {file} does not fit this task's model: {shown}")
    model.load_state_dict(state)


def add_initial_batches(loss_fn: Callable[[Any], torch.Tensor], model: torch.nn.Module, draw: Callable[[], list],
                        micro: MicroBatches, b0: int, comm: Communicator) -> None:
    """Turn the first step's gradients (already in ``.grad``) into the mean gradient over `b0`
    steps' batches: b0 - 1 more from `draw` (each a step's k micro-batches), charged their
    compute. The logged loss and the token count stay those of the one step."""
    k = 0
    for _ in range(b0 - 1):
        batches = draw()
        micro.backward(loss_fn, batches)
        k = len(batches)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(b0)
    comm.compute((b0 - 1) * k)


def train_worker(comm: Communicator, cfg: Config, task: Task, ctx: RunContext) -> None:
    """Train this worker; rank 0 evaluates, logs and checkpoints."""
    t, group = cfg.train, ctx.group
    rank0 = comm.rank == 0 and (group is None or group.rank == 0)  # logs, evaluates, checkpoints
    torch.manual_seed(cfg.seed)  # identical initial model on every worker
    model = task.build_model().to(ctx.device)
    if t.init_from is not None:  # fine-tuning: a trained model's parameters (a resume overwrites them below)
        load_init_from(model, t.init_from)
    sharded = group is not None and cfg.cluster.group_shard
    if sharded:  # FSDP2 inside the replica group: before the optimizer is built (comm/groups.py)
        from .comm.groups import shard_in_group

        shard_in_group(model, group)
    algo = build_algorithm(cfg, model, comm)
    scaler = grad_scaler(t.precision, ctx.device, t.loss_scale)  # fp16 only (microbatch.py)
    if scaler is not None:
        algo.use_grad_scaler(scaler)  # before a resume loads the algorithm's state: the scaler's is in it
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")  # a skipped fp16 step
    sched = torch.optim.lr_scheduler.LambdaLR(algo.optimizer, t.lr_schedule.lr_lambda(t.steps))
    k = 1 if group is None else group.size
    sampler = task.sampler(comm.rank, t.batch_size * k)  # a replica group draws one worker's batch of k x b
    forward = model
    if group is not None:  # member j trains on its slice of the group's batch, DDP averages inside the group
        from .comm.groups import SliceSampler

        sampler = SliceSampler(sampler, group.rank, k)
        if not sharded:  # (sharded: the FSDP2 module averages the gradients itself)
            forward = torch.nn.parallel.DistributedDataParallel(model, process_group=group.pg)
    micro = MicroBatches(t.precision, ctx.device, scaler, no_sync=forward.no_sync if forward is not model else None)

    def loss_fn(batch: Any) -> torch.Tensor:
        return group_loss(task, forward, batch) if group is not None else task.loss(model, batch)

    def draw() -> list:  # one step's micro-batches
        return [to_device(sampler.next_batch(), ctx.device) for _ in range(t.grad_accum)]

    def shared_state() -> dict[str, Any]:  # what a worker coming back copies (churn): the algorithm's and the schedule
        return {**algo.shared_state(), "lr_scheduler": sched.state_dict()}

    def load_shared_state(state: dict[str, Any]) -> None:
        algo.load_shared_state(state)
        sched.load_state_dict(state["lr_scheduler"])

    comm.register_state(shared_state, load_shared_state)

    # Resume: rank 0 (of each member's cross-group group) hands every worker its own state (control plane).
    states = resume_states(ctx.resume, comm.world_size) if (comm.rank == 0 and ctx.resume is not None) else None
    mine = comm.scatter_object(states if states is not None else [None] * comm.world_size)
    if mine is not None and "shards" in mine:  # a sharded checkpoint: each worker reads its own part
        from .checkpoint_shards import load_shard

        mine = load_shard(mine["shards"], f"{comm.rank}m{group.rank}" if sharded else comm.rank)
        if sharded:  # this member's shards back into DTensors, as its model and optimizer hold them now
            from .comm.groups import ParamLike, dtensor_tree

            params = [p for g in algo.optimizer.param_groups for p in g["params"]]
            like_opt = {"state": {i: ParamLike(p) for i, p in enumerate(params)}}
            mine = dtensor_tree(mine, {"model": model.state_dict(), "algorithm": {"optimizer": like_opt}})
    start = 0
    if mine is not None:
        model.load_state_dict(mine["model"])
        algo.load_state_dict(mine["algorithm"])
        sched.load_state_dict(mine["lr_scheduler"])
        follow_schedule(sched)  # a resumed run with a new train.steps follows the schedule over the new total
        sampler.load_state_dict(mine["sampler"])
        comm.restore_stats(mine["stats"])
        torch.set_rng_state(mine["rng"])
        start = mine["step"]
    if rank0:
        ctx.step = start

    tokens_per_step = task.tokens_per_batch(t.batch_size * k) * t.grad_accum * comm.world_size
    churn = cfg.cluster.churn_schedule()  # None without churn
    loss_sum, loss_n, first_bad = 0.0, 0, math.inf
    prior_wall = ctx.log.records[-1]["wall_time_s"] if (rank0 and ctx.log and ctx.log.records) else 0.0
    wall0 = time.perf_counter() - prior_wall
    for step in range(start + 1, t.steps + 1):
        comm.begin_step(step)
        lr = sched.get_last_lr()[0]
        batches = draw()
        if algo.forward_only:  # zeroth-order: the loss and a no-grad closure on this batch, no backward
            closure = no_grad_closure(loss_fn, batches, t.precision, ctx.device)
            loss = closure()
        else:
            loss = micro.backward(loss_fn, batches)
            if step == 1 and algo.initial_batches > 1:
                add_initial_batches(loss_fn, model, draw, micro, algo.initial_batches, comm)
            closure = micro.closure(loss_fn, model, batches)
        if t.grad_accum > 1:
            comm.compute(t.grad_accum - 1)  # the step's other micro-batches (the step itself charges one)
        algo.step(loss, closure=closure)
        algo.zero_grad()
        sched.step()
        value = loss.item()
        if not math.isfinite(value):
            first_bad = min(first_bad, step)
        loss_sum, loss_n = loss_sum + value, loss_n + 1
        if rank0:
            ctx.step = step

        do_eval = step == t.steps or (t.eval_every > 0 and step % t.eval_every == 0)
        if not (do_eval or step % t.log_every == 0):
            continue
        rows = comm.gather_metrics({"loss": loss_sum / loss_n, "bad": first_bad, "stop": STOP.signum or 0,
                                    **comm.stats.as_dict()})
        extra = algo.log_metrics(rows)  # every rank (e.g. a decentralized run's average model and consensus error)
        loss_sum, loss_n = 0.0, 0
        live = [r for r in rows if not r.get("away")]  # churn: the workers away do not count (comm/churn.py)
        bad = min(r["bad"] for r in live)  # first step with a non-finite loss on any worker (inf: none)
        failed = math.isfinite(bad)
        rec = None
        if rank0:
            ctx.last_rows = rows
            rec = {
                "step": step,
                "tokens": tokens_so_far(step, tokens_per_step // comm.world_size, comm.world_size, churn, rows),
                "sim_time_s": max(r["clock_s"] for r in rows),
                "bytes_sent": sum(r["bytes_sent"] for r in rows),
                "bytes_received": sum(r["bytes_received"] for r in rows),
                "train_loss": sum(r["loss"] for r in live) / len(live),
                "lr": lr,
                **extra,
            }
            if scaler is not None:  # fp16: rank 0's loss scale and the steps it skipped on an overflow
                rec["loss_scale"], rec["skipped_steps"] = scaler.get_scale(), algo.skipped_steps
            if "away" in rows[0]:
                rec["participants"] = [i for i, r in enumerate(rows) if not r["away"]]
        evaluate(algo, task, ctx, rank0, rec, do_eval and not failed, step == t.steps,
                 group_evaluates=sharded and group.index == 0)
        if rank0:
            write_row(ctx, rec, wall0)
        if failed:
            comm.all_gather_object(None)  # every rank stops only after rank 0 has logged this step
            raise NonFiniteLoss(f"non-finite loss at step {int(bad)}")
        stop = max(r["stop"] for r in rows) if step < t.steps else 0  # a signal reached some rank
        if t.checkpoint_every and step < t.steps and (step % t.checkpoint_every == 0 or stop):
            state = {
                "step": step,
                "model": model.state_dict(),
                "algorithm": algo.state_dict(),
                "lr_scheduler": sched.state_dict(),
                "sampler": sampler.state_dict(),
                "rng": torch.get_rng_state(),
                "stats": comm.stats.as_dict(),
            }
            if sharded:  # each member's own part: its shards as plain tensors
                from .comm.groups import local_tree

                state = local_tree(state)
            write_checkpoint(cfg, ctx, comm, rank0, step, state)
        if stop:
            raise Terminated(stop)


def write_row(ctx: RunContext, rec: dict, wall0: float) -> None:
    """Rank 0: stamp the metrics row with the wall time since `wall0`, write it, show it."""
    rec["wall_time_s"] = round(time.perf_counter() - wall0, 3)
    if ctx.log is not None:
        ctx.log.write(rec)
    if ctx.bar is not None:
        ctx.bar.update(rec["step"], rec)


def evaluate(algo, task: Task, ctx: RunContext, rank0: bool, rec: dict | None, eval_loss: bool, final: bool,
             group_evaluates: bool = False) -> None:
    """The evaluation step, on every rank: all enter ``algo.eval_params()`` (it may communicate,
    e.g. a decentralized run's average model) and rank 0 evaluates in it: ``eval_loss`` into
    `rec`, and at the last step the model to save. `group_evaluates`: this process is a member of
    rank 0's sharded replica group, whose forward (and full state dict) every member computes."""
    if not (eval_loss or final):
        return
    with algo.eval_params() as m:
        if (rank0 or group_evaluates) and eval_loss:
            loss = task.evaluate(m)
            if rank0:
                rec["eval_loss"] = loss
        if (rank0 or group_evaluates) and final:
            state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in m.state_dict().items()}
            if rank0:
                ctx.final_model = _to_cpu(state)


def tokens_so_far(step: int, per_worker: int, workers: int, churn: Any, rows: list[dict]) -> int:
    """Tokens trained on after `step` steps: every worker's batches, or only the live ones' under
    churn (a window in time: each row counts its live steps)."""
    if churn is None:
        return step * per_worker * workers
    if churn.timed:
        return sum(r["live_steps"] for r in rows) * per_worker
    return churn.live_worker_steps(step) * per_worker


def write_checkpoint(cfg: Config, ctx: RunContext, comm: Communicator, rank0: bool, step: int, state: dict) -> None:
    """Every rank: save this step's checkpoint (`state`: this worker's) and wait until it is on disk.
    Full format: the states gathered to rank 0, which writes one file. Sharded: each process writes
    its own part (`checkpoint_shards`), then rank 0 the small file naming and checksumming them. A
    write error stops every rank with rank 0's message."""
    group = ctx.group
    error, parts = None, {}
    if cfg.train.checkpoint_format == "sharded":
        from .checkpoint_shards import manifest, save_shards, shard_dir

        path = shard_dir(ctx.checkpoints, step)
        try:
            writer = (comm.rank if group is None or group.rank == 0 else None) if not cfg.cluster.group_shard else \
                f"{comm.rank}m{group.rank}"  # a sharded group: every member its own shards
            save_shards(path, writer, state)
        except Exception as err:  # noqa: BLE001 - DCP raises on every rank when one failed
            error = f"{type(err).__name__} while writing {path}: {err}"
        if rank0 and error is None:
            parts = {"shards": path.name, "manifest": manifest(path)}
    else:
        parts = {"workers": comm.gather_object(_to_cpu(state)) if group is None or group.rank == 0 else None}  # members hold one state
    if rank0 and error is None:
        payload = {"config": cfg.to_dict(), "step": step, **parts, "metrics": list(ctx.log.records)}
        if ctx.transfers is not None:
            payload["transfers"] = ctx.transfers()
        try:
            save_checkpoint(ctx.run_dir, payload)
        except RunWriteError as err:  # e.g. a full disk: every rank stops with rank 0's message
            error = str(err)
    errors = comm.all_gather_object(error)  # commit: nobody goes on until the checkpoint is on disk
    if group is not None:
        errors = group.from_member0(errors)
    if errors[0] is not None:
        raise RunWriteError(errors[0])


def resume_states(ckpt: dict[str, Any], workers: int) -> list[dict[str, Any]]:
    """What rank 0 hands each worker on resume: its state (full format), or where to read it."""
    if "shards" in ckpt:
        return [{"shards": ckpt["shards_path"]} for _ in range(workers)]
    return ckpt["workers"]


def group_loss(task: Task, ddp: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The loss through the DDP wrapper (its forward arms the gradient average of the backward)."""
    try:
        return task.loss(ddp, batch)
    except AttributeError as err:
        raise RuntimeError(f"task {type(task).__name__} computes its loss without calling the model's forward ({err}); "
                           "DDP inside a replica group (cluster.group_size > 1) needs tasks whose loss calls model(...)") from None


def follow_schedule(sched: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set each group's lr to the schedule's value at the restored step, as ``LambdaLR`` computes
    it (bit for bit the saved value when the schedule is unchanged)."""
    lrs = [base * lam(sched.last_epoch) for base, lam in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(sched.optimizer.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs
