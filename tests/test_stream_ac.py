"""stream_ac.py, piece by piece, against independent computations (numpy, torch.distributions, a plain-autograd
Stream AC(lambda) update), and the compiled update against the eager one."""
import copy
import math

import numpy as np
import pytest
import torch

import stream_ac
from incremental_utils.checkpoints import load_checkpoint
from incremental_utils.compiling import CompiledUpdate, compile_update
from incremental_utils.optimizers import ObGD
from helpers import assert_states_close, run_script, scalars

GAMMA, LAMBDA = 0.99, 0.8


def stream_ac_args(**overrides):
    """stream_ac.Args with the optimizer's step sizes where unset, as make_learner() fills them."""
    args = stream_ac.Args(**overrides)
    stream_ac.fill_unset(args, dict(zip(("actor_lr", "critic_lr"), stream_ac.STEP_SIZES[args.optimizer])), "")
    return args


def make_learner(obs_dim=5, act_dim=2, seed=0, **overrides):
    torch.manual_seed(seed)
    return stream_ac.StreamAC(obs_dim, np.full(act_dim, -2.0), np.full(act_dim, 3.0), stream_ac_args(**overrides))


def random_transitions(n, obs_dim=5, act_dim=2, seed=1, episode_length=7):
    """(raw S', R, terminated, time feature of S' for a learner that ends its episodes at `ends`, noise, ends); every
    other episode ends by termination, the others by truncation (the caller ends them)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t = i % episode_length + 1
        ends = t == episode_length
        out.append((torch.randn(obs_dim, generator=g, dtype=torch.float64) * 3 + 1, torch.randn((), generator=g) + 1,
                    torch.tensor(float(ends and (i // episode_length) % 2 == 0)), torch.tensor(t / 1000 - 0.5),
                    torch.randn(act_dim, generator=g), ends))
    return out


def run_stream(step, learner, transitions):
    obs, sample = learner.observe(torch.zeros(learner.obs_stats.mean.shape[0], dtype=torch.float64),
                                  torch.tensor(-0.5)), torch.zeros(learner.action_low.shape[0])
    for raw, r, term, t, noise, ends in transitions:
        action, sample, obs, ok = step(stream_ac.StepInputs(obs, sample, raw, r, term, noise))
        if ends:
            learner.end_episode()
    return obs, sample, action


def numpy_trunk(x, layers):
    """Linear -> LayerNorm (no affine, eps 1e-5) -> LeakyReLU (0.01), twice, in numpy."""
    for w, b in layers:
        h = w @ x + b
        h = (h - h.mean()) / np.sqrt(h.var() + 1e-5)
        x = np.where(h > 0, h, 0.01 * h)
    return x


# ---------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("fan_in, zeros", [(130, 117), (20, 18), (128, 116), (12, 11), (4, 3), (1, 0)])
def test_sparse_init_zeroes_ninety_percent_of_each_units_inputs(fan_in, zeros):
    torch.manual_seed(0)
    layer = torch.nn.Linear(fan_in, 300)
    stream_ac.sparse_init_(layer.weight, 0.9)
    w = layer.weight.detach().numpy()
    assert ((w == 0).sum(1) == zeros).all()  # exactly ceil(0.9 fan_in) per unit, at least one input kept
    bound = 1 / math.sqrt(fan_in)
    nonzero = w[w != 0]
    assert np.abs(nonzero).max() <= bound and np.abs(nonzero).max() > 0.9 * bound  # uniform over the full range
    assert abs(nonzero.mean()) < 0.1 * bound
    if fan_in > 1:  # each unit draws its own inputs to drop
        assert len({tuple(np.flatnonzero(row == 0)) for row in w}) > 1


def test_networks_are_sparse_with_zero_biases_and_layer_norm_without_affine():
    learner = make_learner(obs_dim=19, hidden_size=40)
    for net in (learner.actor, learner.critic):
        assert [name for name, _ in net.named_parameters() if "trunk" in name] == [
            "trunk.0.weight", "trunk.0.bias", "trunk.3.weight", "trunk.3.bias"]  # LayerNorm has no parameters
        for layer in net.modules():
            if isinstance(layer, torch.nn.Linear):
                assert torch.all(layer.bias == 0)
                zeros = {20: 18, 40: 36}[layer.weight.shape[1]]
                assert torch.all((layer.weight == 0).sum(1) == zeros)
    assert learner.actor.trunk[0].weight.shape == (40, 20)  # 19 observations + the time feature


def test_forward_passes_match_numpy():
    torch.manual_seed(1)
    actor, critic = stream_ac.Actor((6,), 3, 16, 0.9), stream_ac.Critic((6,), 16, 0.9)
    for net in (actor, critic):  # non-zero biases, so that the test sees them
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    x = torch.randn(6)

    def layers(net):
        return [(net.trunk[i].weight.numpy().astype(np.float64), net.trunk[i].bias.numpy().astype(np.float64))
                for i in (0, 3)]

    feats = numpy_trunk(x.numpy().astype(np.float64), layers(actor))
    mu, std = actor(x)
    np.testing.assert_allclose(mu.numpy(), actor.mu.weight.numpy() @ feats + actor.mu.bias.numpy(), rtol=1e-4, atol=1e-5)
    pre = actor.std.weight.numpy() @ feats + actor.std.bias.numpy()
    np.testing.assert_allclose(std.numpy(), np.log1p(np.exp(pre)), rtol=1e-4, atol=1e-6)  # softplus
    feats = numpy_trunk(x.numpy().astype(np.float64), layers(critic))
    np.testing.assert_allclose(critic(x).item(), (critic.v.weight.numpy() @ feats + critic.v.bias.numpy()).item(),
                               rtol=1e-4, atol=1e-5)


def test_log_prob_and_entropy_match_torch_distributions():
    mu, std, a = torch.randn(10, 3), torch.rand(10, 3) + 0.1, torch.randn(10, 3) * 2
    normal = torch.distributions.Normal(mu, std)
    log_pi, ent = make_learner().log_prob_and_entropy((mu, std), a)
    torch.testing.assert_close(log_pi, normal.log_prob(a).sum(-1))
    torch.testing.assert_close(ent, normal.entropy().sum(-1))


def test_actions_are_clipped_but_the_sample_is_not():
    learner = make_learner()
    obs = learner.observe(torch.randn(5, dtype=torch.float64), torch.tensor(-0.5))
    action, sample = learner.act(obs, torch.full((2,), 1e3))
    assert torch.equal(action, torch.tensor([3.0, 3.0])) and (sample > 100).all()


# ------------------------------------------------------------------------------------------------- ObGD
def small_network():
    torch.manual_seed(2)
    return torch.nn.Linear(3, 2).requires_grad_(False)


@pytest.mark.parametrize("l1, delta, shrinks", [(0.24, 2.0, False), (0.26, 2.0, True),     # 1*2*2*l1 vs 1
                                                (0.49, -0.5, False), (0.51, -0.5, True),  # |delta| < 1: delta_bar 1
                                                (0.0, 0.0, False)])
def test_obgd_bound_shrinks_the_step_exactly_when_it_would_overshoot(l1, delta, shrinks):
    net = small_network()
    opt = ObGD(net, lr=1.0, kappa=2.0, trace_decay=GAMMA * LAMBDA, adaptive=False, beta2=0.999)
    params = dict(net.named_parameters())
    before = {k: p.numpy().copy() for k, p in params.items()}
    raw = {k: np.random.default_rng(3).uniform(-1, 1, p.shape) for k, p in params.items()}
    total = sum(np.abs(g).sum() for g in raw.values())
    grads = {k: torch.tensor(g * l1 / total, dtype=torch.float32) for k, g in raw.items()}  # ||grad||_1 = l1
    delta_t = torch.tensor(delta)
    proposal = opt.propose(grads, delta_t)
    opt.apply(params, proposal, torch.tensor(True))
    m = 1.0 * 2.0 * max(abs(delta), 1.0) * l1
    step = 1.0 / m if m > 1 else 1.0
    assert (step < 1.0) == shrinks
    assert proposal["step_size"].item() == pytest.approx(step, rel=1e-5)
    for k, p in params.items():  # trace was zero, so z = grad
        np.testing.assert_allclose(p.numpy(), before[k] + step * delta * grads[k].numpy(), rtol=1e-5, atol=1e-7)


def test_traces_decay_accumulate_and_reset_at_episode_end():
    net = small_network()
    opt = ObGD(net, lr=1.0, kappa=2.0, trace_decay=GAMMA * LAMBDA, adaptive=False, beta2=0.999)
    params = dict(net.named_parameters())
    rng = np.random.default_rng(4)
    z = {k: np.zeros(p.shape) for k, p in params.items()}
    for _ in range(5):
        grads = {k: rng.normal(size=p.shape) for k, p in params.items()}
        delta = rng.normal()
        before = {k: p.numpy().astype(np.float64) for k, p in params.items()}
        z = {k: GAMMA * LAMBDA * z[k] + grads[k] for k in z}
        m = 2.0 * max(abs(delta), 1.0) * sum(np.abs(v).sum() for v in z.values())
        proposal = opt.propose({k: torch.tensor(g, dtype=torch.float32) for k, g in grads.items()}, torch.tensor(delta))
        opt.apply(params, proposal, torch.tensor(True))
        for k, p in params.items():
            np.testing.assert_allclose(dict(opt.trace.named_parameters())[k].numpy(), z[k], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(p.numpy(), before[k] + delta * z[k] / max(m, 1.0), rtol=1e-4, atol=1e-6)
    assert all(t.abs().sum() > 0 for t in opt.trace.parameters())
    opt.end_episode()
    assert all(torch.all(t == 0) for t in opt.trace.parameters())


def test_adaptive_obgd_normalises_the_trace_like_numpy():
    net = small_network()
    beta2, eps = 0.999, 1e-8
    opt = ObGD(net, lr=0.5, kappa=3.0, trace_decay=GAMMA * LAMBDA, adaptive=True, beta2=beta2)
    params = dict(net.named_parameters())
    rng = np.random.default_rng(5)
    z = {k: np.zeros(p.shape) for k, p in params.items()}
    v = {k: np.zeros(p.shape) for k, p in params.items()}
    for t in range(1, 8):
        grads = {k: rng.normal(size=p.shape) * 0.3 for k, p in params.items()}
        delta = rng.normal() * 2
        before = {k: p.numpy().astype(np.float64) for k, p in params.items()}
        z = {k: GAMMA * LAMBDA * z[k] + grads[k] for k in z}
        v = {k: beta2 * v[k] + (1 - beta2) * (delta * z[k]) ** 2 for k in v}
        direction = {k: z[k] / np.sqrt(v[k] / (1 - beta2 ** t) + eps) for k in z}
        m = 0.5 * 3.0 * max(abs(delta), 1.0) * sum(np.abs(d).sum() for d in direction.values())
        step = 0.5 / m if m > 1 else 0.5
        proposal = opt.propose({k: torch.tensor(g, dtype=torch.float32) for k, g in grads.items()}, torch.tensor(delta))
        opt.apply(params, proposal, torch.tensor(True))
        assert proposal["step_size"].item() == pytest.approx(step, rel=1e-4)
        for k, p in params.items():
            np.testing.assert_allclose(dict(opt.second_moment.named_parameters())[k].numpy(), v[k], rtol=1e-4)
            np.testing.assert_allclose(p.numpy(), before[k] + step * delta * direction[k], rtol=1e-4, atol=1e-6)


def test_rejected_update_changes_nothing():
    net = small_network()
    opt = ObGD(net, lr=1.0, kappa=2.0, trace_decay=0.5, adaptive=True, beta2=0.999)
    params = dict(net.named_parameters())
    before = copy.deepcopy(opt.state_dict()), {k: p.clone() for k, p in params.items()}
    grads = {k: torch.full_like(p, float("nan")) for k, p in params.items()}
    opt.apply(params, opt.propose(grads, torch.tensor(1.0)), torch.tensor(False))
    assert all(torch.equal(before[0][k], v) for k, v in opt.state_dict().items())
    assert all(torch.equal(before[1][k], p) for k, p in params.items())


# ----------------------------------------------------------------------------------- normalisation, learner
def test_reward_scaling_matches_numpy_on_a_fixed_stream():
    rewards = [1.0, -0.5, 2.0, 0.3, 0.7, -1.2, 0.1, 0.9, 3.0, -2.0]
    episode_ends = {2, 4, 7}  # after these steps
    scaler = stream_ac.RewardScaler(GAMMA)
    u, traces, expected, out = 0.0, [], [], []
    for i, r in enumerate(rewards):
        u = GAMMA * u + r
        traces.append(u)
        var = np.var(traces, ddof=1) if len(traces) > 1 else 1.0
        expected.append(r / np.sqrt(var + 1e-8))
        out.append(scaler(torch.tensor(r, dtype=torch.float32)).item())
        if i in episode_ends:
            u = 0.0
            scaler.end_episode()
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_the_time_feature_counts_the_learners_own_steps_and_restarts_each_episode():
    """-0.5 + t / time limit, t the steps since the episode began, counted by the learner's update (no one else's
    counter): after the k-th update of an episode, S' carries k / 1000 - 0.5."""
    learner = make_learner()
    transitions = random_transitions(10)  # 7-step episodes
    obs, sample = learner.observe(torch.zeros(5, dtype=torch.float64), torch.tensor(-0.5)), torch.zeros(2)
    seen = []
    for raw, r, term, t, noise, ends in transitions:
        _, sample, obs, _ = learner(stream_ac.StepInputs(obs, sample, raw, r, term, noise))
        seen.append(round(obs[-1].item() * 1000 + 500))
        if ends:
            learner.end_episode()
    assert seen == [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]


