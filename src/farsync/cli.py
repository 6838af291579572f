"""Command line: ``farsync run | launch | worker | compare | sweep | list | explain | retime | plan | claims | demo``."""

from __future__ import annotations

import argparse
import os
import signal
import shutil
import sys
from importlib import resources
from pathlib import Path

from .checkpoint import CheckpointError, RunWriteError
from .config import ConfigError
from .stopping import Terminated, exit_code
from .units import format_loss, format_seconds


def _print_result(run_dir, s: dict) -> None:
    print(f"run directory: {run_dir}")
    print(f"status: {s['status']}  final eval loss: {format_loss(s['final_eval_loss'])}  bytes sent: {s['bytes_sent_total']:,}")
    if s.get("warning"):
        print(f"warning: {s['warning']}")


def _cmd_run(args) -> int:
    from .runner import run

    if (args.config is None) == (args.resume is None):
        raise ConfigError("give either a CONFIG file or --resume RUN_DIR")
    if args.resume is not None and args.unset:
        raise ConfigError("--unset cannot be used with --resume (a resumed run keeps its config; --set may change "
                          "only the keys that a resume allows)")
    result = run(args.config, overrides=args.set, out=args.out, progress=not args.quiet, resume=args.resume, unset=args.unset)
    s = result.summary
    _print_result(result.run_dir, s)
    return 0 if s["status"] == "completed" else 1


def _cmd_launch(args) -> int:
    from .launch import launch, read_summary

    if (args.config is None) == (args.resume is None):
        raise ConfigError("give either a CONFIG file or --resume RUN_DIR")
    if args.resume is not None and args.unset:
        raise ConfigError("--unset cannot be used with --resume (a resumed run keeps its config)")
    code, run_dir = launch(args.config, args.set, args.nproc, args.out, args.max_restarts, args.resume, args.unset,
                           args.groups, args.nproc_per_group)
    s = read_summary(run_dir)
    if s is not None:
        _print_result(run_dir, s)
    else:
        print(f"run directory: {run_dir}")
        print("no summary.json: the workers failed before training started (see the torchrun output above)")
    return code if code else (0 if s and s["status"] == "completed" else 1)


def _cmd_worker(args) -> int:
    from .runner import run_distributed_worker

    if os.environ.get("REPLICA_GROUP_ID") is not None and os.environ.get("TORCHFT_LIGHTHOUSE"):  # cluster.backend: torchft
        from .ft_worker import run_ft_worker

        return run_ft_worker(args.config, args.set, args.out, unset=args.unset)
    result = run_distributed_worker(args.config, args.set, args.out, resume=args.resume, unset=args.unset)
    return 0 if result is None or result.status == "completed" else 1


def _cmd_compare(args) -> int:
    from .report import compare

    report = compare(args.runs, args.out)
    print(report.read_text())
    print(f"report written to {report}")
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import sweep

    report = sweep(args.configs, args.grid, args.set, args.out, args.target_loss, progress=not args.quiet, unset=args.unset)
    print(report.read_text())
    print(f"report written to {report}")
    return 0


def _cmd_list(args) -> int:
    from .algorithms import ALGORITHMS, get_algorithm
    from .optim import OPTIMIZERS, SCHEDULES, WRAPPERS
    from .tasks import TASKS

    name = args.options or args.algorithm
    if name:  # one algorithm's config section: its Options, defaults and descriptions
        from .explain import option_lines

        try:
            cls = get_algorithm(name)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{cls.name}: {cls.summary}")
        print(f"algorithm.* keys (the update rule and a one-line config: farsync explain {cls.name}):")
        print("\n".join(option_lines(name)))
        return 0

    print("tasks:")
    for name, cls in sorted(TASKS.items()):
        print(f"  {name:18s} {cls.description}")
    print("algorithms:")
    for name, cls in sorted(ALGORITHMS.items()):
        print(f"  {name:18s} {cls.summary}")
    print("optimizers (algorithm.inner / algorithm.outer):")
    for name, cls in sorted(OPTIMIZERS.items()):
        print(f"  {name:18s} {'torch.optim' if cls.__module__.startswith('torch') else cls.__module__}.{cls.__name__}")
    print("optimizer wrappers ({name: WRAPPER, base: {optimizer}, ...}):")
    for name, (cls, fixed) in sorted(WRAPPERS.items()):
        print(f"  {name:18s} farsync.optim.{cls.__name__}" + (f" with {fixed}" if fixed else ""))
    print("lr schedules (train.lr_schedule.name): " + ", ".join(SCHEDULES))
    from .compress import COMPRESSORS, ERROR_FEEDBACK

    print("compressors (algorithm.compress.name): " + ", ".join([*COMPRESSORS, "powersgd"]))
    print("error feedback (algorithm.compress.error_feedback): " + ", ".join(ERROR_FEEDBACK))
    return 0


