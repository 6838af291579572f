"""Experiment tracking next to ``metrics.jsonl``: TensorBoard, CSV, Weights & Biases, MLflow.

``metrics.jsonl`` stays the run's source of truth; the trackers named by the config's
``logging: [tensorboard, csv, wandb, mlflow]`` get a copy of every metrics line as it is written
(`rundir.MetricsLog`), and at the end the run's summary. Every tracker writes inside the run
directory, offline, with no network:

- ``tensorboard`` -> ``RUN_DIR/tensorboard/`` (``torch.utils.tensorboard``; the `tensorboard`
  package: ``pip install 'farsync[tensorboard]'``). Scalars against the step: ``loss/train``,
  ``loss/eval``, ``lr`` and ``metrics/<key>`` for every other number of the line (``bytes_sent``,
  ``sim_time_s``, ``tokens``, ...). TensorBoard has a single integer x-axis, so the loss against
  the other axes has its own tags whose step *is* that axis: ``loss_vs_tokens/*`` (tokens),
  ``loss_vs_bytes/*`` (bytes sent, all workers) and ``loss_vs_sim_ms/*`` (simulated time in
  milliseconds). At the end, the resolved config as hparams with the final losses
  (``RUN_DIR/tensorboard/hparams``).
- ``csv`` -> ``RUN_DIR/metrics.csv``: one row per metrics line, one column per key (lists as
  JSON); rewritten whole when a line brings a new key (an eval loss, say), else appended.
- ``wandb`` -> ``RUN_DIR/wandb/`` in offline mode (``pip install 'farsync[wandb]'``; upload later
  with ``wandb sync``): the config, each line at its step, the summary.
- ``mlflow`` -> ``RUN_DIR/mlflow.db``, a local SQLite store (MLflow's file store is retired;
  ``pip install 'farsync[mlflow]'``: mlflow-skinny with SQLAlchemy and Alembic; view with
  ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``): the flattened config as params,
  each finite number of a line as a metric at its step, the run's status as a tag.

A resumed run replays the history it resumes from (the checkpoint's metrics) into fresh tracker
files, so no step appears twice. A tracker that fails while the run goes on is reported once on
stderr and dropped; the run and ``metrics.jsonl`` go on.

For your own loop (`farsync.wrap`, `farsync.simulate`), `Tracking` is the same writers::

    with farsync.Tracking("runs/mine", ["tensorboard", "csv"], config={"lr": 0.1}) as track:
        for step in range(1, steps + 1):
            ...
            track.log(step, comm=algo.comm, train_loss=loss.item())   # + bytes, simulated time
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "csv", "wandb", "mlflow")
_INSTALL = {  # tracker -> (modules it imports, what to install)
    "tensorboard": (("tensorboard",), "pip install 'farsync[tensorboard]' (or: pip install tensorboard)"),
    "wandb": (("wandb",), "pip install 'farsync[wandb]' (or: pip install wandb)"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "pip install 'farsync[mlflow]' (or: pip install mlflow-skinny sqlalchemy alembic)"),
}
_LOSSES = {"train_loss": "train", "eval_loss": "eval"}


class TrackerMissing(ImportError):
    """A tracker named in ``logging`` whose package is not installed (the message names it)."""


def check_trackers(kinds: Iterable[str]) -> None:
    """Raise before any work if a tracker is unknown or its package is missing."""
    import importlib.util

    for kind in kinds:
        if kind not in TRACKERS:
            raise ValueError(f"logging: unknown tracker {kind!r}; choose from {', '.join(TRACKERS)}")
        missing = [m for m in _INSTALL.get(kind, ((), ""))[0] if importlib.util.find_spec(m) is None]
        if missing:
            raise TrackerMissing(f"logging: {kind} needs the {', '.join(missing)} package: {_INSTALL[kind][1]}")


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not real numbers of a metrics line (no bools, lists or strings)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; values other than numbers, strings and bools as text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def _final(summary: dict[str, Any] | None, history: list[dict[str, Any]]) -> dict[str, float]:
    """The final train and eval losses (from the summary, else the last lines that have them)."""
    out = {}
    for key in ("train_loss", "eval_loss"):
        value = (summary or {}).get(f"final_{key}")
        if value is None:
            value = next((r[key] for r in reversed(history) if isinstance(r.get(key), (int, float))), None)
        if value is not None:
            out[f"final/{key}"] = float(value)
    return out


class Tracker:
    """One writer. `log` gets each metrics line, `close` the summary (None if there is none)."""

    name = "tracker"

    def log(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self, summary: dict[str, Any] | None) -> None:
        pass


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, root: Path, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = root / "tensorboard"
        shutil.rmtree(self.dir, ignore_errors=True)  # a resumed run replays its history into fresh files
        self.writer = SummaryWriter(str(self.dir), flush_secs=10)
        self.config = config
        self.history: list[dict[str, Any]] = []

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        step, w = int(record["step"]), self.writer
        for key, value in numbers(record).items():
            if key == "step":
                continue
            if key in _LOSSES:
                tag = _LOSSES[key]
                w.add_scalar(f"loss/{tag}", value, step)
                for axis, x in (("tokens", record.get("tokens")), ("bytes", record.get("bytes_sent")),
                                ("sim_ms", None if record.get("sim_time_s") is None else round(record["sim_time_s"] * 1e3))):
                    if x is not None:
                        w.add_scalar(f"loss_vs_{axis}/{tag}", value, int(x))
            elif key == "lr":
                w.add_scalar("lr", value, step)
            else:
                w.add_scalar(f"metrics/{key}", value, step)

    def close(self, summary: dict[str, Any] | None) -> None:
        if self.config:
            metrics = _final(summary, self.history) or {"final/train_loss": math.nan}
            self.writer.add_hparams(flat_config(self.config), metrics, run_name="hparams")
        self.writer.close()


class CSVTracker(Tracker):
    name = "csv"

    def __init__(self, root: Path):
        self.path = root / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []
        self.path.unlink(missing_ok=True)

    @staticmethod
    def _cell(value: Any) -> Any:
        return json.dumps(value) if isinstance(value, (list, dict)) else value

    def _line(self, rows: Sequence[dict[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        out = csv.DictWriter(buf, self.columns, lineterminator="\n")
        if header:
            out.writeheader()
        out.writerows({k: self._cell(v) for k, v in r.items()} for r in rows)
        return buf.getvalue()

    def log(self, record: dict[str, Any]) -> None:
        from .rundir import write_text_atomic

        self.rows.append(record)
        new = [k for k in record if k not in self.columns]
        if new:  # a new column: the whole file again, with it
            self.columns += new
            write_text_atomic(self.path, self._line(self.rows, header=True))
        else:
            with self.path.open("a") as fh:
                fh.write(self._line([record], header=False))


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, root: Path, config: dict[str, Any], name: str):
        import wandb

        (root / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(root), project="farsync", name=name, config=config,
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in numbers(record).items() if k != "step"}, step=int(record["step"]))

    def close(self, summary: dict[str, Any] | None) -> None:
        if summary:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})
        self.run.finish()


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, root: Path, config: dict[str, Any], name: str):
        import logging

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
        db, artifacts = root / "mlflow.db", root / "mlartifacts"
        db.unlink(missing_ok=True)  # a resumed run replays its history into a fresh store
        self.client = MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")
        experiment = self.client.create_experiment("farsync", artifact_location=artifacts.resolve().as_uri())
        self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):  # the store takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, record: dict[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        step, now = int(record["step"]), int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numbers(record).items() if k != "step" and math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, summary: dict[str, Any] | None) -> None:
        status = "FINISHED" if not summary or summary.get("status") == "completed" else "FAILED"
        if summary and summary.get("status"):
            self.client.set_tag(self.run_id, "farsync.status", str(summary["status"])[:5000])
        self.client.set_terminated(self.run_id, status=status)


class Tracking:
    """The trackers `kinds` writing under `root` (a run directory): ``log(record)`` for a metrics
    line (as `MetricsLog` does), ``log(step, comm=..., **values)`` from your own loop, ``close``.

    `history` (a resumed run's earlier lines) is written first. `config` goes to TensorBoard's
    hparams, W&B's config and MLflow's params.
    """

    def __init__(self, root: str | Path, kinds: Iterable[str] = ("tensorboard", "csv"),
                 config: dict[str, Any] | None = None, history: Iterable[dict[str, Any]] = (), name: str = "run"):
        kinds = list(dict.fromkeys(kinds))
        check_trackers(kinds)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        config = dict(config or {})
        build = {"tensorboard": lambda: TensorBoardTracker(self.root, config), "csv": lambda: CSVTracker(self.root),
                 "wandb": lambda: WandbTracker(self.root, config, name),
                 "mlflow": lambda: MLflowTracker(self.root, config, name)}
        self.trackers: list[Tracker] = []
        for kind in kinds:
            try:
                self.trackers.append(build[kind]())
            except Exception as err:  # noqa: BLE001 - a tracker never stops the run
                print(f"farsync: warning: logging: {kind} could not start ({type(err).__name__}: {err}); "
                      "metrics.jsonl is written without it", file=sys.stderr)
        self.closed = False
        for record in history:
            self.write(record)

    def log(self, step: int | dict[str, Any], comm: Any = None, **values: float) -> None:
        """A metrics line: a whole record, or `step` with `values`; `comm` (a `Communicator`)
        adds its counters: bytes_sent, bytes_received and sim_time_s (its clock)."""
        record = dict(step) if isinstance(step, dict) else {"step": int(step)}
        if comm is not None:
            stats = comm.stats
            record.update(bytes_sent=stats.bytes_sent, bytes_received=stats.bytes_received, sim_time_s=stats.clock_s)
        record.update(values)
        self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        for tracker in list(self.trackers):
            try:
                tracker.log(record)
            except Exception as err:  # noqa: BLE001 - a tracker never stops the run
                self._drop(tracker, err)

    def _drop(self, tracker: Tracker, err: BaseException) -> None:
        print(f"farsync: warning: logging: {tracker.name} failed ({type(err).__name__}: {err}); it is turned off, "
              "metrics.jsonl goes on", file=sys.stderr)
        self.trackers.remove(tracker)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        for tracker in list(self.trackers):
            try:
                tracker.close(summary)
            except Exception as err:  # noqa: BLE001
                self._drop(tracker, err)

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
