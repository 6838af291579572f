"""`logreg`: logistic regression (or a small MLP) on small classification data sets.

Data sets: scikit-learn's bundled breast_cancer (569 x 30, 2 classes), digits (1797 x 64, 10
classes), wine, iris - a stratified `test_fraction` is held out for evaluation - and mushroom
(LIBSVM's "mushrooms": 125 binary one-hot inputs, 2 classes) from the Debian package libfann-doc
(``apt-get install -y libfann-doc``; FANN text files under `FANN_DIR`, checked by SHA-256), with
its own train/test split of 4062 + 4062 rows (`test_fraction` is ignored). Features are
standardized with training-set statistics (mushroom's binary columns too, for consistency;
constant columns keep scale 1). Loss: mean cross-entropy + (l2 / 2) * ||weights||^2 (biases not
penalized). Shards: ``iid`` (shuffled and dealt round-robin), ``label-sorted`` (sorted by label,
then cut into contiguous blocks: each worker sees few classes) or ``dirichlet`` (for each class,
its samples, shuffled, are cut among the workers in proportions p ~ Dirichlet(dirichlet_alpha)
drawn per class; small alpha: each worker holds a few classes, large alpha: close to iid; see
`dirichlet_shards`). ``full_batch``: every step a worker's batch is its whole shard
(deterministic gradients), whatever the batch size.
Evaluation: the same regularized loss on the held-out split, in float64.

Convex benchmarks (hidden = 0, l2 > 0): `LogReg.train_objective(model)` is the regularized loss
on the whole training set in float64, and `LogReg.optimum()` its minimum f*, found once with
L-BFGS and cached (`optimum_cache_dir`), so runs can report the suboptimality f(x) - f*.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import BatchSampler, Task, TaskParams, worker_seed
from .shakespeare import DataMissingError

DATASETS = ("breast_cancer", "digits", "wine", "iris", "mushroom")

FANN_DIR = Path("/usr/share/doc/libfann-dev/examples/datasets")
FANN_INSTALL_HINT = "apt-get install -y libfann-doc"
FANN_SHA256 = {
    "mushroom.train": "38fa641ff1c17a5ba28c5a470b43c5a5abc05ce545d3e2189382cb20a6a17fea",
    "mushroom.test": "da962d6332eaa400c8b3a0a9ee70abdcfab51571f2de66aec73f2b30bd737785",
}
CACHE_ENV = "FARSYNC_CACHE"  # directory of cached results (default ~/.cache/farsync)
_OPTIMUM_VERSION = 1  # bump when the objective or the solver changes: old cache entries are ignored


@lru_cache(maxsize=8)
def load_fann(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of a FANN text file ("n n_in n_out", then alternating input and output
    lines; one-hot outputs become class indices), verified by SHA-256 when `FANN_SHA256` knows it."""
    f = Path(path)
    if not f.is_file():
        raise DataMissingError(f"{f.name} is not installed (looked for {f}). Install it with: {FANN_INSTALL_HINT}")
    raw = f.read_bytes()
    want = FANN_SHA256.get(f.name)
    if want is not None and hashlib.sha256(raw).hexdigest() != want:
        raise DataMissingError(
            f"{f} does not match its expected SHA-256 {want} (got {hashlib.sha256(raw).hexdigest()}). "
            f"Reinstall it with: apt-get install --reinstall -y libfann-doc"
        )
    values = np.array(raw.split(), dtype=np.float64)
    n, n_in, n_out = (int(v) for v in values[:3])
    if len(values) != 3 + n * (n_in + n_out):
        raise ValueError(f"{f}: expected {n} rows of {n_in} inputs and {n_out} outputs, found {len(values) - 3} numbers")
    rows = values[3:].reshape(n, n_in + n_out)
    X, y = rows[:, :n_in], rows[:, n_in:].argmax(axis=1)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def optimum_cache_dir() -> Path:
    """Where `LogReg.optimum` caches its results: $FARSYNC_CACHE, else ~/.cache/farsync."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "farsync"


class LogRegParams(TaskParams):
    """Parameters of `logreg`."""

    dataset: Literal["breast_cancer", "digits", "wine", "iris", "mushroom"] = "breast_cancer"
    hidden: int = Field(0, ge=0, description="0: logistic regression; >0: one hidden tanh layer of this width")
    l2: float = Field(1e-3, ge=0.0, description="L2 penalty on weights")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="held-out share (not mushroom: it has its own split)")
    split: Literal["iid", "label-sorted", "dirichlet"] = "iid"
    dirichlet_alpha: float = Field(0.5, gt=0.0, description="concentration of the per-class worker proportions (split: dirichlet)")
    dtype: Literal["float32", "float64"] = "float32"
    full_batch: bool = Field(False, description="every batch is the worker's whole shard (train.batch_size is ignored)")


class LogReg(Task):
    name = "logreg"
    Params = LogRegParams
    description = "logistic regression / MLP on small data sets (breast_cancer, digits, wine, iris, mushroom)"

    def __init__(self, params: LogRegParams, world_size: int, seed: int):
        super().__init__(params, world_size, seed)
        Xtr, Xte, ytr, yte = _load_split(params.dataset, params.test_fraction)  # DataMissingError first
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(Xtr)  # constant features keep scale 1
        self.dtype = getattr(torch, params.dtype)
        self.X_train64 = torch.tensor(scaler.transform(Xtr), dtype=torch.float64)  # for train_objective / optimum
        self.X = self.X_train64.to(self.dtype)
        self.y = torch.tensor(ytr, dtype=torch.long)
        self.X_test = torch.tensor(scaler.transform(Xte), dtype=torch.float64)
        self.y_test = torch.tensor(yte, dtype=torch.long)
        self.n_classes = int(max(ytr.max(), yte.max(), 1) + 1)
        n = len(self.y)
        if world_size > n:
            raise ValueError(f"workers ({world_size}) exceed training samples ({n})")
        if params.split == "iid":
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(worker_seed(seed, 0, 3)))
            self._shards = [perm[r::world_size] for r in range(world_size)]
        elif params.split == "dirichlet":
            self._shards = dirichlet_shards(self.y, world_size, params.dirichlet_alpha, worker_seed(seed, 0, 5))
        else:
            order = torch.argsort(self.y, stable=True)
            self._shards = list(order.tensor_split(world_size))

    def build_model(self) -> nn.Module:
        d, h, c = self.X.shape[1], self.params.hidden, self.n_classes
        model = nn.Linear(d, c) if h == 0 else nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c))
        return model.to(self.dtype)

    def sampler(self, rank: int, batch_size: int) -> BatchSampler:
        shard = self._shards[rank]
        if self.params.full_batch:
            whole = (self.X[shard], self.y[shard])  # the same batch every step: deterministic gradients
            return BatchSampler(lambda gen: whole, worker_seed(self.seed, rank, 4))

        def draw(gen: torch.Generator):
            idx = shard[torch.randint(len(shard), (batch_size,), generator=gen)]
            return self.X[idx], self.y[idx]

        return BatchSampler(draw, worker_seed(self.seed, rank, 4))

    def tokens_per_batch(self, batch_size: int) -> int:
        """Samples in one worker's batch: `batch_size`, or with full_batch the largest shard's size."""
        return max(len(s) for s in self._shards) if self.params.full_batch else batch_size

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

    @torch.no_grad()
    def train_objective(self, model: nn.Module) -> float:
        """The regularized training objective f(model) in float64: mean cross-entropy over the whole
        training set + (l2 / 2) ||weights||^2 - what suboptimality f(x) - f* is measured on. (iid
        and label-sorted shards differ in size by at most one sample, so the mean of the workers'
        losses is this objective up to that imbalance; dirichlet shards vary a lot in size and the
        mean of the workers' losses is a differently weighted objective.)"""
        m64 = _as_float64(model)
        device = next(m64.parameters()).device
        return float(self._objective(m64, self.X_train64.to(device), self.y.to(device)))

    def optimum(self) -> float:
        """f* = min of `train_objective` over linear models (hidden = 0, l2 > 0: strongly convex in
        the weights). Found once by L-BFGS in float64 (on one torch thread; the process-wide thread
        count is restored afterwards) and cached in `optimum_cache_dir()` / logreg_optimum.json,
        keyed by dataset, l2, test_fraction and hidden == 0; see `optimal_model`."""
        return self._optimum_entry()["f_star"]

    def optimal_model(self) -> nn.Module:
        """A float64 linear model attaining `optimum()` (its gradient norm is below 1e-8; the biases
        of a multi-class model are unique only up to a common shift, which changes nothing)."""
        entry = self._optimum_entry()
        model = nn.Linear(self.X.shape[1], self.n_classes).double()
        with torch.no_grad():
            model.weight.copy_(torch.tensor(entry["weight"], dtype=torch.float64))
            model.bias.copy_(torch.tensor(entry["bias"], dtype=torch.float64))
        return model

    def _optimum_key(self) -> str:
        p = self.params
        return f"logreg-v{_OPTIMUM_VERSION}|dataset={p.dataset}|l2={p.l2!r}|test_fraction={p.test_fraction!r}|linear={p.hidden == 0}"

    def _optimum_entry(self) -> dict:
        if self.params.hidden != 0:
            raise ValueError(f"optimum is defined for the convex task only (hidden = 0), got hidden = {self.params.hidden}")
        if not self.params.l2 > 0:
            raise ValueError("optimum needs l2 > 0: without it the minimum may not be attained (e.g. on separable data)")
        path, key = optimum_cache_dir() / "logreg_optimum.json", self._optimum_key()
        cache = _read_json(path)
        if key not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # tiny problems: faster on one thread, and f* independent of the thread count
            try:
                entry = self._solve_optimum()
            finally:
                torch.set_num_threads(threads)
            cache = _read_json(path)  # re-read: another process may have written meanwhile
            cache[key] = entry
            _write_json_atomic(path, cache)
        return cache[key]

    def _solve_optimum(self, grad_tol: float = 1e-12, max_rounds: int = 5) -> dict:
        """Minimize the training objective with L-BFGS (strong Wolfe) in float64 from zero. It stops
        at gradient norm ~1e-10 when f no longer changes in float64 (f* is then exact to rounding:
        the suboptimality is about |grad|^2 / (2 mu)); raises if the gradient norm is not < 1e-8."""
        import time

        t0 = time.perf_counter()
        X, y = self.X_train64, self.y
        model = nn.Linear(X.shape[1], self.n_classes).double()
        with torch.no_grad():
            for q in model.parameters():
                q.zero_()
        opt = torch.optim.LBFGS(
            model.parameters(), lr=1.0, max_iter=10_000, max_eval=20_000, tolerance_grad=grad_tol,
            tolerance_change=0.0, history_size=50, line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            f = self._objective(model, X, y)
            f.backward()
            return f

        best = float("inf")
        for _ in range(max_rounds):
            opt.step(closure)
            f = closure().item()
            gnorm = float(torch.cat([q.grad.flatten() for q in model.parameters()]).norm())
            if gnorm <= grad_tol or gnorm >= best:
                break
            best = gnorm
        if not gnorm < 1e-8:
            raise RuntimeError(f"L-BFGS did not converge on {self._optimum_key()}: gradient norm {gnorm:.3g}")
        return {
            "f_star": f,
            "grad_norm": gnorm,
            "iterations": int(opt.state[model.weight]["n_iter"]),
            "seconds": time.perf_counter() - t0,
            "weight": model.weight.detach().tolist(),
            "bias": model.bias.detach().tolist(),
        }


def dirichlet_shards(y: torch.Tensor, workers: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Label-skewed shards (indices into `y`, each ascending): for every class c in increasing
    order, its samples are shuffled and cut into `workers` contiguous pieces of sizes
    round(n_c * cumsum(p)) differences, with p ~ Dirichlet(alpha * 1) drawn for that class. All from
    one numpy generator seeded with `seed`: deterministic, and every sample lands in exactly one
    shard. Fix-up so that no shard is empty (needs len(y) >= workers): while some worker has none,
    the lowest-ranked empty worker takes the last sample (in shuffled order) of the largest shard
    (ties: the lowest rank) - deterministic, and it moves at most one sample per empty worker."""
    rng = np.random.default_rng(seed)
    labels = y.cpu().numpy()
    pieces: list[list[np.ndarray]] = [[] for _ in range(workers)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        p = rng.dirichlet(np.full(workers, float(alpha)))
        cuts = np.round(np.cumsum(p) * len(idx)).astype(int)
        cuts[-1] = len(idx)
        for r, part in enumerate(np.split(idx, cuts[:-1])):
            pieces[r].append(part)
    shards = [np.concatenate(ps) if ps else np.zeros(0, dtype=np.int64) for ps in pieces]
    for r in range(workers):
        if len(shards[r]) == 0:
            big = max(range(workers), key=lambda k: (len(shards[k]), -k))
            shards[r], shards[big] = shards[big][-1:], shards[big][:-1]
    return [torch.tensor(np.sort(s), dtype=torch.long) for s in shards]


def _load_split(dataset: str, test_fraction: float):
    """(X_train, X_test, y_train, y_test) as numpy arrays, before standardization."""
    if dataset == "mushroom":
        Xtr, ytr = load_fann(str(FANN_DIR / "mushroom.train"))
        Xte, yte = load_fann(str(FANN_DIR / "mushroom.test"))
        return Xtr, Xte, ytr, yte
    import sklearn.datasets as skd
    from sklearn.model_selection import train_test_split

    X, y = getattr(skd, f"load_{dataset}")(return_X_y=True)
    return train_test_split(X, y, test_size=test_fraction, random_state=0, stratify=y)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _as_float64(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()
