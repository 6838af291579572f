"""cluster.backend: torchft (comm/fault_tolerant.py, ft_worker.py): 3 replicas of DiLoCo on torchft's
Manager, on loopback gloo. Faults are real: FARSYNC_FAULT makes a replica SIGKILL itself.

- no fault: every replica equals the simulator (to float rounding: gloo's ring sums in another
  order) and the others (bitwise);
- kill -9 for good at step 101: the survivors go on without restart, stay bitwise equal, and equal
  the simulator with that worker leaving at step 101 (``cluster.churn``), to float rounding;
- kill -9 and a replacement (torchrun --max-restarts 1): it heals to the committed step and ends
  bitwise equal to the survivors;
- kill during the all-reduce: that round is discarded on every survivor (one commit fewer);
- eager-diloco (its round spans two synchronizations): no fault equals the simulator; a kill for
  good, and a kill during an all-reduce, equal an in-process replay of the same rounds on
  `FTCommunicator` (`replay_ft`): the simulator refuses cluster.churn for eager-diloco (its world
  size stays the configured one, while eager's M is the quorum's), so the replay, itself equal to
  the simulator without faults, is the reference;
- decoupled-momentum (a round per step, its all-gather one all-reduce of slots and flags): no fault
  equals the simulator bitwise; a kill for good, a kill during the all-gather's all-reduce and a
  replacement equal the replay bitwise (the replay's replicas run each step in threads, so that a
  blocking collective sees every buffer of its round); a healed replica's entry is dropped;
- refusals before any process starts.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

from farsync.cli import main
from farsync.comm.faults import FAULT_ENV
from farsync.ft_worker import PACE_ENV

pytest.importorskip("torchft", reason="torchft is not installed: pip install -e '.[ft]'")
pytestmark = [pytest.mark.distributed]

CFG = {"task": {"name": "quadratic"}, "algorithm": {"name": "diloco", "sync_every": 5},
       "cluster": {"backend": "torchft", "workers": 3, "ft": {"heartbeat_timeout": "1s"}},
       "train": {"steps": 200, "log_every": 25, "eval_every": 0}}


def cfg_file(tmp_path, cfg=None, **train):
    cfg = json.loads(json.dumps(cfg or CFG))
    cfg["train"].update(train)
    p = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def replica(run, g, what="summary.json"):
    path = run / "replicas" / str(g) / what
    if what == "model.pt":
        return torch.load(path, weights_only=True)["x"]
    if what == "metrics.jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


def sim_model(tmp_path, name, steps=200, algorithm=None, **cluster):
    cfg = json.loads(json.dumps(CFG))
    cfg["cluster"] = {"workers": 3, **cluster}
    if algorithm is not None:
        cfg["algorithm"] = algorithm
    cfg["train"]["steps"] = steps
    assert main(["run", str(cfg_file(tmp_path, cfg)), "--out", str(tmp_path / name)]) == 0
    return torch.load(tmp_path / name / "model.pt", weights_only=True)["x"]


def test_no_fault_equals_the_simulator(tmp_path):
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, steps=60)), "--out", str(run)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["backend"] == "torchft"
    models = [replica(run, g, "model.pt") for g in range(3)]
    assert all(torch.equal(models[0], m) for m in models[1:])
    for g in range(3):
        rows = replica(run, g, "metrics.jsonl")
        assert [r["participants"] for r in rows] == [3] * len(rows)
        assert replica(run, g)["committed_step"] == 60 // 5 and replica(run, g)["heals"] == []
    torch.testing.assert_close(models[0], sim_model(tmp_path, "sim", steps=60), rtol=0, atol=1e-12)


def test_kill9_for_good_survivors_equal_simulated_churn(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "2:101")
    monkeypatch.setenv(PACE_ENV, "0.005")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path)), "--out", str(run)]) == 1  # one replica never finished
    s = json.loads((run / "summary.json").read_text())
    assert s["status"].startswith("failed: 2 of 3 replicas completed") and s["replicas"][2] is None
    a, b = replica(run, 0, "model.pt"), replica(run, 1, "model.pt")
    assert torch.equal(a, b)
    for g in (0, 1):  # no restart, no heal, every round committed; two participants after the kill
        assert {k: replica(run, g)[k] for k in ("attempt", "status", "committed_step", "heals")} == \
            {"attempt": 0, "status": "completed", "committed_step": 40, "heals": []}
        parts = {r["step"]: r["participants"] for r in replica(run, g, "metrics.jsonl")}
        assert parts[100] == 3 and all(parts[t] == 2 for t in parts if t > 100)
    monkeypatch.delenv(FAULT_ENV)
    churned = sim_model(tmp_path, "churn", churn=[{"worker": 2, "leave": 101}])
    torch.testing.assert_close(a, churned, rtol=0, atol=1e-12)
    assert (a - sim_model(tmp_path, "plain")).abs().max() > 1e-6  # the kill changed the trajectory


def test_streaming_diloco_kill9_for_good_equals_simulated_churn(tmp_path, monkeypatch):
    """The all-reduce overlapping tau = 2 inner steps (H = 5, mixing alpha = 0.5): the round spans
    steps, begin_sync at its start and commit where it is applied. (The quadratic's one tensor
    allows one fragment; fragments are tested on the simulator.)"""
    algo = {"name": "streaming-diloco", "sync_every": 5, "delay": 2, "alpha": 0.5}
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": algo}
    monkeypatch.setenv(FAULT_ENV, "2:101")
    monkeypatch.setenv(PACE_ENV, "0.005")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg)), "--out", str(run)]) == 1
    a, b = replica(run, 0, "model.pt"), replica(run, 1, "model.pt")
    assert torch.equal(a, b) and replica(run, 0)["committed_step"] == 200 // 5  # a round every 5 steps
    monkeypatch.delenv(FAULT_ENV)
    sim = {**cfg, "cluster": {"workers": 3, "churn": [{"worker": 2, "leave": 101}]}}
    assert main(["run", str(cfg_file(tmp_path, sim)), "--out", str(tmp_path / "churn")]) == 0
    torch.testing.assert_close(a, torch.load(tmp_path / "churn" / "model.pt", weights_only=True)["x"], rtol=0, atol=1e-12)


class _ReplayRounds:
    """torchft's Manager for an in-process replay of a torchft run (`replay_ft`): the quorum of the
    synchronization at step s is round r = s // H; it has the participants ``live(r)`` and commits
    if ``commits(r)``; an all-reduce is the sum of the participants' buffers (those that made it)
    in rank order. ``heal[g] = (r, src)``: replica g heals at round r from the state replica src
    served at its quorum of round r (``register_state_dict_fn``), as torchft's Manager does.
    The replicas of a step run in threads (`replay_algorithms`): a wait blocks until every
    participant has sent its buffer or finished that step without sending (killed: never will), so
    that a blocking collective (decoupled-momentum's all-gather) sees every buffer of its round."""

    def __init__(self, every, live, commits, heal=None):
        self.every, self.live, self.commits, self.heal = every, live, commits, heal or {}
        self.bufs, self.snaps, self.managers, self.step = {}, {}, {}, 0
        self.cond, self.active = threading.Condition(), set()  # the replicas still running this step
        self.fresh = {}  # replica -> what makes it a fresh process before it heals (``replay_ft(fresh=True)``)

    def manager(self, g):
        rounds = self

        class Manager:
            r = committed = 0

            def register_state_dict_fn(self, key, load, save):
                self.load, self.save = load, save

            def start_quorum(self):
                self.r = r = rounds.step // rounds.every
                if rounds.heal:
                    with rounds.cond:
                        rounds.snaps[r, g] = (self.save(), self.committed)
                        rounds.cond.notify_all()
                        if rounds.heal.get(g, (None,))[0] == r:
                            src = rounds.heal[g][1]
                            rounds.cond.wait_for(lambda: (r, src) in rounds.snaps)
                            state, self.committed = rounds.snaps[r, src]
                    if rounds.heal.get(g, (None,))[0] == r:
                        if g in rounds.fresh:
                            rounds.fresh[g]()
                        self.load(state)

            def participating_rank(self):
                return rounds.live(self.r).index(g)

            def num_participants(self):
                return len(rounds.live(self.r))

            def allreduce(self, buf, reduce_op=None):
                r = self.r
                with rounds.cond:
                    rounds.bufs[r, g] = buf.clone()
                    rounds.cond.notify_all()

                class Work:
                    def wait(self):
                        with rounds.cond:
                            rounds.cond.wait_for(lambda: all((r, h) in rounds.bufs or h not in rounds.active
                                                             for h in rounds.live(r)))
                        parts = [rounds.bufs[r, h] for h in rounds.live(r) if (r, h) in rounds.bufs]
                        buf.copy_(torch.stack(parts).sum(0))
                return Work()

            def should_commit(self):
                ok = rounds.commits(self.r)
                self.committed += ok
                return ok

            def current_step(self):
                return self.committed

        self.managers[g] = Manager()
        return self.managers[g]


def replay_ft(tmp_path, cfg, steps, live=lambda r: (0, 1, 2), commits=lambda r: True, runs=lambda g, s: True, heal=None,
              fresh=False):
    """Each replica's final model (its evaluation point, as ft_worker saves it) from the replicas'
    loops (ft_worker._train: the same batches, inner steps and LR schedule) run in lock-step in
    this process, each on an `FTCommunicator` over `_ReplayRounds`; replica g takes step s only if
    ``runs(g, s)`` (killed, or not back yet: its batches are drawn all the same, as a replacement
    advances its sampler to the step it healed to). ``fresh``: a replica that heals does so as a
    replacement process, from its initial state (the per-replica state a heal does not copy, e.g.
    DeMo's momentum, is then a fresh process's)."""
    out = []
    for algo in replay_algorithms(tmp_path, cfg, steps, live, commits, runs, heal, fresh)[0]:
        with algo.eval_params() as m:
            out.append(m.state_dict()["x"].detach().clone())
    return out


def replay_algorithms(tmp_path, cfg, steps, live, commits, runs=lambda g, s: True, heal=None, fresh=False):
    """`replay_ft`'s replicas: (their algorithms, the `_ReplayRounds`)."""
    from torch.optim.lr_scheduler import LambdaLR

    from farsync.comm.base import cpu_clone
    from farsync.comm.fault_tolerant import FTCommunicator
    from farsync.config import load_config
    from farsync.loop import build_algorithm
    from farsync.microbatch import MicroBatches
    from farsync.runner import build_task

    c = load_config(cfg_file(tmp_path, cfg, steps=steps))
    task, rounds, reps = build_task(c), _ReplayRounds(c.algorithm.sync_every, live, commits, heal), []
    for g in range(3):
        comm = FTCommunicator(rounds.manager(g), g, 3)
        torch.manual_seed(c.seed)
        model = task.build_model()
        algo = build_algorithm(c, model, comm)
        sched = LambdaLR(algo.optimizer, c.train.lr_schedule.lr_lambda(steps))
        comm.register_state(lambda a=algo, sc=sched: {**a.shared_state(), "lr_scheduler": sc.state_dict()},
                            lambda st, a=algo, sc=sched: (a.load_shared_state(st), sc.load_state_dict(st["lr_scheduler"])))
        reps.append((comm, model, algo, sched, task.sampler(g, c.train.batch_size), MicroBatches("fp32")))
        if fresh and g in (heal or {}):
            init = cpu_clone({"model": model.state_dict(), "algorithm": algo.state_dict()})
            rounds.fresh[g] = lambda m=model, a=algo, st=init: (m.load_state_dict(st["model"]), a.load_state_dict(st["algorithm"]))
    def body(g, batches, errors):
        comm, model, algo, sched, _, micro = reps[g]
        try:
            comm.begin_step(step)
            loss = micro.backward(lambda b, m=model: task.loss(m, b), batches)
            algo.step(loss)
            algo.zero_grad()
            sched.step()
        except BaseException as err:  # noqa: BLE001 - raised again in the main thread
            errors.append(err)
        finally:
            with rounds.cond:
                rounds.active.discard(g)
                rounds.cond.notify_all()

    for step in range(1, steps + 1):
        rounds.step, threads, errors = step, [], []
        for g, (*_, sampler, _micro) in enumerate(reps):
            batches = [sampler.next_batch() for _ in range(c.train.grad_accum)]
            if runs(g, step):
                rounds.active.add(g)
                threads.append(threading.Thread(target=body, args=(g, batches, errors)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    return [algo for _, _, algo, *_ in reps], rounds


EAGER = {"name": "eager-diloco", "sync_every": 5}


STREAMING_EAGER = {"name": "streaming-diloco", "sync_every": 5, "overlap": "eager"}


@pytest.mark.parametrize("algo", ["eager-diloco", "delayed-diloco", "streaming-eager-2"])
def test_eager_no_fault_equals_the_simulator(tmp_path, algo):
    """The all-reduce overlapping a whole round (eager-diloco: each replica its own phi_m;
    delayed-diloco: one phi; streaming-diloco with overlap: eager-2, two rounds, one fragment);
    the round opens where it starts and commits at the next synchronization."""
    spec = {**STREAMING_EAGER, "overlap": "eager-2"} if algo == "streaming-eager-2" else {**EAGER, "name": algo}
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": spec}
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg, steps=60)), "--out", str(run)]) == 0
    models = [replica(run, g, "model.pt") for g in range(3)]
    for g in range(3):  # 12 rounds started, the last one never applied: 11 commits
        assert {k: replica(run, g)[k] for k in ("status", "committed_step", "heals")} == \
            {"status": "completed", "committed_step": 60 // 5 - 1, "heals": []}
        assert all(r["participants"] == 3 for r in replica(run, g, "metrics.jsonl"))
    sim = sim_model(tmp_path, "sim", steps=60, algorithm=cfg["algorithm"])
    torch.testing.assert_close(models[0], sim, rtol=0, atol=1e-12)  # the simulator evaluates rank 0's
    for got, want in zip(models, replay_ft(tmp_path, cfg, 60)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    if algo == "delayed-diloco":
        assert torch.equal(models[0], models[1]) and torch.equal(models[0], models[2])
    else:  # each replica steps its own phi_m with its own fresh pseudo-gradient
        assert (models[0] - models[1]).abs().max() > 1e-9


@pytest.mark.parametrize("discard", [False, True])
def test_eager_diloco_changing_quorum_telescopes(tmp_path, discard):
    """The closed form under a changing quorum (no processes, the replayed rounds): with outer SGD
    without momentum (lr eta) each replica's phi_m is phi(0) - eta [sum of the committed means +
    Delta_m(T) / M(T)]: every term enters at the M it was applied with (`counted_eager_proxy`), and
    a discarded round (round 4) leaves neither its mean nor the own terms applied a round earlier.
    Replica 2 leaves after step 20 (round 4): M = 3 for rounds 1-4, 2 from round 5."""
    from farsync.runner import build_task
    from farsync.config import load_config

    eta = 0.7
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": {**EAGER, "outer": {"name": "sgd", "lr": eta}}}
    live = lambda r: (0, 1, 2) if r <= 4 else (0, 1)  # noqa: E731
    commits = (lambda r: r != 4) if discard else (lambda r: True)
    algos, rounds = replay_algorithms(tmp_path, cfg, 60, live, commits, runs=lambda g, s: g < 2 or s <= 20)
    torch.manual_seed(load_config(cfg_file(tmp_path, cfg)).seed)
    phi0 = build_task(load_config(cfg_file(tmp_path, cfg))).build_model().x.detach().reshape(-1)
    total = torch.zeros_like(phi0)
    for r in range(1, 60 // 5):  # round 12 is started, never applied
        if commits(r):
            s = torch.stack([rounds.bufs[r, h] for h in live(r)]).sum(0)
            total += s[:-1] / s[-1]
    for algo in algos[:2]:
        assert algo.own_n == 2
        closed = phi0 - eta * (total + algo.own_prev / algo.own_n)
        torch.testing.assert_close(algo.global_params[0].detach().reshape(-1), closed, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algo", ["eager-diloco", "streaming-eager"])
def test_eager_diloco_kill9_for_good_equals_the_replayed_rounds(tmp_path, monkeypatch, algo):
    """Replica 2 killed at step 103, inside round 20 (its all-reduce started at step 100 by all
    three; the injected kill first waits for its own part of that ring, so the kill is between
    synchronizations, not during an all-reduce): round 20 commits at step 105 with M = 3; from round 21 the quorum is the two
    survivors, M = 2, and the proxy of round 21 is Delta/2 + mean(20) - own(20)/3. Also
    streaming-diloco with overlap: eager (one fragment: the same rule, its own code)."""
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": EAGER if algo == "eager-diloco" else STREAMING_EAGER}
    monkeypatch.setenv(FAULT_ENV, "2:103")
    monkeypatch.setenv(PACE_ENV, "0.005")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg)), "--out", str(run)]) == 1
    for g in (0, 1):  # no restart, no heal, every round committed; two participants after the kill
        assert {k: replica(run, g)[k] for k in ("attempt", "status", "committed_step", "heals")} == \
            {"attempt": 0, "status": "completed", "committed_step": 39, "heals": []}
        parts = {r["step"]: r["participants"] for r in replica(run, g, "metrics.jsonl")}
        assert parts[100] == 3 and all(parts[t] == 2 for t in parts if t > 100)
    monkeypatch.delenv(FAULT_ENV)
    plain = replay_ft(tmp_path, cfg, 200)  # the reference, anchored: without a fault it is the simulator
    torch.testing.assert_close(plain[0], sim_model(tmp_path, "sim", algorithm=cfg["algorithm"]), rtol=0, atol=1e-12)
    want = replay_ft(tmp_path, cfg, 200, live=lambda r: (0, 1, 2) if r <= 20 else (0, 1), runs=lambda g, s: g < 2 or s <= 102)
    for g in (0, 1):
        torch.testing.assert_close(replica(run, g, "model.pt"), want[g], rtol=0, atol=1e-12)
    assert (want[0] - plain[0]).abs().max() > 1e-6  # the kill changed the trajectory


