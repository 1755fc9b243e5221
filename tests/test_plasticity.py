"""incremental_utils/plasticity.py and the remedies of optimizers.py against independent computations: the diagnostics
against numpy on known features, weight decay against torch.optim.AdamW and a hand-written ObGD step, adaptive UPGD and
UPGD-gated ObGD against plain loops written from their definitions (SPEC.md 11, docs/algorithms.md 10), continual
backprop's replacement against a numpy account of which unit goes and what it leaves; then the scripts with the
remedies on: compiled = eager, and a resume after kill -9 that reproduces the uninterrupted run."""
import copy
import math

import numpy as np
import pytest
import torch

import avg
import stream_ac
from helpers import assert_states_close, cut_and_resume, run_script, scalars
from incremental_utils.compiling import CompiledUpdate, compile_update
from incremental_utils.optimizers import Adam, ObGD
from incremental_utils.plasticity import (ContinualBackprop, PlasticityProbe, dormant_fraction, effective_rank,
                                          hidden_activations, hidden_layers, mean_abs_weights)


# ------------------------------------------------------------------------------------------------ diagnostics
def test_dormant_fraction_is_redos_tau_dormant_share():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 8))
    features[:, 2] *= 0.01  # nearly silent units
    features[:, 5] *= 0.005
    mean_abs = np.abs(features).mean(0)
    expected = np.mean(mean_abs / mean_abs.mean() <= 0.025)
    assert dormant_fraction(torch.from_numpy(features), 0.025) == pytest.approx(expected) == 2 / 8
    assert dormant_fraction(torch.from_numpy(features), 0.0) == 0.0


def test_effective_rank_is_the_exponentiated_entropy_of_normalised_singular_values():
    rng = np.random.default_rng(1)
    low = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 20))  # rank 3
    singular = np.linalg.svd(low, compute_uv=False)
    p = singular / singular.sum()
    p = p[p > 0]
    assert effective_rank(torch.from_numpy(low)) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert effective_rank(torch.from_numpy(low)) <= 3 + 1e-6
    assert effective_rank(torch.eye(10)) == pytest.approx(10.0)


def test_hidden_activations_are_what_each_next_layer_reads():
    """AVG's trunk: the two LeakyReLU outputs, the second after the penultimate normalisation; Stream AC's: after
    LayerNorm and LeakyReLU."""
    torch.manual_seed(0)
    x = torch.randn(7)
    trunk = avg.mlp_trunk(7, 16, "penultimate")
    h1 = torch.nn.functional.leaky_relu(trunk[0](x))
    h2 = torch.nn.functional.leaky_relu(trunk[2](h1))
    got = hidden_activations(trunk, x)
    torch.testing.assert_close(got[0], h1)
    torch.testing.assert_close(got[1], h2 / h2.norm())
    ln = stream_ac.trunk((7,), 16)
    g1 = torch.nn.functional.leaky_relu(torch.nn.functional.layer_norm(ln[0](x), (16,)))
    torch.testing.assert_close(hidden_activations(ln, x)[0], g1)
    assert hidden_layers(trunk, ("mu", "log_std"), "trunk") == [("trunk.0", ["trunk.2"]),
                                                                ("trunk.2", ["mu", "log_std"])]


