"""`logreg`: logistic regression (or a small MLP) on scikit-learn's bundled data sets.

Data sets: breast_cancer (569 x 30, 2 classes), digits (1797 x 64, 10 classes), wine, iris.
Features are standardized with training-set statistics; a stratified `test_fraction` is held out
for evaluation. Loss: mean cross-entropy + (l2 / 2) * ||weights||^2 (biases not penalized).
Shards: ``iid`` (shuffled and dealt round-robin) or ``label-sorted`` (sorted by label, then cut
into contiguous blocks: each worker sees few classes). Evaluation: the same regularized loss on
the held-out split, in float64.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import BatchSampler, Task, TaskParams, worker_seed

DATASETS = ("breast_cancer", "digits", "wine", "iris")


class LogRegParams(TaskParams):
    """Parameters of `logreg`."""

    dataset: Literal["breast_cancer", "digits", "wine", "iris"] = "breast_cancer"
    hidden: int = Field(0, ge=0, description="0: logistic regression; >0: one hidden tanh layer of this width")
    l2: float = Field(1e-3, ge=0.0, description="L2 penalty on weights")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split: Literal["iid", "label-sorted"] = "iid"
    dtype: Literal["float32", "float64"] = "float32"


class LogReg(Task):
    name = "logreg"
    Params = LogRegParams
    description = "logistic regression / MLP on scikit-learn data (breast_cancer, digits, wine, iris)"

    def __init__(self, params: LogRegParams, world_size: int, seed: int):
        super().__init__(params, world_size, seed)
        import sklearn.datasets as skd
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        X, y = getattr(skd, f"load_{params.dataset}")(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=params.test_fraction, random_state=0, stratify=y)
        scaler = StandardScaler().fit(Xtr)  # constant features keep scale 1
        self.dtype = getattr(torch, params.dtype)
        self.X = torch.tensor(scaler.transform(Xtr), dtype=self.dtype)
        self.y = torch.tensor(ytr, dtype=torch.long)
        self.X_test = torch.tensor(scaler.transform(Xte), dtype=torch.float64)
        self.y_test = torch.tensor(yte, dtype=torch.long)
        self.n_classes = int(max(y.max(), 1) + 1)
        n = len(self.y)
        if world_size > n:
            raise ValueError(f"workers ({world_size}) exceed training samples ({n})")
        if params.split == "iid":
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(worker_seed(seed, 0, 3)))
            self._shards = [perm[r::world_size] for r in range(world_size)]
        else:
            order = torch.argsort(self.y, stable=True)
            self._shards = list(order.tensor_split(world_size))

    def build_model(self) -> nn.Module:
        d, h, c = self.X.shape[1], self.params.hidden, self.n_classes
        model = nn.Linear(d, c) if h == 0 else nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c))
        return model.to(self.dtype)

    def sampler(self, rank: int, batch_size: int) -> BatchSampler:
        shard = self._shards[rank]

        def draw(gen: torch.Generator):
            idx = shard[torch.randint(len(shard), (batch_size,), generator=gen)]
            return self.X[idx], self.y[idx]

        return BatchSampler(draw, worker_seed(self.seed, rank, 4))

    def _objective(self, model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        reg = sum((p.pow(2).sum() for n, p in model.named_parameters() if n.endswith("weight")), torch.zeros((), dtype=X.dtype))
        return F.cross_entropy(model(X), y) + 0.5 * self.params.l2 * reg

    def loss(self, model, batch):
        return self._objective(model, *batch)

    @torch.no_grad()
    def evaluate(self, model) -> float:
        m64 = _as_float64(model)
        device = next(m64.parameters()).device
        return float(self._objective(m64, self.X_test.to(device), self.y_test.to(device)))


def _as_float64(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()
