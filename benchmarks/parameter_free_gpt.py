"""Prodigy and DoWG on the Shakespeare GPT, one worker and as DiLoCo's inner optimizer (issue 7, benchmark 2).

    python benchmarks/harness.py parameter_free_gpt [--profile cpu|gpu|quick] [--out DIR] [--only RUN ...] [--seeds 0 1 2]
                                                    [--parallel N] [--set KEY=VALUE ...]

One worker: the setting of benchmarks/averaging_quality.py (4-block GPT, 600 steps of batch 16,
cosine to 0.1 after 30 warm-up steps, grad clip 1), whose AdamW sweep picked lr 1.2e-2.
DiLoCo: the demo config (4 workers, H 20, outer SGD 0.7 / Nesterov 0.9, 3-block GPT, 600 steps)
with an inner AdamW sweep 3e-3 / 6e-3 / 1.2e-2 / 2.4e-2. Prodigy and DoWG run untuned: lr 1 under the
same schedule; Prodigy with AdamW's betas and weight decay and ``safeguard_warmup`` (its authors'
advice with an lr warm-up). Their scalar statistics are averaged over the 4 workers every inner
step (one small all-reduce, counted in the bytes). Metrics per run and seed: final eval loss,
bytes sent per worker, every evaluation (step, eval loss); the table (after the runs, or --report)
gives each run against the best AdamW of its setting (target: final eval loss within 3% of tuned
AdamW). The stored rows ran with ``OMP_NUM_THREADS=1``. Profile ``claims-cpu`` (the parameter-free-vs-tuned-gpt
claim): one worker only, 300 steps, a 3-point AdamW sweep (PARAMS["sweep"]) against untuned Prodigy, 2 seeds.
"""

from pathlib import Path

import torch

import harness
from farsync import claims as C

ADAMW = "{{name: adamw, lr: {lr}, weight_decay: 0.1, betas: [0.9, 0.95]}}"
PRODIGY = "{name: prodigy, weight_decay: 0.1, betas: [0.9, 0.95], safeguard_warmup: true}"
DOWG = "{name: dowg}"
ONE = ["cluster.workers=1", "task.n_layer=4", "train.eval_every=30"]
RUNS = {  # name: (config, overrides)
    "1w-adamw-1.2e-2": ("demo_ddp.yaml", ONE + ["algorithm.inner=" + ADAMW.format(lr=1.2e-2)]),
    "1w-prodigy": ("demo_ddp.yaml", ONE + ["algorithm.inner=" + PRODIGY]),
    "1w-dowg": ("demo_ddp.yaml", ONE + ["algorithm.inner=" + DOWG]),
    "diloco-adamw-3e-3": ("demo_diloco.yaml", ["algorithm.inner=" + ADAMW.format(lr=3e-3)]),
    "diloco-adamw-6e-3": ("demo_diloco.yaml", ["algorithm.inner=" + ADAMW.format(lr=6e-3)]),
    "diloco-adamw-1.2e-2": ("demo_diloco.yaml", ["algorithm.inner=" + ADAMW.format(lr=1.2e-2)]),
    "diloco-adamw-2.4e-2": ("demo_diloco.yaml", ["algorithm.inner=" + ADAMW.format(lr=2.4e-2)]),
    "diloco-prodigy": ("demo_diloco.yaml", ["algorithm.inner=" + PRODIGY]),
    "diloco-dowg": ("demo_diloco.yaml", ["algorithm.inner=" + DOWG]),
}

# claims-cpu: 300 steps (half the study's) of the same one-worker model, eval every 30 steps on 128 windows
CLAIMS_CPU = ["train.steps=300", "train.eval_every=30", "train.log_every=30", "task.eval_windows=128"]
# claims-gpu: 10.8M parameters (6 blocks x 384, 256 characters of context), 800 steps of 32 sequences, bf16 (sized for 10 min)
CLAIMS_GPU = harness.GPU + ["train.precision=bf16", "task.n_layer=6", "task.n_embd=384", "task.n_head=6", "task.block_size=256",
                            "train.batch_size=32", "train.steps=800", "train.eval_every=40", "train.log_every=40",
                            "task.eval_windows=256", "train.lr_schedule.warmup_steps=40"]
