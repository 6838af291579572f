"""Bandwidth sweep with the time model of a larger deployment (issue 5, benchmark 2).

    python benchmarks/harness.py bandwidth_sweep [--profile cpu|gpu|quick] [--out DIR] [--only "METHOD *" ...] [--parallel N]
                                                 [--set target_loss=2.2] [--set "bandwidths=[100Mbps, 1Gbps]"] [--set KEY=VALUE ...]

The loss curves come from the 4-block demo GPT (4 simulated workers, 600 steps, as
benchmarks/streaming.py); the clock is that of a 1B-parameter model: every payload is scaled by
bytes_scale = 1e9 / 461,664 parameters and an inner step takes 0.5 s (an assumed step time of a
1B model on one accelerator). Links: 100 Mbps .. 100 Gbps, 10 ms latency. One run per method and
bandwidth (label ``"METHOD BANDWIDTH"``; the run's name is the method, as in a `farsync sweep` of
the method's config over ``cluster.bandwidth``): compute utilization and the simulated time until
the eval loss first reaches ``target_loss``. OUT/report.md, OUT/utilization.png and
OUT/time_to_target.png as `farsync sweep` writes them. Each run uses 2 intra-op threads.
"""

import shutil
import tempfile
from pathlib import Path

import torch

import harness

TIME_MODEL = ["task.n_layer=4", "cluster.time_model=null", "cluster.step_time=0.5s", "cluster.bytes_scale=2166"]
BANDWIDTHS = ["100Mbps", "1Gbps", "3Gbps", "10Gbps", "100Gbps"]
KEY = "cluster.bandwidth"
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

PROFILES = {"cpu": {}, "gpu": {"set": harness.GPU, "parallel": 5},
            "quick": {"set": harness.GPT_QUICK, "params": {"bandwidths": ["1Gbps", "10Gbps"]},
                      "only": ["ddp *", "streaming-tau5-int4 *", "eager *"]}}
PARAMS = {"target_loss": 2.2, "bandwidths": BANDWIDTHS}
SEEDS = None
CONFIG_OVERRIDES = True
RESULTS = ("bandwidth_h100",)
FIGURES = {"bandwidth_utilization.png": "bandwidth_h100", "bandwidth_time_to_target.png": "bandwidth_h100"}


def jobs(args) -> list[dict]:
    out = []
    for name, (base, sets) in METHODS.items():
        for bw in args.params["bandwidths"]:
            job = harness.config_job(args, f"{name} {bw}", f"demo_{base}.yaml", TIME_MODEL + sets, None,
                                     name=name, target=args.params["target_loss"])
            job["config"]["overrides"].append(f"{KEY}={bw}")  # the grid value last, as `farsync sweep` applies it
            job["config"].update(method=name, bandwidth=bw)
            out.append(job)
    return out


def run_one(job: dict) -> dict:
    torch.set_num_threads(2)
    from farsync.sweep import time_to_target

    r = harness.run_config(job)
    s = r.summary
    return {"status": s["status"], "final_eval_loss": s["final_eval_loss"], "bytes_sent_total": s["bytes_sent_total"],
            "sim_time_s": s["sim_time_s"], "compute_utilization": s["compute_utilization"],
            "time_to_target_s": time_to_target(r.metrics, job["target"])}


def legacy_row(r: dict) -> dict:
    """A row of the `farsync sweep` era: {"config": method, "cluster.bandwidth": ..., "run_dir": ..., metrics}."""
    return {"run": f"{r['config']} {r[KEY]}", "seed": None, "config": {"method": r["config"], "bandwidth": r[KEY]},
            "metrics": {k: v for k, v in r.items() if k not in ("config", KEY, "run_dir", "label")}}


def sweep_rows(rows: list[dict]) -> list[dict]:
    """The rows as `farsync.sweep` writes them (config = method, the bandwidth under its key)."""
    return [{"config": r["config"]["method"], KEY: r["config"]["bandwidth"], **r["metrics"]} for r in rows]


def finish(rows: list[dict], args) -> None:
    from farsync.sweep import plot_sweep, write_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_sweep(sweep_rows(rows), KEY, out, args.params["target_loss"])
    print(write_report(sweep_rows(rows), [KEY], out, args.params["target_loss"]).read_text())


def figure(png: str, rows: list[dict], path: Path) -> None:
    from farsync.sweep import plot_sweep

    with tempfile.TemporaryDirectory() as tmp:  # plot_sweep draws both figures under fixed names
        plot_sweep(sweep_rows(rows), KEY, Path(tmp), PARAMS["target_loss"])
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / png.removeprefix("bandwidth_"), path)


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
