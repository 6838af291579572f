"""The simulated cluster spread over several processes (``SimCluster(n, parallel=P)``).

The ranks are cut into P contiguous slices; the first slice (rank 0 with it) runs in the calling
process, each other slice in a forked process of its own, so P slices compute at once. The
calling process keeps the whole simulator - every op, link, clock and byte count: each rank is
played there by a *proxy* thread that receives the rank's calls, in the rank's program order,
and issues them on the rank's `SimCommunicator` (the simulator's baton passes between proxies
only, which never compute); blocking calls and ``Work.wait()`` send the result back. Each
process runs its own ranks one at a time (`_Host`: a mutex passed at every blocking call, with
the rank's own torch RNG state, as the one-process simulator does), so a rank computes as it
would in one process, only not alone.

Why the metrics cannot depend on P: collectives involve every rank and complete in call order,
each reduced in rank order when the last rank issues it, and their timing depends only on each
rank's issue times and the links' free times, which only collectives change. The interleaving of
the ranks - the one thing that differs between P settings - therefore changes nothing that is
recorded. Point-to-point messages (and the parameter server's receive from any source) are timed
in the order the simulator meets them on a link, which does follow the interleaving: they are
refused with ``parallel > 1`` (`SimCluster._issue_p2p`), as are algorithms that use them.

Torch's CPU kernels may round differently with a different number of intra-op threads, so a
run's results are identical for every P at one number of ``threads`` per process (by default the
process's threads divided by P); small tensors are computed on one thread whatever the setting.

Needs ``fork`` (Linux): the workers' function is inherited, not pickled. Calls from the other
processes are pickled over pipes (a tensor costs its bytes there and back); the calling
process's own ranks hand their tensors to their proxies as they are.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .base import CommStats, Communicator, Work

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from .sim import SimCluster, SimCommunicator

P2P_REFUSED = ("point-to-point messages are timed in the order the simulator meets them, which depends on how "
               "the workers are spread over processes: use cluster.parallel: 1 for algorithms that send messages "
               "(decentralized and parameter-server algorithms)")


def slices(world_size: int, parallel: int) -> list[range]:
    """Contiguous rank slices, as equal as possible, the first (with rank 0) in the calling process."""
    if not 1 <= parallel <= world_size:
        raise ValueError(f"parallel must be in [1, {world_size}] (the number of workers), got {parallel}")
    bounds = [world_size * p // parallel for p in range(parallel + 1)]
    return [range(bounds[p], bounds[p + 1]) for p in range(parallel)]


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a RuntimeError with its type, message and traceback."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
        clone = exc
    except Exception:  # noqa: BLE001 - any unpicklable exception
        clone = RuntimeError(f"{type(exc).__name__}: {exc}")
    if hasattr(clone, "add_note"):
        clone.add_note(f"in the simulator process {os.getpid()}:\n{text}")
    return clone


# ---------------------------------------------------------------------------- the ranks' side
class _Host:
    """The ranks of one process: one runs at a time; a rank waiting for a reply lets another run.

    `send(rank, call)` takes a call to the rank's proxy; replies come through `answer`."""

    def __init__(self, ranks: range, world_size: int, send: Callable[[int, tuple], None], rng: torch.Tensor):
        self.ranks, self.world_size, self.send = ranks, world_size, send
        self.baton = threading.Lock()
        self.replies = {r: queue.SimpleQueue() for r in ranks}
        self.rng = {r: rng.clone() for r in ranks}
        self.stopped = False

    def post(self, rank: int, *call: Any) -> None:
        if self.stopped:
            raise _Stopped()
        self.send(rank, call)

    def request(self, rank: int, *call: Any) -> Any:
        """Send a call that returns something and wait for the answer, letting the other ranks run."""
        self.post(rank, *call)
        self.rng[rank] = torch.get_rng_state()
        self.baton.release()
        value = self.replies[rank].get()
        self.baton.acquire()
        torch.set_rng_state(self.rng[rank])
        if value is _STOP:
            raise _Stopped()
        return value

    def stop(self) -> None:
        """Make every rank leave at its next call (the run failed or was interrupted)."""
        self.stopped = True
        for q in self.replies.values():
            q.put(_STOP)

    def run_rank(self, rank: int, fn: Callable) -> None:
        from .sim import _current

        comm = RemoteCommunicator(self, rank)
        _current.set(comm)
        with self.baton:
            torch.set_rng_state(self.rng[rank])
            try:
                result = fn(comm)
            except _Stopped:
                return
            except BaseException as exc:  # noqa: BLE001 - raised again by the proxy
                self.send(rank, ("err", exc))
            else:
                self.send(rank, ("done", result))

    def start(self, fn: Callable) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run_rank, args=(r, fn), daemon=True, name=f"sim-rank{r}") for r in self.ranks]
        for t in threads:
            t.start()
        return threads


