"""GPA, EMA-Nesterov and Lookahead: reductions, references, state, modes, groups, schedulers, errors."""

import copy

import pytest
import torch
from torch import nn

import farsync
from conftest import assert_crash_and_resume_reproduce, regression_batch, tiny_net
from farsync.config import ConfigError
from farsync.optim import GPA, EMANesterov, GPAReference, Lookahead, MuonWithAdamW, build_optimizer
from farsync.tasks.gpt import GPT, GPTConfig


net, batch = tiny_net, regression_batch


def loss(model, t):
    x, y = batch(t)
    return ((model(x) - y) ** 2).mean()


def train(model, opt, steps, start=0, sched=None):
    for t in range(start, start + steps):
        opt.zero_grad()
        loss(model, t).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach().clone() for p in model.parameters()]


def close(a, b, tol=1e-12):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def adamw(m, lr=1e-2):
    return torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.1)


# ---------------------------------------------------------------- reductions
def test_gpa_with_mu_x_zero_is_the_base_optimizer():
    a, b = net(), net()
    close(train(a, GPA(adamw(a), mu_x=0.0, mu_y=0.7), 30), train(b, adamw(b), 30))


def test_gpa_sgd_mu_y_one_is_heavy_ball():
    beta, lr = 0.9, 0.05
    a, b = net(), net()
    got = train(a, GPA(torch.optim.SGD(a.parameters(), lr=lr / (1 - beta)), mu_x=beta, mu_y=1.0), 30)
    close(got, train(b, torch.optim.SGD(b.parameters(), lr=lr, momentum=beta), 30), 1e-10)


def test_gpa_mu_x_equal_mu_y_is_nesterov():
    beta, lr = 0.9, 0.05
    a, b = net(), net()
    got = train(a, GPA(torch.optim.SGD(a.parameters(), lr=lr / (1 - beta)), mu_x=beta, mu_y=beta), 30)
    close(got, train(b, torch.optim.SGD(b.parameters(), lr=lr, momentum=beta, nesterov=True), 30), 1e-10)


@pytest.mark.parametrize("mu_x,mu_y", [(0.9, 0.7), (0.99, 0.3), (0.5, 1.0)])
def test_gpa_in_place_matches_the_three_sequence_reference(mu_x, mu_y):
    a, b = net(), net()
    opt = GPA(adamw(a), mu_x=mu_x, mu_y=mu_y)
    got = train(a, opt, 40)
    ref = GPAReference(adamw(b), mu_x, mu_y)
    for t in range(40):
        ref.base.zero_grad()
        loss(b, t).backward()
        ref.step()
    close(got, [p.detach() for p in b.parameters()], 1e-11)  # y
    with opt.averaged():
        close([p.detach().clone() for p in a.parameters()], ref.x, 1e-11)  # x, the evaluation point


def test_ema_nesterov_with_beta_zero_is_the_base_optimizer_exactly():
    a, b = net(), net()
    got = train(a, EMANesterov(adamw(a), beta=0.0, gamma=0.9), 30)
    assert all(torch.equal(x, y) for x, y in zip(got, train(b, adamw(b), 30)))


def ema_reference(model, base, beta, gamma, steps, sched=None, warmup=0):
    """theta, theta_tilde and m as separate lists (the parameters hold theta_tilde)."""
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    lr_max = 0.0
    for t in range(steps):
        base.zero_grad()
        loss(model, t).backward()
        base.step()
        lr = base.param_groups[0]["lr"]
        lr_max = max(lr_max, lr)
        b = beta * lr / lr_max if t + 1 >= warmup else 0.0
        with torch.no_grad():
            for i, p in enumerate(params):
                new = p.detach().clone()
                m[i] = gamma * m[i] + (1 - gamma) * (new - theta[i])
                theta[i] = new
                p.copy_(new + b * m[i])
        if sched is not None:
            sched.step()
    return theta


@pytest.mark.parametrize("gamma", [0.0, 0.9])
def test_ema_nesterov_matches_the_reference_with_a_schedule(gamma):
    a, b = net(), net()
    opt = EMANesterov(adamw(a), beta=0.5, gamma=gamma, warmup_steps=3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))
    got = train(a, opt, 30, sched=sched)
    base_b = adamw(b)
    theta = ema_reference(b, base_b, 0.5, gamma, 30, torch.optim.lr_scheduler.LambdaLR(base_b, lambda t: 1.0 / (1 + 0.1 * t)), 3)
    close(got, [p.detach() for p in b.parameters()], 1e-11)  # the lookahead points
    with opt.averaged():
        close([p.detach().clone() for p in a.parameters()], theta, 1e-11)  # evaluation at theta