def test_eager_diloco_kill_during_the_all_reduce_discards_the_round(tmp_path, monkeypatch):
    """Replica 2 dies in round 20's all-reduce (step 100): at step 105 round 20 is not committed on
    either survivor, nothing of mean(20) is applied and each withdraws its own term of round 20:
    the proxy of round 21 is Delta/2 - own(20)/3 (the replay with round 20 discarded)."""
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": EAGER}
    monkeypatch.setenv(FAULT_ENV, "2:100:allreduce")
    monkeypatch.setenv(PACE_ENV, "0.005")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg)), "--out", str(run)]) == 1
    for g in (0, 1):
        s = replica(run, g)
        assert s["status"] == "completed" and s["committed_step"] == 39 - 1  # round 20 is lost
        by_step = {r["step"]: r["committed_step"] for r in replica(run, g, "metrics.jsonl")}
        assert by_step[100] == 19 and by_step[125] == 23
    monkeypatch.delenv(FAULT_ENV)
    want = replay_ft(tmp_path, cfg, 200, live=lambda r: (0, 1, 2) if r <= 20 else (0, 1),
                     commits=lambda r: r != 20, runs=lambda g, s: g < 2 or s <= 99)
    for g in (0, 1):
        torch.testing.assert_close(replica(run, g, "model.pt"), want[g], rtol=0, atol=1e-12)


