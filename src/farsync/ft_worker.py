"""One replica's process on ``cluster.backend: torchft`` (started by `farsync launch`, under torchrun).

    replica g:  Manager + fault-tolerant gloo group  ->  FTCommunicator  ->  the algorithm
    while algo.local_step < train.steps:                       (the loop is driven by the step the
        batch = this replica's batch of step local_step + 1     quorum agreed on: a heal jumps it)
        loss.backward(); algo.step()  # a sync: quorum (maybe heal), all-reduce, commit or discard
        every log_every steps: a line in RUN_DIR/replicas/g/metrics.jsonl
    at the end: RUN_DIR/replicas/g/{summary.json, model.pt}

What a replica keeps as its own and what it copies when it heals (the issue's split):

- shared, copied from a live peer at the quorum (`Communicator.register_state`): the model, the
  algorithm's state (global parameters, inner and outer optimizer, round counters, its step) and
  the LR schedule; the Manager's committed step comes with it.
- per replica: the data position is a function of the replica id and the step (the sampler of
  worker g, at the batch of that step: after a heal it is rebuilt and advanced to it), the torch
  RNG, the byte and time counters, and a residual of this replica's own gradients: DeMo's momentum
  (`demo.py`: not in its shared state, a replacement starts from zeros). Compression's
  error-feedback residuals do not arise (algorithm.compress is refused).

Every replica logs and evaluates on its own: there is no cross-replica control plane that a
failure could block. The launcher (`launch.py`) starts the Lighthouse and one torchrun per replica;
``--max-restarts K`` makes torchrun start a replacement when a replica dies, which heals from a
live one at its first synchronization. The other replicas never stop. A signal (SIGTERM, SIGINT,
SIGHUP; the launcher forwards its own to every replica) stops a replica at once: its metrics so far,
and a summary naming the signal and the step.
"""

from __future__ import annotations

import math
import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from .config import Config, ConfigError, load_config
from .loop import NonFiniteLoss, build_algorithm
from .microbatch import MicroBatches, grad_scaler
from .rundir import MetricsLog, read_metrics, write_json_atomic
from .stopping import Terminated, exit_code, stop_on_signals, stop_status
from .tasks import Task

READY_FILE = "ready"
PACE_ENV = "FARSYNC_STEP_SLEEP"  # testing: seconds each inner step sleeps (a slower, compute-like pace)


def replica_dir(run_dir: str | Path, replica: int) -> Path:
    return Path(run_dir) / "replicas" / str(replica)


def check_ft_model(model: torch.nn.Module) -> None:
    """Refuse a model whose floating-point buffers (BatchNorm statistics) would be averaged outside
    a committed round."""
    if any(b.is_floating_point() for b in model.buffers()):
        raise ConfigError("cluster.backend: torchft does not average floating-point buffers (e.g. BatchNorm statistics) "
                          "yet; use a model without them (LayerNorm has none)")


