"""A Hugging Face causal LM (GPT-2 or Llama, randomly initialised from a config) trained with
DiLoCo or Streaming DiLoCo on simulated workers, in a plain PyTorch loop.

    pip install -e '.[hf]'                                   # transformers (no weights are downloaded)
    python examples/hf_diloco.py                             # GPT-2, DiLoCo, 4 workers, 300 steps
    python examples/hf_diloco.py --model llama --algorithm streaming-diloco --fragments 4
    python examples/hf_diloco.py --model gpt2 llama --algorithm diloco streaming-diloco   # all four

The model is built from a tiny config (4 blocks, width 64, context 64; dropout 0) with the same
seed on every worker, so the workers start identical (``init="check"`` verifies it). The data is
farsync's Shakespeare (the ``shakespeare-gpt`` task: the plays, a character vocabulary, the iid
worker shards and its held-out plays), and the loss is the model's own: ``model(input_ids=w,
labels=w).loss`` (Hugging Face shifts the labels). Streaming DiLoCo's fragments come from the
strided rule (`farsync.algorithms.fragments`): the model's largest ``nn.ModuleList`` is its block
list (``transformer.h`` for GPT-2, ``model.layers`` for Llama) and fragment k gets blocks k, k+F,
...; the other tensors (embeddings, final norm, head) go one at a time to the smallest fragment.

Without transformers or the Shakespeare data it prints the install command and exits (code 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import lru_cache
from typing import Any

import torch

import farsync
from farsync.algorithms.fragments import largest_block_list

MODELS = ("gpt2", "llama")
ALGORITHMS = ("diloco", "streaming-diloco")
OUTER = {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}  # DiLoCo's outer step
INSTALL_HF = "pip install -e '.[hf]'"


def build_model(kind: str, vocab_size: int, n_layer: int = 4, n_embd: int = 64, n_head: int = 4,
                n_positions: int = 64, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised GPT2LMHeadModel or LlamaForCausalLM from a config (nothing downloaded),
    seeded so that every worker builds the same one; dropout 0."""
    import transformers

    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config)  # lm_head is tied to transformer.wte
    elif kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab_size, max_position_embeddings=n_positions, hidden_size=n_embd,
            intermediate_size=(8 * n_embd // 3 + 15) // 16 * 16, num_hidden_layers=n_layer, num_attention_heads=n_head,
            num_key_value_heads=n_head, attention_dropout=0.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
        model = transformers.LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown model {kind!r}; valid choices: {', '.join(MODELS)}")
    model.loss_type = "ForCausalLM"  # .loss is the shifted next-token cross-entropy (said, not guessed)
    return model.train()


def block_list_name(model: torch.nn.Module) -> tuple[str, int]:
    """The name and length of the block list that the strided fragment rule strides over."""
    blocks = largest_block_list(model)
    if blocks is None:
        return "", 0
    return next(name for name, m in model.named_modules() if m is blocks), len(blocks)


def describe_fragments(model: torch.nn.Module, fragments: list[list[int]]) -> list[dict[str, Any]]:
    """Per fragment: the indices of the blocks it holds and the names of its other tensors."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]  # the order of algo.params
    prefix, _ = block_list_name(model)
    out = []
    for frag in fragments:
        blocks, other = set(), []
        for i in frag:
            if prefix and names[i].startswith(prefix + "."):  # e.g. transformer.h.2.attn.c_attn.weight -> block 2
                blocks.add(int(names[i][len(prefix) + 1:].split(".")[0]))
            else:
                other.append(names[i])
        out.append({"blocks": sorted(blocks), "other": other, "params": [names[i] for i in frag]})
    return out


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, data: torch.Tensor, window: int, n_windows: int) -> float:
    """Mean cross-entropy per predicted character (nats) on `n_windows` evenly spaced windows."""
    n_windows = min(n_windows, len(data) // window)
    step = (len(data) - window) // max(n_windows - 1, 1)
    starts = torch.arange(n_windows) * step
    total = 0.0
    for chunk in starts.split(64):
        w = data[chunk[:, None] + torch.arange(window)].long()
        total += model(input_ids=w, labels=w).loss.item() * len(chunk)  # equal lengths: a mean of means
    return total / n_windows


@lru_cache(maxsize=4)
def shakespeare(context: int, workers: int, seed: int):
    """farsync's `shakespeare-gpt` data: the plays, a character vocabulary (``.vocab``), the
    workers' iid shards (``.sampler(rank, batch)``: windows of `context` + 1 characters as
    (inputs, next characters)) and the held-out plays (``.eval_data``)."""
    task = farsync.get_task("shakespeare-gpt")
    return task(task.Params(block_size=context - 1), workers, seed)


def main(algorithm: str = "diloco", model: str = "gpt2", steps: int = 300, workers: int = 4, sync_every: int = 30,
         fragments: int = 2, delay: int = 5, alpha: float = 0.5, batch_size: int = 16, lr: float = 3e-3,
         n_layer: int = 4, n_embd: int = 64, n_head: int = 4, context: int = 64, eval_windows: int = 128,
         bandwidth: str = "100Mbps", latency: str = "10ms", step_time: str = "50ms", seed: int = 0,
         verbose: bool = True) -> dict[str, Any]:
    """Train `model` ('gpt2' | 'llama') with `algorithm` ('diloco' | 'streaming-diloco') on
    `workers` simulated workers for `steps` inner steps each; print and return what happened.

    The returned dict has the held-out loss of the initial and of the final global model
    (``loss_start``, ``loss_end``), the workers' mean training loss (``train_losses``, per step),
    ``bytes_sent_total``, ``sim_time_s``, ``wall_s``, the block list found (``block_list``,
    ``blocks``), Streaming DiLoCo's fragments (``fragments``: `describe_fragments`, and
    ``fragment_indices``), each worker's final global and local parameters as flat vectors
    (``global_params``, ``local_params``) and the `farsync.SimReport` (``report``)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; valid choices: {', '.join(ALGORITHMS)}")
    task = shakespeare(context, workers, seed)  # windows of `context` characters
    vocab = len(task.vocab)
    if algorithm == "diloco":
        options = {"sync_every": sync_every, "outer": OUTER}
    else:
        options = {"sync_every": sync_every, "outer": OUTER, "fragments": fragments, "delay": delay, "alpha": alpha}

    def train(comm):
        net = build_model(model, vocab, n_layer, n_embd, n_head, context, seed)  # the same on every worker
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
        algo = farsync.wrap(net, optimizer, algorithm, init="check", **options)  # <- farsync
        sampler = task.sampler(comm.rank, batch_size)  # this worker's shard (comm.rank)
        out: dict[str, Any] = {"losses": []}
        if comm.rank == 0:
            out["loss_start"] = held_out_loss(net, task.eval_data, context, eval_windows)
            out["fragment_indices"] = getattr(algo, "fragments", None)
        for _ in range(steps):
            x, y = sampler.next_batch()
            window = torch.cat([x, y[:, -1:]], dim=1)  # (B, context): Hugging Face shifts the labels itself
            loss = net(input_ids=window, labels=window).loss
            loss.backward()
            algo.step()  # <- farsync: replaces optimizer.step()
            algo.zero_grad()
            out["losses"].append(loss.item())
        out["local_params"] = flat(net)
        with algo.eval_params() as m:  # <- farsync: the global model
            out["global_params"] = flat(m)
            if comm.rank == 0:
                out["loss_end"] = held_out_loss(m, task.eval_data, context, eval_windows)
        return out

    probe = build_model(model, vocab, n_layer, n_embd, n_head, context, seed)
    n_params = sum(p.numel() for p in probe.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in probe.parameters())
    block_list, blocks = block_list_name(probe)
    start = time.perf_counter()
    report = farsync.simulate(train, workers=workers, bandwidth=bandwidth, latency=latency, step_time=step_time,
                              layers=blocks or 1)
    wall = time.perf_counter() - start
    r0 = report.results[0]
    frags = describe_fragments(probe, r0["fragment_indices"]) if r0["fragment_indices"] is not None else None
    losses = [sum(r["losses"][t] for r in report.results) / workers for t in range(steps)]
    res = {
        "model": model, "model_class": type(probe).__name__, "algorithm": algorithm, "workers": workers, "steps": steps,
        "options": options, "n_params": n_params, "param_bytes": param_bytes, "vocab_size": vocab,
        "block_list": block_list, "blocks": blocks, "fragments": frags, "fragment_indices": r0["fragment_indices"],
        "loss_start": r0["loss_start"], "loss_end": r0["loss_end"], "train_losses": losses,
        "bytes_sent_total": report.bytes_sent_total, "bytes_sent_per_worker": [s.bytes_sent for s in report.stats],
        "peak_bytes_per_call": max(s.peak_bytes_per_sync for s in report.stats), "sim_time_s": report.sim_time_s,
        "compute_utilization": report.compute_utilization, "wall_s": wall,
        "global_params": [r["global_params"] for r in report.results],
        "local_params": [r["local_params"] for r in report.results], "report": report,
    }
    if verbose:
        print_result(res)
    return res


