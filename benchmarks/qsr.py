"""The Quadratic Synchronization Rule vs constant-H Local AdamW vs data-parallel on the Shakespeare GPT (issue 25).

    python benchmarks/qsr.py [--profile cpu|gpu|quick] [--seeds 0 1 2] [--out DIR] [--set KEY=VALUE ...]
    farsync claims --only qsr-beats-constant-h

QSR (Gu, Lyu, Arora, Zhang, Huang; ICLR 2024, arXiv 2310.14423) sets each round's length from the
learning rate at its start, H_s = max(H_base, floor((alpha / lr_s)^2)), so rounds grow as a cosine
schedule decays (``sync_every: {rule: qsr, base, alpha}``, algorithms/sync_schedule.py; as in the
authors' code, rounds are H_base long during the lr warm-up and the last round is cut to end at the
last step). Runs, at equal tokens: data-parallel AdamW (``ddp``); Local AdamW (``local-sgd``:
parameters averaged after every round, AdamW state kept) with constant H = H_base
(``const-hbase``) and constant H = PARAMS["h_long"] (``const-hlong``); Local AdamW with QSR
(``qsr``). Every run: the demo's AdamW with cosine decay to PARAMS["min_lr_ratio"] of the peak, 4
workers, the held-out plays as the test set (final eval loss is the generalization measure; the
paper's is top-1 accuracy on ImageNet). alpha = PARAMS["alpha_ratio"] x the peak lr, so H leaves
H_base once the lr falls below alpha_ratio / sqrt(H_base) of the peak (the decay's second half
for the defaults). Metrics: final eval loss, every evaluation, bytes sent, simulated time.
"""

from __future__ import annotations

import math

import torch

import harness
from farsync import claims as C

PARAMS = {"n_layer": 2, "n_embd": 64, "steps": 400, "workers": 4, "batch_size": 16, "lr": 0.006, "min_lr_ratio": 0.05,
          "h_base": 4, "h_long": 16, "alpha_ratio": 1.0, "eval_every": 40, "eval_windows": 128, "block_size": 64}
PROFILES = {
    "cpu": {},
    # 11M parameters (6 x 384), 1,200 steps of 4 x 32 x 256 characters, bf16, one GPU (sized for 10 min)
    "gpu": {"params": {"n_layer": 6, "n_embd": 384, "steps": 1200, "batch_size": 32, "lr": 0.003, "eval_every": 120,
                       "eval_windows": 256, "block_size": 256},
            "set": harness.GPU + ["train.precision=bf16"]},
    "quick": {"params": {"n_layer": 1, "n_embd": 16, "steps": 24, "batch_size": 4, "h_long": 8, "eval_every": 12,
                         "eval_windows": 8, "block_size": 32}},
}
SEEDS = [0, 1, 2]
CONFIG_OVERRIDES = True
RESULTS = ()
SUMMARY = ("final_eval_loss", "bytes_sent_total", "sim_time_s", "status")
RUNS = {"ddp": "data-parallel AdamW", "const-hbase": "Local AdamW, H = H_base", "const-hlong": "Local AdamW, H = H_long",
        "qsr": "Local AdamW, QSR"}


def alpha(p: dict) -> float:
    return p["alpha_ratio"] * p["lr"]


def jobs(args) -> list[dict]:
    p = args.params
    common = [f"task.n_layer={p['n_layer']}", f"task.n_embd={p['n_embd']}", f"task.block_size={p['block_size']}",
              f"task.eval_windows={p['eval_windows']}", f"cluster.workers={p['workers']}", f"train.batch_size={p['batch_size']}",
              f"train.steps={p['steps']}", f"train.eval_every={p['eval_every']}", f"train.log_every={p['eval_every']}",
              f"algorithm.inner.lr={p['lr']}", f"train.lr_schedule.min_lr_ratio={p['min_lr_ratio']}",
              f"train.lr_schedule.warmup_steps={max(1, p['steps'] // 20)}"]
    local = ["algorithm.name=local-sgd"]  # the demo's outer optimizer is dropped (with a note): local-sgd takes none
    sets = {"ddp": ("demo_ddp.yaml", []),
            "const-hbase": ("demo_diloco.yaml", local + [f"algorithm.sync_every={p['h_base']}"]),
            "const-hlong": ("demo_diloco.yaml", local + [f"algorithm.sync_every={p['h_long']}"]),
            "qsr": ("demo_diloco.yaml", local + [f"algorithm.sync_every={{rule: qsr, base: {p['h_base']}, alpha: {alpha(p)}}}"])}
    return [harness.config_job(args, run, base, common + extra, seed) for seed in args.seeds for run, (base, extra) in sets.items()]