def _cmd_explain(args) -> int:
    from .explain import explain

    try:
        print(explain(args.algorithm), end="")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args) -> int:
    from .report import compare
    from .runner import run

    out = Path(args.out)
    runs = []
    for name in ("ddp", "diloco"):
        cfg_path = resources.files("farsync") / "configs" / f"demo_{name}.yaml"
        run_dir = out / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"[demo] training {name} on a simulated 4-worker cluster ...", flush=True)
        runs.append(run(str(cfg_path), overrides=args.set, out=run_dir, progress=not args.quiet, unset=args.unset))
    report = compare([r.run_dir for r in runs], out / "report")
    ddp, dil = (r.summary for r in runs)
    print(f"\nreport: {report}")
    if not all(r.status == "completed" for r in runs):
        print("demo incomplete: " + "; ".join(f"{r.summary['name']}: {r.status}" for r in runs))
        return 1
    print(f"time model: {ddp.get('time_model', '-')}")
    for label, s in (("DDP:   ", ddp), ("DiLoCo:", dil)):
        print(f"{label} final eval loss {format_loss(s['final_eval_loss'])}, {s['bytes_sent_total'] / 1e6:.1f} MB sent, "
              f"sim time {format_seconds(s['sim_time_s'])}, compute utilization {s['compute_utilization']:.2%}")
    rel = (dil["final_eval_loss"] - ddp["final_eval_loss"]) / ddp["final_eval_loss"]
    print(f"DiLoCo sent {ddp['bytes_sent_total'] / dil['bytes_sent_total']:.1f}x fewer bytes than DDP; eval loss {rel:+.2%} vs DDP at equal tokens")
    return 0 if all(r.status == "completed" for r in runs) else 1


def _cmd_retime(args) -> int:
    from .retime import retime

    s = retime(args.run, args.set, args.out)
    print(f"{args.out}: {s['time_model']}")
    print(f"sim time {s['sim_time_s']:.6g} s, compute utilization {s['compute_utilization']:.4f} "
          f"(re-timed from {args.run}, no training)")
    return 0


def _cmd_plan(args) -> int:
    from .planner import plan

    bandwidths = [b for item in args.bandwidth for b in item.split(",") if b] or None
    p = plan(model=args.model, params=args.params, layers=args.layers, step_time=args.step_time, device=args.device,
             mfu=args.mfu, tokens_per_step=args.tokens_per_step, peak_flops=args.peak_flops, workers=args.workers,
             algorithm=args.algorithm, sync_every=args.sync_every, fragments=args.fragments, delay=args.delay,
             overlap=args.overlap, bits=args.bits, latency=args.latency, bandwidths=bandwidths, steps=args.steps,
             bucket_size=args.bucket_size,
             overlap_backward=not args.no_backward_overlap)
    if args.plot:
        p.plot(args.plot)
    print(p.to_json() if args.json else p.table())
    return 0