def print_result(res: dict[str, Any]) -> None:
    opts = ", ".join(f"{k}={v}" for k, v in res["options"].items() if k != "outer")
    print(f"{res['model']} ({res['model_class']}, {res['n_params']:,} parameters, random init from its config, "
          f"{res['vocab_size']}-character vocabulary): {res['algorithm']} ({opts}; outer SGD lr 0.7 Nesterov 0.9), "
          f"{res['workers']} workers x {res['steps']} steps")
    print(f"  block list found by the fragment rule: {res['block_list']} ({res['blocks']} blocks)")
    for k, f in enumerate(res["fragments"] or []):
        other = f" + {', '.join(f['other'])}" if f["other"] else ""
        print(f"    fragment {k}: blocks {', '.join(map(str, f['blocks']))}{other} ({len(f['params'])} tensors)")
    tail = res["train_losses"][-10:]
    print(f"  held-out loss of the global model (nats/char): {res['loss_start']:.3f} -> {res['loss_end']:.3f}; "
          f"train loss (workers' mean): step 1 {res['train_losses'][0]:.3f}, last 10 steps {sum(tail) / len(tail):.3f}")
    n = res["workers"]
    ddp = res["steps"] * n * (2 * (n - 1) * res["param_bytes"] // n)
    print(f"  bytes sent {res['bytes_sent_total']:,} (all workers; peak {res['peak_bytes_per_call']:,} per call; "
          f"a gradient all-reduce every step would send {ddp:,}); simulated time {res['sim_time_s']:.1f} s, compute utilization "
          f"{res['compute_utilization']:.2f}; wall time {res['wall_s']:.1f} s")


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", choices=MODELS, default=["gpt2"])
    ap.add_argument("--algorithm", nargs="+", choices=ALGORITHMS, default=["diloco"])
    ap.add_argument("--steps", type=int, default=300, help="inner steps per worker")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sync-every", type=int, default=30, help="H (Streaming: every fragment syncs every H steps)")
    ap.add_argument("--fragments", type=int, default=2, help="Streaming DiLoCo's F (strided over the blocks)")
    ap.add_argument("--delay", type=int, default=5, help="Streaming DiLoCo's tau (< H / F)")
    ap.add_argument("--alpha", type=float, default=0.5, help="Streaming DiLoCo's mixing on arrival")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3, help="inner AdamW learning rate")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--bandwidth", default="100Mbps")
    ap.add_argument("--step-time", default="50ms")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import transformers  # noqa: F401
    except ImportError:
        print(f"skipped: transformers is not installed; install it with: {INSTALL_HF}")
        return 0
    try:
        for model in args.model:
            for algorithm in args.algorithm:
                main(algorithm, model, args.steps, args.workers, args.sync_every, args.fragments, args.delay, args.alpha,
                     args.batch_size, args.lr, n_layer=args.layers, n_embd=args.width, bandwidth=args.bandwidth,
                     step_time=args.step_time, seed=args.seed)
    except farsync.DataMissingError as e:
        print(f"skipped: {e}")
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(cli())