def launch_with_a_replacement(tmp_path, monkeypatch, cfg, pace):
    """800 steps; replica 2 killed at step 53 and restarted once (torchrun --max-restarts 1): the
    three models and r, the round the replacement healed at (its quorum came after r - 1 commits).
    Only the replacement healed, once; FARSYNC_FAULT is unset again for the references."""
    monkeypatch.setenv(FAULT_ENV, "2:53")
    monkeypatch.setenv(PACE_ENV, pace)
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg, steps=800)), "--out", str(run), "--max-restarts", "1"]) == 0
    back = replica(run, 2)
    assert back["attempt"] == 1 and back["status"] == "completed" and len(back["heals"]) == 1
    assert all(replica(run, g)["heals"] == [] for g in (0, 1))
    monkeypatch.delenv(FAULT_ENV)
    return [replica(run, g, "model.pt") for g in range(3)], back["heals"][0] + 1


def test_eager_diloco_replacement_heals_and_equals_the_replayed_rounds(tmp_path, monkeypatch):
    """Replica 2 killed at step 53 and restarted: at its first synchronization it heals from a live
    peer (its phi_m, outer state, in-flight mean and own term: the shared state), contributes weight
    0 there and makes its source's outer step, then trains on its own data. Every replica equals
    the replay that heals replica 2 at that round from the same source (torchft picks the source:
    one of the two replays matches)."""
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": EAGER}
    models, r = launch_with_a_replacement(tmp_path, monkeypatch, cfg, "0.02")  # r: after r - 1 commits
    assert 11 < r < 150
    live = lambda q: (0, 1, 2) if q <= 10 or q >= r else (0, 1)  # noqa: E731
    # replica 2 back for steps 5r - 2 .. 5r: its local steps 53, 54, 55 (overwritten by the heal), so that it
    # synchronizes at step 5r, as the replacement at its own step 5
    runs = lambda g, s: g < 2 or s <= 52 or s > 5 * r - 3  # noqa: E731
    errors = []
    for src in (0, 1):
        want = replay_ft(tmp_path, cfg, 800, live=live, runs=runs, heal={2: (r, src)})
        errors.append(max(float((a - b).abs().max()) for a, b in zip(models, want)))
    assert min(errors) < 1e-12 and max(errors) > 1e-9, errors  # it matches the replay from its real source