def test_the_probe_keeps_the_latest_window_and_reports_against_numpy():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LeakyReLU(), torch.nn.Linear(4, 5))
    probe = PlasticityProbe({"net": (net, [4, 5])}, every=10, tau=0.1, window=6)
    rows = [(torch.randn(4), torch.randn(5)) for _ in range(9)]
    for i, (a, b) in enumerate(rows):
        probe.add(torch.tensor(i != 4), {"net": [a, b]})  # step 4 failed: not recorded
    kept = [r for i, r in enumerate(rows) if i != 4][-6:]
    first = np.stack([a.numpy() for a, _ in kept])
    second = np.stack([b.numpy() for _, b in kept])
    assert sorted(map(tuple, probe.net_0.numpy().round(6))) == sorted(map(tuple, first.round(6)))
    report = probe.report()
    s = np.abs(first).mean(0) / np.abs(first).mean()
    assert report["plasticity/net_dormant_1"] == pytest.approx(np.mean(s <= 0.1))
    sv = np.linalg.svd(second, compute_uv=False)
    p = sv / sv.sum()
    assert report["plasticity/net_effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert report["plasticity/net_mean_abs_w/0"] == pytest.approx(net[0].weight.abs().mean().item())
    assert mean_abs_weights(net) == {"0": pytest.approx(net[0].weight.abs().mean().item()),
                                     "2": pytest.approx(net[2].weight.abs().mean().item())}
    assert probe.due(10, 9) and not probe.due(19, 10)


# ------------------------------------------------------------------------------------------------ weight decay
def test_adam_weight_decay_is_adamws():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    reference = copy.deepcopy(net)
    params = dict(net.named_parameters())
    net.requires_grad_(False)
    ours = Adam(net, 1e-2, (0.9, 0.999), weight_decay=0.5)
    theirs = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        grads = {k: torch.randn(p.shape, generator=g) for k, p in params.items()}
        ours.step(params, grads, torch.tensor(True))
        for k, p in reference.named_parameters():
            p.grad = grads[k].clone()
        theirs.step()
    for k, p in reference.named_parameters():
        torch.testing.assert_close(params[k], p.detach(), rtol=1e-5, atol=1e-6)


def test_obgd_weight_decay_shrinks_by_the_step_size_taken():
    net = torch.nn.Linear(3, 2).requires_grad_(False)
    params = {k: p.clone() for k, p in net.named_parameters()}
    before = {k: p.clone() for k, p in params.items()}
    opt = ObGD(net, lr=1.0, kappa=2.0, trace_decay=0.0, adaptive=False, beta2=0.999, weight_decay=0.1)
    grads = {k: torch.full(p.shape, 0.5) for k, p in params.items()}
    delta = torch.tensor(3.0)
    proposal = opt.propose(grads, delta)
    m = 2.0 * 3.0 * sum(g.abs().sum().item() for g in grads.values())  # kappa max(|delta|, 1) ||z||_1, alpha 1
    step = 1.0 / max(m, 1.0)
    assert proposal["step_size"].item() == pytest.approx(step)
    change = opt.apply(params, proposal, torch.tensor(True))
    for k in params:
        torch.testing.assert_close(params[k], before[k] * (1 - step * 0.1) + step * 3.0 * grads[k])
    assert change.item() == pytest.approx(sum((params[k] - before[k]).square().sum().item() for k in params), rel=1e-5)


# ------------------------------------------------------------------------------------------------------ UPGD
def upgd_reference(params, grad_stream, noise_stream, lr, betas, eps, wd, sigma, beta_u):
    """Adaptive UPGD written from SPEC.md 11, weight by weight in float64: Adam moments, the utility trace, the global
    max of the raw traces, w <- (1 - lr wd) w - 2 lr [m_hat (1 - ubar) / (sqrt(v_hat) + eps) + xi (1 - ubar)]."""
    w = {k: v.double().clone() for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in w.items()}
    v2 = {k: torch.zeros_like(v) for k, v in w.items()}
    u = {k: torch.zeros_like(v) for k, v in w.items()}
    for t, (grads, noise) in enumerate(zip(grad_stream, noise_stream), 1):
        for k in w:
            g = grads[k].double()
            u[k] = beta_u * u[k] + (1 - beta_u) * (-g * w[k])
            m[k] = betas[0] * m[k] + (1 - betas[0]) * g
            v2[k] = betas[1] * v2[k] + (1 - betas[1]) * g * g
        top = max(float(x.max()) for x in u.values())
        for k in w:
            ubar = torch.sigmoid((u[k] / (1 - beta_u ** t)) / max(top, 1e-30))
            m_hat, v_hat = m[k] / (1 - betas[0] ** t), v2[k] / (1 - betas[1] ** t)
            w[k] = (1 - lr * wd) * w[k] - 2 * lr * (m_hat * (1 - ubar) / (v_hat.sqrt() + eps)
                                                     + sigma * noise[k].double() * (1 - ubar))
    return w


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adaptive_upgd_matches_its_definition(beta1):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).requires_grad_(False)
    params = dict(net.named_parameters())
    start = {k: p.clone() for k, p in params.items()}
    opt = Adam(net, 1e-2, (beta1, 0.999), weight_decay=1e-3, upgd=(0.1, 0.9))
    assert opt.noise_size == sum(p.numel() for p in params.values())
    g = torch.Generator().manual_seed(2)
    grads = [{k: torch.randn(p.shape, generator=g) for k, p in params.items()} for _ in range(25)]
    noises = [torch.randn(opt.noise_size, generator=g) for _ in range(25)]
    for grad, noise in zip(grads, noises):
        opt.step(params, grad, torch.tensor(True), noise)
    split = [dict(zip(params, torch.split(n, [p.numel() for p in params.values()]))) for n in noises]
    split = [{k: v.view_as(params[k]) for k, v in n.items()} for n in split]
    expected = upgd_reference(start, grads, split, 1e-2, (beta1, 0.999), 1e-8, 1e-3, 0.1, 0.9)
    for k in params:
        torch.testing.assert_close(params[k].double(), expected[k], rtol=1e-4, atol=1e-6)


