"""Bytes in flight over time: the step function and the simulator's transfers.csv."""

import pytest

import farsync
from farsync.report import bytes_in_flight, load_transfers, plot_bytes_in_flight
from test_streaming import TINY


def test_bytes_in_flight_sums_overlapping_calls():
    times, values = bytes_in_flight([(0.0, 2.0, 0, 10), (1.0, 3.0, 1, 5), (3.0, 4.0, 0, 7), (5.0, 5.0, 1, 99)])
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert values == [10, 15, 5, 7, 0]  # a zero-length call is never in flight


def test_transfers_account_for_every_byte_and_streaming_lowers_the_peak(tmp_path):
    slow = {"workers": 3, "step_time": "1s", "bandwidth": "1Mbps", "latency": "0s"}
    d = farsync.run({**TINY, "cluster": slow}, out=tmp_path / "d", progress=False)
    cfg = {**TINY, "cluster": slow, "algorithm": {**TINY["algorithm"], "name": "streaming-diloco", "fragments": 3, "delay": 1}}
    s = farsync.run(cfg, out=tmp_path / "s", progress=False)
    for r in (d, s):
        rows = load_transfers(r.run_dir)
        assert sum(n for *_, n in rows) == r.summary["bytes_sent_total"]
        assert all(a <= b <= r.summary["sim_time_s"] for a, b, *_ in rows)
        assert r.summary["peak_bytes_in_flight"] == max(bytes_in_flight(rows)[1])
    # DiLoCo puts the whole model on every link at once; three fragments a third of it each
    assert s.summary["peak_bytes_in_flight"] < 0.5 * d.summary["peak_bytes_in_flight"]
    assert plot_bytes_in_flight([d.run_dir, s.run_dir], tmp_path / "inflight.png").stat().st_size > 0


def test_transfers_of_a_resumed_run_match_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = {**TINY, "train": {**TINY["train"], "checkpoint_every": 12}}
    full = farsync.run(cfg, out=tmp_path / "full", progress=False)
    monkeypatch.setenv("FARSYNC_FAULT", "2:17")
    assert farsync.run(cfg, out=tmp_path / "r", progress=False).status.startswith("failed")
    monkeypatch.delenv("FARSYNC_FAULT")
    resumed = farsync.run(resume=tmp_path / "r", progress=False)
    assert load_transfers(resumed.run_dir) == load_transfers(full.run_dir)
    assert resumed.summary["peak_bytes_in_flight"] == full.summary["peak_bytes_in_flight"]


def test_missing_transfers_file_names_the_reason(tmp_path):
    with pytest.raises(FileNotFoundError, match="simulated backend only"):
        load_transfers(tmp_path)