CLAIM_RUNS = ["1w-adamw-*", "1w-prodigy"]
PROFILES = {"cpu": {}, "gpu": {"set": harness.GPU}, "quick": {"set": harness.GPT_QUICK, "only": ["1w-adamw-1.2e-2", "1w-prodigy", "diloco-adamw-6e-3", "diloco-dowg"]},
            "claims-cpu": {"set": CLAIMS_CPU, "params": {"sweep": [6e-3, 2.4e-2]}, "only": CLAIM_RUNS, "seeds": [0, 1]},
            "claims-gpu": {"set": CLAIMS_GPU, "params": {"sweep": [1.5e-3, 3e-3, 6e-3]}, "only": CLAIM_RUNS, "seeds": [0, 1]}}
PARAMS: dict = {"sweep": []}  # extra one-worker AdamW lrs (the study's own 1w AdamW is 1.2e-2)
SEEDS = [0]
CONFIG_OVERRIDES = True
RESULTS = ("parameter_free_gpt_cpu",)


def label(lr: float) -> str:
    """0.012 -> "1.2e-2" (the run labels of the AdamW sweep)."""
    m, e = f"{lr:e}".split("e")
    return f"{float(m):g}e{int(e)}"


def runs(sweep=()) -> dict[str, tuple[str, list[str]]]:
    extra = {f"1w-adamw-{label(lr)}": ("demo_ddp.yaml", ONE + ["algorithm.inner=" + ADAMW.format(lr=lr)]) for lr in sweep}
    return {**{k: v for k, v in extra.items() if k not in RUNS}, **RUNS}


def jobs(args) -> list[dict]:
    table = runs(args.params.get("sweep") or ())
    return [harness.config_job(args, name, cfg, sets, seed) for seed in args.seeds for name, (cfg, sets) in table.items()]


def run_one(job: dict) -> dict:
    torch.set_num_threads(1)
    r = harness.run_config(job)
    return {"final_eval_loss": r.summary["final_eval_loss"], "status": r.summary["status"],
            "bytes_sent_per_worker": r.summary.get("bytes_sent_per_worker"), "evals": harness.evals(r.metrics)}


def finish(rows: list[dict], args) -> None:
    """Each run's final eval loss against the best AdamW run of its setting (1w or diloco) and seed."""
    rows = harness.metric_rows(rows)
    print("\n| run | seed | final eval loss | vs best AdamW of its setting |\n|---|---|---|---|")
    for x in sorted(rows, key=lambda r: (r["run"].split("-")[0], r["seed"], r["run"])):
        group = x["run"].split("-")[0]
        best = min((r["final_eval_loss"] for r in rows if r["run"].startswith(group + "-adamw") and r["seed"] == x["seed"]),
                   default=None)
        vs = f"{100 * (x['final_eval_loss'] / best - 1):+.1f}%" if best else "-"
        print(f"| {x['run']} | {x['seed']} | {x['final_eval_loss']:.4f} | {vs} |")


# ---------------------------------------------------------------- the claim (farsync claims)

GPT_TOL = 3.0  # percent: the study's own target (final eval loss within 3% of tuned AdamW)


def adam_runs(rows: list[dict]) -> list[str]:
    return sorted({r["run"] for r in rows if r["run"].startswith("1w-adamw-")}, key=lambda x: float(x.split("-", 2)[2]))


def tuned(rows: list[dict]) -> str:
    """The one-worker AdamW lr with the lowest mean final eval loss over its seeds (chosen in hindsight)."""
    return min(adam_runs(rows), key=lambda run: C.mean(C.values(rows, run)))


def _steps(rows: list[dict]) -> int:
    return max(r["metrics"]["evals"][-1][0] for r in rows if r["metrics"].get("evals"))