def test_observation_gets_normalised_then_the_time_feature_appended():
    learner = make_learner(obs_dim=3)
    xs = np.random.default_rng(6).normal(5, 3, size=(20, 3))
    for x in xs:
        out = learner.observe(torch.from_numpy(x), torch.tensor(0.25))
    expected = (xs[-1] - xs.mean(0)) / np.sqrt(xs.var(0, ddof=1) + 1e-8)
    np.testing.assert_allclose(out[:3].numpy(), expected, rtol=1e-5)
    assert out[3].item() == 0.25
    plain = make_learner(obs_dim=3, obs_norm=False, time_feature=False)
    assert torch.equal(plain.observe(torch.from_numpy(xs[0]), torch.tensor(0.25)), torch.from_numpy(xs[0]).float())


def reference_update(learner, obs, sample, raw_next_obs, reward, terminated, next_t):
    """One Stream AC(lambda) update the usual way: modules, .backward(), torch.distributions, p.grad; S' with the time
    feature next_t."""
    actor, critic = copy.deepcopy(learner.actor).requires_grad_(True), copy.deepcopy(learner.critic).requires_grad_(True)
    next_obs = learner.observe(raw_next_obs, next_t)
    if learner.reward_scale:
        reward = learner.reward_scaler(reward)
    v = critic(obs)
    with torch.no_grad():
        delta = reward + GAMMA * (1 - terminated) * critic(next_obs) - v
    v.backward()
    mu, std = actor(obs)
    dist = torch.distributions.Normal(mu, std)
    (dist.log_prob(sample).sum() + learner.eta * torch.sign(delta) * dist.entropy().sum()).backward()
    for net, ours, kappa in [(actor, learner.actor_opt, 3.0), (critic, learner.critic_opt, 2.0)]:
        traces = [GAMMA * LAMBDA * z + p.grad for p, z in zip(net.parameters(), ours.trace.parameters())]
        m = kappa * max(abs(delta.item()), 1.0) * sum(z.abs().sum().item() for z in traces)
        with torch.no_grad():
            for p, z in zip(net.parameters(), traces):
                p += delta * z / max(m, 1.0)
    return actor, critic, delta


