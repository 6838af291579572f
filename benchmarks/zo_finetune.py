"""Shared-randomness zeroth-order fine-tuning (`zo-shared`, fp32 and one-byte scalars) vs DDP fine-tuning (issue 26, item 1).

    python benchmarks/harness.py zo_finetune [--profile cpu|gpu|quick] [--out DIR] [--only RUN ...] [--seeds 0 1]
                                             [--set KEY=VALUE ...]

The demo's Shakespeare char GPT (2 blocks x 64 wide, block 64, ~0.1M parameters on the cpu profile)
is pretrained with DDP (AdamW, cosine) on twelve comedies (`pretrain`), then fine-tuned from that
model (``train.init_from``) on four histories (Henry IV 1-2, Henry VI 1-2) and evaluated throughout
on two held-out histories (Henry V, Henry VI part 3), which the pretraining also evaluated on:

- ``ddp-adamw``: first-order DDP fine-tuning, AdamW lr 1e-3 constant (gradients all-reduced every step);
- ``ddp-sgd``: first-order DDP fine-tuning with plain SGD lr 0.01 (the inner optimizer ZO-SGD uses);
- ``zo-fp32``: `zo-shared`, K = 8 directions per worker per step, eps 1e-3, SGD lr 3e-4 (MeZO's
  ZO-SGD), each projected gradient sent as fp32;
- ``zo-byte``: the same with each projected gradient sent as one byte (int8 on [-4, 4]).

All with 2 simulated workers, equal steps and batches (16 x 64 characters per worker and step), no
time model. Metrics per row: the eval loss curve, the start (the pretrained model's eval loss) and
final eval loss, bytes sent per worker per step, and the zeroth-order rows' share of scalars at the
edge of the byte range. From-scratch rows on a 4-worker heterogeneous quadratic (dim 32, zeta 1, sigma 0.1,
400 steps, SGD with a cosine schedule; DDP lr 0.5, zo-shared K = 4 lr 0.1): ``quad-ddp``,
``quad-zo-fp32``, ``quad-zo-byte``. Runs share the pretrained model of their seed
(OUT/pretrain-sS, trained once by the first job that needs it; parallel jobs wait on its lock).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

import harness
from farsync import claims as C

COMEDIES = ["alls_well_that_ends_well", "as_you_like_it", "comedy_of_errors", "loves_labours_lost", "measure_for_measure",
            "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream", "much_ado_about_nothing",
            "taming_of_the_shrew", "twelfth_night", "two_gentlemen_of_verona"]
TUNE = ["henry_iv_part_1", "henry_iv_part_2", "henry_vi_part_1", "henry_vi_part_2"]
HELD_OUT = ["henry_v", "henry_vi_part_3"]
MODEL = ["cluster.workers=2", "task.n_layer=2", "task.n_embd=64", "task.eval_windows=64", "cluster.time_model=null",
         f"task.eval_plays={HELD_OUT}"]
PRETRAIN = MODEL + [f"task.train_plays={COMEDIES}", "train.steps=300", "train.eval_every=100", "train.lr_schedule.warmup_steps=15"]
TUNE_COMMON = MODEL + [f"task.train_plays={TUNE}", "train.steps=300", "train.eval_every=50", "train.log_every=10",
                       "train.grad_clip=null", "train.lr_schedule={name: constant}"]
ZO = "algorithm={name: zo-shared, directions: 8, eps: 0.001, encoding: %s, inner: {name: sgd, lr: 0.0003}}"
RUNS = [
    ("ddp-adamw", ["algorithm.inner={name: adamw, lr: 0.001}"]),
    ("ddp-sgd", ["algorithm.inner={name: sgd, lr: 0.01}"]),
    ("zo-fp32", [ZO % "fp32"]),
    ("zo-byte", [ZO % "byte"]),
]
QUAD = {"ddp": {"name": "ddp"}, "zo-fp32": {"name": "zo-shared", "directions": 4},
        "zo-byte": {"name": "zo-shared", "directions": 4, "encoding": "byte"}}
QUAD_LR = {"ddp": 0.5, "zo-fp32": 0.1, "zo-byte": 0.1}
QUICK = ["task.n_embd=32", "task.eval_windows=8"]
GPU = harness.GPU + ["task.n_layer=4", "task.n_embd=128", "task.eval_windows=256", "cluster.workers=4"]
PROFILES = {"cpu": {}, "gpu": {"set": GPU}, "quick": {"set": QUICK, "params": {"steps": 24, "pretrain_steps": 24}}}
PARAMS: dict = {"steps": 300, "pretrain_steps": 300, "quad_steps": 400}
SEEDS = [0]
CONFIG_OVERRIDES = True
RESULTS = ("zo_finetune_cpu",)


def _pretrain_job(args, seed) -> dict:
    p = args.params
    sets = PRETRAIN + [f"train.steps={p['pretrain_steps']}", f"train.eval_every={max(p['pretrain_steps'] // 3, 1)}"]
    return harness.config_job(args, "pretrain", "demo_ddp.yaml", sets, seed)


def jobs(args) -> list[dict]:
    p, out = args.params, []
    for seed in args.seeds:
        pre = _pretrain_job(args, seed)
        out.append(pre)
        steps = [f"train.steps={p['steps']}", f"train.eval_every={max(p['steps'] // 6, 1)}"]
        for label, sets in RUNS:
            job = harness.config_job(args, label, "demo_ddp.yaml",
                                     TUNE_COMMON + steps + sets + [f"train.init_from={pre['dir']}"], seed)
            out.append({**job, "pretrain": pre})
        for label, algo in QUAD.items():
            raw = {"name": f"quad-{label}", "seed": seed, "task": {"name": "quadratic", "dim": 32, "sigma": 0.1, "zeta": 1.0},
                   "cluster": {"workers": 4, "bandwidth": "1Gbps", "latency": "1ms", "step_time": "10ms"},
                   "algorithm": {**algo, "inner": {"name": "sgd", "lr": QUAD_LR[label]}},
                   "train": {"steps": p["quad_steps"], "batch_size": 4, "eval_every": 20, "log_every": 20,
                             "lr_schedule": {"name": "cosine"}}}
            out.append({"run": f"quad-{label}", "seed": seed, "config": {"raw": raw},
                        "dir": str(harness.run_dir(args.out, f"quad-{label}", seed))})
    return out


def _summary(result) -> dict:
    s, m = result.summary, result.metrics
    steps = m[-1]["step"] if m else 1
    last = m[-1] if m else {}
    return {"final_eval_loss": s["final_eval_loss"], "status": s["status"], "evals": harness.evals(m),
            "bytes_per_worker_per_step": s["bytes_sent_per_worker"][0] / steps,
            "edge_fraction": last.get("zo_edge_fraction")}


def run_one(job: dict) -> dict:
    torch.set_num_threads(1)
    if "raw" in job["config"]:  # a quadratic row: the config itself, into a fresh directory
        import farsync

        shutil.rmtree(job["dir"], ignore_errors=True)
        return _summary(farsync.run(job["config"]["raw"], out=job["dir"], progress=False))
    if job["run"] == "pretrain":
        return _summary(_pretrained(job))
    pre = job.get("pretrain")
    start = None
    if pre is not None:
        start = _pretrained(pre).summary["final_eval_loss"]
    out = _summary(harness.run_config(job))
    if start is not None:
        out["start_eval_loss"] = start
        out["evals"] = [[0, start], *out["evals"]]
    return out


def _pretrained(pre: dict):
    """The seed's pretrained run, trained once by whichever job needs it first: jobs running in parallel
    (``--parallel``) wait on a lock beside it, and find it done."""
    import fcntl
    import json

    from farsync.runner import RunResult

    d = Path(pre["dir"])
    d.parent.mkdir(parents=True, exist_ok=True)
    with open(d.parent / f".{d.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = d / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
            metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
            return RunResult(d, json.loads(summary.read_text()), metrics)
        return harness.run_config(pre)


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def finish(rows: list[dict], args) -> None:
    """Per run: start and final eval loss (mean over seeds), the fine-tuning gain and bytes per worker per step."""
    print("\n| run | seeds | start eval loss | final eval loss | gain | bytes / worker / step |\n|---|---|---|---|---|---|")
    for run in dict.fromkeys(r["run"] for r in rows):
        finals = C.values(rows, run)
        starts = C.values(rows, run, "start_eval_loss")
        m = next(r["metrics"] for r in rows if r["run"] == run)
        gain = f"{C.mean(starts) - C.mean(finals):+.4f}" if starts and finals else "-"
        print(f"| {run} | {len(finals)} | {fmt(C.mean(starts) if starts else None, '.4f')} | {C.ms(finals)} | {gain} | "
              f"{fmt(m.get('bytes_per_worker_per_step'), ',.0f')} |")


# ---------------------------------------------------------------- the claim (farsync claims)

GAIN_TOL = 0.1  # one byte may differ from fp32 scalars by 10% of the fp32 run's gain (or the per-seed differences' sd)
NAMES = {"ddp-adamw": "DDP fine-tuning, AdamW", "ddp-sgd": "DDP fine-tuning, SGD", "zo-fp32": "zo-shared K=8, fp32 scalars",
         "zo-byte": "zo-shared K=8, one byte per scalar"}


def _gain(rows: list[dict], run: str) -> float:
    return C.mean(C.values(rows, run, "start_eval_loss")) - C.mean(C.values(rows, run))


def zo_table(rows: list[dict]) -> str:
    cells = []
    for run, name in NAMES.items():
        xs = C.values(rows, run)
        if not xs:
            continue
        b = C.mean(C.values(rows, run, "bytes_per_worker_per_step"))
        cells.append([name, C.ms(xs), f"{_gain(rows, run):+.4f}", f"{b:,.0f}"])
    return C.table(["row", "final eval loss (held-out plays)", "gain over the pretrained start", "bytes / worker / step"], cells)


def judge(rows: list[dict]) -> C.Finding:
    f, b = C.values(rows, "zo-fp32"), C.values(rows, "zo-byte")
    g_f, g_b, g_fo = _gain(rows, "zo-fp32"), _gain(rows, "zo-byte"), _gain(rows, "ddp-adamw")
    diff = abs(C.mean(b) - C.mean(f))
    by_seed = {r["seed"]: r["metrics"]["final_eval_loss"] for r in rows if r["run"] == "zo-fp32"}
    paired = [r["metrics"]["final_eval_loss"] - by_seed[r["seed"]] for r in rows if r["run"] == "zo-byte" and r["seed"] in by_seed]
    tol = max(GAIN_TOL * abs(g_f), C.sd(paired) if len(paired) > 1 else 0.0)
    bytes_zo = C.mean(C.values(rows, "zo-byte", "bytes_per_worker_per_step"))
    bytes_fo = C.mean(C.values(rows, "ddp-adamw", "bytes_per_worker_per_step"))
    sgd = (f", DDP SGD {_gain(rows, 'ddp-sgd'):+.4f}" if C.values(rows, "ddp-sgd") else "")
    ours = (f"one byte {C.ms(b)} vs fp32 scalars {C.ms(f)}: they differ by {diff:.2e} nats (tolerance {tol:.2e}: "
            f"{100 * GAIN_TOL:.0f}% of the fp32 run's gain, or the sd of the per-seed differences); gains over the pretrained start in the same "
            f"steps: one byte {g_b:+.4f}, fp32 {g_f:+.4f}, DDP AdamW {g_fo:+.4f}{sgd} (one byte reaches "
            f"{100 * g_b / g_fo:.1f}% of AdamW's gain) while sending {bytes_zo:,.0f} bytes per worker per step instead of "
            f"{bytes_fo:,.0f}.")
    if g_f > 0 and g_b > 0 and diff <= tol:
        return C.Finding("reproduced", ours, zo_table(rows))
    why = ("the zeroth-order runs do not improve on the pretrained model in this budget" if min(g_f, g_b) <= 0 else
           f"one byte differs from fp32 by {diff:.2e} nats, more than {tol:.2e}")
    return C.Finding("not at this scale", ours, zo_table(rows),
                     why=f"{why} (300 steps of a 0.1M-parameter model; MeZO: 10^4-10^5 steps of prompt-based fine-tuning).")


def plot(rows: list[dict], path) -> None:
    C.curves(rows, path, NAMES, title="fine-tuning on 4 histories, eval on 2 held-out histories (2 workers)")


CLAIM_RUNS = ("pretrain", "ddp-adamw", "ddp-sgd", "zo-fp32", "zo-byte")
TITLE = "Just One Byte (per gradient): A Note on Low-Bandwidth Decentralized Language Model Finetuning Using Shared Randomness"
CPU_SETTING = ("Shakespeare char GPT, 2 blocks x 64 wide (~0.1M parameters), pretrained with DDP AdamW for 300 steps on 12 "
               "comedies, then fine-tuned for 300 steps on 4 histories and evaluated on 2 held-out histories; 2 simulated "
               "workers, 16 x 64 characters per worker and step; zo-shared with K = 8 directions, eps 1e-3, SGD lr 3e-4 "
               "(fp32 and one-byte scalars, int8 on [-4, 4]) against DDP with AdamW lr 1e-3.")
GPU_SETTING = "the same rows at 4 blocks x 128 wide (~0.8M parameters), 4 workers, on one GPU (unrun so far)."
CLAIMS = [
    C.Claim("zo-one-byte", "2306.10015", TITLE,
            "Exchanging one byte per projected gradient (shared-randomness SPSA, each worker regenerating the others' "
            "directions from seeds) fine-tunes as well as exchanging the scalars in full precision (MeZO's ZO-SGD), "
            "at a tiny fraction of first-order data parallelism's bytes; how its gain compares to first-order "
            "fine-tuning in the same steps is reported beside it.",
            "the abstract (read, hf.co/papers/2306.10015): machines \"only exchange single-byte projected gradients\", "
            "proof-of-concept experiments; the paper's quantizer and its loss numbers could not be read here "
            "(unverified); the public code (ezelikman/justonebyte, read) sends the scalars as floats. MeZO (2305.17333, "
            "second-hand): comparable to backpropagation fine-tuning with 10^4-10^5 ZO steps on prompt-based tasks.",
            "zo_finetune", {"cpu": C.Setting(CPU_SETTING, "cpu", seeds=2, only=CLAIM_RUNS),
                            "gpu": C.Setting(GPU_SETTING, "gpu", seeds=2, only=CLAIM_RUNS)},
            judge, plot, gpu="a larger model and more steps; zeroth-order progress per step shrinks with the parameter count."),
]


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