def run_one(job: dict) -> dict:
    torch.set_num_threads(1)
    result = harness.run_config(job)
    return {**{k: result.summary.get(k) for k in SUMMARY}, "evals": harness.evals(result.metrics)}


def finish(rows: list[dict], args) -> None:
    print("\n" + _table(rows))


def _table(rows: list[dict]) -> str:
    dp = C.mean(C.values(rows, "ddp"))
    cells = []
    for run, label in RUNS.items():
        xs = C.values(rows, run)
        b = C.mean(C.values(rows, run, "bytes_sent_total"))
        cells.append([label, C.ms(xs), f"{C.rel(C.mean(xs), dp):+.2f}%", f"{b / 1e6:,.1f} MB" if math.isfinite(b) else "-"])
    return C.table(["run", "final eval loss (held-out plays)", "vs DP", "bytes sent (all workers)"], cells)


def judge(rows: list[dict]) -> C.Finding:
    q, hb, hl, dp = (C.values(rows, r) for r in ("qsr", "const-hbase", "const-hlong", "ddp"))
    bq, bb = C.mean(C.values(rows, "qsr", "bytes_sent_total")), C.mean(C.values(rows, "const-hbase", "bytes_sent_total"))
    ours = (f"QSR {C.ms(q)}, constant H_base {C.ms(hb)}, constant H_long {C.ms(hl)}, data-parallel {C.ms(dp)}; QSR sends "
            f"{bq / bb:.2f}x the bytes of constant H_base.")
    noise = max(C.sd(q), C.sd(hb), C.sd(hl), C.sd(dp))
    const = min(C.mean(hb), C.mean(hl))
    if C.mean(q) < min(const, C.mean(dp)) and bq < bb:
        return C.Finding("reproduced", ours, _table(rows))
    vs_const, vs_dp = C.mean(q) - const, C.mean(q) - C.mean(dp)
    if vs_const > 3 * noise and vs_const > 0.01:  # the rule's own claim: better than the constant periods it replaces
        return C.Finding("contradicted", ours, _table(rows),
                         why=f"QSR ends {vs_const:.3f} above the better constant period, more than 3 seed sd ({noise:.3f}), "
                             "under the decaying schedule the rule is designed for (a 4-worker character LM over 400 steps, "
                             "not ImageNet classification over hundreds of epochs).")
    return C.Finding("not at this scale", ours, _table(rows),
                     why=f"QSR is within 3 seed sd ({noise:.3f}) of the better constant period ({vs_const:+.3f}) with "
                         f"{bq / bb:.2f}x its bytes, but every Local AdamW run trails data-parallel by far (QSR {vs_dp:+.3f}): "
                         "400 steps of 4 workers leave local steps no time to pay off, while the paper's gains (about 1% "
                         "top-1 over DP) appear after hundreds of ImageNet epochs.")


def plot(rows: list[dict], path) -> None:
    C.curves(rows, path, RUNS, title="QSR vs constant H vs DP: held-out eval loss (mean ± sd over seeds)")


CLAIMS = [
    C.Claim("qsr-beats-constant-h", "2310.14423", "A Quadratic Synchronization Rule for Distributed Deep Learning",
            "With a decaying learning rate, Local AdamW/SGD whose round length follows QSR (H ~ 1/lr^2) generalizes better "
            "than constant-H Local SGD and than data-parallel training, while synchronizing less often.",
            "Abstract: on ViT-B / ImageNet, QSR lets Local AdamW reach 1.16% (16 GPUs) / 0.84% (64 GPUs) higher top-1 accuracy "
            "than data-parallel training while cutting training time from 26.7 to 20.2 h / 8.6 to 5.5 h. Figure 5 (caption, "
            "second-hand): constant H = 4 79.32% vs QSR (H_base 4, alpha 0.0175, cosine from lr 0.008) 80.98%.",
            "qsr",
            {"cpu": C.Setting("Shakespeare char GPT, 2 blocks x 64 (110k parameters), 4 workers x 16 sequences, 400 steps, AdamW "
                              "6e-3 cosine to 5% after 20 warm-up steps, H_base = 4, alpha = 6e-3 (H grows once the lr is below "
                              "half the peak), constant H = 4 and 16, DP; eval loss on the held-out plays.", "cpu"),
             "gpu": C.Setting("the same at 11M parameters (6 x 384), 1,200 steps of 4 x 32 x 256 characters, AdamW 3e-3, bf16, 2 seeds.",
                              "gpu", seeds=2)},
            judge, plot, gpu="1,200 steps at 11M parameters (3x the cpu profile's) give the late, long rounds many more steps to act on."),
]


if __name__ == "__main__":
    raise SystemExit(harness.script(__file__))
