"""Bytes in flight over simulated time: DiLoCo vs Streaming DiLoCo (issue 5: "bytes in flight over time").

    python benchmarks/bytes_in_flight.py [--out runs/inflight] [--steps 96] [--set KEY=VALUE ...]

The 4-block demo GPT with the 1B-parameter time model of benchmarks/bandwidth_sweep.py at 10 Gbps
(0.5 s per step, bytes_scale 2166), 4 workers, `--steps` steps: DiLoCo (H = 24), Streaming
DiLoCo (F = 4, tau = 5, alpha 0.5) in fp32 and with int4. Plots the bytes on the wire (all
workers) against simulated time from each run's transfers.csv into OUT/bytes_in_flight.png and
prints each run's peak.
"""

import argparse
import shutil
from importlib import resources
from pathlib import Path

COMMON = ["task.n_layer=4", "cluster.step_time=0.5s", "cluster.bytes_scale=2166", "cluster.bandwidth=10Gbps",
          "algorithm.sync_every=24", "train.eval_every=0"]
STREAM = ["algorithm.name=streaming-diloco", "algorithm.fragments=4", "algorithm.delay=5", "algorithm.alpha=0.5"]
RUNS = {"diloco": [], "streaming-tau5": STREAM, "streaming-tau5-int4": STREAM + ["algorithm.compress={name: int4, block: 64}"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/inflight")
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    import farsync
    from farsync.report import plot_bytes_in_flight

    out = Path(args.out)
    cfg = str(resources.files("farsync") / "configs" / "demo_diloco.yaml")
    dirs = []
    for name, sets in RUNS.items():
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        s = farsync.run(cfg, overrides=COMMON + sets + [f"train.steps={args.steps}", f"name={name}"] + args.set, out=d, progress=False).summary
        print(f"{name}: peak bytes in flight {s['peak_bytes_in_flight']:,}, peak bytes per sync {s['peak_bytes_per_sync']:,}, "
              f"sim time {s['sim_time_s']:.1f} s, compute utilization {s['compute_utilization']:.3f}")
        dirs.append(d)
    print(plot_bytes_in_flight(dirs, out / "bytes_in_flight.png"))


if __name__ == "__main__":
    main()