def test_upgd_without_noise_at_neutral_utility_is_adams_step():
    """ubar = sigmoid(0) = 1/2 when every utility is 0 (all weights 0): 2 (1 - 1/2) lr m_hat / ... is Adam's step."""
    net = torch.nn.Linear(3, 2).requires_grad_(False)
    for p in net.parameters():
        p.zero_()
    a, b = {k: p.clone() for k, p in net.named_parameters()}, {k: p.clone() for k, p in net.named_parameters()}
    grads = {k: torch.randn(p.shape) for k, p in a.items()}
    Adam(net, 1e-2, (0.0, 0.999), upgd=(0.0, 0.99)).step(a, grads, torch.tensor(True), torch.zeros(8))
    Adam(net, 1e-2, (0.0, 0.999)).step(b, grads, torch.tensor(True))
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def gated_obgd_reference(params, grad_stream, delta_stream, noise_stream, lr, kappa, decay, sigma, beta_u):
    """UPGD's gating on ObGD's step as docs/algorithms.md 10 defines it, in float64: u <- beta_u u + (1 - beta_u)
    delta z w; d' = 2 (1 - ubar) z; M = lr kappa max(|delta|, 1) ||d'||_1; w <- w + lr / max(M, 1) (delta d' +
    2 (1 - ubar) sigma xi)."""
    w = {k: v.double().clone() for k, v in params.items()}
    z = {k: torch.zeros_like(v) for k, v in w.items()}
    u = {k: torch.zeros_like(v) for k, v in w.items()}
    for t, (grads, delta, noise) in enumerate(zip(grad_stream, delta_stream, noise_stream), 1):
        for k in w:
            z[k] = decay * z[k] + grads[k].double()
            u[k] = beta_u * u[k] + (1 - beta_u) * delta * z[k] * w[k]
        top = max(float(x.max()) for x in u.values())
        gate = {k: 2 * (1 - torch.sigmoid((u[k] / (1 - beta_u ** t)) / max(top, 1e-30))) for k in w}
        norm = sum(float((gate[k] * z[k]).abs().sum()) for k in w)
        step = lr / max(lr * kappa * max(abs(delta), 1.0) * norm, 1.0)
        for k in w:
            w[k] = w[k] + step * (delta * gate[k] * z[k] + gate[k] * sigma * noise[k].double())
    return w