class _Stopped(BaseException):
    """Unwinds a rank's thread when the run stops."""


_STOP = object()


class _RemoteWork(Work):
    def __init__(self, comm: RemoteCommunicator, wid: int, fill: Callable[[Any], None]):
        self.comm, self.wid, self.fill, self.done = comm, wid, fill, False

    def wait(self) -> None:
        if not self.done:
            self.fill(self.comm.host.request(self.comm.rank, "w", self.wid))
            self.done = True

    def is_completed(self) -> bool:
        return self.done


def _copy_into(targets: list[torch.Tensor]) -> Callable[[Any], None]:
    def fill(values):
        with torch.no_grad():
            for t, v in zip(targets, values):
                if v is not t:  # a rank of the calling process got its own tensor back
                    t.copy_(v)
    return fill


class RemoteCommunicator(Communicator):
    """A rank in a simulator process: each call goes, in program order, to its proxy in the
    calling process (which runs the simulator); results come back where the call returns them."""

    def __init__(self, host: _Host, rank: int):
        self.host, self.rank, self.world_size = host, rank, host.world_size
        self._works = 0

    def _call(self, tag: str, args: tuple, targets: list[torch.Tensor], async_op: bool) -> Work | None:
        fill = _copy_into(targets)
        if not async_op:
            fill(self.host.request(self.rank, tag, *args, None))
            return None
        self._works += 1
        self.host.post(self.rank, tag, *args, self._works)
        return _RemoteWork(self, self._works, fill)

    def all_reduce(self, tensor, op="sum", async_op=False):
        self._check_op(op)
        return self._call("ar", (tensor, op), [tensor], async_op)

    def all_gather(self, tensor_list, tensor, async_op=False):
        if len(tensor_list) != self.world_size:
            raise ValueError(f"all_gather needs {self.world_size} output tensors, got {len(tensor_list)}")
        return self._call("ag", (tensor,), list(tensor_list), async_op)

    def all_to_all(self, output_list, input_list, async_op=False):
        if len(output_list) != self.world_size or len(input_list) != self.world_size:
            raise ValueError(f"all_to_all needs {self.world_size} input and output tensors, got {len(input_list)} and {len(output_list)}")
        return self._call("aa", (list(input_list),), list(output_list), async_op)

    def broadcast(self, tensor, src, async_op=False):
        if not 0 <= src < self.world_size:
            raise ValueError(f"broadcast src must be in [0, {self.world_size - 1}], got {src}")
        return self._call("bc", (tensor, src), [tensor], async_op)

    def send(self, tensor, dst):
        raise RuntimeError(P2P_REFUSED)

    recv = isend = irecv = send

    def recv_any(self, tensor):
        raise RuntimeError(P2P_REFUSED)

    def barrier(self):
        self.host.request(self.rank, "b")

    def compute(self, steps: float = 1.0) -> None:
        self.host.post(self.rank, "c", steps)

    @contextmanager
    def payload(self, spans):
        self.host.post(self.rank, "p", tuple(tuple(s) for s in spans))
        try:
            yield
        finally:
            self.host.post(self.rank, "p", None)

    def all_gather_object(self, obj):
        return self.host.request(self.rank, "o", "all_gather_object", obj, None)

    def gather_object(self, obj, dst=0):
        return self.host.request(self.rank, "o", "gather_object", obj, dst)

    def scatter_object(self, objs, src=0):
        return self.host.request(self.rank, "o", "scatter_object", objs if self.rank == src else None, src)

    def broadcast_state(self, tensors, src=0):
        mine = [t.detach().cpu() for t in tensors]
        _copy_into(list(tensors))(self.host.request(self.rank, "bs", mine, src))

    def restore_stats(self, stats):
        self.host.post(self.rank, "rs", dict(stats))

    @property
    def stats(self) -> CommStats:
        return self.host.request(self.rank, "st")