def run_ft_worker(config: str | Path | None, overrides: list[str] | None, out: str | Path,
                  unset: list[str] | None = None) -> int:
    """Entry point of replica REPLICA_GROUP_ID (env, with NUM_REPLICA_GROUPS and TORCHFT_LIGHTHOUSE,
    set by the launcher). Returns 0 when the replica trained to the end."""
    import torch.distributed as dist
    from torchft import Manager
    from torchft.process_group import ProcessGroupGloo

    from .comm.fault_tolerant import FTCommunicator, parse_ft_fault
    from .comm.faults import FAULT_ENV
    from .runner import build_task, initial_model

    cfg = load_config(config, overrides, unset)
    if cfg.cluster.backend != "torchft":
        raise ConfigError(f"this worker runs cluster.backend: torchft (got {cfg.cluster.backend!r})")
    started_at = process_started_at()
    replica, replicas = int(os.environ["REPLICA_GROUP_ID"]), int(os.environ["NUM_REPLICA_GROUPS"])
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    ft = cfg.cluster.ft
    if ft.host in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on loopback (else it advertises the host name)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // replicas))
    task = build_task(cfg)
    check_ft_model(initial_model(cfg, task))
    rdir = replica_dir(out, replica)
    rdir.mkdir(parents=True, exist_ok=True)
    # a fresh store per process (a restarted replica must not see its dead predecessor's keys)
    store = dist.TCPStore(ft.host, 0, is_master=True, wait_for_workers=False)
    manager = Manager(
        pg=ProcessGroupGloo(timeout=timedelta(seconds=ft.seconds("timeout"))), load_state_dict=None, state_dict=None,
        min_replica_size=ft.min_replicas, use_async_quorum=False, replica_id=f"farsync_{replica}", rank=0, world_size=1,
        store_addr=ft.host, store_port=store.port, lighthouse_addr=os.environ["TORCHFT_LIGHTHOUSE"], hostname=ft.host,
        timeout=timedelta(seconds=ft.seconds("timeout")), quorum_timeout=timedelta(seconds=ft.seconds("quorum_timeout")),
        init_sync=False,  # every replica builds the same model from the run's seed
    )
    manager_ready_at = time.time()
    fault = parse_ft_fault(os.environ.get(FAULT_ENV)) if attempt == 0 else None
    comm = FTCommunicator(manager, replica, replicas, fault)
    comm.killed_at_path = rdir / "killed_at"
    status, code, final_eval = "completed", 0, None
    try:
        if attempt == 0:
            wait_for_replicas(out, replica, replicas, ft.seconds("join_timeout"))
        with stop_on_signals(graceful=False):  # a signal stops this replica at once, with its summary
            final_eval = train_replica(comm, cfg, task, rdir, attempt)
    except NonFiniteLoss as err:
        status, code = f"diverged: {err}", 1
    except (Terminated, KeyboardInterrupt) as err:
        status = stop_status(err.signum if isinstance(err, Terminated) else signal.SIGINT, comm.step)
        code = exit_code(err)
    except BaseException as err:
        status, code = f"failed: {type(err).__name__}: {err}", 1
        raise
    finally:
        summary = {"replica": replica, "attempt": attempt, "status": status, "step": comm.step,
                   "committed_step": manager.current_step(), "heals": comm.heals,
                   "final_eval_loss": final_eval, "started_at": started_at,
                   "manager_ready_at": manager_ready_at, **comm.stats.as_dict()}
        write_json_atomic(rdir / "summary.json", summary)
        write_json_atomic(rdir / f"rounds-{attempt}.json", {"columns": ["time", "committed_step", "participants", "committed"],
                                                             "rows": comm.rounds})
        manager.shutdown(wait=False)
    return code


