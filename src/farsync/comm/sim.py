"""The simulated cluster: N SPMD workers in one process, with virtual clocks and a network model.

Each worker runs the user's function as its own greenlet (``engine="greenlets"``, the default:
every worker on the calling thread, so torch's OpenMP team is the calling thread's and a hand-off
is a stack switch of about a microsecond) or its own thread (``engine="threads"``; spread over
processes, ``parallel`` > 1, always threads), and only one runs at a time: a worker keeps the baton until it must wait for communication (a blocking collective, or
``Work.wait()`` on a call that other ranks have not issued yet); the baton then passes to the
next runnable rank in round-robin order; after a control-plane call (object all-gather,
gather, scatter: logging, checkpoint commits) the baton goes back to the lowest rank, so the
workers go on in the order of a fresh start, as a run resumed from a checkpoint does. Collective
results are computed in rank order when the last rank arrives. Scheduling, results and virtual
times are therefore a deterministic function of the program, independent of the host. Each
worker also gets its own copy of torch's global CPU RNG state (saved and restored at every
hand-off), as if it were a separate process.

Virtual time: ``compute()`` advances a worker's clock by the time model's step time. A call that
all participants have issued starts at ``max(issue times, participants' link-free times)``, lasts
the `NetworkModel` time and occupies the participants' links until it ends. A call issued inside
``comm.payload(spans)`` right after ``compute()`` (nothing in between on that worker) carries
the gradient-like content of the step just computed: it goes in buckets, each issued when the
step's backward has produced it (`timing.py`: per-layer timing; DDP's overlapped reduction). A blocking call (or
``wait()``) moves the worker's clock to the end of the call and counts the gap as blocked time;
compute between a non-blocking call and its ``wait()`` overlaps with the transfer.

``transfers`` lists every call's (start, end, rank, bytes that rank sends) - the data of
bytes-in-flight over time (`farsync.report.bytes_in_flight`); a bucketed call's row runs from its
first bucket's start to its last bucket's arrival (``bucket_transfers = True``: a row per bucket).
"""

from __future__ import annotations

import contextvars
import copy
import multiprocessing
import threading
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from .base import CommStats, Communicator, Work, tensor_nbytes, wire_bytes
from . import sim_parallel
from .churn import Churn
from .cost import NetworkModel, TimeModel
from .timing import Spans, buckets


_CONTROL = ("all_gather_object", "gather_object", "scatter_object", "heal")  # control plane: free
_current: contextvars.ContextVar[SimCommunicator | None] = contextvars.ContextVar("farsync_sim_comm", default=None)
# ^ the SimCommunicator of the worker running here (each thread and each greenlet has its own context)
ENGINES = ("greenlets", "threads")


def current_sim_communicator() -> SimCommunicator | None:
    """The communicator of the simulated worker calling this (None outside a simulated worker)."""
    return _current.get()


class SimDeadlock(RuntimeError):
    """Every unfinished worker waits for communication that no other worker will issue."""


class _Aborted(BaseException):
    """Unwinds a worker thread after another worker failed."""


class _Op:
    """One pending communication call, matched across ranks by call order."""

    def __init__(self, kind: str, ranks: tuple[int, ...]):
        self.kind = kind
        self.ranks = ranks
        self.entries: dict[int, tuple[Any, float]] = {}  # rank -> (payload, issue time)
        self.done = False
        self.end_time = 0.0
        self.result: Any = None
        self.nbytes = 0  # payload bytes per worker (the cost model's B), set when ranks issue it
        self.plan: list[tuple[float, float]] | None = None  # described payload: (share, ready fraction) per bucket
        self.releases: dict[int, list[float]] = {}  # rank -> issue time of each bucket
        self.bystanders: set[int] = set()  # churn: ranks that are away (their entries do not count)


class _SimWork(Work):
    def __init__(self, cluster: SimCluster, rank: int, op: _Op):
        self._cluster, self._rank, self._op = cluster, rank, op

    def wait(self) -> None:
        self._cluster._wait_op(self._rank, self._op)

    def is_completed(self) -> bool:
        return self._op.done and self._op.end_time <= self._cluster.stats[self._rank].clock_s