def judge_gpt(rows: list[dict]) -> C.Finding:
    ref = tuned(rows)
    pro, adam = C.values(rows, "1w-prodigy"), C.values(rows, ref)
    per = {}
    for r in rows:
        if r["run"] == "1w-prodigy":
            a = next((x for x in rows if x["run"] == ref and x["seed"] == r["seed"]), None)
            if a is not None:
                per[r["seed"]] = C.rel(r["metrics"]["final_eval_loss"], a["metrics"]["final_eval_loss"])
    gap = C.rel(C.mean(pro), C.mean(adam))
    ours = (f"{_steps(rows)} steps, one worker: untuned Prodigy {C.ms(pro)} vs the best AdamW of "
            f"{', '.join(x[9:] for x in adam_runs(rows))} ({ref[9:]}: {C.ms(adam)}), gap {gap:+.2f}% (per seed "
            + ", ".join(f"{v:+.2f}%" for v in per.values()) + f"). Tolerance: within {GPT_TOL:g}% on every seed.")
    cells = [[x, C.ms(C.values(rows, x)), f"{C.rel(C.mean(C.values(rows, x)), C.mean(adam)):+.2f}%"]
             for x in adam_runs(rows) + ["1w-prodigy"]]
    table = C.table(["run", "final eval loss", f"vs {ref}"], cells)
    if per and all(v <= GPT_TOL for v in per.values()):
        return C.Finding("reproduced", ours, table)
    beaten = [x for x in adam_runs(rows) if C.mean(C.values(rows, x)) > C.mean(pro)]
    return C.Finding("not at this scale", ours, table,
                     why=f"Prodigy trails the tuned AdamW by {gap:.1f}% after {_steps(rows)} steps of a 0.46M-parameter model (and "
                         "by 6.7% in the study's 600-step runs, docs/benchmarks.md, so a longer run at this size does not close the "
                         "gap); of the AdamW sweep it beats "
                         f"{', '.join(x[9:] for x in beaten) or 'none'}. The paper's GPT on BookWiki is far larger (its size and "
                         "length: not read here): model scale is what the gpu profile can test.")


def plot_gpt(rows: list[dict], path: Path) -> None:
    names = {x: f"AdamW lr {x[9:]}" + (" (tuned)" if x == tuned(rows) else "") for x in adam_runs(rows)}
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for i, (run, lab) in enumerate({**names, "1w-prodigy": "Prodigy (untuned)"}.items()):
        curve = C.mean_curve(rows, run)
        if curve is None:
            continue
        x, m, d, seeds = curve
        ax.plot(x, m, color=f"C{i}", lw=2 if run in (tuned(rows), "1w-prodigy") else 1,
                label=f"{lab} ({seeds} seeds)")
        ax.fill_between(x, [a - b for a, b in zip(m, d)], [a + b for a, b in zip(m, d)], color=f"C{i}", alpha=0.2)
    finals = [v for run in [*names, "1w-prodigy"] for v in C.values(rows, run)]
    ax.set_ylim(min(finals) - 0.05, max(finals) + 0.7)
    ax.set(xlabel="step", ylabel="eval loss (mean ± sd over seeds)")
    ax.set_title(f"Shakespeare char GPT, one worker, {_steps(rows)} steps", fontsize=9)
    ax.legend(fontsize=8)
    C.save(fig, path)


CLAIMS = [
    C.Claim("parameter-free-vs-tuned-gpt", "2306.06101", "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
            "Untuned Prodigy (lr 1) trains a GPT language model to within a small gap (here 3%) of the final loss of AdamW "
            "with a tuned learning rate.",
            "Prodigy's abstract (arxiv.org/html/2306.06101v4): on RoBERTa and GPT transformer training on BookWiki (among "
            "others) it 'reaches test accuracy values close to that of hand-tuned Adam'. The GPT figure's numbers: unverified "
            "(not read).",
            "parameter_free_gpt",
            {"ci": C.Setting("smoke test: 24 steps of a 32-wide model, AdamW 1.2e-2 vs Prodigy (not a result)", "quick",
                             only=("1w-adamw-1.2e-2", "1w-prodigy"), seeds=1),
             "cpu": C.Setting("the 4-block demo GPT (461,664 parameters, 64-character context), one worker, 300 steps of batch 16, "
                              "30 warm-up steps then cosine to 0.1, grad clip 1; AdamW (betas 0.9/0.95, wd 0.1) at lr 6e-3 / 1.2e-2 / "
                              "2.4e-2, the best in hindsight is the reference; Prodigy lr 1 with the same schedule, betas and wd, "
                              "safeguard_warmup; eval every 30 steps on 128 windows; 2 seeds. The paper trains a GPT on BookWiki "
                              "(its size and length: not read).", "claims-cpu", group="parameter-free-gpt"),
             "gpu": C.Setting("unrun: 10.8M parameters (6 blocks x 384, 256-character context), 800 steps of 32 sequences, bf16 (sized for 10 min), "
                              "one GPU; AdamW 1.5e-3 / 3e-3 / 6e-3 / 1.2e-2 vs Prodigy; 2 seeds.", "claims-gpu",
                              group="parameter-free-gpt")},
            judge_gpt, plot_gpt,
            gpu="the claims-gpu profile: a 23x larger model (10.8M parameters) and 800 steps, AdamW re-swept."),
]


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