def process_started_at() -> float:
    """This process's start (Unix time, before any import), from /proc on Linux; now elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # since boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def wait_for_replicas(out: str | Path, replica: int, replicas: int, timeout_s: float) -> None:
    """Start together: the first quorum should hold every replica (a fast one would otherwise
    commit rounds alone and the others heal from it). Each replica marks RUN_DIR/replicas/g/ready
    once its Manager heartbeats, then waits for all the marks (a replacement does not wait)."""
    (replica_dir(out, replica) / READY_FILE).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while not all((replica_dir(out, g) / READY_FILE).is_file() for g in range(replicas)):
        if time.monotonic() > deadline:
            missing = [g for g in range(replicas) if not (replica_dir(out, g) / READY_FILE).is_file()]
            raise RuntimeError(f"replicas {missing} did not start within cluster.ft.join_timeout ({timeout_s:g} s)")
        time.sleep(0.05)
    time.sleep(0.3)  # a few heartbeats, so that the Lighthouse knows every replica before the first quorum


def train_replica(comm, cfg: Config, task: Task, rdir: Path, attempt: int) -> float | None:
    """Train replica ``comm.replica`` to ``train.steps`` (see the module docstring); return its
    final evaluation loss."""
    t = cfg.train
    torch.manual_seed(cfg.seed)  # identical initial model on every replica
    model = task.build_model()
    algo = build_algorithm(cfg, model, comm)
    scaler = grad_scaler(t.precision, torch.device("cpu"), t.loss_scale)  # fp16 (microbatch.py); healed with the algorithm
    if scaler is not None:
        algo.use_grad_scaler(scaler)
    sched = torch.optim.lr_scheduler.LambdaLR(algo.optimizer, t.lr_schedule.lr_lambda(t.steps))
    comm.register_state(lambda: {**algo.shared_state(), "lr_scheduler": sched.state_dict()},
                        lambda s: (algo.load_shared_state(s), sched.load_state_dict(s["lr_scheduler"])))
    path = rdir / "metrics.jsonl"
    history = read_metrics(path) if path.is_file() else None  # a replacement appends
    tracking = None
    if cfg.logging:  # this replica's trackers, in its own directory
        from .tracking import Tracking

        tracking = Tracking(rdir, cfg.logging, config=cfg.to_dict(), history=history or (), name=f"{cfg.name}-replica{comm.replica}")
    log = MetricsLog(path, history, tracking=tracking)
    try:
        return _train(comm, cfg, task, rdir, attempt, model, algo, sched, log)
    finally:
        log.close()


def _train(comm, cfg, task, rdir, attempt, model, algo, sched, log) -> float | None:
    """The replica's loop, driven by the committed step; returns its final evaluation loss."""
    t = cfg.train
    sampler, drawn = task.sampler(comm.replica, t.batch_size), 0
    loss_sum, loss_n, heals_logged, wall0, final_eval = 0.0, 0, 0, time.perf_counter(), None
    pace = float(os.environ.get(PACE_ENV, "0"))
    micro = MicroBatches(t.precision, torch.device("cpu"), algo.grad_scaler)

    def loss_fn(batch):
        return task.loss(model, batch)

    while algo.local_step < t.steps:
        step = algo.local_step + 1
        if drawn != step - 1:  # healed to another step: this replica's batches from there
            sampler, drawn = task.sampler(comm.replica, t.batch_size), 0
            for _ in range((step - 1) * t.grad_accum):
                sampler.next_batch()
        comm.begin_step(step)
        lr = sched.get_last_lr()[0]
        batches = [sampler.next_batch() for _ in range(t.grad_accum)]
        drawn = step
        loss = micro.backward(loss_fn, batches)
        if pace:
            time.sleep(pace)
        algo.step(loss, closure=micro.closure(loss_fn, model, batches))
        algo.zero_grad()
        sched.step()
        value = loss.item()
        loss_sum, loss_n = loss_sum + value, loss_n + 1
        done = algo.local_step  # step, or the step of the peer this replica healed from
        final = done >= t.steps
        if not (final or done // t.log_every > (step - 1) // t.log_every):
            if math.isfinite(value):
                continue
        rec = {"step": done, "committed_step": comm.committed_step, "participants": comm.participants,
               "train_loss": loss_sum / loss_n, "lr": lr, "attempt": attempt,
               **{k: v for k, v in comm.stats.as_dict().items() if k in ("bytes_sent", "bytes_received", "clock_s")}}
        if len(comm.heals) > heals_logged:
            rec["healed_at_committed_step"], heals_logged = comm.heals[heals_logged:], len(comm.heals)
        loss_sum, loss_n = 0.0, 0
        if not math.isfinite(value):
            log.write({**rec, "wall_time_s": round(time.perf_counter() - wall0, 3)})
            raise NonFiniteLoss(f"non-finite loss at step {step}")
        if final or (t.eval_every and done // t.eval_every > (step - 1) // t.eval_every):
            with algo.eval_params() as m:
                rec["eval_loss"] = task.evaluate(m)
                if final:
                    final_eval = rec["eval_loss"]
                    torch.save({k: v.detach().clone() for k, v in m.state_dict().items()}, rdir / "model.pt")
        rec["wall_time_s"] = round(time.perf_counter() - wall0, 3)
        log.write(rec)
    return final_eval


def read_replica_summaries(run_dir: str | Path, replicas: int) -> list[dict[str, Any] | None]:
    import json

    out = []
    for g in range(replicas):
        p = replica_dir(run_dir, g) / "summary.json"
        out.append(json.loads(p.read_text()) if p.is_file() else None)
    return out
