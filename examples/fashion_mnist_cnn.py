"""A CNN on Fashion-MNIST with DiLoCo on 4 simulated workers, in a plain PyTorch loop.

    sudo apt-get install -y dataset-fashion-mnist     # Debian package: 70k 28x28 images, IDX format
    python examples/fashion_mnist_cnn.py [--steps 300]

Without the data set it prints how to install it and exits (code 0: skipped).
"""

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import farsync

DATA = Path("/usr/share/datasets/fashion-mnist")
INSTALL = "apt-get install -y dataset-fashion-mnist"


def load_idx(name: str) -> torch.Tensor:
    with gzip.open(DATA / name) as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


def load(split: str):
    x = load_idx(f"{split}-images-idx3-ubyte.gz").float().div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    y = load_idx(f"{split}-labels-idx1-ubyte.gz").long()
    return x, y


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (16, 14, 14)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (32, 7, 7)
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--test-samples", type=int, default=10000)
    args = ap.parse_args()
    if not (DATA / "train-images-idx3-ubyte.gz").is_file():
        print(f"skipped: Fashion-MNIST is not installed in {DATA}; install it with: sudo {INSTALL}")
        return 0
    x_train, y_train = load("train")
    x_test, y_test = load("t10k")
    x_test, y_test = x_test[: args.test_samples], y_test[: args.test_samples]

    def train(comm):
        shard = torch.arange(comm.rank, len(y_train), comm.world_size)
        torch.manual_seed(0)
        model = cnn()
        algo = farsync.wrap(model, torch.optim.AdamW(model.parameters(), lr=2e-3), "diloco", sync_every=25)
        gen = torch.Generator().manual_seed(comm.rank)
        for _ in range(args.steps):
            idx = shard[torch.randint(len(shard), (64,), generator=gen)]
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            algo.step()
            algo.zero_grad()
        with algo.eval_params() as m, torch.no_grad():
            return (m(x_test).argmax(1) == y_test).float().mean().item()

    report = farsync.simulate(train, workers=4, bandwidth="1Gbps", step_time="30ms")
    print(f"test accuracy {report.results[0]:.3f} after {args.steps} steps x 4 workers; "
          f"{report.bytes_sent_total} bytes sent; simulated {report.sim_time_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