def test_upgd_gated_obgd_matches_its_definition():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).requires_grad_(False)
    params = dict(net.named_parameters())
    start = {k: p.clone() for k, p in params.items()}
    opt = ObGD(net, lr=1.0, kappa=2.0, trace_decay=0.8, adaptive=False, beta2=0.999, upgd=(0.05, 0.9))
    g = torch.Generator().manual_seed(4)
    grads = [{k: torch.randn(p.shape, generator=g) for k, p in params.items()} for _ in range(20)]
    deltas = [float(torch.randn((), generator=g) * 2) for _ in range(20)]
    noises = [torch.randn(opt.noise_size, generator=g) for _ in range(20)]
    for grad, delta, noise in zip(grads, deltas, noises):
        opt.apply(params, opt.propose(grad, torch.tensor(delta), params=params, noise=noise), torch.tensor(True))
    split = [{k: v.view_as(params[k]) for k, v in zip(params, torch.split(n, [p.numel() for p in params.values()]))}
             for n in noises]
    expected = gated_obgd_reference(start, grads, deltas, split, 1.0, 2.0, 0.8, 0.05, 0.9)
    for k in params:
        torch.testing.assert_close(params[k].double(), expected[k], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- continual backprop
def test_continual_backprop_replaces_the_least_useful_mature_unit_and_resets_what_belongs_to_it():
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.LeakyReLU(), torch.nn.Linear(6, 2)).requires_grad_(False)
    opt = Adam(net, 1e-2, (0.9, 0.999))
    for state in (opt.exp_avg, opt.exp_avg_sq):  # non-trivial moments to reset
        for p in state.parameters():
            p.uniform_(0.5, 1.5)
    drawn = []

    def redraw(weight, row, generator):
        drawn.append(row)
        weight[row] = torch.full((weight.shape[1],), 7.0)

    cbp = ContinualBackprop(net, [("0", ["2"])], rate=0.5, maturity=3, decay=0.9, redraw=redraw)
    rng = np.random.default_rng(6)
    utility, ages, due = np.zeros(6), np.zeros(6), 0.0
    cbp.age_0[:2] = -5  # two young units: never eligible in this test
    ages[:2] = -5
    for step in range(6):
        h = torch.from_numpy(rng.uniform(0, 2, 6)).float()
        cbp.track(torch.tensor(True), [h])
        y = np.abs(net[2].weight.numpy()).mean(0) * h.numpy()
        utility = 0.9 * utility + 0.1 * y
        ages += 1
        due += 0.5 * np.sum(ages > 3)
    np.testing.assert_allclose(cbp.utility_0.numpy(), utility, rtol=1e-5)
    assert cbp.due_0.item() == pytest.approx(due)
    mature = ages > 3
    corrected = np.where(mature, utility / (1 - 0.9 ** ages), np.inf)
    unit = int(np.argmin(corrected))
    out_before, v_before = net[2].weight.clone(), opt.exp_avg_sq[0].weight.clone()
    assert cbp.replace(opt, torch.Generator()) == 1  # one per layer per step, though `due` is over 1
    assert drawn == [unit] and torch.all(net[0].weight[unit] == 7.0) and net[0].bias[unit] == 0
    assert torch.all(net[2].weight[:, unit] == 0)
    others = [i for i in range(6) if i != unit]
    assert torch.equal(net[2].weight[:, others], out_before[:, others])
    assert torch.all(opt.exp_avg[0].weight[unit] == 0) and torch.all(opt.exp_avg[2].weight[:, unit] == 0)
    rest = torch.cat([v_before[:unit], v_before[unit + 1:]])
    torch.testing.assert_close(opt.exp_avg_sq[0].weight[unit], torch.full((3,), rest.mean().item()))
    assert cbp.age_0[unit] == 0 and cbp.utility_0[unit] == 0
    assert cbp.due_0.item() == pytest.approx(due - 1)  # the rest carried over


# ----------------------------------------------------------------------------------- the scripts, with remedies
def avg_learner(**flags):
    args = avg.Args(env="Hopper-v4", plasticity_every=50, **flags)
    avg.resolve_hyperparams(args)
    if args.weight_decay is None:
        args.weight_decay = 1e-3 if args.upgd else 0.0
    torch.manual_seed(4)
    return avg.AVG(5, np.full(2, -1.0), np.full(2, 1.0), args)


