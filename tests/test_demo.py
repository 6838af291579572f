"""DeMo (decoupled-momentum) and its chunked DCT."""

import pytest
import torch

import farsync
from farsync.compress.dct import ChunkedDCT, chunk_size, dct_matrix

from conftest import train_sim


def test_dct_is_orthonormal_and_roundtrips():
    d = dct_matrix(48)
    torch.testing.assert_close(d @ d.T, torch.eye(48), atol=1e-5, rtol=0)
    assert chunk_size(96, 64) == 48 and chunk_size(50, 64) == 50 and chunk_size(67, 64) == 1
    for shape in [(128, 96), (50,), (3, 5, 7)]:
        t = ChunkedDCT(shape, 64)
        x = torch.randn(shape)
        c = t.encode(x)
        assert c.shape[1] == t.coeffs_per_chunk
        torch.testing.assert_close(t.decode(c), x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c.norm(), x.norm(), rtol=1e-5, atol=1e-5)


def test_all_coefficients_without_sign_is_sgd_with_step_lr_squared(quad4):
    """top-k = every coefficient: the momentum is sent in full and reset each step, so
    theta <- theta - lr * (lr * mean_i g_i)."""
    lr = 0.5
    res, _ = train_sim("decoupled-momentum", 4, 15, {"name": "sgd", "lr": lr}, task=quad4,
                       options={"topk": 10_000, "sign": False, "decay": 0.9})
    torch.manual_seed(0)
    x = quad4.build_model().x.detach().clone()
    samplers = [quad4.sampler(r, 2) for r in range(4)]
    for _ in range(15):
        grads = [a * (x - b) + z for a, b, z in (s.next_batch() for s in samplers)]
        x = x - lr * (lr * torch.stack(grads).mean(0))
    for local, _ in res:
        torch.testing.assert_close(local[0], x, rtol=1e-5, atol=1e-6)


def test_demo_bytes_and_training(tmp_path):
    cfg = {
        "task": {"name": "shakespeare-gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "eval_windows": 16},
        "cluster": {"workers": 2},
        "algorithm": {"name": "decoupled-momentum", "inner": {"name": "sgd", "lr": 0.003}, "topk": 8},
        "train": {"steps": 30, "batch_size": 8, "eval_every": 30, "log_every": 10},
    }
    res = farsync.run(cfg, out=tmp_path / "r", progress=False)
    assert res.status == "completed"
    assert res.summary["final_eval_loss"] < res.metrics[0]["train_loss"]
    # payload per step: for each parameter, 8 (or all, if fewer) coefficients per chunk x (int16 + fp32)
    from farsync.runner import build_task
    from farsync.config import load_config

    model = build_task(load_config(cfg)).build_model()
    per_step = 0
    for p in model.parameters():
        t = ChunkedDCT(tuple(p.shape), 64)
        n_chunks = (t.rows // t.c1) * (t.cols // t.c2)
        per_step += n_chunks * min(8, t.coeffs_per_chunk) * (2 + 4)
    assert res.summary["bytes_sent_per_worker"] == [30 * per_step] * 2  # all-gather, 2 workers
    dense = 2 * (2 - 1) * 4 * sum(p.numel() for p in model.parameters()) // 2
    assert per_step < dense / 4  # DeMo sends far less than a gradient all-reduce


def test_demo_needs_plain_sgd_inside():
    with pytest.raises(farsync.ConfigError, match="needs inner: {name: sgd}"):
        farsync.run({"task": {"name": "quadratic"}, "algorithm": {"name": "decoupled-momentum", "inner": {"name": "adamw", "lr": 0.1}},
                     "train": {"steps": 2}}, progress=False)
