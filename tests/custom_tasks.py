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


class ShiftParams(TaskParams):
    dim: int = 3


class BatchNormRegression(Task):
    """A small regression net with BatchNorm; worker r's inputs are shifted by r, so each worker's
    running statistics differ (the buffer policy's test case). Eval: mse in eval mode, which reads
    the running statistics."""

    name = "bn-regression"
    Params = ShiftParams

    def build_model(self):
        d = self.params.dim
        return nn.Sequential(nn.Linear(d, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

    def sampler(self, rank, batch_size):
        def draw(gen):
            x = torch.randn(batch_size, self.params.dim, generator=gen) + rank
            return x, x.sum(dim=1, keepdim=True)

        return BatchSampler(draw, seed=self.seed + rank)

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    @torch.no_grad()
    def evaluate(self, model):
        was = model.training
        model.eval()
        x = torch.randn(64, self.params.dim, generator=torch.Generator().manual_seed(7))
        out = float(F.mse_loss(model(x), x.sum(dim=1, keepdim=True)))
        model.train(was)
        return out
