"""Churn on the simulator (comm/churn.py): workers leave and come back; averages go over the live
workers; a returning worker heals from a live one; deterministic; refusals before work."""

import json

import pytest
import torch

import farsync
from farsync.cli import main
from farsync.comm.churn import Away
from farsync.comm.faults import FAULT_ENV
from farsync.config import load_config

ALGOS = {"diloco": {"sync_every": 3}, "ddp": {}, "local-sgd": {"sync_every": 2}, "streaming-diloco": {"sync_every": 4, "fragments": 2, "fragment_rule": "contiguous", "delay": 1}}


def loop(algo, opts, steps, states=None):
    """A worker's loop on rank-seeded data; returns its final state (and can start from `states`)."""

    def train(comm):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
        a = farsync.wrap(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), algo, **opts)
        g = torch.Generator().manual_seed(100 + comm.rank)
        if states is not None:
            model.load_state_dict(states[comm.rank]["model"])
            a.load_state_dict(states[comm.rank]["algorithm"])
            g.set_state(states[comm.rank]["data"])
        for _ in range(steps):
            x = torch.randn(8, 4, generator=g)
            ((model(x) - x.sum(1, keepdim=True)) ** 2).mean().backward()
            a.step()
            a.zero_grad()
        return {"model": model.state_dict(), "algorithm": a.state_dict(), "data": g.get_state()}

    return train


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_a_worker_leaving_for_good_equals_a_run_with_one_fewer_worker_from_that_step(algo):
    opts, leave, steps = ALGOS[algo], 5, 12
    churned = farsync.simulate(loop(algo, opts, steps), workers=4, step_time="1s", churn=[Away(3, leave)])
    before = farsync.simulate(loop(algo, opts, leave - 1), workers=4, step_time="1s")  # steps 1..4 with 4 workers
    after = farsync.simulate(loop(algo, opts, steps - leave + 1, states=before.results[:3]), workers=3, step_time="1s")
    for r in range(3):
        for k, v in after.results[r]["model"].items():
            assert torch.equal(churned.results[r]["model"][k], v), (algo, r, k)  # rank order, / 3: bitwise
    assert churned.stats[3].bytes_sent == before.stats[3].bytes_sent  # nothing booked while away


def test_a_returning_worker_heals_from_a_live_one_and_it_is_deterministic():
    run = lambda: farsync.simulate(loop("ddp", {}, 10), workers=4, step_time="1s", bandwidth="1Mbps",  # noqa: E731
                                   latency="5ms", churn=[Away(2, 3, 7)])
    a, b = run(), run()
    assert [s.as_dict() for s in a.stats] == [s.as_dict() for s in b.stats]
    ref = a.results[0]["model"]
    for r in range(4):  # DDP: after the heal at the end of step 6 every replica steps alike
        assert all(torch.equal(a.results[r]["model"][k], ref[k]) for k in ref)
    params = 4 * 3 + 3 + 3 + 1  # 19 floats
    state = 2 * params * 4  # the model and SGD's momentum buffers
    full, three = 2 * 3 * params * 4 // 4, 2 * 2 * params * 4 // 3  # a ring all-reduce's bytes over 4 and 3 workers
    assert a.stats[1].bytes_received == 6 * full + 4 * three  # steps 3..6 over the 3 live workers
    assert a.stats[2].bytes_received == 6 * full + state  # nothing while away, then the state copy
    assert a.stats[2].bytes_sent == 6 * full
    assert a.stats[0].bytes_sent == a.stats[1].bytes_sent + state  # the lowest live worker sent it
    # the copy is one message on the network model: 5 ms + 304 B at 1 Mbps, on top of the plain run
    plain = farsync.simulate(loop("ddp", {}, 10), workers=4, step_time="1s", bandwidth="1Mbps", latency="5ms")
    ring = lambda n: 2 * (n - 1) * (0.005 + params * 4 / n * 8 / 1e6)  # noqa: E731 - the NetworkModel's ring time
    expect = plain.sim_time_s - 4 * (ring(4) - ring(3)) + 0.005 + state * 8 / 1e6
    assert a.sim_time_s == pytest.approx(expect, rel=1e-9)


@pytest.mark.parametrize("algo", ["ddp", "diloco"])
def test_windows_in_virtual_time_equal_the_steps_they_fall_on(algo):
    # 1 s per step, fast links: worker 2's clock passes 3.5 s during step 4 (away from step 5); the
    # run's clock passes 8.5 s during step 9 (back from step 10, healed at the end of step 9)
    run = lambda churn: farsync.simulate(loop(algo, ALGOS[algo], 12), workers=4, step_time="1s",  # noqa: E731
                                         bandwidth="100Gbps", latency="1us", churn=churn)
    timed, steps = run([Away(2, 3.5, 8.5)]), run([Away(2, 5, 10)])
    assert [s.as_dict() for s in timed.stats] == [s.as_dict() for s in steps.stats]
    for a, b in zip(timed.results, steps.results):
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert timed.stats[0].bytes_sent > timed.stats[1].bytes_sent  # the heal really happened: worker 0 sent the state