def test_lookahead_with_alpha_one_is_the_base_optimizer_exactly():
    a, b = net(), net()
    got = train(a, Lookahead(adamw(a), k=3, alpha=1.0), 30)
    assert all(torch.equal(x, y) for x, y in zip(got, train(b, adamw(b), 30)))


def test_lookahead_matches_the_reference():
    a, b = net(), net()
    got = train(a, Lookahead(adamw(a), k=4, alpha=0.5), 30)
    base = adamw(b)
    slow = [p.detach().clone() for p in b.parameters()]
    for t in range(30):
        base.zero_grad()
        loss(b, t).backward()
        base.step()
        if (t + 1) % 4 == 0:
            with torch.no_grad():
                for s, p in zip(slow, b.parameters()):
                    s += 0.5 * (p - s)
                    p.copy_(s)
    close(got, [p.detach() for p in b.parameters()], 1e-13)


# ---------------------------------------------------------------- state, modes, groups
WRAPPERS = {
    "gpa": lambda opt: GPA(opt, mu_x=0.9, mu_y=0.7),
    "ema-nesterov": lambda opt: EMANesterov(opt, beta=0.5, gamma=0.9, warmup_steps=2),
    "lookahead": lambda opt: Lookahead(opt, k=3, alpha=0.5),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
@pytest.mark.parametrize("save_in_eval_mode", [False, True])
def test_state_dict_round_trip_mid_training_continues_identically(name, save_in_eval_mode):
    a = net()
    opt = WRAPPERS[name](adamw(a))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    train(a, opt, 7, sched=sched)
    if save_in_eval_mode:
        opt.eval()
    saved_model, saved_opt, saved_sched = copy.deepcopy(a.state_dict()), copy.deepcopy(opt.state_dict()), sched.state_dict()
    opt.train()
    want = train(a, opt, 8, start=7, sched=sched)

    b = net()
    b.load_state_dict(saved_model)
    opt_b = WRAPPERS[name](adamw(b))
    opt_b.load_state_dict(saved_opt)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=4, gamma=0.5)
    sched_b.load_state_dict(saved_sched)
    assert opt_b.mode == ("eval" if save_in_eval_mode else "train")
    opt_b.train()
    got = train(b, opt_b, 8, start=7, sched=sched_b)
    assert all(torch.equal(x, y) for x, y in zip(got, want))
    assert opt_b.base.param_groups[0]["lr"] == opt.base.param_groups[0]["lr"] == 1e-2 * 0.5 ** 3
    assert opt_b.param_groups is opt_b.base.param_groups


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_eval_train_round_trip_is_exact_and_idempotent(name):
    a = net()
    opt = WRAPPERS[name](adamw(a))
    train(a, opt, 10)  # not a multiple of Lookahead's k: fast and slow weights differ
    y = [p.detach().clone() for p in a.parameters()]
    opt.eval()
    x = [p.detach().clone() for p in a.parameters()]
    assert any(not torch.equal(u, v) for u, v in zip(x, y))  # the evaluation point differs
    opt.eval()
    assert all(torch.equal(u, p) for u, p in zip(x, a.parameters()))
    opt.train()
    opt.train()
    assert all(torch.equal(u, p) for u, p in zip(y, a.parameters()))
    with opt.averaged():
        assert all(torch.equal(u, p) for u, p in zip(x, a.parameters()))
    assert all(torch.equal(u, p) for u, p in zip(y, a.parameters()))
    opt.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_param_groups_and_params_without_grad(name):
    model = net()
    frozen = nn.Parameter(torch.ones(3, dtype=torch.float64))  # never gets a gradient
    w1, b1, w2, b2 = model.parameters()
    base = torch.optim.AdamW([{"params": [w1, b1], "lr": 1e-2}, {"params": [w2, b2, frozen], "lr": 3e-3}])
    opt = WRAPPERS[name](base)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 3e-3
    ref_model = net()
    ref = WRAPPERS[name](torch.optim.AdamW([{"params": list(ref_model.parameters())[:2], "lr": 1e-2},
                                            {"params": list(ref_model.parameters())[2:], "lr": 3e-3}]))
    got = train(model, opt, 12)
    assert torch.equal(frozen, torch.ones(3, dtype=torch.float64)) and frozen not in opt.state
    assert all(torch.equal(x, y) for x, y in zip(got, train(ref_model, ref, 12)))