DEMO = {"name": "decoupled-momentum", "inner": {"name": "sgd", "lr": 0.05}, "topk": 4}  # 4 of the 32 coefficients


def test_ft_all_gather_excludes_a_healed_replica(tmp_path):
    """`FTCommunicator.all_gather` over the replayed Manager (one all-reduce of n slots + n flags):
    every entry arrives bit for bit (a -0.0 and a NaN included); a replica that healed at this
    round's quorum sends zeros and a zero flag, so `gathered_from` leaves it out on every replica;
    booked as the all-reduce of the n x B + n bytes buffer."""
    from farsync.comm.base import wire_bytes
    from farsync.comm.fault_tolerant import FTCommunicator

    rounds = _ReplayRounds(1, live=lambda r: (0, 1, 2), commits=lambda r: True, heal={2: (2, 0)})
    comms = [FTCommunicator(rounds.manager(g), g, 3) for g in range(3)]
    for c in comms:
        c.register_state(lambda: {"v": 1}, lambda state: None)
    mine = [torch.tensor([g + 0.25, -0.0, float("nan"), -3e-38], dtype=torch.float32) for g in range(3)]
    for r, want in ((1, [0, 1, 2]), (2, [0, 1])):  # replica 2 heals from replica 0 at round 2
        rounds.step = r
        for c in comms:
            c.begin_sync()
        outs = [[torch.full((4,), 7.0) for _ in range(3)] for _ in comms]
        works = [c.all_gather(out, t, async_op=True) for c, out, t in zip(comms, outs, mine)]
        for w in works:
            w.wait()
        assert [c.commit() for c in comms] == [True] * 3
        for c, out in zip(comms, outs):
            assert c.gathered_from() == want
            for g in range(3):
                expect = mine[g] if g in want else torch.zeros(4)
                assert torch.equal(out[g].view(torch.int32), expect.view(torch.int32))  # bit for bit
    assert comms[2].heals == [1] and comms[0].heals == comms[1].heals == []
    b = 3 * 4 * 4 + 3
    for c in comms:
        assert c.stats.bytes_sent == 2 * wire_bytes("all_reduce", b, 3, c.rank)[0] == 2 * (2 * 2 * b // 3)


def test_demo_no_fault_equals_the_simulator(tmp_path):
    """decoupled-momentum: a round per step, its all-gather one all-reduce of slots. The payloads
    are bytes moved exactly (a slot has one writer) and every replica decodes the same entries in
    rank order, so the replicas, the simulator's rank 0 and the replay are bitwise equal."""
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": DEMO}
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg, steps=60)), "--out", str(run)]) == 0
    models = [replica(run, g, "model.pt") for g in range(3)]
    assert all(torch.equal(models[0], m) for m in models[1:])
    payload = 1 * 4 * (2 + 4)  # one DCT chunk of the 32 coordinates: 4 x (int16 index + fp32 value)
    for g in range(3):
        s = replica(run, g)
        assert (s["status"], s["committed_step"], s["heals"]) == ("completed", 60, [])
        assert s["bytes_sent"] == 60 * (2 * 2 * (3 * payload + 3) // 3)  # the all-reduce of 3 slots + 3 flags
        assert all(r["participants"] == 3 for r in replica(run, g, "metrics.jsonl"))
    assert torch.equal(models[0], sim_model(tmp_path, "sim", steps=60, algorithm=DEMO))
    assert all(torch.equal(models[0], m) for m in replay_ft(tmp_path, cfg, 60))


def launch_demo_with_a_kill(tmp_path, monkeypatch, cfg, fault):
    """200 steps on 3 replicas with FARSYNC_FAULT = `fault` (no restart): the run directory, once
    the launcher has exited 1 and the fault has really fired."""
    monkeypatch.setenv(FAULT_ENV, fault)
    monkeypatch.setenv(PACE_ENV, "0.005")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg)), "--out", str(run)]) == 1
    assert (run / "replicas" / "2" / "killed_at").is_file()  # the fault fired
    return run


def test_demo_kill9_for_good_equals_the_replayed_rounds(tmp_path, monkeypatch):
    """Replica 2 killed at step 101 (between synchronizations): the two survivors go on without
    restart, two participants from step 101, every step committed, bitwise equal to each other and
    to the replay in which replica 2 stops after step 100 (the simulator refuses cluster.churn for
    decoupled-momentum; the replay without a fault is the simulator, bit for bit)."""
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": DEMO}
    run = launch_demo_with_a_kill(tmp_path, monkeypatch, cfg, "2:101")
    a, b = replica(run, 0, "model.pt"), replica(run, 1, "model.pt")
    assert torch.equal(a, b)
    for g in (0, 1):
        assert {k: replica(run, g)[k] for k in ("attempt", "status", "committed_step", "heals")} == \
            {"attempt": 0, "status": "completed", "committed_step": 200, "heals": []}
        parts = {r["step"]: r["participants"] for r in replica(run, g, "metrics.jsonl")}
        assert parts[100] == 3 and all(parts[t] == 2 for t in parts if t > 100)
    monkeypatch.delenv(FAULT_ENV)
    plain = replay_ft(tmp_path, cfg, 200)
    assert torch.equal(plain[0], sim_model(tmp_path, "sim", algorithm=DEMO))
    want = replay_ft(tmp_path, cfg, 200, live=lambda r: (0, 1, 2) if r <= 100 else (0, 1), runs=lambda g, s: g < 2 or s <= 100)
    assert torch.equal(a, want[0]) and torch.equal(b, want[1])
    assert (a - plain[0]).abs().max() > 1e-6  # the kill changed the trajectory


