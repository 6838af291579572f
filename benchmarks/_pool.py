"""Shared by the benchmark scripts: run jobs in spawned processes and keep results.jsonl current."""

import json
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path


def run_and_record(run_one: Callable[[tuple], dict], todo: list[tuple], results: Path, parallel: int) -> list[dict]:
    """``run_one(job)`` for every job, `parallel` at a time; each row (keyed by run and seed)
    replaces an earlier row of the same key in `results`, which is rewritten after every run."""
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    with mp.get_context("spawn").Pool(parallel) as pool:
        for row in pool.imap(run_one, todo):
            rows = [r for r in rows if (r["run"], r["seed"]) != (row["run"], row["seed"])] + [row]
            print(json.dumps(row), flush=True)
            results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows
