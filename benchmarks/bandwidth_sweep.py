"""Bandwidth sweep with the time model of a larger deployment (issue 5, benchmark 2).

    python benchmarks/bandwidth_sweep.py [--out runs/bandwidth] [--parallel N] [--target-loss 2.2] [--set KEY=VALUE ...]
                                         [--only METHOD ...] [--bandwidths 100Mbps,1Gbps,...]

The loss curves come from the 4-block demo GPT (4 simulated workers, 600 steps, as
benchmarks/streaming.py); the clock is that of a 1B-parameter model: every payload is scaled by
bytes_scale = 1e9 / 461,664 parameters and an inner step takes 0.5 s (an assumed step time of a
1B model on one accelerator). Links: 100 Mbps .. 100 Gbps, 10 ms latency. For each method and
bandwidth: compute utilization and the simulated time until the eval loss first reaches
--target-loss. One `farsync sweep` per method (run --parallel at a time), merged into
OUT/report.md, OUT/utilization.png and OUT/time_to_target.png.
"""

import argparse
import json
import multiprocessing as mp
from importlib import resources
from pathlib import Path

import torch
import yaml

TIME_MODEL = ["task.n_layer=4", "cluster.step_time=0.5s", "cluster.bytes_scale=2166"]
BANDWIDTHS = "cluster.bandwidth=100Mbps,1Gbps,3Gbps,10Gbps,100Gbps"
STREAM = ["algorithm.name=streaming-diloco", "algorithm.sync_every=24", "algorithm.fragments=4"]
METHODS = {
    "ddp": ("ddp", []),
    "diloco": ("diloco", ["algorithm.sync_every=24"]),
    "streaming-tau1": ("diloco", STREAM + ["algorithm.delay=1", "algorithm.alpha=0.5"]),
    "streaming-tau5": ("diloco", STREAM + ["algorithm.delay=5", "algorithm.alpha=0.5"]),
    "streaming-tau5-int4": ("diloco", STREAM + ["algorithm.delay=5", "algorithm.alpha=0.5", "algorithm.compress={name: int4, block: 64}"]),
    "eager": ("diloco", ["algorithm.name=eager-diloco", "algorithm.sync_every=24"]),
    "delayed": ("diloco", ["algorithm.name=delayed-diloco", "algorithm.sync_every=24"]),
}


def one(args: tuple[str, str, list[str], str, float, str]) -> list[dict]:
    name, cfg_path, sets, out, target, grid = args
    torch.set_num_threads(2)
    from farsync.sweep import sweep

    sweep([cfg_path], [grid], sets, Path(out) / name, target)
    return [json.loads(line) for line in (Path(out) / name / "sweep.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bandwidth")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--target-loss", type=float, default=2.2)
    ap.add_argument("--set", action="append", default=[], help="extra override for every run (e.g. cluster.device=cuda)")
    ap.add_argument("--only", nargs="*", help="methods to run (default: all)")
    ap.add_argument("--bandwidths", default=BANDWIDTHS.split("=")[1], help="comma-separated link bandwidths")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    jobs = []
    for name, (base, sets) in METHODS.items():
        if args.only and name not in args.only:
            continue
        src = yaml.safe_load((resources.files("farsync") / "configs" / f"demo_{base}.yaml").read_text())
        path = out / "configs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**src, "name": name}))
        jobs.append((name, str(path), TIME_MODEL + sets + args.set, str(out), args.target_loss, f"cluster.bandwidth={args.bandwidths}"))
    with mp.get_context("spawn").Pool(args.parallel) as pool:
        rows = [r for rs in pool.map(one, jobs) for r in rs]
    (out / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from farsync.sweep import plot_sweep, write_report

    key = BANDWIDTHS.split("=")[0]
    plot_sweep(rows, key, out, args.target_loss)
    print(write_report(rows, [key], out, args.target_loss).read_text())


if __name__ == "__main__":
    main()