def test_demo_kill_during_the_all_gather_discards_the_step(tmp_path, monkeypatch):
    """Replica 2 dies in the all-reduce that carries step 100's all-gather: step 100 commits on
    neither survivor (one commit fewer), its momentum and parameters untouched, and both equal
    the replay in which step 100 is discarded and replica 2 gone from step 100 on."""
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": DEMO}
    run = launch_demo_with_a_kill(tmp_path, monkeypatch, cfg, "2:100:allreduce")
    for g in (0, 1):
        s = replica(run, g)
        assert s["status"] == "completed" and s["committed_step"] == 200 - 1  # step 100 is lost
        by_step = {r["step"]: r["committed_step"] for r in replica(run, g, "metrics.jsonl")}
        assert by_step[75] == 75 and by_step[100] == 99 and by_step[125] == 124
    a, b = replica(run, 0, "model.pt"), replica(run, 1, "model.pt")
    monkeypatch.delenv(FAULT_ENV)
    want = replay_ft(tmp_path, cfg, 200, live=lambda r: (0, 1, 2) if r <= 100 else (0, 1),
                     commits=lambda r: r != 100, runs=lambda g, s: g < 2 or s <= 99)
    assert torch.equal(a, want[0]) and torch.equal(b, want[1])
    kept = replay_ft(tmp_path, cfg, 200, live=lambda r: (0, 1, 2) if r < 100 else (0, 1), runs=lambda g, s: g < 2 or s <= 99)
    assert (a - kept[0]).abs().max() > 1e-6  # had step 100 been applied (with the two), the models would differ


