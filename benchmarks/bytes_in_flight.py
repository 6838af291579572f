"""Bytes in flight over simulated time: DiLoCo vs Streaming DiLoCo (issue 5: "bytes in flight over time").

    python benchmarks/harness.py bytes_in_flight [--profile cpu|quick] [--out DIR] [--set steps=96] [--set KEY=VALUE ...]

The 4-block demo GPT with the 1B-parameter time model of benchmarks/bandwidth_sweep.py at 10 Gbps
(0.5 s per step, bytes_scale 2166), 4 workers, ``steps`` steps: DiLoCo (H = 24), Streaming
DiLoCo (F = 4, tau = 5, alpha 0.5) in fp32 and with int4. Metrics per run: peak bytes in flight,
peak bytes per sync, simulated time, compute utilization and every communication call of the run's
transfers.csv (start, end, rank, bytes), from which the figure plots the bytes on the wire (all
workers) against simulated time (also OUT/bytes_in_flight.png after a run).
"""

from pathlib import Path

import harness

COMMON = ["task.n_layer=4", "cluster.time_model=null", "cluster.step_time=0.5s", "cluster.bytes_scale=2166", "cluster.bandwidth=10Gbps",
          "algorithm.sync_every=24", "train.eval_every=0"]
STREAM = ["algorithm.name=streaming-diloco", "algorithm.fragments=4", "algorithm.delay=5", "algorithm.alpha=0.5"]
RUNS = {"diloco": [], "streaming-tau5": STREAM, "streaming-tau5-int4": STREAM + ["algorithm.compress={name: int4, block: 64}"]}

PROFILES = {"cpu": {}, "quick": {"params": {"steps": 24}, "set": ["task.n_embd=32", "task.block_size=32"]}}
PARAMS = {"steps": 96}
SEEDS = None
CONFIG_OVERRIDES = True
RESULTS = ("bytes_in_flight_cpu",)
FIGURES = {"bytes_in_flight.png": "bytes_in_flight_cpu"}


def jobs(args) -> list[dict]:
    return [harness.config_job(args, name, "demo_diloco.yaml", COMMON + sets + [f"train.steps={args.params['steps']}"], None)
            for name, sets in RUNS.items()]


def run_one(job: dict) -> dict:
    from farsync.report import load_transfers

    r = harness.run_config(job)
    s = r.summary
    print(f"{job['run']}: peak bytes in flight {s['peak_bytes_in_flight']:,}, peak bytes per sync {s['peak_bytes_per_sync']:,}, "
          f"sim time {s['sim_time_s']:.1f} s, compute utilization {s['compute_utilization']:.3f}", flush=True)
    return {"peak_bytes_in_flight": s["peak_bytes_in_flight"], "peak_bytes_per_sync": s["peak_bytes_per_sync"],
            "sim_time_s": s["sim_time_s"], "compute_utilization": s["compute_utilization"], "status": s["status"],
            "transfers": [list(t) for t in load_transfers(r.run_dir)]}


def figure(png: str, rows: list[dict], path: Path) -> None:
    """farsync.report.plot_bytes_in_flight, from the stored transfers instead of run directories."""
    from farsync.report import bytes_in_flight

    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for r in rows:
        times, values = bytes_in_flight([tuple(t) for t in r["metrics"]["transfers"]])
        ax.step(times, values, where="post", label=r["run"], linewidth=1)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("bytes in flight (all workers)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    harness.save(fig, path, 110)


def finish(rows: list[dict], args) -> None:
    figure("bytes_in_flight.png", rows, Path(args.out) / "bytes_in_flight.png")


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