def avg_stream(step, learner, n=300):
    g = torch.Generator().manual_seed(5)
    obs, noise, log_prob = torch.zeros(5), torch.zeros(2), torch.zeros(())
    size = learner.actor_opt.noise_size + learner.critic_opt.noise_size
    replaced = 0
    for i in range(n):
        s = avg.StepInputs(obs, noise, log_prob, torch.randn(5, generator=g, dtype=torch.float64),
                           torch.randn((), generator=g), torch.tensor(float(i % 50 == 49)),
                           torch.randn(2, 2, generator=g), torch.randn(size, generator=g))
        out = step(s)
        replaced += learner.plasticity.replace_units(g)
        obs, noise, log_prob = out.obs, out.noise, out.log_prob
    return replaced


@pytest.mark.parametrize("flags", [{"upgd": True}, {"reinit": "cbp", "maturity_threshold": 20,
                                                    "replacement_rate": 0.01}])
def test_avg_with_a_remedy_compiled_matches_eager(flags):
    eager, compiled = avg_learner(**flags), avg_learner(**flags)
    size = eager.actor_opt.noise_size + eager.critic_opt.noise_size
    example = avg.StepInputs(torch.zeros(5), torch.zeros(2), torch.zeros(()), torch.zeros(5, dtype=torch.float64),
                             torch.zeros(()), torch.zeros(()), torch.zeros(2, 2), torch.zeros(size))
    step = compile_update(compiled, example)
    assert isinstance(step, CompiledUpdate)
    replaced = avg_stream(eager, eager), avg_stream(step, compiled)
    assert replaced[0] == replaced[1] and (replaced[0] > 10 or "reinit" not in flags)
    assert_states_close(eager, compiled)


def stream_ac_learner(**flags):
    args = stream_ac.Args(plasticity_every=50, actor_lr=1.0, critic_lr=1.0, **flags)
    if args.weight_decay is None:
        args.weight_decay = 1e-3 if args.upgd else 0.0
    torch.manual_seed(4)
    return stream_ac.StreamAC(5, np.full(2, -1.0), np.full(2, 1.0), args)


@pytest.mark.parametrize("flags", [{"upgd": True}, {"reinit": "cbp", "maturity_threshold": 20,
                                                    "replacement_rate": 0.01}])
def test_stream_ac_with_a_remedy_compiled_matches_eager(flags):
    eager, compiled = stream_ac_learner(**flags), stream_ac_learner(**flags)
    size = eager.actor_opt.noise_size + eager.critic_opt.noise_size
    example = stream_ac.StepInputs(torch.zeros(6), torch.zeros(2), torch.zeros(5, dtype=torch.float64),
                                   torch.zeros(()), torch.zeros(()), torch.zeros(2), torch.zeros(size))
    step = compile_update(compiled, example)
    assert isinstance(step, CompiledUpdate)
    counts = []
    for learner, fn in ((eager, eager), (compiled, step)):
        g = torch.Generator().manual_seed(5)
        obs, sample, replaced = learner.observe(torch.zeros(5, dtype=torch.float64), torch.tensor(-0.5)), \
            torch.zeros(2), 0
        for i in range(300):
            out = fn(stream_ac.StepInputs(obs, sample, torch.randn(5, generator=g, dtype=torch.float64),
                                          torch.randn((), generator=g), torch.tensor(float(i % 40 == 39)),
                                          torch.randn(2, generator=g), torch.randn(size, generator=g)))
            replaced += learner.plasticity.replace_units(g)
            obs, sample = out.obs, out.sample
            if i % 40 == 39:
                learner.end_episode()
        counts.append(replaced)
    assert counts[0] == counts[1] and (counts[0] > 10 or "reinit" not in flags)
    assert_states_close(eager, compiled)


