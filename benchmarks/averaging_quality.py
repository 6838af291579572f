"""Averaging / lookahead optimizers on the Shakespeare GPT, one worker (issue 6, benchmark 1).

    python benchmarks/harness.py averaging_quality [--profile cpu|gpu|quick] [--out DIR] [--only RUN ...] [--seeds 0 1 2]
                                                   [--set KEY=VALUE ...] [--report [FILE]]

The 4-block demo GPT (461,664 parameters), one worker, 600 steps of batch 16, the demo's AdamW
(betas 0.9/0.95, weight decay 0.1, grad clip 1) with cosine decay to 0.1 after 30 warm-up steps,
evaluated every 30 steps. Runs: AdamW at lr 3e-3 / 6e-3 / 1.2e-2 / 2.4e-2 (the sweep); at the best AdamW lr:
GPA (mu_x 0.9967, mu_y 0.7), EMA-Nesterov (beta 0.5, gamma 0.99, beta off for the 30 warm-up
steps) and its gamma = 0 one-step lookahead, Lookahead (k 5, alpha 0.5), single-worker DiLoCo
(SNOO: H 24, outer SGD 0.7 Nesterov 0.9); Schedule-Free AdamW (GPA schedule-free mode, mu_y 0.9,
base betas (0, 0.95), constant lr after warm-up); Muon (lr 0.02, momentum 0.95) for the hidden matrices with
AdamW (lr 1.2e-2) for the rest, alone and under GPA. Metrics: final and best eval loss, every
evaluation (step, eval loss); the table gives the steps to reach the best AdamW run's final eval loss.
"""

from pathlib import Path

import harness

COMMON = ["cluster.workers=1", "task.n_layer=4", "train.eval_every=30"]


def adamw(lr, betas=(0.9, 0.95)):
    return f"{{name: adamw, lr: {lr}, weight_decay: 0.1, betas: [{betas[0]}, {betas[1]}]}}"


BEST = 1.2e-2  # the sweep's best AdamW lr (docs/benchmarks.md); the wrappers use it
RUNS = {
    "adamw-3e-3": [f"algorithm.inner={adamw(3e-3)}"],
    "adamw-6e-3": [f"algorithm.inner={adamw(6e-3)}"],
    "adamw-1.2e-2": [f"algorithm.inner={adamw(1.2e-2)}"],
    "adamw-2.4e-2": [f"algorithm.inner={adamw(2.4e-2)}"],
    "gpa": [f"algorithm.inner={{name: gpa, base: {adamw(BEST)}, mu_x: 0.9967, mu_y: 0.7}}"],
    "gpa-mu_x0.99": [f"algorithm.inner={{name: gpa, base: {adamw(BEST)}, mu_x: 0.99, mu_y: 0.7}}"],
    "ema-nesterov": [f"algorithm.inner={{name: ema-nesterov, base: {adamw(BEST)}, beta: 0.5, gamma: 0.99, warmup_steps: 30}}"],
    "ema-nesterov-gamma0": [f"algorithm.inner={{name: ema-nesterov, base: {adamw(BEST)}, beta: 0.5, gamma: 0.0, warmup_steps: 30}}"],
    "lookahead": [f"algorithm.inner={{name: lookahead, base: {adamw(BEST)}, k: 5, alpha: 0.5}}"],
    "schedule-free": [f"algorithm.inner={{name: schedule-free, base: {adamw(BEST, (0.0, 0.95))}, mu_y: 0.9}}",
                      "train.lr_schedule={name: constant, warmup_steps: 30}"],
    "muon": ["algorithm.inner={name: muon, lr: 0.02, adamw: {lr: 0.012, weight_decay: 0.1, betas: [0.9, 0.95]}}"],
    "ema-nesterov-muon": ["algorithm.inner={name: ema-nesterov, base: {name: muon, lr: 0.02, adamw: {lr: 0.012, weight_decay: 0.1, betas: [0.9, 0.95]}}, beta: 0.5, gamma: 0.99, warmup_steps: 30}"],
    "lookahead-muon": ["algorithm.inner={name: lookahead, base: {name: muon, lr: 0.02, adamw: {lr: 0.012, weight_decay: 0.1, betas: [0.9, 0.95]}}, k: 5, alpha: 0.5}"],
    "gpa-muon": ["algorithm.inner={name: gpa, base: {name: muon, lr: 0.02, adamw: {lr: 0.012, weight_decay: 0.1, betas: [0.9, 0.95]}}, mu_x: 0.9967, mu_y: 0.7}"],
    "diloco-1worker": ["algorithm.name=diloco", "algorithm.sync_every=24", f"algorithm.inner={adamw(BEST)}"],
}

PROFILES = {"cpu": {}, "gpu": {"set": harness.GPU}, "quick": {"set": harness.GPT_QUICK, "only": ["adamw-1.2e-2", "gpa", "schedule-free", "muon", "diloco-1worker"]}}
PARAMS: dict = {}
SEEDS = [0]
CONFIG_OVERRIDES = True
RESULTS = ("averaging_quality_cpu",)
FIGURES = {"averaging_quality.png": "averaging_quality_cpu"}


def jobs(args) -> list[dict]:
    return [harness.config_job(args, name, "demo_ddp.yaml", COMMON + sets, seed) for seed in args.seeds for name, sets in RUNS.items()]


def run_one(job: dict) -> dict:
    r = harness.run_config(job)
    return {"final_eval_loss": r.summary["final_eval_loss"], "best_eval_loss": r.summary["best_eval_loss"],
            "evals": harness.evals(r.metrics), "status": r.summary["status"]}


def finish(rows: list[dict], args) -> None:
    rows = harness.metric_rows(rows)
    adam = [x for x in rows if x["run"].startswith("adamw")]
    if not adam:
        return  # no AdamW reference yet
    target = min(adam, key=lambda x: x["final_eval_loss"])
    print(f"\nreference: {target['run']} final eval loss {target['final_eval_loss']:.4f}\n")
    print("| run | final eval loss | best eval loss | steps to the reference's final loss |")
    print("|---|---|---|---|")
    for x in rows:
        hit = next((s for s, v in x["evals"] if v <= target["final_eval_loss"]), None)
        print(f"| {x['run']} (seed {x['seed']}) | {x['final_eval_loss']:.4f} | {x['best_eval_loss']:.4f} | {hit if hit else 'not reached'} |")


def figure(png: str, rows: list[dict], path: Path) -> None:
    """Eval loss vs step, mean over the seeds each run has: AdamW-based rows and Muon-based rows."""
    plt = harness.pyplot()
    panels = {"AdamW base (lr 1.2e-2)": [n for n in RUNS if "muon" not in n and not n.startswith("adamw-") or n == "adamw-1.2e-2"],
              "Muon base": ["adamw-1.2e-2"] + [n for n in RUNS if "muon" in n]}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, (title, names) in zip(axes, panels.items()):
        for name in names:
            runs = [r["metrics"] for r in rows if r["run"] == name]
            if not runs:
                continue
            steps = [s for s, _ in runs[0]["evals"]]
            mean = [sum(r["evals"][i][1] for r in runs) / len(runs) for i in range(len(steps))]
            ax.plot(steps, mean, "k--" if name == "adamw-1.2e-2" else "-", label=f"{name} ({len(runs)} seeds)")
        ax.set(title=title, xlabel="step", ylabel="eval loss", ylim=(1.8, 2.8))
        ax.legend(fontsize=7)
    fig.tight_layout()
    harness.save(fig, path, 110)


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