def test_demo_heal_drops_the_healed_entry_and_keeps_its_momentum(tmp_path):
    """The replay with a heal (no processes): replica 2 away after step 50, back at step 80, where it
    heals from replica 0 (the model, the inner optimizer, the step; not the momentum). At that
    round it sends nothing (weight 0) and its momentum stays what it was after step 50; from step
    81 it sends again, and all three end bitwise equal."""
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": DEMO}
    live = lambda q: (0, 1, 2) if q <= 50 or q >= 80 else (0, 1)  # noqa: E731
    runs = lambda g, s: g < 2 or s <= 50 or s >= 80  # noqa: E731
    at50, _ = replay_algorithms(tmp_path, cfg, 50, live, lambda r: True)
    at80, rounds = replay_algorithms(tmp_path, cfg, 80, live, lambda r: True, runs=runs, heal={2: (80, 0)})
    assert not rounds.bufs[80, 2].any()  # neither its slot nor its flag
    assert at80[2].comm.heals == [79] and at80[2].local_step == at80[0].local_step == 80
    assert torch.equal(at80[2].momentum[0], at50[2].momentum[0])  # its own residual, untouched by the heal round
    assert torch.equal(at80[2].model.x, at80[0].model.x)
    algos, rounds = replay_algorithms(tmp_path, cfg, 120, live, lambda r: True, runs=runs, heal={2: (80, 0)})
    assert int(rounds.bufs[81, 2][-1]) == 1  # from the next step it counts again
    x = [a.model.x.detach() for a in algos]
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert not torch.equal(algos[2].momentum[0], algos[0].momentum[0])  # each its own residual


def test_demo_replacement_heals_and_equals_the_replayed_rounds(tmp_path, monkeypatch):
    """Replica 2 killed at step 53 and restarted (torchrun --max-restarts 1): the replacement heals
    at its first step r from a live peer (both hold the same shared state), its entry of round r
    dropped, its momentum its fresh process's zeros; all three end bitwise equal, and equal the
    replay of the same rounds with replica 2 healing at r as a fresh process."""
    cfg = {**json.loads(json.dumps(CFG)), "algorithm": DEMO}
    models, r = launch_with_a_replacement(tmp_path, monkeypatch, cfg, "0.01")  # every step a commit
    assert 53 < r < 800  # it joined before the end
    assert torch.equal(models[0], models[1]) and torch.equal(models[0], models[2])
    assert all(replica(tmp_path / "ft", g)["committed_step"] == 800 for g in range(3))
    want = replay_ft(tmp_path, cfg, 800, live=lambda q: (0, 1, 2) if q <= 52 or q >= r else (0, 1),
                     runs=lambda g, s: g < 2 or s <= 52 or s >= r, heal={2: (r, 0)}, fresh=True)
    assert all(torch.equal(m, w) for m, w in zip(models, want))