@pytest.mark.parametrize("name,buffer", [("gpa", "z"), ("ema-nesterov", "m"), ("lookahead", "slow")])
def test_one_extra_parameter_sized_buffer(name, buffer):
    a = net()
    opt = WRAPPERS[name](adamw(a))
    train(a, opt, 3)
    for p in a.parameters():
        tensors = {k: v for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
        assert list(tensors) == [buffer] and tensors[buffer].shape == p.shape


@pytest.mark.parametrize("make,msg", [
    (lambda o: GPA(o, mu_y=0.0), r"mu_y must be in \(0.0, 1.0\], got 0.0"),
    (lambda o: GPA(o, mu_y=1.5), r"mu_y must be in \(0.0, 1.0\]"),
    (lambda o: GPA(o, mu_x=1.0), r"mu_x must be in \[0.0, 1.0\), got 1.0"),
    (lambda o: EMANesterov(o, gamma=1.0), r"gamma must be in \[0.0, 1.0\), got 1.0"),
    (lambda o: EMANesterov(o, gamma=-0.1), r"gamma must be in \[0.0, 1.0\)"),
    (lambda o: EMANesterov(o, beta=-1.0), r"beta must be a finite number >= 0"),
    (lambda o: EMANesterov(o, warmup_steps=5, cooldown_start=2), r"cooldown_start must be None or an integer >= warmup_steps"),
    (lambda o: Lookahead(o, k=0), r"k must be an integer >= 1, got 0"),
    (lambda o: Lookahead(o, alpha=0.0), r"alpha must be in \(0.0, 1.0\]"),
    (lambda o: GPA(object()), r"optimizer must be a torch.optim.Optimizer"),
])
def test_bad_hyperparameters_name_the_argument(make, msg):
    a = net()
    with pytest.raises((ValueError, TypeError), match=msg):
        make(adamw(a))


@pytest.mark.parametrize("oracle", ["ScheduleFreeWrapper(SGD)", "AdamWScheduleFree"])
def test_gpa_schedule_free_mode_matches_the_schedulefree_package(oracle):
    """GPA(weighting='schedule-free', mu_y=beta) over SGD == ScheduleFreeWrapper(SGD, momentum=beta);
    over AdamW with betas (0, b2) and decoupled decay (applied at y) == AdamWScheduleFree((beta, b2))."""
    schedulefree = pytest.importorskip("schedulefree")  # a dependency of farsync; skipped only if uninstalled
    warm = lambda t: min(1.0, (t + 1) / 5)  # noqa: E731 - a warm-up, so lr_max and the weights vary
    a, b = net(), net()
    if oracle == "AdamWScheduleFree":
        ours = GPA(torch.optim.AdamW(a.parameters(), lr=1e-2, betas=(0.0, 0.999), weight_decay=0.1), mu_y=0.9, weighting="schedule-free")
        theirs = schedulefree.AdamWScheduleFree(b.parameters(), lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1, foreach=False)
        theirs_sched_target = theirs
    else:
        ours = GPA(torch.optim.SGD(a.parameters(), lr=0.05), mu_y=0.9, weighting="schedule-free")
        theirs = schedulefree.ScheduleFreeWrapper(torch.optim.SGD(b.parameters(), lr=0.05), momentum=0.9, weight_lr_power=2.0, r=0.0)
        theirs_sched_target = theirs.base
    s_ours = torch.optim.lr_scheduler.LambdaLR(ours, warm)
    s_theirs = torch.optim.lr_scheduler.LambdaLR(theirs_sched_target, warm)
    theirs.train()
    for t in range(25):
        for model, opt, sched in ((a, ours, s_ours), (b, theirs, s_theirs)):
            opt.zero_grad()
            loss(model, t).backward()
            opt.step()
            sched.step()
        close([p.detach() for p in a.parameters()], [p.detach() for p in b.parameters()], 1e-10)  # y, every step
    ours.eval()
    theirs.eval()
    close([p.detach() for p in a.parameters()], [p.detach() for p in b.parameters()], 1e-10)  # x


# ---------------------------------------------------------------- from a config

TINY = {
    "name": "tiny", "seed": 1,
    "task": {"name": "shakespeare-gpt", "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "eval_windows": 8},
    "cluster": {"workers": 2},
    "algorithm": {"name": "ddp", "inner": {"name": "adamw", "lr": 0.003}},
    "train": {"steps": 24, "batch_size": 4, "eval_every": 12, "log_every": 6},
}


def with_algo(**algo):
    return {**TINY, "algorithm": {**TINY["algorithm"], **algo}}


def test_inner_gpa_with_mu_x_zero_trains_like_its_base(tmp_path):
    plain = farsync.run(TINY, out=tmp_path / "a", progress=False)
    gpa = farsync.run(with_algo(inner={"name": "gpa", "base": {"name": "adamw", "lr": 0.003}, "mu_x": 0.0}), out=tmp_path / "b", progress=False)
    assert [m["train_loss"] for m in gpa.metrics] == pytest.approx([m["train_loss"] for m in plain.metrics], rel=1e-5)
    assert gpa.summary["final_eval_loss"] == pytest.approx(plain.summary["final_eval_loss"], rel=1e-5)


def test_algorithms_evaluate_an_inner_wrapper_at_its_averaged_point():
    from farsync.algorithms import get_algorithm
    from farsync.comm import SimCluster

    def fn(comm):
        model = net()
        opt = GPA(adamw(model), mu_x=0.9, mu_y=0.5)
        algo = get_algorithm("ddp")(model, opt, comm)
        for t in range(10):
            loss(model, t).backward()
            algo.step()
            algo.zero_grad()
        y = [p.detach().clone() for p in model.parameters()]
        with algo.eval_params() as m:
            evaluated = [p.detach().clone() for p in m.parameters()]
        with opt.averaged():
            x = [p.detach().clone() for p in model.parameters()]
        return y, evaluated, x, [p.detach().clone() for p in model.parameters()]

    y, evaluated, x, after = SimCluster(1).run(fn)[0]
    assert all(torch.equal(a, b) for a, b in zip(evaluated, x))
    assert not all(torch.equal(a, b) for a, b in zip(x, y))
    assert all(torch.equal(a, b) for a, b in zip(after, y))  # back at the training point


def test_diloco_with_a_gpa_outer_step_is_diloco_with_nesterov(tmp_path):
    """Outer GPA(SGD lr', mu_x = mu_y = 0.9) on the averaged pseudo-gradient == outer Nesterov with
    lr = lr' (1 - 0.9): the same inner trajectory (train losses); only the evaluation point differs."""
    base = {**TINY, "algorithm": {"name": "diloco", "sync_every": 4, "inner": {"name": "adamw", "lr": 0.003}}}
    nesterov = farsync.run({**base, "algorithm": {**base["algorithm"], "outer": {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}}},
                           out=tmp_path / "n", progress=False)
    gpa = farsync.run({**base, "algorithm": {**base["algorithm"], "outer": {"name": "gpa", "base": {"name": "sgd", "lr": 7.0}, "mu_x": 0.9, "mu_y": 0.9}}},
                      out=tmp_path / "g", progress=False)
    assert [m["train_loss"] for m in gpa.metrics] == pytest.approx([m["train_loss"] for m in nesterov.metrics], rel=1e-5)
    assert gpa.summary["final_eval_loss"] != nesterov.summary["final_eval_loss"]  # x, not y


def test_single_worker_diloco_with_an_ema_nesterov_outer_runs(tmp_path):
    cfg = {**TINY, "cluster": {"workers": 1},
           "algorithm": {"name": "diloco", "sync_every": 4, "inner": {"name": "adamw", "lr": 0.003},
                         "outer": {"name": "ema-nesterov", "base": {"name": "sgd", "lr": 0.7}, "beta": 0.5, "gamma": 0.9}}}
    r = farsync.run(cfg, out=tmp_path / "s", progress=False)
    assert r.status == "completed" and r.summary["final_eval_loss"] < 4.0


def test_resume_with_wrappers_reproduces_the_run(tmp_path, monkeypatch):
    cfg = {**TINY, "algorithm": {"name": "diloco", "sync_every": 4,
                                 "inner": {"name": "lookahead", "base": {"name": "adamw", "lr": 0.003}, "k": 3},
                                 "outer": {"name": "gpa", "base": {"name": "sgd", "lr": 0.7}, "mu_x": 0.9, "mu_y": 0.7}},
           "train": {**TINY["train"], "checkpoint_every": 12}}
    assert_crash_and_resume_reproduce(cfg, tmp_path, monkeypatch, "1:17")


@pytest.mark.parametrize("inner,msg", [
    ({"name": "gpa", "mu_x": 0.9}, "algorithm.inner: wrapper 'gpa' needs 'base'"),
    ({"name": "gpa", "base": {"name": "adamw", "lr": 0.003}, "mu_y": 0}, r"algorithm.inner: mu_y must be in \(0.0, 1.0\]"),
    ({"name": "lookahead", "base": {"name": "adamw", "lr": 0.003}, "kk": 3}, r"unknown option\(s\) \['kk'\] for wrapper 'lookahead'"),
    ({"name": "ema-nesterov", "base": {"name": "adamw"}}, "algorithm.inner.base: 'lr' is required"),
])
def test_bad_wrapper_configs_fail_before_training(tmp_path, inner, msg):
    with pytest.raises(ConfigError, match=msg):
        farsync.run(with_algo(inner=inner), out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- Muon for hidden weights, AdamW for the rest


def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=16))


def gpt_loss(model, t):
    g = torch.Generator().manual_seed(t)
    x = torch.randint(0, 65, (4, 17), generator=g)
    logits = model(x[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 65), x[:, 1:].reshape(-1))


def test_muon_gets_the_hidden_matrices_and_adamw_the_rest():
    model = gpt()
    opt = MuonWithAdamW(model.named_parameters(), lr=0.02, adamw={"lr": 3e-3})
    names = {id(p): n for n, p in model.named_parameters()}
    muon = sorted(names[id(p)] for p in opt.muon.param_groups[0]["params"])
    assert muon == sorted(n for n, p in model.named_parameters() if p.ndim == 2 and n not in ("wte.weight", "wpe.weight"))
    assert {names[id(p)] for p in opt.adamw.param_groups[0]["params"]} >= {"wte.weight", "wpe.weight", "ln_f.weight"}
    assert opt.param_groups == opt.muon.param_groups + opt.adamw.param_groups


def test_muon_with_adamw_steps_like_the_two_torch_optimizers_and_round_trips():
    a, b = gpt(), gpt()
    opt = MuonWithAdamW(a.named_parameters(), lr=0.02, adamw={"lr": 3e-3, "weight_decay": 0.1})
    hidden = [p for n, p in b.named_parameters() if p.ndim == 2 and n not in ("wte.weight", "wpe.weight")]
    rest = [p for n, p in b.named_parameters() if not (p.ndim == 2 and n not in ("wte.weight", "wpe.weight"))]
    muon, adamw = torch.optim.Muon(hidden, lr=0.02, momentum=0.95, weight_decay=0.0), torch.optim.AdamW(rest, lr=3e-3, weight_decay=0.1)
    for t in range(6):
        for model, steps in ((a, [opt]), (b, [muon, adamw])):
            for o in steps:
                o.zero_grad()
            gpt_loss(model, t).backward()
            for o in steps:
                o.step()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    # a GPA wrapper over it, saved mid-run and reloaded, continues bit for bit
    c = gpt()
    wrapped = GPA(MuonWithAdamW(c.named_parameters(), adamw={"lr": 3e-3}), mu_x=0.9, mu_y=0.7)
    for t in range(4):
        wrapped.zero_grad()
        gpt_loss(c, t).backward()
        wrapped.step()
    saved_model, saved = copy.deepcopy(c.state_dict()), copy.deepcopy(wrapped.state_dict())
    for t in range(4, 8):
        wrapped.zero_grad()
        gpt_loss(c, t).backward()
        wrapped.step()
    d = gpt()
    d.load_state_dict(saved_model)
    again = GPA(MuonWithAdamW(d.named_parameters(), adamw={"lr": 3e-3}), mu_x=0.9, mu_y=0.7)
    again.load_state_dict(saved)
    for t in range(4, 8):
        again.zero_grad()
        gpt_loss(d, t).backward()
        again.step()
    assert all(torch.equal(x, y) for x, y in zip(c.parameters(), d.parameters()))


def test_muon_from_a_config_trains_and_outer_muon_is_refused(tmp_path):
    cfg = with_algo(inner={"name": "muon", "lr": 0.02, "adamw": {"lr": 0.003}})
    r = farsync.run(cfg, out=tmp_path / "m", progress=False)
    assert r.status == "completed" and r.metrics[-1]["train_loss"] < r.metrics[0]["train_loss"]
    with pytest.raises(ConfigError, match="muon routes parameters by name"):
        farsync.run({**TINY, "algorithm": {"name": "diloco", "sync_every": 4, "inner": {"name": "adamw", "lr": 0.003},
                                           "outer": {"name": "muon", "lr": 0.02}}}, out=tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="needs named parameters"):
        build_optimizer([torch.zeros(2, 2, requires_grad=True)], {"name": "muon", "lr": 0.02})
