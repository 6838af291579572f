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
- Worker 0 does not churn: it logs, evaluates and checkpoints. Steps only. Leaving at a virtual
  time (the issue's ``leave: TIME``) is not built yet. Algorithms whose every data-plane call is
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
    """Worker `worker` is away for steps ``leave <= s < join`` (``join`` None: for good)."""

    worker: int
    leave: int
    join: int | None = None

    def covers(self, step: int) -> bool:
        return self.leave <= step and (self.join is None or step < self.join)


class Churn:
    """The schedule: which workers are live at each step (a pure function of the step)."""

    def __init__(self, windows: list[Away], world_size: int):
        self.windows = list(windows)
        self.world_size = world_size
        for w in self.windows:
            if not 1 <= w.worker < world_size:
                raise ValueError(f"churn worker must be in [1, {world_size - 1}] (worker 0 logs, evaluates and "
                                 f"checkpoints and does not churn), got {w.worker}")
            if w.leave < 1:
                raise ValueError(f"churn leave must be a step >= 1, got {w.leave}")
            if w.join is not None and w.join <= w.leave:
                raise ValueError(f"churn join must be a step after leave ({w.leave}), got {w.join}")
        for i, a in enumerate(self.windows):
            for b in self.windows[i + 1:]:
                if a.worker == b.worker and _overlap(a, b):
                    raise ValueError(f"churn windows of worker {a.worker} overlap: {a} and {b}")

    def away(self, worker: int, step: int) -> bool:
        return any(w.worker == worker and w.covers(step) for w in self.windows)

    def live(self, step: int) -> tuple[int, ...]:
        return tuple(r for r in range(self.world_size) if not self.away(r, step))

    def joining(self, step: int) -> tuple[int, ...]:
        """Workers that come back at `step` (away at ``step - 1``, live at `step`)."""
        return tuple(r for r in range(self.world_size) if self.away(r, step - 1) and not self.away(r, step))


def _overlap(a: Away, b: Away) -> bool:
    a_end = a.join if a.join is not None else float("inf")
    b_end = b.join if b.join is not None else float("inf")
    return a.leave < b_end and b.leave < a_end
