"""torchft's cost per synchronization against plain gloo (issue 23): quorum + all-reduce + commit.

    pip install -e '.[ft]'                           # torchft==0.2.0, the optional engine
    python benchmarks/torchft_overhead.py [--profile cpu|quick] [--out DIR] [--set sizes=[1000000]]

R replicas (processes on loopback; a Lighthouse in this process) each all-reduce a float32 buffer of
N values, as DiLoCo's synchronization does, ``repeats`` times:

- plain: ``dist.all_reduce`` (SUM) on a gloo process group over the R processes;
- torchft: ``Manager.start_quorum()`` (synchronous quorum, ``use_async_quorum=False``, as DiLoCo
  needs), ``Manager.allreduce(t).wait()`` on torchft's reconfigurable gloo group, ``should_commit()``.

Metrics: median seconds per synchronization of each, and their difference (the Manager's overhead).
The spec (`fault-tolerance.md`) measured 11.1 ms plain against 18-19.5 ms with torchft for 1M floats
and 3 replicas on this machine. Skips (exit 0 with a message) when torchft is not installed.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import timedelta

import harness
from farsync.launch import free_port

PROFILES = {"cpu": {}, "quick": {"params": {"sizes": [10_000], "repeats": 3}}}
PARAMS = {"sizes": [1_000_000, 10_000_000], "replicas": 3, "repeats": 10}
SEEDS = None
CONFIG_OVERRIDES = False
RESULTS = ("torchft_overhead_cpu",)


def jobs(args) -> list[dict]:
    p = args.params
    return [{"run": f"{n:,} floats", "seed": None, "config": {"size": n, "replicas": p["replicas"], "repeats": p["repeats"]}}
            for n in p["sizes"]]


def _replica(rank: int, world: int, size: int, repeats: int, plain_port: int, lighthouse: str, out) -> None:
    import torch
    import torch.distributed as dist
    from torchft import Manager
    from torchft.process_group import ProcessGroupGloo

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{plain_port}", rank=rank, world_size=world)
    x = torch.ones(size)
    plain = []
    for _ in range(repeats + 1):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        plain.append(time.perf_counter() - t0)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # this replica's own store
    manager = Manager(pg=ProcessGroupGloo(timeout=timedelta(seconds=30)), load_state_dict=lambda s: None,
                      state_dict=lambda: {}, min_replica_size=world, use_async_quorum=False, replica_id=f"r{rank}",
                      rank=0, world_size=1, store_addr="127.0.0.1", store_port=store.port, lighthouse_addr=lighthouse,
                      hostname="127.0.0.1", init_sync=False, timeout=timedelta(seconds=30),
                      quorum_timeout=timedelta(seconds=30))
    ft = []
    try:
        for _ in range(repeats + 1):
            dist.barrier()
            t0 = time.perf_counter()
            manager.start_quorum()
            manager.allreduce(x).wait()
            committed = manager.should_commit()
            ft.append(time.perf_counter() - t0)
            assert committed, "a synchronization did not commit"
    finally:
        manager.shutdown(wait=False)
        dist.destroy_process_group()
    out[rank] = (plain[1:], ft[1:])  # the first of each warms up


def run_one(job: dict) -> dict:
    try:
        from torchft.coordination import LighthouseServer
    except ImportError:
        raise SystemExit("torchft is not installed: pip install -e '.[ft]' (torchft==0.2.0)") from None
    import torch.multiprocessing as mp

    c = job["config"]
    lighthouse = LighthouseServer(bind="127.0.0.1:0", min_replicas=c["replicas"], join_timeout_ms=10_000,
                                  heartbeat_timeout_ms=5_000)
    try:
        with mp.Manager() as m:
            out = m.dict()
            mp.spawn(_replica, args=(c["replicas"], c["size"], c["repeats"], free_port(), lighthouse.address(), out),
                     nprocs=c["replicas"], join=True)
            out = dict(out)
    finally:
        lighthouse.shutdown()
    plain = statistics.median(max(out[r][0][i] for r in out) for i in range(c["repeats"]))  # the slowest replica per sync
    ft = statistics.median(max(out[r][1][i] for r in out) for i in range(c["repeats"]))
    return {"plain_ms": round(plain * 1e3, 2), "torchft_ms": round(ft * 1e3, 2), "overhead_ms": round((ft - plain) * 1e3, 2)}


def finish(rows: list[dict], args) -> None:
    harness.print_table(["size", "plain gloo (ms)", "torchft quorum + all-reduce + commit (ms)", "overhead (ms)"],
                        [[r["run"], r["metrics"]["plain_ms"], r["metrics"]["torchft_ms"], r["metrics"]["overhead_ms"]]
                         for r in rows])


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
