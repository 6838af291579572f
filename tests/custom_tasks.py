"""A user-defined task living outside farsync (imported by name in test_api.py)."""

import torch
import torch.nn.functional as F
from torch import nn

from farsync.tasks import BatchSampler, Task, TaskParams


class LineParams(TaskParams):
    slope: float = 2.0


class LineFit(Task):
    """Fit y = slope * x with a 1-parameter linear model; eval = squared error of the weight."""

    name = "line-fit"
    Params = LineParams

    def build_model(self):
        return nn.Linear(1, 1, bias=False)

    def sampler(self, rank, batch_size):
        def draw(gen):
            x = torch.randn(batch_size, 1, generator=gen)
            return x, self.params.slope * x

        return BatchSampler(draw, seed=self.seed + rank)

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    @torch.no_grad()
    def evaluate(self, model):
        return float((model.weight - self.params.slope).pow(2).sum())