@pytest.mark.parametrize("terminated", [0.0, 1.0])
@pytest.mark.parametrize("reward", [4.0, -4.0])  # both signs of delta: the entropy term follows sign(delta)
def test_one_stream_ac_update_matches_a_plain_autograd_implementation(terminated, reward):
    learner = make_learner()
    obs, sample, _ = run_stream(learner, learner, random_transitions(10)[:9])  # mid-episode: non-zero traces
    assert learner.actor_opt.trace.mu.weight.abs().sum() > 0
    raw, _, _, t, noise, _ = random_transitions(1, seed=9)[0]
    r, term = torch.tensor(reward), torch.tensor(terminated)
    before = copy.deepcopy(learner)
    assert t.item() == pytest.approx(1 / 1000 - 0.5)  # a first step's, not this one's (the third of its episode)
    actor, critic, delta = reference_update(learner, obs, sample, raw, r, term, torch.tensor(3 / 1000 - 0.5))
    assert np.sign(delta.item()) == np.sign(reward)
    before(stream_ac.StepInputs(obs, sample, raw, r, term, noise))
    for ours, ref in [(before.actor, actor), (before.critic, critic)]:
        for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q.detach(), rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(before.actor.mu.weight, learner.actor.mu.weight)  # the update did move the actor


def test_episode_boundary_checkpoints_have_empty_traces(tmp_path):
    """Point-v0 episodes end by truncation every 20 steps; checkpoints are written there, after the reset."""
    out = run_script("stream_ac.py", "--env", "faulty_envs:Point-v0", "--total-timesteps", 60, "--checkpoint-every",
                     20, "--compile", "off", "--run-name", "point", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    checkpoint, _ = load_checkpoint(tmp_path / "runs" / "point", "stream_ac")
    assert checkpoint["global_step"] == 60 and not checkpoint["mid_episode"]
    learner = checkpoint["learner"]
    traces = [v for k, v in learner.items() if ".trace." in k]
    assert len(traces) == 8 + 6 and all(torch.all(v == 0) for v in traces)
    assert learner["reward_scaler.trace"].item() == 0 and learner["reward_scaler.stats.count"].item() == 60


# The adaptive variant's compile takes over a minute on a cold cache on a busy 2-core machine: run with -m slow.
@pytest.mark.parametrize("optimizer", ["obgd", pytest.param("adaptive", marks=pytest.mark.slow)])
def test_compiled_update_matches_eager_over_many_updates(optimizer):
    """The compiled step is the same math: after 300 updates on a fixed stream, parameters, traces and statistics
    agree to float32 rounding accumulated over the run (rtol 1e-3, atol 1e-5)."""
    eager, compiled = make_learner(seed=4, optimizer=optimizer), make_learner(seed=4, optimizer=optimizer)
    transitions = random_transitions(300, seed=5)
    raw, r, term, t, noise, _ = transitions[0]
    step = compile_update(compiled, stream_ac.StepInputs(torch.zeros(6), torch.zeros(2), raw, r, term, noise))
    assert isinstance(step, CompiledUpdate)
    *_, a_eager = run_stream(eager, eager, transitions)
    *_, a_compiled = run_stream(step, compiled, transitions)
    torch.testing.assert_close(a_compiled, a_eager, rtol=1e-3, atol=1e-4)
    assert_states_close(eager, compiled)
    assert not torch.equal(eager.actor.mu.weight, make_learner(seed=4).actor.mu.weight)  # it learned


@pytest.mark.parametrize("env, skips, lengths", [
    # the overflowing observation spoils the update and the next action; the episode ends there, no NaN is sent
    ("faulty_envs:HugeObservation-v0", 1, [20, 20, 10, 20]),
    # a NaN reward: no update, and the episode ends there (the learner never sees it)
    ("faulty_envs:NanReward-v0", 1, [20, 20, 10, 20])])
def test_skip_mode_goes_on_without_sending_a_non_finite_action(tmp_path, env, skips, lengths):
    out = run_script("stream_ac.py", "--env", env, "--no-obs-norm", "--on-nonfinite", "skip", "--total-timesteps", 70,
                     "--log-every", 70, "--compile", "off", "--run-name", "skip", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    logs = scalars(tmp_path / "runs" / "skip")
    assert logs["charts/nonfinite_skips"][-1] == (70, float(skips))
    assert [value for _, value in logs["charts/episodic_length"]] == lengths
    assert np.isfinite(logs["losses/critic_loss"][-1][1])


# ---------------------------------------------------------------------------------------- discrete actions
def make_discrete(obs_shape=(4,), n_actions=3, seed=0, **overrides):
    torch.manual_seed(seed)
    return stream_ac.StreamAC(obs_shape, None, None, stream_ac_args(**{"hidden_size": 16, **overrides}),
                              n_actions=n_actions)


def test_the_categorical_policy_against_torch_distributions():
    learner = make_discrete(time_feature=False)
    obs = torch.randn(4)
    log_probs, _ = learner.actor(obs)
    dist = torch.distributions.Categorical(logits=log_probs)
    for action in range(3):
        log_pi, ent = learner.log_prob_and_entropy((log_probs, None), torch.tensor(action))
        torch.testing.assert_close(log_pi, dist.log_prob(torch.tensor(action)))
        torch.testing.assert_close(ent, dist.entropy())
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([learner.act(obs, torch.rand((), generator=g))[0] for _ in range(20000)])
    frequencies = torch.bincount(draws, minlength=3) / 20000.0
    torch.testing.assert_close(frequencies, dist.probs, atol=0.015, rtol=0)  # inverse CDF draws follow the policy


def test_discrete_compiled_update_matches_eager_on_minatar_planes():
    eager, compiled = make_discrete((10, 10, 4), seed=4), make_discrete((10, 10, 4), seed=4)
    g = torch.Generator().manual_seed(5)
    stream = [((torch.rand(10, 10, 4, generator=g) < 0.2).double(), torch.randn((), generator=g),
               torch.tensor(float(i % 29 == 28)), torch.rand((), generator=g)) for i in range(150)]
    step = compile_update(compiled, stream_ac.StepInputs(torch.zeros(4, 10, 10), torch.tensor(0), stream[0][0],
                                                         stream[0][1], stream[0][2], stream[0][3]))
    assert isinstance(step, CompiledUpdate)
    actions = []
    for learner, fn in ((eager, eager), (compiled, step)):
        obs, sample, taken = torch.zeros(4, 10, 10), torch.tensor(0), []
        for raw, reward, terminated, noise in stream:
            action, sample, obs, ok = fn(stream_ac.StepInputs(obs, sample, raw, reward, terminated, noise))
            taken.append(int(action))
            if terminated:
                learner.end_episode()
        actions.append(taken)
    assert actions[0] == actions[1]
    assert_states_close(eager, compiled)


@pytest.mark.parametrize("env, n_actions", [("CartPole-v1", 2), ("MinAtar/Breakout-v1", 3)])
def test_discrete_stream_ac_runs_end_to_end(tmp_path, env, n_actions):
    """The logged entropy is the categorical's over the env's own actions: at most log(n), and near it over the first
    window, while the sparse-initialised policy is still close to uniform (a Gaussian's or a wrongly summed entropy
    is neither)."""
    out = run_script("stream_ac.py", "--env", env, "--total-timesteps", 600, "--log-every", 200, "--compile", "off",
                     "--run-name", "d", "--save-model", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    logs = scalars(tmp_path / "runs" / "d")
    assert [step for step, _ in logs["losses/actor_loss"]] == [200, 400, 600]
    entropies = [value for _, value in logs["health/entropy"]]
    assert all(0 < value <= np.log(n_actions) + 1e-6 for value in entropies), entropies
    assert entropies[0] > 0.9 * np.log(n_actions), entropies
