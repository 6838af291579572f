"""Churn on the simulator: workers that leave the run and come back (``cluster.churn``).

    cluster:
      churn:
        - {worker: 2, leave: 40, join: 80}    # away for steps 40..79, back from step 80
        - {worker: 3, leave: 60}              # gone for good from step 60

Semantics, as a fault-tolerant deployment (torchft) has them, with the algorithm code unchanged:

- **Away** for steps ``leave <= s < join``: the worker's work does not count. Its compute takes no
  virtual time; in every data-plane all-reduce it is a bystander: the mean is over the live
  workers only (their sum in rank order, divided by their number), the call's time and wire bytes
  are those of a ring over the live workers, and the bystander books no bytes. So a worker that
  leaves for good equals a run with one fewer worker from that step (tested). Its own work of the
  step it leaves in, and of the unfinished round, is lost. While away its thread still runs the
  loop in lock-step (as a placeholder), so the other workers' calls stay matched.
- **Healing** at ``join``: at the end of step ``join - 1`` the lowest-ranked live worker's shared
  state is copied into the joiner: model, algorithm state (global parameters, inner and outer
  optimizer, round counters) and, in a run, the LR schedule (what `Communicator.register_state`
  registered). The joiner keeps its per-worker state: data position (its sampler drew the batches
  of every step, so it is where a worker that never left would be: a function of its id and the
  step), RNG state and counters. The copy is timed as one message of the state's tensor bytes from
  the source to the joiner on the network model (latency + bytes / bandwidth). It starts when both
  are there, and it keeps both links busy until it ends. The joiner's clock is then the end of the
  copy, and its bytes are booked: sent by the source, received by the joiner.
- **Steps or times**: an int is a step; a time (``'30s'``; a float in seconds in Python) means the
  first step after the worker's own clock reached it (leave), or after the run's clock - the
  latest worker's - reached it (join). Every worker then gathers the clocks at the end of each
  step (control plane, free), and all decide alike. The decision for step s is a function of
  the clocks at the end of step s - 1 only. Checkpointing is refused with a time window: resume
  would need each worker's away flag.
- Worker 0 does not churn: it logs, evaluates and checkpoints. Algorithms whose every data-plane call is
  an all-reduce of a mean are accepted: ddp, local-sgd, diloco, streaming-diloco, without
  compression. Others use the number of workers in their update, or gather payloads, which a
  bystander would distort; they are refused before any work.

Metrics: each logged line lists ``participants``, the live workers at that step. The train loss
is the mean over them.
"""

from __future__ import annotations

from dataclasses import dataclass

CHURN_ALGORITHMS = ("ddp", "local-sgd", "diloco", "streaming-diloco")


@dataclass(frozen=True)
class Away:
    """Worker `worker` is away from `leave` until `join` (None: for good). An int is a step; a
    float is a virtual time in seconds (the config's ``'30s'``)."""

    worker: int
    leave: int | float
    join: int | float | None = None

    @property
    def timed(self) -> bool:
        return isinstance(self.leave, float) or isinstance(self.join, float)

    def away(self, step: int, clocks: list[float] | None) -> bool:
        """Away at `step`? `clocks`: every worker's clock at the end of step - 1 (timed windows)."""
        if isinstance(self.leave, float):
            left = clocks[self.worker] >= self.leave  # its own clock when it finished the previous step
        else:
            left = step >= self.leave
        if self.join is None:
            return left
        joined = max(clocks) >= self.join if isinstance(self.join, float) else step >= self.join  # the run's time
        return left and not joined


class Churn:
    """The schedule: which workers are live at each step. With steps only, a pure function of the
    step; with a time, of the step and the workers' clocks at the end of the previous one."""

    def __init__(self, windows: list[Away], world_size: int):
        self.windows = list(windows)
        self.world_size = world_size
        for w in self.windows:
            if not 1 <= w.worker < world_size:
                raise ValueError(f"churn worker must be in [1, {world_size - 1}] (worker 0 logs, evaluates and "
                                 f"checkpoints and does not churn), got {w.worker}")
            for name, v in (("leave", w.leave), ("join", w.join)):
                if isinstance(v, bool) or not (v is None or isinstance(v, (int, float))):
                    raise ValueError(f"churn {name} must be a step (int) or a virtual time in seconds (float), got {v!r}")
            if isinstance(w.leave, int) and w.leave < 1:
                raise ValueError(f"churn leave must be a step >= 1, got {w.leave}")
            if isinstance(w.leave, float) and w.leave < 0:
                raise ValueError(f"churn leave must be a time >= 0 s, got {w.leave}")
            if w.join is not None and type(w.join) is type(w.leave) and w.join <= w.leave:
                raise ValueError(f"churn join must be after leave ({w.leave}), got {w.join}")
        for i, a in enumerate(self.windows):
            for b in self.windows[i + 1:]:
                if a.worker != b.worker:
                    continue
                if a.timed or b.timed:
                    raise ValueError(f"churn: worker {a.worker} has a window given in time and another one; a worker "
                                     "with a time window has only that one")
                if _overlap(a, b):
                    raise ValueError(f"churn windows of worker {a.worker} overlap: {a} and {b}")

    @property
    def timed(self) -> bool:
        """Some window is given in virtual time: the workers' clocks decide (gathered every step)."""
        return any(w.timed for w in self.windows)

    def away(self, worker: int, step: int, clocks: list[float] | None = None) -> bool:
        return any(w.worker == worker and w.away(step, clocks) for w in self.windows)

    def live(self, step: int, clocks: list[float] | None = None) -> tuple[int, ...]:
        return tuple(r for r in range(self.world_size) if not self.away(r, step, clocks))

    def live_worker_steps(self, steps: int) -> int:
        """Worker-steps in steps 1..`steps` of the live workers (windows in steps only: those of
        one worker do not overlap, so the away steps are the windows' overlaps with 1..steps)."""
        away = sum(max(0, min(steps + 1, w.join if w.join is not None else steps + 1) - w.leave) for w in self.windows)
        return self.world_size * steps - away


def _overlap(a: Away, b: Away) -> bool:
    a_end = a.join if a.join is not None else float("inf")
    b_end = b.join if b.join is not None else float("inf")
    return a.leave < b_end and b.leave < a_end
