"""A plain PyTorch training loop with DiLoCo, simulated on one machine or run under torchrun.

    python examples/diloco_loop.py                          # 4 simulated workers, 100 Mbps
    torchrun --nproc-per-node 2 examples/diloco_loop.py     # 2 real processes (gloo)

The model, data and loop are ordinary PyTorch (an MLP on scikit-learn's digits); the farsync
lines are marked. The same `train` function runs in both settings.
"""

import argparse
import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import farsync


def train(comm, steps: int = 200):
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    shard = torch.arange(comm.rank, len(y), comm.world_size)  # this worker's data

    torch.manual_seed(0)  # same initial model everywhere
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    algo = farsync.wrap(model, optimizer, "diloco", sync_every=20)  # <- farsync

    gen = torch.Generator().manual_seed(comm.rank)
    for _ in range(steps):
        idx = shard[torch.randint(len(shard), (32,), generator=gen)]
        F.cross_entropy(model(X[idx]), y[idx]).backward()
        algo.step()  # <- farsync: replaces optimizer.step()
        algo.zero_grad()

    with algo.eval_params() as m, torch.no_grad():  # <- farsync: the global (averaged) model
        accuracy = (m(X).argmax(1) == y).float().mean().item()
    return accuracy


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    if "RANK" in os.environ:  # under torchrun: the default process group, set up from torchrun's env
        comm = farsync.default_communicator()
        acc = train(comm, args.steps)
        print(f"rank {comm.rank}: accuracy {acc:.3f}")
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    else:
        report = farsync.simulate(lambda comm: train(comm, args.steps), workers=4, bandwidth="100Mbps", step_time="50ms")
        print(f"accuracy of the global model: {report.results[0]:.3f}")
        print(f"simulated time {report.sim_time_s:.2f} s, bytes sent {report.bytes_sent_total}, "
              f"compute utilization {report.compute_utilization:.2f}")