def test_kill9_replacement_heals_to_the_committed_step(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "2:51")
    monkeypatch.setenv(PACE_ENV, "0.02")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, steps=800)), "--out", str(run), "--max-restarts", "1"]) == 0
    survivors = [replica(run, g) for g in (0, 1)]
    back = replica(run, 2)
    assert [s["attempt"] for s in survivors] == [0, 0] and [s["heals"] for s in survivors] == [[], []]
    assert back["attempt"] == 1 and back["status"] == "completed" and len(back["heals"]) == 1
    healed_at = back["heals"][0]
    assert 10 < healed_at < 160  # it joined mid-run, at the survivors' committed step
    rows = [r for r in replica(run, 2, "metrics.jsonl") if r["attempt"] == 1]
    first = next(r for r in rows if "healed_at_committed_step" in r)
    assert first["healed_at_committed_step"] == [healed_at] and first["step"] > 5 * healed_at
    models = [replica(run, g, "model.pt") for g in range(3)]
    assert torch.equal(models[0], models[1]) and torch.equal(models[0], models[2])
    assert all(s["committed_step"] == back["committed_step"] for s in survivors)
    parts = [r["participants"] for r in replica(run, 0, "metrics.jsonl")]
    assert 2 in parts and parts[-1] == 3  # it ran with two, then with the replacement again


def test_kill_during_the_all_reduce_discards_the_round(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "2:100:allreduce")
    monkeypatch.setenv(PACE_ENV, "0.005")
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path)), "--out", str(run)]) == 1
    for g in (0, 1):
        s = replica(run, g)
        assert s["status"] == "completed" and s["committed_step"] == 200 // 5 - 1  # the round of step 100 is lost
        by_step = {r["step"]: r["committed_step"] for r in replica(run, g, "metrics.jsonl")}
        assert by_step[75] == 15 and by_step[100] == 19
    assert torch.equal(replica(run, 0, "model.pt"), replica(run, 1, "model.pt"))


@pytest.mark.parametrize("change, message", [
    ({"algorithm": {"name": "dsgd"}}, "torchft runs ddp, local-sgd, diloco, streaming-diloco"),
    ({"algorithm": {"name": "decoupled-momentum", "inner": {"name": "sgd", "lr": 0.1}, "compress": {"name": "int8"}}},
     "compresses by itself (DCT top-k); remove algorithm.compress"),
    ({"algorithm": {"name": "speculative-diloco", "sync_every": 5}}, "'speculative-diloco' is not supported there"),
    ({"algorithm": {"name": "eager-diloco", "sync_every": 5, "compress": {"name": "int8"}}}, "algorithm.compress"),
    ({"algorithm": {"name": "diloco", "compress": {"name": "int8"}}}, "algorithm.compress"),
    ({"train": {"steps": 20, "log_every": 5, "checkpoint_every": 10}}, "train.checkpoint_every"),
    ({"cluster": {"backend": "torchft", "workers": 3, "group_size": 2}}, "group_size"),
    ({"cluster": {"backend": "torchft", "workers": 3, "ft": {"min_replicas": 4}}}, "min_replicas (4) exceeds"),
    ({"cluster": {"backend": "torchft", "workers": 3, "ft": {"heartbeat_timeout": "soon"}}}, "soon"),
])
def test_refusals_before_any_process(tmp_path, capsys, change, message):
    cfg = {**json.loads(json.dumps(CFG)), **change}
    run = tmp_path / "ft"
    assert main(["launch", str(cfg_file(tmp_path, cfg)), "--out", str(run)]) == 2
    assert message in capsys.readouterr().err and not run.exists()


def test_launch_refuses_process_counts(tmp_path, capsys):
    for extra in (["--nproc", "3"], ["--groups", "3", "--nproc-per-group", "2"]):
        assert main(["launch", *extra, str(cfg_file(tmp_path)), "--out", str(tmp_path / "x")]) == 2
        assert "one process per replica" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sigterm_to_the_launcher_stops_every_replica_with_its_summary(tmp_path):
    run = tmp_path / "ft"
    env = {**os.environ, PACE_ENV: "0.02", "RUST_LOG": "warn"}
    proc = subprocess.Popen([sys.executable, "-m", "farsync.cli", "launch", str(cfg_file(tmp_path, steps=2000)),
                             "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not all((run / "replicas" / str(g) / "metrics.jsonl").is_file() and
                      (run / "replicas" / str(g) / "metrics.jsonl").read_text().count("\n") >= 2 for g in range(3)):
            assert time.monotonic() < deadline and proc.poll() is None, "the replicas did not start logging"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    for g in range(3):
        s = replica(run, g)
        assert s["status"].startswith("failed: terminated by SIGTERM at step ") and 0 < s["step"] < 2000
        assert replica(run, g, "metrics.jsonl")  # its metrics so far are kept
    assert json.loads((run / "summary.json").read_text())["status"].startswith("failed: 0 of 3 replicas completed")
