"""A custom task for the lab: register your model, data shards, loss and evaluation, then use
`farsync run` / `farsync.run` with every algorithm and both backends.

    python examples/custom_task.py
    # or, from a config file:  task: {name: "custom_task:SineRegression", hidden: 32}
    #   PYTHONPATH=examples farsync run my_config.yaml

The task below fits y = sin(3x) + noise with a small MLP; worker r sees x in its own interval
(a non-iid split), and evaluation is the mean squared error on a fixed grid.
"""

import argparse
import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import farsync
from farsync.tasks import BatchSampler, Task, TaskParams


class SineParams(TaskParams):
    hidden: int = Field(32, ge=1, description="hidden width of the MLP")
    noise: float = Field(0.1, ge=0.0, description="label noise standard deviation")


@farsync.register_task
class SineRegression(Task):
    name = "sine-regression"
    Params = SineParams
    description = "y = sin(3x) + noise, each worker on its own slice of [-pi, pi]"

    def build_model(self) -> nn.Module:
        h = self.params.hidden
        return nn.Sequential(nn.Linear(1, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))

    def sampler(self, rank: int, batch_size: int) -> BatchSampler:
        lo = -math.pi + 2 * math.pi * rank / self.world_size
        width = 2 * math.pi / self.world_size

        def draw(gen: torch.Generator):
            x = lo + width * torch.rand(batch_size, 1, generator=gen)
            y = torch.sin(3 * x) + self.params.noise * torch.randn(batch_size, 1, generator=gen)
            return x, y

        return BatchSampler(draw, seed=self.seed * 1000 + rank)

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    @torch.no_grad()
    def evaluate(self, model) -> float:
        x = torch.linspace(-math.pi, math.pi, 512).unsqueeze(1)
        return F.mse_loss(model(x), torch.sin(3 * x)).item()


CONFIG = {
    "name": "sine-diloco",
    "task": {"name": "sine-regression", "hidden": 32},
    "cluster": {"workers": 4, "bandwidth": "100Mbps", "step_time": "20ms"},
    "algorithm": {"name": "diloco", "sync_every": 10, "inner": {"name": "adam", "lr": 0.01}},
    "train": {"steps": 300, "batch_size": 32, "eval_every": 100, "log_every": 10},
}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = farsync.run(CONFIG, overrides=[f"train.steps={args.steps}"], out=args.out, progress=False)
    print(f"{result.status}: eval MSE {result.summary['final_eval_loss']:.4f}, run directory {result.run_dir}")