def test_a_timed_window_in_a_run_records_participants(tmp_path):
    cfg = cfg_file(tmp_path, cluster={"churn": [{"worker": 2, "leave": "3.5s", "join": "8.5s"}]}, train={"checkpoint_every": 0})
    recs = records(farsync.run(cfg, out=tmp_path / "t", progress=False).run_dir)
    live = {r["step"]: r["participants"] for r in recs}
    assert live[4] == [0, 1, 2, 3] and live[5] == [0, 1, 3] and live[9] == [0, 1, 3] and live[10] == [0, 1, 2, 3]
    per = recs[0]["tokens"] // 4
    assert recs[-1]["tokens"] == per * (15 * 4 - 5)  # worker 2 away for steps 5..9


def cfg_file(tmp_path, **changes):
    import yaml

    cfg = {"name": "churn", "seed": 1, "task": {"name": "quadratic"},
           "cluster": {"workers": 4, "step_time": "1s", "churn": [{"worker": 2, "leave": 4, "join": 9}, {"worker": 3, "leave": 7}]},
           "algorithm": {"name": "diloco", "sync_every": 3, "inner": {"name": "sgd", "lr": 0.05}},
           "train": {"steps": 15, "batch_size": 4, "eval_every": 5, "log_every": 1, "checkpoint_every": 5}}
    for k, v in changes.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    p = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_with_churn_records_the_participants_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = cfg_file(tmp_path)
    full = farsync.run(cfg, out=tmp_path / "a", progress=False)
    assert full.summary["status"] == "completed"
    recs = records(tmp_path / "a")
    live = {r["step"]: r["participants"] for r in recs}
    assert live[3] == [0, 1, 2, 3] and live[4] == [0, 1, 3] and live[7] == [0, 1] and live[9] == [0, 1, 2] and live[15] == [0, 1, 2]
    tokens = {r["step"]: r["tokens"] for r in recs}
    per = tokens[1] // 4
    assert tokens[15] == per * (3 * 4 + 3 * 3 + 2 * 2 + 7 * 3)  # steps 1-3: 4 live, 4-6: 3, 7-8: 2, 9-15: 3
    again = farsync.run(cfg, out=tmp_path / "b", progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rs]  # noqa: E731
    assert strip(records(again.run_dir)) == strip(recs)  # deterministic
    monkeypatch.setenv(FAULT_ENV, "1:12")  # a crash after the checkpoint at step 10, then resume
    farsync.run(cfg, out=tmp_path / "c", progress=False)
    monkeypatch.delenv(FAULT_ENV)
    farsync.run(resume=tmp_path / "c", progress=False)
    assert strip(records(tmp_path / "c")) == strip(recs)


@pytest.mark.parametrize("changes, message", [
    ({"cluster": {"churn": [{"worker": 0, "leave": 3}]}}, r"churn worker must be in \[1, 3\]"),
    ({"cluster": {"churn": [{"worker": 1, "leave": "30 parsecs"}]}}, "30 parsecs"),
    ({"cluster": {"churn": [{"worker": 1, "leave": "3s"}]}}, "with a window in time cannot be checkpointed yet"),
    ({"cluster": {"churn": [{"worker": 1, "leave": "3s"}, {"worker": 1, "leave": 9}]}, "train": {"checkpoint_every": 0}},
     "a worker with a time window has only that one"),
    ({"cluster": {"churn": [{"worker": 1, "leave": 5, "join": 5}]}}, r"join must be after leave \(5\), got 5"),
    ({"cluster": {"churn": [{"worker": 1, "leave": 2, "join": 6}, {"worker": 1, "leave": 5}]}}, "churn windows of worker 1 overlap"),
    ({"algorithm": {"name": "dsgd"}}, "cluster.churn supports ddp, local-sgd, diloco, streaming-diloco"),
    ({"algorithm": {"compress": {"name": "int8"}}}, "cluster.churn with algorithm.compress is not supported"),
    ({"cluster": {"backend": "torch"}}, "cluster.churn runs on the simulator with cluster.backend: sim"),
    ({"cluster": {"parallel": 2}}, "cluster.churn runs on the simulator with cluster.parallel: 1"),
])
def test_bad_churn_is_refused_before_work(tmp_path, changes, message):
    with pytest.raises(Exception, match=message):
        load_config(cfg_file(tmp_path, **changes))
    assert main(["run", str(cfg_file(tmp_path, **changes)), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert not (tmp_path / "r").exists()