class SimCluster:
    """A simulated cluster of `world_size` workers. ``run(fn)`` calls ``fn(comm)`` on each.

    `parallel` > 1 spreads the workers over that many processes (`sim_parallel`: identical
    results, collectives only), each using `threads` torch threads (default: this process's
    threads / `parallel`). `engine` runs the workers of one process as greenlets on the calling
    thread (the default) or as threads; both give the same results bit for bit."""

    def __init__(
        self,
        world_size: int,
        network: NetworkModel | None = None,
        time_model: TimeModel | None = None,
        parallel: int = 1,
        threads: int | None = None,
        churn: Churn | None = None,
        engine: str = "greenlets",
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        sim_parallel.slices(world_size, parallel)  # raises on a bad value, naming the range
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if parallel > 1 and "fork" not in multiprocessing.get_all_start_methods():
            raise ValueError("parallel > 1 needs the 'fork' start method (Linux); use parallel: 1 here")
        self.world_size = world_size
        self.parallel, self.threads = parallel, threads
        self.engine = engine if parallel == 1 else "threads"  # a process's proxies are threads (sim_parallel)
        if churn is not None and parallel > 1:
            raise ValueError("churn needs parallel: 1 (a returning worker copies a live worker's state in memory)")
        self.churn = churn if churn is not None and churn.windows else None  # workers away and back (churn.py)
        self.worker_rng = True  # False: no RNG state per worker (a replay of communication logs draws nothing)
        self.bucket_transfers = False  # True: `transfers` gets one row per bucket (tests), else one per call
        self.network = network or NetworkModel()
        self.time_model = time_model or TimeModel(step_time_s=0.0)
        if self.time_model.speeds and len(self.time_model.speeds) != world_size:
            raise ValueError(f"need {world_size} speed factors, got {len(self.time_model.speeds)}")
        self._reset()

    def _reset(self) -> None:
        n = self.world_size
        self.stats = [CommStats() for _ in range(n)]
        self.steps_done = [0.0] * n  # inner steps each worker has computed in this run (progress)
        self.step_of = [1] * n  # churn: the inner step each worker is in
        self.live_at: dict[int, tuple[int, ...]] = {}  # churn: the live workers of each step, once decided
        self.away = [self.churn is not None and r not in self._live(1) for r in range(n)]  # churn: away at its step
        self._state_fns: list[tuple[Callable, Callable] | None] = [None] * n  # churn: Communicator.register_state
        self._link_free = [0.0] * n
        lock = threading.RLock()
        self._cv = threading.Condition(lock)  # the one lock every worker holds while it runs
        self._wake = [threading.Condition(lock) for _ in range(n)]  # worker r sleeps on its own: O(1) per hand-off
        self._turn: int | None = 0
        self._scheduler = None  # engine "greenlets": the greenlet that runs the workers (_run_greenlets)
        self._waiting: list[tuple[Callable[[], bool], str, tuple[int, ...]] | None] = [None] * n  # (ready, what, peers)
        self._finished = [False] * n
        self._error: BaseException | None = None
        self._coll_seq = [0] * n
        self._coll_ops: dict[int, _Op] = {}
        self._p2p_seq: dict[tuple[str, int, int], int] = {}
        self._p2p_ops: dict[tuple[int, int, int], _Op] = {}
        self._rng: list[torch.Tensor] = []
        self._last_step = [(0.0, 0.0)] * n  # (start, compute time) of each worker's last step
        self._last_end = [-1.0] * n  # its clock when that step's compute ended
        self.carrying: list[Spans | None] = [None] * n  # what the worker's next calls carry (Communicator.payload)
        self._plans: dict[tuple, list[tuple[float, float]]] = {}  # (payload bytes, spans) -> its buckets
        self.transfers: list[tuple[float, float, int, int]] = []  # (start, end, rank, bytes it sends) per call
        self._calls: list[deque] = [deque() for _ in range(n)]  # parallel: each rank's calls from its host, in order
        self._remote_waiting: set[int] = set()  # parallel: proxies waiting for their process's next call

    # ------------------------------------------------------------------ running
    def run(self, fn: Callable[[SimCommunicator], Any]) -> list[Any]:
        """Run ``fn(comm)`` as every worker; return the per-rank results (raises on failure)."""
        self._reset()
        main_rng = torch.get_rng_state()
        self._rng = [main_rng.clone() for _ in range(self.world_size)]
        threads = self.threads or max(1, torch.get_num_threads() // self.parallel)
        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            if self.parallel == 1:
                run = self._run_greenlets if self.engine == "greenlets" else self._run_threads
                return run(fn, main_rng)
            return sim_parallel.run_spread(self, fn, main_rng, threads)
        finally:
            torch.set_num_threads(old_threads)

    def _run_threads(self, fn: Callable[[SimCommunicator], Any], main_rng: torch.Tensor) -> list[Any]:
        results: list[Any] = [None] * self.world_size
        threads = [
            threading.Thread(target=self._thread_main, args=(r, fn, results), daemon=True, name=f"sim-rank{r}")
            for r in range(self.world_size)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException as exc:  # Ctrl-C or a signal: every worker stops at its next step or call
            self._stop_all(exc, threads)
            raise
        torch.set_rng_state(main_rng)
        if self._error is not None:
            raise self._error
        return results

    def _run_greenlets(self, fn: Callable[[SimCommunicator], Any], main_rng: torch.Tensor) -> list[Any]:
        """The scheduler: switch to the greenlet whose turn it is until none is left; a worker
        that must wait switches back here (`_wait_turn`). After an error every started worker is
        resumed once more, to raise `_Aborted` where it waits and unwind its ``finally`` blocks."""
        from greenlet import greenlet

        results: list[Any] = [None] * self.world_size
        workers = [greenlet(self._thread_main) for _ in range(self.world_size)]
        self._scheduler = greenlet.getcurrent()
        grad = torch.is_grad_enabled()
        started = [False] * self.world_size
        try:
            while self._error is None and self._turn is not None:
                r = self._turn
                if started[r]:
                    workers[r].switch()
                else:
                    started[r] = True
                    workers[r].switch(r, fn, results)
        except BaseException as exc:  # Ctrl-C or a signal while no worker ran
            if self._error is None:
                self._error = exc
        finally:
            for r, g in enumerate(workers):
                if started[r] and not g.dead:
                    g.switch()  # it raises _Aborted in _wait_turn
            self._scheduler = None
            torch.set_grad_enabled(grad)
        torch.set_rng_state(main_rng)
        if self._error is not None:
            raise self._error
        return results

    def _stop_all(self, exc: BaseException, threads: list[threading.Thread]) -> None:
        """Make every worker thread leave (`_Aborted` at its next ``compute()`` or communication
        call) and wait for them, so that none is left running inside torch at interpreter exit."""
        with self._cv:
            if self._error is None:
                self._error = exc
            self._notify()
        for t in threads:
            while t.is_alive():
                try:
                    t.join()
                except BaseException:  # another signal while the workers finish their step
                    continue

    def _thread_main(self, rank: int, fn: Callable, results: list) -> None:
        comm = SimCommunicator(self, rank)
        _current.set(comm)
        if self.engine == "greenlets":
            torch.set_grad_enabled(True)  # as in a new thread
        try:
            with self._cv:
                self._wait_turn(rank)
                self._enter(rank)
            results[rank] = fn(comm)
        except _Aborted:
            return
        except BaseException as exc:  # noqa: BLE001 - reported to the caller of run()
            if hasattr(exc, "add_note"):
                exc.add_note(f"(raised on simulated rank {rank})")
            with self._cv:
                if self._error is None:
                    self._error = exc
                self._notify()
            return
        with self._cv:
            self._finished[rank] = True
            self._handoff(rank)

    # ------------------------------------------------------------------ baton
    def _wait_turn(self, rank: int) -> None:
        while self._turn != rank:
            if self._error is not None:
                raise _Aborted()
            if self.engine == "greenlets":
                grad = torch.is_grad_enabled()  # torch's grad mode belongs to the thread: keep this worker's
                self._scheduler.switch()
                torch.set_grad_enabled(grad)
            else:
                self._wake[rank].wait()
        if self._error is not None:
            raise _Aborted()

    def _notify(self) -> None:
        """Wake the worker whose turn it is (all of them after an error, so that they leave; cv held).
        Greenlets need no wake-up: the scheduler switches to whoever's turn it is."""
        if self.engine == "greenlets":
            return
        if self._error is not None or self._turn is None:
            for c in self._wake:
                c.notify_all()
        else:
            self._wake[self._turn].notify()

    def _enter(self, rank: int) -> None:
        """`rank` takes the baton: its RNG state becomes torch's."""
        if self.parallel == 1 and self.worker_rng:  # with parallel, the ranks' hosts keep their RNG states (proxies draw nothing)
            torch.set_rng_state(self._rng[rank])

    def _leave(self, rank: int) -> None:
        """`rank` gives the baton away: keep torch's RNG state as its own."""
        if self.parallel == 1 and self.worker_rng:
            self._rng[rank] = torch.get_rng_state()

    def _handoff(self, rank: int) -> None:
        """Give the baton to the next runnable rank after `rank` (cv held)."""
        self._leave(rank)
        n = self.world_size
        for k in range(1, n + 1):
            r = (rank + k) % n
            if self._finished[r]:
                continue
            w = self._waiting[r]
            if w is None or w[0]():
                self._turn = r
                self._notify()
                return
        self._turn = None
        if not all(self._finished) and self._error is None and not self._remote_waiting:
            waits = ", ".join(
                f"rank {r} in {w[1]}" for r, w in enumerate(self._waiting) if w is not None and not self._finished[r]
            )
            self._error = SimDeadlock(
                f"simulated cluster deadlock: {waits}. Every rank must issue the same collectives "
                "in the same order, and every send needs a matching recv."
            )
        self._notify()

    def _restart_from(self, rank: int, first: int) -> None:
        """`rank` completed a control-plane call that the other ranks wait on: give the baton to
        `first` (the lowest rank), so that the ranks go on in the order of a fresh start. The
        interleaving after a checkpoint commit is then the one a run resumed from that checkpoint
        has, and so are the virtual times of point-to-point messages whose per-link order follows it."""
        if rank == first:
            return
        with self._cv:
            self._leave(rank)
            self._turn = first
            self._notify()
            self._wait_turn(rank)
            self._enter(rank)

    def _block_until(self, rank: int, ready: Callable[[], bool], what: str, peers: tuple[int, ...] = ()) -> None:
        """Wait (giving the baton away) until `ready()`; `peers` are the ranks the wait depends on."""
        with self._cv:
            if ready():
                return
            self._waiting[rank] = (ready, what, peers)
            self._handoff(rank)
            self._wait_turn(rank)
            self._waiting[rank] = None
            self._enter(rank)

    # ------------------------------------------------------------------ proxies (parallel > 1)
    def _deliver(self, rank: int, call: tuple) -> None:
        """A call from `rank`'s host (a reader thread, or the local slice's rank itself): queue it
        for `rank`'s proxy; if every proxy was waiting, give `rank` the baton."""
        with self._cv:
            self._calls[rank].append(call)
            if self._turn is None and rank in self._remote_waiting and self._error is None:
                self._turn = rank
                self._notify()

    def _next_call(self, rank: int) -> tuple:
        """`rank`'s next call from its host, waiting for it (and letting the other proxies run) if needed."""
        calls = self._calls[rank]
        with self._cv:
            if not calls:
                self._remote_waiting.add(rank)
                try:
                    self._block_until(rank, lambda: bool(calls), "a call from its simulator process")
                finally:
                    self._remote_waiting.discard(rank)
            return calls.popleft()

    # ------------------------------------------------------------------ ops
    def _issue_collective(self, rank: int, kind: str, payload: Any, spec: tuple) -> _Op:
        with self._cv:
            seq = self._coll_seq[rank]
            self._coll_seq[rank] += 1
            op = self._coll_ops.get(seq)
            if op is None:
                op = self._coll_ops[seq] = _Op(kind, tuple(range(self.world_size)))
                op.spec = spec  # type: ignore[attr-defined]
            elif op.kind != kind or op.spec != spec:  # type: ignore[attr-defined]
                raise RuntimeError(
                    f"collective mismatch at call #{seq}: rank {rank} issued {kind}{spec} but another "
                    f"rank issued {op.kind}{op.spec}"  # type: ignore[attr-defined]
                )
            op.entries[rank] = (payload, self.stats[rank].clock_s)
            if self.away[rank]:
                op.bystanders.add(rank)
            op.nbytes = self._book(rank, kind, payload, spec)
            self._release(rank, op)
            if len(op.entries) == self.world_size:
                del self._coll_ops[seq]
                self._complete(op)
            return op

    def _issue_p2p(self, rank: int, kind: str, tensor: torch.Tensor, peer: int) -> _Op:
        if self.parallel > 1:
            raise RuntimeError(sim_parallel.P2P_REFUSED)
        if not 0 <= peer < self.world_size or peer == rank:
            raise ValueError(f"invalid peer rank {peer} for rank {rank} (world size {self.world_size})")
        src, dst = (rank, peer) if kind == "send" else (peer, rank)
        with self._cv:
            ckey = (kind, src, dst)
            k = self._p2p_seq.get(ckey, 0)
            self._p2p_seq[ckey] = k + 1
            key = (src, dst, k)
            op = self._p2p_ops.get(key)
            if op is None:
                op = self._p2p_ops[key] = _Op("p2p", (src, dst))
            op.entries[rank] = (tensor, self.stats[rank].clock_s)
            op.nbytes = self._book(rank, kind, tensor, None)
            if len(op.entries) == 2:
                del self._p2p_ops[key]
                s, d = op.entries[src][0], op.entries[dst][0]
                if s.shape != d.shape or s.dtype != d.dtype:
                    raise RuntimeError(f"send/recv mismatch {src}->{dst}: {tuple(s.shape)} {s.dtype} vs {tuple(d.shape)} {d.dtype}")
                self._complete(op)
            return op

    def _release(self, rank: int, op: _Op) -> None:
        """A described payload (`Communicator.payload`): its buckets and this rank's issue time
        for each, during the backward of the step just computed when nothing came in between."""
        spans = self.carrying[rank]
        if spans is None or op.kind not in ("all_reduce", "all_gather", "all_to_all", "broadcast"):
            return
        tm = self.time_model
        if op.plan is None:
            key = (op.nbytes, spans)
            if key not in self._plans:  # the same payload every round: cut it once
                self._plans[key] = buckets(op.nbytes * self.network.bytes_scale, spans, tm.bucket_bytes, tm.layout)
            op.plan = self._plans[key]
        clock = self.stats[rank].clock_s
        start, length = self._last_step[rank]
        if clock == self._last_end[rank] and length > 0:
            op.releases[rank] = [start + length * ready for _, ready in op.plan]
        else:
            op.releases[rank] = [clock] * len(op.plan)

    def _book(self, rank: int, kind: str, payload: Any, spec: tuple | None) -> int:
        """Count `rank`'s wire bytes when it issues a call (as the torch backend does); return the
        call's payload bytes per worker (the cost model's B; equal on every rank)."""
        if kind in _CONTROL:
            return 0
        if kind == "all_gather":
            nbytes = tensor_nbytes(payload[1])
        elif kind == "all_to_all":
            nbytes = tensor_nbytes(payload[1][0])
        else:  # all_reduce, broadcast, send, recv: the tensor; barrier: nothing
            nbytes = tensor_nbytes(payload) if payload is not None else 0
        src = spec[2] if kind == "broadcast" else 0
        n, pos = self.world_size, rank
        if self.churn is not None and kind != "p2p":  # a ring over the live workers; a bystander books nothing
            if self.away[rank]:
                return nbytes
            live = self._live(self.step_of[rank])
            n, pos, src = len(live), live.index(rank), live.index(src) if src in live else 0
        sent, received = wire_bytes(kind, nbytes, n, pos, src)
        self.stats[rank].record(sent, received, nbytes)
        return nbytes

    def _live(self, step: int) -> tuple[int, ...]:
        """Churn: the live workers of `step` (decided at the end of step - 1 when a window is in
        time: `SimCommunicator.end_step`; all clocks are 0 before step 1)."""
        if step not in self.live_at:
            clocks = [0.0] * self.world_size if self.churn.timed else None
            if self.churn.timed and step > 1:
                raise RuntimeError(f"churn: the live workers of step {step} were not decided (a timed window needs "
                                   "every worker's end_step)")
            self.live_at[step] = self.churn.live(step, clocks)
        return self.live_at[step]

    # ------------------------------------------------------------------ any-source receive
    def _first_arrival(self, rank: int) -> tuple[float, int] | None:
        """(issue time, source) of the earliest message sent to `rank` that it has not received yet,
        if no other worker can still send one that is earlier (cv held); None otherwise.

        A message's place in line is its send's issue time on the sender's clock (ties: lower
        rank first); the receiver's link then serves messages in that order. Another unfinished
        rank r could still send an earlier message unless it waits on a call that needs `rank`
        (it cannot issue anything before `rank` acts) or its clock - a lower bound on its next
        issue time - is already past the candidate's.
        """
        best = None
        for (src, dst, k), op in self._p2p_ops.items():
            if dst != rank or rank in op.entries or k != self._p2p_seq.get(("recv", src, dst), 0):
                continue  # not to us, or not the next message in that sender's order
            cand = (op.entries[src][1], src)
            best = cand if best is None or cand < best else best
        if best is None:
            return None
        t, src = best
        for r in range(self.world_size):
            if r in (rank, src) or self._finished[r]:
                continue
            w = self._waiting[r]
            if w is not None and rank in w[2] and not w[0]():
                continue
            if (self.stats[r].clock_s, r) < (t, src):
                return None
        return best

    def _recv_any(self, rank: int, tensor: torch.Tensor) -> int:
        if self.parallel > 1:
            raise RuntimeError(sim_parallel.P2P_REFUSED)
        ready = lambda: self._first_arrival(rank) is not None  # noqa: E731
        self._block_until(rank, ready, "recv from any source", tuple(range(self.world_size)))
        with self._cv:
            src = self._first_arrival(rank)[1]
        self._wait_op(rank, self._issue_p2p(rank, "recv", tensor, src))
        return src

    def _complete(self, op: _Op) -> None:
        """All participants have issued `op`: compute its result and its virtual timing."""
        kind, ranks = op.kind, op.ranks
        if kind in _CONTROL:
            root = op.spec[2]  # type: ignore[attr-defined]
            op.result = op.entries[root][0] if kind == "scatter_object" else [op.entries[r][0] for r in ranks]
            op.end_time = max(t for _, t in op.entries.values())
            op.done = True
            return
        everyone = ranks
        if op.bystanders:  # churn: the live workers' call; the bystanders receive its result
            if kind != "all_reduce":
                raise RuntimeError(f"churn: a {kind} while ranks {sorted(op.bystanders)} are away; churn supports "
                                   "algorithms whose data-plane calls are all-reduces (churn.CHURN_ALGORITHMS)")
            ranks = tuple(r for r in ranks if r not in op.bystanders)
        if kind == "all_reduce":
            reduce_op = op.spec[2]  # type: ignore[attr-defined]
            acc = op.entries[ranks[0]][0].clone()
            for r in ranks[1:]:
                acc += op.entries[r][0]
            if reduce_op == "mean":
                acc /= len(ranks)
            for r in everyone:
                op.entries[r][0].copy_(acc)
        elif kind == "all_gather":
            for r in ranks:
                out_list = op.entries[r][0][0]
                for j in ranks:
                    out_list[j].copy_(op.entries[j][0][1])
        elif kind == "all_to_all":
            for r in ranks:
                out_list = op.entries[r][0][0]
                for j in ranks:
                    out_list[j].copy_(op.entries[j][0][1][r])
        elif kind == "broadcast":
            src = op.spec[2]  # type: ignore[attr-defined]
            for r in ranks:
                if r != src:
                    op.entries[r][0].copy_(op.entries[src][0])
        elif kind == "p2p":
            src, dst = ranks
            op.entries[dst][0].copy_(op.entries[src][0])
        elif kind != "barrier":  # pragma: no cover - guarded by the public methods
            raise AssertionError(kind)

        cost_kind = "send" if kind == "p2p" else kind
        sent = {}
        for r in ranks:
            if kind == "p2p":
                sent[r] = op.nbytes if r == ranks[0] else 0
            else:
                src = op.spec[2] if kind == "broadcast" else 0  # type: ignore[attr-defined]
                sent[r] = wire_bytes(kind, op.nbytes, len(ranks), ranks.index(r) if op.bystanders else r, src)[0]
        end = max(self._link_free[r] for r in ranks)
        if op.plan is None:  # one message, issued when the last participant issued the call
            plan, ready = [(1.0, 0.0)], [max(t for _, t in op.entries.values())]
        elif len(op.releases) != len(everyone):
            raise RuntimeError(f"collective mismatch: ranks {sorted(op.releases)} issued this {kind} inside "
                               f"comm.payload(...) and ranks {sorted(set(ranks) - set(op.releases))} did not; "
                               "every rank must describe a payload alike")
        else:  # buckets in order, each when every participant has produced it (timing.py)
            plan, ready = op.plan, [max(op.releases[r][k] for r in ranks) for k in range(len(op.plan))]
        counted = dict.fromkeys(ranks, 0)
        free = end  # the links, busy for each bucket's bandwidth term; latencies pipeline
        first = None
        for k, (share, _) in enumerate(plan):
            start = max(ready[k], free)
            first = start if first is None else first
            transfer, latency = self.network.terms(cost_kind, op.nbytes * share, ranks)
            free = start + transfer
            end = start + (transfer + latency) if len(plan) == 1 else free + latency  # one message: as NetworkModel.time
            if self.bucket_transfers:
                last = k == len(plan) - 1
                for r in ranks:
                    b = sent[r] - counted[r] if last else int(sent[r] * share)
                    counted[r] += b
                    if b:
                        self.transfers.append((start, end, r, b))
        if not self.bucket_transfers:  # one row per call and rank: from its first bucket's start to its arrival
            for r in ranks:
                if sent[r]:
                    self.transfers.append((first, end, r, sent[r]))
        op.end_time = end
        for r in ranks:
            self._link_free[r] = end
        op.done = True

    def _wait_op(self, rank: int, op: _Op) -> None:
        self._block_until(rank, lambda: op.done, f"{op.kind} over ranks {list(op.ranks)}", op.ranks)
        st = self.stats[rank]
        if rank in op.bystanders:  # away: it was not waiting for anything
            st.clock_s = max(st.clock_s, op.end_time)
        elif op.end_time > st.clock_s:
            st.blocked_time_s += op.end_time - st.clock_s
            st.clock_s = op.end_time


class SimCommunicator(Communicator):
    """One worker's view of a `SimCluster`."""

    def __init__(self, cluster: SimCluster, rank: int):
        self.cluster = cluster
        self.rank = rank
        self.world_size = cluster.world_size

    def _finish(self, op: _Op, async_op: bool) -> Work | None:
        work = _SimWork(self.cluster, self.rank, op)
        if async_op:
            return work
        work.wait()
        return None

    def all_reduce(self, tensor, op="sum", async_op=False):
        self._check_op(op)
        o = self.cluster._issue_collective(self.rank, "all_reduce", tensor, (tuple(tensor.shape), tensor.dtype, op))
        return self._finish(o, async_op)

    def all_gather(self, tensor_list, tensor, async_op=False):
        if len(tensor_list) != self.world_size:
            raise ValueError(f"all_gather needs {self.world_size} output tensors, got {len(tensor_list)}")
        spec = (tuple(tensor.shape), tensor.dtype, None)
        o = self.cluster._issue_collective(self.rank, "all_gather", (tensor_list, tensor), spec)
        return self._finish(o, async_op)

    def all_to_all(self, output_list, input_list, async_op=False):
        if len(output_list) != self.world_size or len(input_list) != self.world_size:
            raise ValueError(f"all_to_all needs {self.world_size} input and output tensors, got {len(input_list)} and {len(output_list)}")
        if len({(tuple(t.shape), t.dtype) for t in [*input_list, *output_list]}) != 1:
            raise ValueError("all_to_all chunks must all have one shape and dtype")
        spec = (tuple(input_list[0].shape), input_list[0].dtype, None)
        o = self.cluster._issue_collective(self.rank, "all_to_all", (output_list, input_list), spec)
        return self._finish(o, async_op)

    def broadcast(self, tensor, src, async_op=False):
        if not 0 <= src < self.world_size:
            raise ValueError(f"broadcast src must be in [0, {self.world_size - 1}], got {src}")
        o = self.cluster._issue_collective(self.rank, "broadcast", tensor, (tuple(tensor.shape), tensor.dtype, src))
        return self._finish(o, async_op)

    def send(self, tensor, dst):
        self.isend(tensor, dst).wait()

    def recv(self, tensor, src):
        self.irecv(tensor, src).wait()

    def recv_any(self, tensor):
        return self.cluster._recv_any(self.rank, tensor)

    def isend(self, tensor, dst):
        return _SimWork(self.cluster, self.rank, self.cluster._issue_p2p(self.rank, "send", tensor, dst))

    def irecv(self, tensor, src):
        return _SimWork(self.cluster, self.rank, self.cluster._issue_p2p(self.rank, "recv", tensor, src))

    def barrier(self):
        self._finish(self.cluster._issue_collective(self.rank, "barrier", None, ((), None, None)), False)

    def compute(self, steps: float = 1.0) -> None:
        if self.cluster._error is not None:  # another rank failed, or the run was interrupted
            raise _Aborted()
        st = self.cluster.stats[self.rank]
        dt = self.cluster.time_model.step_time(self.rank, st.clock_s) * steps
        if self.cluster.away[self.rank]:  # churn: an away worker's compute takes no time and does not count
            dt = 0.0
        if dt > 0:
            self.cluster._last_step[self.rank] = (st.clock_s + dt - dt / steps, dt / steps)
        st.clock_s += dt
        st.compute_time_s += dt
        self.cluster._last_end[self.rank] = st.clock_s
        self.cluster.steps_done[self.rank] += steps

    # ------------------------------------------------------------------ churn (churn.py)
    def _enter_step(self, step: int) -> None:
        c = self.cluster
        c.step_of[self.rank] = step
        c.away[self.rank] = self.rank not in c._live(step)

    def begin_step(self, step: int) -> None:
        if self.cluster.churn is not None:
            self._enter_step(step)

    def register_state(self, save, load) -> None:
        self.cluster._state_fns[self.rank] = (save, load)

    def end_step(self, step: int) -> None:
        """Churn: enter step + 1; a worker that comes back then copies the state of the lowest live
        worker (a control-plane call every rank makes at the same step), timed as one message."""
        c = self.cluster
        if c.churn is None:
            return
        if c.churn.timed:  # every worker's clock decides the next step's live workers (control plane, free)
            clocks = self._object_op("all_gather_object", c.stats[self.rank].clock_s, None)
            c.live_at.setdefault(step + 1, c.churn.live(step + 1, clocks))
        joiners = [r for r in c._live(step + 1) if r not in c._live(step)]
        if joiners:
            src = c._live(step)[0]
            fns = c._state_fns[self.rank]
            if fns is None:
                raise RuntimeError("churn: a returning worker heals from a live worker's state, which nobody registered "
                                   "(farsync.wrap and the runner register it; your own code: comm.register_state(save, load))")
            mine = (c.stats[self.rank].clock_s, fns[0]()) if self.rank == src else None
            sent = self._object_op("heal", mine, None)
            if self.rank in joiners:
                clock, state = copy.deepcopy(sent[src])
                fns[1](state)
                self._healed(src, clock, state)
        self._enter_step(step + 1)

    def _healed(self, src: int, src_clock: float, state: Any) -> None:
        """Book the state copy from `src` (sent at its clock `src_clock`): one message of its
        tensor bytes, on both links."""
        c = self.cluster
        nbytes = _state_bytes(state)
        with c._cv:
            me, them = c.stats[self.rank], c.stats[src]
            start = max(me.clock_s, src_clock, c._link_free[src], c._link_free[self.rank])
            end = start + c.network.time("send", nbytes, (src, self.rank))
            c._link_free[src] = c._link_free[self.rank] = end
            me.clock_s = end
            me.bytes_received += nbytes
            them.bytes_sent += nbytes
            c.transfers.append((start, end, src, nbytes))

    def gather_metrics(self, values):
        c = self.cluster
        if c.churn is not None:  # which rows count (churn.py): was it away in the step just completed?
            done = max(1, c.step_of[self.rank] - 1)
            values = {**values, "away": self.rank not in c._live(done)}
            if c.churn.timed:  # the steps it was live in (the loop's token count; no resume with timed churn)
                values["live_steps"] = sum(self.rank in c._live(t) for t in range(1, done + 1))
        return self.all_gather_object(dict(values))

    @contextmanager
    def payload(self, spans):
        self.cluster.carrying[self.rank] = tuple(spans)
        try:
            yield
        finally:
            self.cluster.carrying[self.rank] = None

    def _object_op(self, kind: str, obj, root: int | None):
        op = self.cluster._issue_collective(self.rank, kind, copy.deepcopy(obj), ((), None, root))
        if op.done:  # the last rank to arrive: the others wait with the call complete
            self.cluster._restart_from(self.rank, min(op.ranks))
        else:
            self.cluster._block_until(self.rank, lambda: op.done, kind, op.ranks)
        return op.result

    def all_gather_object(self, obj):
        return copy.deepcopy(self._object_op("all_gather_object", obj, None))

    def broadcast_state(self, tensors, src=0):
        """As `Communicator.broadcast_state` (one object all-gather), reading rank `src`'s copy
        in place of copying every rank's entry: O(model) per worker, not O(workers x model)."""
        mine = [t.detach().cpu() for t in tensors] if self.rank == src else None
        values = self._object_op("all_gather_object", mine, None)[src]
        with torch.no_grad():
            for t, v in zip(tensors, values):
                t.copy_(v)

    def gather_object(self, obj, dst=0):
        res = self._object_op("gather_object", obj, dst)
        return copy.deepcopy(res) if self.rank == dst else None

    def scatter_object(self, objs, src=0):
        res = self._object_op("scatter_object", objs if self.rank == src else None, src)
        return copy.deepcopy(res[self.rank])

    @property
    def stats(self) -> CommStats:
        return self.cluster.stats[self.rank]


def _state_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return tensor_nbytes(obj)
    if isinstance(obj, dict):
        return sum(_state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v) for v in obj)
    return 0