@pytest.mark.parametrize("algo", ["avg", "stream_ac"])
def test_a_run_with_the_remedies_resumes_exactly_after_kill_9(tmp_path, algo):
    common = ["--env", "faulty_envs:Point-v0", "--total-timesteps", 600, "--seed", 3, "--compile", "off",
              "--save-model", "--upgd", "--reinit", "cbp", "--maturity-threshold", 50, "--replacement-rate", 0.01,
              "--plasticity-every", 100, "--log-every", 100]
    _, (a, b) = cut_and_resume(f"{algo}.py", *common, cwd=tmp_path)
    for part in ("actor", "critic"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    logs = scalars(tmp_path / "runs" / "whole")
    assert logs["plasticity/actor_units_replaced"][-1][1] > 0
    assert {"plasticity/actor_dormant_1", "plasticity/critic_effective_rank",
            "plasticity/actor_update_norm"} <= set(logs)


@pytest.mark.parametrize("algo, flags, message", [
    ("avg", ["--replacement-rate", "1.5"], "--replacement-rate is out of range: 1.5"),
    ("avg", ["--upgd-sigma", "-1"], "--upgd-sigma is out of range: -1.0"),
    ("stream_ac", ["--weight-decay", "-0.1"], "--weight-decay is out of range: -0.1"),
    ("stream_ac", ["--utility-decay", "1"], "--utility-decay is out of range: 1.0"),
    ("stream_ac", ["--env-kwargs", "change_every"], "--env-kwargs takes KEY=VALUE pairs, got 'change_every'")])
def test_bad_remedy_values_are_refused_in_one_line(tmp_path, algo, flags, message):
    out = run_script(f"{algo}.py", "--env", "faulty_envs:Point-v0", *flags, "--total-timesteps", 10, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == f"{algo}.py: error: {message}"
    assert not (tmp_path / "runs").exists()


def test_math_of_the_update_norm_is_the_l2_norm_of_the_change():
    net = torch.nn.Linear(2, 2).requires_grad_(False)
    params = {k: p.clone() for k, p in net.named_parameters()}
    before = {k: p.clone() for k, p in params.items()}
    change = Adam(net, 0.1, (0.0, 0.999)).step(params, {k: torch.ones_like(p) for k, p in params.items()},
                                               torch.tensor(True))
    assert math.sqrt(change.item()) == pytest.approx(
        math.sqrt(sum((params[k] - before[k]).square().sum().item() for k in params)), rel=1e-5)


def test_the_run_measures_the_update_norm_of_the_watched_steps_only():
    """Plasticity.watching/before_update/after_update, as Run.step calls them: the mean L2 norm of the parameters'
    change over the WATCHED steps before each report, the rest of the steps left alone."""
    from types import SimpleNamespace

    from incremental_utils.plasticity import WATCHED, Plasticity
    net = torch.nn.ModuleDict({"trunk": torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LeakyReLU()),
                               "head": torch.nn.Linear(4, 1)}).requires_grad_(False)
    tools = Plasticity({"q": (net, net["trunk"], ("head",), None)}, SimpleNamespace(plasticity_every=500,
                                                                                    dormant_tau=0.025), None)
    tools.probe.add(torch.tensor(True), {"q": [torch.ones(4)]})
    tools.probe.add(torch.tensor(True), {"q": [torch.zeros(4)]})
    rng, norms = np.random.default_rng(0), []
    for step in range(1, 501):
        watched = tools.watching(step)
        assert watched == (step > 500 - WATCHED)
        if watched:
            tools.before_update()
        changes = [rng.normal(size=p.shape) * 0.01 for p in net.parameters()]
        for p, c in zip(net.parameters(), changes):
            p += torch.tensor(c, dtype=torch.float32)
        if watched:
            tools.after_update(ok=step != 450)  # a step not applied is not counted
            if step != 450:
                norms.append(math.sqrt(sum(float(np.square(np.float32(c)).sum()) for c in changes)))
    report = tools.report()
    assert len(norms) == WATCHED - 1
    assert report["plasticity/q_update_norm"] == pytest.approx(np.mean(norms), rel=1e-4)
    assert "plasticity/q_update_norm" not in tools.report()  # cleared at each report