def _cmd_claims(args) -> int:
    from . import claims

    if args.list:
        claims.list_claims()
        return 0
    out = args.out or f"runs/claims/{args.profile}"
    outcomes = claims.run_claims(args.profile, args.only, args.seeds, out, args.parallel, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"\n{len(outcomes)} claim(s); {Path(out) / 'claims.md'}")
    if args.publish and not args.dry_run:
        written = claims.publish(out, args.publish, args.profile)
        print(f"published {written[0]} and {len(written) - 1} plot / row file(s) under {args.publish}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farsync", description="Low-communication distributed training lab.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train one config on the simulated cluster")
    r.add_argument("config", nargs="?", help="YAML config file")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    r.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove a config key before --set applies (repeatable)")
    r.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its latest checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    la = sub.add_parser("launch", help="run on torch.distributed processes on this machine (torchrun)")
    la.add_argument("config", nargs="?", help="YAML config file (cluster.backend is set to torch)")
    la.add_argument("--nproc", type=int, help="processes (default and required: cluster.workers, plus 1 for a server-based algorithm)")
    la.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    la.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove a config key before --set applies (repeatable)")
    la.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    la.add_argument("--groups", type=int, metavar="R", help="replica groups: R workers, each a group of --nproc-per-group processes")
    la.add_argument("--nproc-per-group", type=int, metavar="K", help="processes per replica group (DDP inside the group)")
    la.add_argument("--max-restarts", type=int, default=0, help="restart the group after a worker dies, K times")
    la.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its latest checkpoint")
    la.set_defaults(func=_cmd_launch)

    w = sub.add_parser("worker", help="one process of a torch.distributed run (start it with torchrun)")
    w.add_argument("config", nargs="?", help="YAML config file with cluster.backend: torch")
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    w.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove a config key before --set applies (repeatable)")
    w.add_argument("--out", required=True, help="run directory (written by rank 0; also where restarts resume from)")
    w.add_argument("--resume", action="store_true", help="continue --out from its latest checkpoint")
    w.set_defaults(func=_cmd_worker)

    c = sub.add_parser("compare", help="table and plots comparing run directories")
    c.add_argument("runs", nargs="+", help="run directories")
    c.add_argument("--out", default="runs/compare", help="output directory (default: runs/compare)")
    c.set_defaults(func=_cmd_compare)

    sw = sub.add_parser("sweep", help="configs over a grid of overrides: utilization, time to a target loss")
    sw.add_argument("configs", nargs="+", help="YAML config files")
    sw.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...", help="values to sweep (repeatable: all combinations)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of every run")
    sw.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove a config key before --set applies (repeatable)")
    sw.add_argument("--target-loss", type=float, help="report the simulated time until eval loss <= this")
    sw.add_argument("--out", default="runs/sweep", help="output directory (default: runs/sweep)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=_cmd_sweep)

    ls = sub.add_parser("list", help="available tasks, algorithms and optimizers; with ALGORITHM: its config keys")
    ls.add_argument("algorithm", nargs="?", help="show this algorithm's keys, defaults and descriptions")
    ls.add_argument("--options", metavar="ALGORITHM", help="the same as `farsync list ALGORITHM`")
    ls.set_defaults(func=_cmd_list)

    ex = sub.add_parser("explain", help="an algorithm's update rule, its options with defaults, and a one-line config")
    ex.add_argument("algorithm", help="an algorithm name (farsync list shows them)")
    ex.set_defaults(func=_cmd_explain)

    rt = sub.add_parser("retime", help="re-time a finished simulated run under other network settings (no training)")
    rt.add_argument("run", help="run directory (a completed simulated run of a synchronous algorithm)")
    rt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a timing key: cluster.bandwidth, latency, link_bandwidth, time_model, step_time, ... (repeatable)")
    rt.add_argument("--out", required=True, help="run directory to write")
    rt.set_defaults(func=_cmd_retime)

    pl = sub.add_parser("plan", help="compute utilization of a deployment over bandwidths (no training)")
    pl.add_argument("--model", type=str.lower, choices=["1b", "10b", "100b"], help="a paper deployment (params, layers, step time)")
    pl.add_argument("--params", type=float, help="parameters of the deployment, e.g. 1e9")
    pl.add_argument("--layers", type=int, help="its layers")
    pl.add_argument("--step-time", help="compute time per step, e.g. 0.1s")
    pl.add_argument("--device", help="device for the Kaplan step time (h100, a100, ...; with --tokens-per-step)")
    pl.add_argument("--peak-flops", help="peak FLOP/s instead of --device, e.g. 989TFLOPS")
    pl.add_argument("--mfu", type=float, help="model FLOP utilization (default 0.6)")
    pl.add_argument("--tokens-per-step", type=float, help="tokens per worker per step (6 x N x tokens FLOPs)")
    pl.add_argument("--workers", type=int, default=2, help="workers M (default 2, as the papers' tables)")
    pl.add_argument("--algorithm", default="diloco", help="ddp, diloco, streaming-diloco or eager-diloco")
    pl.add_argument("--sync-every", type=int, default=100, help="H (default 100)")
    pl.add_argument("--fragments", type=int, default=1, help="streaming-diloco: fragments (strided over the layers)")
    pl.add_argument("--delay", type=int, default=0, help="streaming-diloco: tau, steps a fragment's reduction overlaps")
    pl.add_argument("--overlap", default="tau", help="streaming-diloco: tau (delay steps) or eager (a whole round)")
    pl.add_argument("--bits", type=float, default=16.0, help="bits per value on the wire (bf16: 16, FP4: 4; add scales)")
    pl.add_argument("--latency", default="0s", help="per-message latency (default 0, as the papers' tables)")
    pl.add_argument("--bandwidth", action="append", default=[], metavar="BW[,BW...]", help="bandwidths to list (default 10 Mbps to 10 Tbps)")
    pl.add_argument("--steps", type=int, help="inner steps simulated (default: 20 rounds, at least 100)")
    pl.add_argument("--bucket-size", default="25MiB", help="reduction bucket (torch DDP: 25MiB); none: one message")
    pl.add_argument("--no-backward-overlap", action="store_true", help="reductions start after the backward (ablation)")
    pl.add_argument("--plot", metavar="PNG", help="write the CU-vs-bandwidth plot here")
    pl.add_argument("--json", action="store_true", help="print JSON: bandwidth_for_cu, cu, settings")
    pl.set_defaults(func=_cmd_plan)

    cl = sub.add_parser("claims", help="run the paper claims' studies, judge each claim, write claims.md")
    cl.add_argument("--profile", default="cpu", choices=["ci", "cpu", "gpu"],
                    help="ci: tiny, minutes; cpu: every claim, about 2 h on 2 cores; gpu: 10-50M parameters, one GPU (default: cpu)")
    cl.add_argument("--only", nargs="+", metavar="NAME", help="claim names or shell patterns (default: every claim)")
    cl.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 for every claim with seeds (default: each claim's)")
    cl.add_argument("--parallel", type=int, default=1, help="runs at once, each in a spawned process (default 1)")
    cl.add_argument("--out", help="claims.md, plots and runs/ (default: runs/claims/PROFILE); finished runs there are reused")
    cl.add_argument("--dry-run", action="store_true", help="print the runs still to do, train nothing")
    cl.add_argument("--list", action="store_true", help="list the claims and exit")
    cl.add_argument("--publish", metavar="DOCS", help="then copy claims.md, its plots and rows into DOCS (docs/claims.md: cpu)")
    cl.set_defaults(func=_cmd_claims)

    d = sub.add_parser("demo", help="DDP vs DiLoCo on the Shakespeare GPT, 4 simulated workers")
    d.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of both configs")
    d.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove a config key before --set applies (repeatable)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .tasks import DataMissingError

    try:
        return args.func(args)
    except (KeyboardInterrupt, Terminated) as exc:
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) or exc.signum == signal.SIGINT else f"terminated by {exc}"
        print(f"farsync: {what} (the run directory keeps its metrics; summary.json says at which step)", file=sys.stderr)
        return exit_code(exc)
    except RunWriteError as exc:
        print(f"farsync: error: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, DataMissingError, CheckpointError) as exc:
        print(f"farsync: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