def _child_main(conn: Connection, ranks: range, world_size: int, fn: Callable, rng: torch.Tensor, threads: int) -> None:
    """A simulator process: run ``fn(comm)`` for each of `ranks`; never returns (``os._exit``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the calling process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(threads)
    lock = threading.Lock()

    def send(rank: int, call: tuple) -> None:
        if call[0] == "err":
            call = ("err", _portable(call[1]))
        data = pickle.dumps((rank, *call), protocol=pickle.HIGHEST_PROTOCOL)
        with lock:
            conn.send_bytes(data)

    host = _Host(ranks, world_size, send, rng)

    def read() -> None:  # hand each reply to its rank; leave when the simulator has gone
        try:
            while True:
                rank, value = pickle.loads(conn.recv_bytes())
                host.replies[rank].put(value)
        except (EOFError, OSError):
            os._exit(1)  # the calling process ended (or killed the run)

    threading.Thread(target=read, daemon=True, name="sim-reader").start()
    for t in host.start(fn):
        t.join()
    os._exit(0)


# ---------------------------------------------------------------------------- the simulator's side
def run_spread(cluster: SimCluster, fn: Callable, rng: torch.Tensor, threads: int) -> list[Any]:
    """`SimCluster.run` with ``cluster.parallel`` processes: fork the other slices' processes,
    host the first slice here, and run a proxy for every rank on the simulator."""
    fork = multiprocessing.get_context("fork")
    first, *others = slices(cluster.world_size, cluster.parallel)
    procs, readers, answer = [], [], {}
    local = None
    try:
        for ranks in others:
            mine, theirs = fork.Pipe(duplex=True)
            proc = fork.Process(target=_child_main, args=(theirs, ranks, cluster.world_size, fn, rng, threads),
                                daemon=True, name=f"sim-ranks{ranks.start}-{ranks.stop - 1}")
            proc.start()
            theirs.close()
            procs.append((proc, mine))
            readers.append(threading.Thread(target=_read_process, args=(cluster, mine, ranks, proc), daemon=True))
            readers[-1].start()
            lock = threading.Lock()
            for r in ranks:
                answer[r] = _pipe_answer(mine, lock, r)
        local = _Host(first, cluster.world_size, cluster._deliver, rng)
        for r in first:
            answer[r] = local.replies[r].put
        local_threads = local.start(fn)
        try:
            return cluster._run_threads(lambda comm: _proxy(cluster, comm, answer[comm.rank]), rng)
        finally:
            local.stop()
            for t in local_threads:
                t.join()
    finally:
        for proc, conn in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
            conn.close()
        for t in readers:
            t.join(timeout=10)


def _pipe_answer(conn: Connection, lock: threading.Lock, rank: int) -> Callable[[Any], None]:
    def answer(value: Any) -> None:
        data = pickle.dumps((rank, value), protocol=pickle.HIGHEST_PROTOCOL)
        with lock:
            conn.send_bytes(data)
    return answer


def _read_process(cluster: SimCluster, conn: Connection, ranks: range, process: Any) -> None:
    """Reader thread for one simulator process: queue each call for its rank's proxy (waking the
    simulator if every rank was waiting); if the process dies, fail its unfinished ranks."""
    try:
        while True:
            msg = pickle.loads(conn.recv_bytes())
            cluster._deliver(msg[0], msg[1:])
    except (EOFError, OSError):
        pass
    process.join(timeout=5)
    gone = RuntimeError(f"the simulator process of ranks {ranks.start}-{ranks.stop - 1} exited "
                        f"(exit code {process.exitcode}) before its workers finished")
    for r in ranks:
        cluster._deliver(r, ("err", gone))


def _proxy(cluster: SimCluster, comm: SimCommunicator, reply: Callable[[Any], None]) -> Any:
    """Play rank ``comm.rank`` on the simulator: issue its calls in order, answer the ones that
    return something. Runs as that rank's worker function (`SimCluster._run_threads`)."""
    rank, works = comm.rank, {}

    def issue(wid, work, outputs):
        if wid is None:
            reply(outputs)
        else:
            works[wid] = (work, outputs)

    while True:
        tag, *args = cluster._next_call(rank)
        if tag == "c":
            comm.compute(args[0])
        elif tag == "p":
            cluster.carrying[rank] = args[0]
        elif tag == "ar":
            tensor, op, wid = args
            issue(wid, comm.all_reduce(tensor, op, async_op=wid is not None), [tensor])
        elif tag == "ag":
            tensor, wid = args
            out = [torch.empty_like(tensor) for _ in range(comm.world_size)]
            issue(wid, comm.all_gather(out, tensor, async_op=wid is not None), out)
        elif tag == "aa":
            inputs, wid = args
            out = [torch.empty_like(t) for t in inputs]
            issue(wid, comm.all_to_all(out, inputs, async_op=wid is not None), out)
        elif tag == "bc":
            tensor, src, wid = args
            issue(wid, comm.broadcast(tensor, src, async_op=wid is not None), [tensor])
        elif tag == "w":
            work, outputs = works.pop(args[0])
            work.wait()
            reply(outputs)
        elif tag == "b":
            comm.barrier()
            reply(None)
        elif tag == "o":
            kind, obj, root = args
            if kind == "all_gather_object":
                reply(comm.all_gather_object(obj))
            elif kind == "gather_object":
                reply(comm.gather_object(obj, root))
            else:
                reply(comm.scatter_object(obj, root))
        elif tag == "bs":
            tensors, src = args
            comm.broadcast_state(tensors, src)
            reply(tensors)
        elif tag == "rs":
            comm.restore_stats(args[0])
        elif tag == "st":
            reply(CommStats(**comm.stats.as_dict()))
        elif tag == "done":
            return args[0]
        elif tag == "err":
            raise args[0]
        else:  # pragma: no cover - the protocol above is complete
            raise AssertionError(tag)
