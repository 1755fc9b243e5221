"""avg.py, piece by piece, against independent computations (numpy, torch.distributions, torch.optim,
a plain-autograd AVG update), and the compiled update against the eager one."""
import copy
import math

import numpy as np
import pytest
import torch

import avg
from helpers import assert_states_close
from incremental_utils.gradients import grad_and_aux
from incremental_utils.compiling import CompiledUpdate, compile_update


def make_args(**overrides):
    args = avg.Args(env="Hopper-v4", **overrides)
    avg.resolve_hyperparams(args)
    return args


def make_learner(obs_dim=5, act_dim=2, seed=0, **overrides):
    torch.manual_seed(seed)
    return avg.AVG(obs_dim, np.full(act_dim, -2.0), np.full(act_dim, 3.0), make_args(**overrides))


def random_transitions(n, obs_dim=5, act_dim=2, seed=1, terminal_every=7):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(obs_dim, generator=g, dtype=torch.float64) * 3 + 1, torch.randn((), generator=g),
             torch.tensor(float(i % terminal_every == terminal_every - 1)), torch.randn(2, act_dim, generator=g))
            for i in range(n)]


def test_hyperparams_follow_the_paper_table_and_user_overrides():
    args = avg.Args(env="Walker2d-v5", actor_lr=1e-3)
    avg.resolve_hyperparams(args)
    assert (args.actor_lr, args.critic_lr, args.beta1, args.entropy_coef, args.gamma) == (1e-3, 7.7e-5, 0.0, 0.3, 0.99)
    args = avg.Args(env="Pendulum-v1")
    assert "defaults" in avg.resolve_hyperparams(args)
    assert args.actor_lr == 6.3e-3


def test_running_mean_var_matches_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(500, 4))
    stats = avg.RunningMeanVar((4,))
    assert torch.equal(stats.var(), torch.ones(4, dtype=torch.float64))  # no samples yet
    for row in x:
        stats.update(torch.from_numpy(row))
    np.testing.assert_allclose(stats.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.var().numpy(), x.var(0, ddof=1), rtol=1e-10)


def test_observation_normalisation_includes_the_current_observation():
    learner = make_learner(obs_dim=3)
    xs = np.random.default_rng(1).normal(5, 3, size=(50, 3))
    for i, row in enumerate(xs):
        out = learner.normalize(torch.from_numpy(row))
    expected = (xs[-1] - xs.mean(0)) / np.sqrt(xs.var(0, ddof=1) + 1e-8)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5)
    first = make_learner(obs_dim=3).normalize(torch.from_numpy(xs[0]))
    torch.testing.assert_close(first, torch.from_numpy(xs[0]).float())  # one sample: the prior N(0, 1)


def test_first_update_has_moderate_gradients():
    """A zero first observation would zero the actor's features, where unit-norm scaling has an unbounded
    gradient; the first update must leave Adam's second moments at ordinary sizes."""
    learner = make_learner()
    raw, r, term, noises = random_transitions(1)[0]
    obs = learner.normalize(torch.randn(5, dtype=torch.float64) * 3 + 1)
    learner(avg.StepInputs(obs, torch.zeros(2), torch.zeros(()), raw, r, term, noises))
    largest = max(v.max().item() for v in [*learner.actor_opt.exp_avg_sq.parameters(),
                                            *learner.critic_opt.exp_avg_sq.parameters()])
    assert largest < 1.0


def test_td_error_scaler_matches_numpy():
    rng = np.random.default_rng(2)
    scaler = avg.TDErrorScaler()
    rewards, discounts, returns, ret = [], [], [], 0.0
    assert scaler.sigma().item() == 1.0
    for episode in range(6):
        length = rng.integers(3, 9)
        for t in range(length):
            r, d = rng.normal(), 0.0 if (t == length - 1 and episode % 2) else 0.99
            scaler.update(torch.tensor([r], dtype=torch.float64), torch.tensor([d], dtype=torch.float64))
            rewards.append(r), discounts.append(d)
            ret += r
        if episode == 0:
            assert scaler.sigma().item() == 1.0  # unscaled until the first return
        else:
            assert scaler.sigma().item() != 1.0
        scaler.end_episode()
        returns.append(ret)
        ret = 0.0
    expected = math.sqrt(np.var(rewards, ddof=1) + np.var(discounts, ddof=1) * np.mean(np.square(returns)))
    assert scaler.sigma().item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["penultimate", "layer", "rms", "none"])
def test_feature_norms_match_numpy(kind):
    h = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
    out = avg.FeatureNorm(kind)(torch.from_numpy(h)).numpy()
    expected = {"penultimate": h / np.linalg.norm(h, axis=-1, keepdims=True),
                "layer": (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5),
                "rms": h / np.sqrt(np.mean(h ** 2, -1, keepdims=True) + np.finfo(np.float32).eps),
                "none": h}[kind]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_actor_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    actor = avg.Actor(6, 3, 32, "penultimate")
    obs, noise = torch.randn(10, 6), torch.randn(10, 3)
    action, log_prob = actor(obs, noise)
    features = actor.trunk(obs)
    mu, std = actor.mu(features), actor.log_std(features).clamp(-20, 2).exp()
    dist = torch.distributions.TransformedDistribution(torch.distributions.Normal(mu, std),
                                                       [torch.distributions.TanhTransform()])
    expected_action = torch.tanh(mu + std * noise)
    torch.testing.assert_close(action, expected_action)
    torch.testing.assert_close(log_prob, dist.log_prob(expected_action.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1),
                               rtol=1e-3, atol=1e-3)


def test_networks_use_orthogonal_weights_and_zero_biases():
    critic = avg.Critic(7, 2, 64, "penultimate")
    w = critic.trunk[2].weight
    torch.testing.assert_close(w @ w.T, torch.eye(64), atol=1e-5, rtol=0)
    assert all(not p.requires_grad for p in critic.parameters())
    assert all(torch.all(m.bias == 0) for m in critic.modules() if isinstance(m, torch.nn.Linear))


def reference_update(learner, obs, noise, raw_next_obs, reward, terminated, noises, sigma):
    """One AVG update written the usual way: modules, .backward(), torch.optim.Adam (algorithms.md 1)."""
    actor, critic = copy.deepcopy(learner.actor).requires_grad_(True), copy.deepcopy(learner.critic).requires_grad_(True)
    optimizers = []
    for net, ours in [(actor, learner.actor_opt), (critic, learner.critic_opt)]:
        opt = torch.optim.Adam(net.parameters(), lr=ours.lr, betas=(ours.beta1, 0.999))
        steps = round(math.log(ours.beta2_power.item()) / math.log(0.999))
        for p, v in zip(net.parameters(), ours.exp_avg_sq.parameters()):  # continue from our optimiser state
            opt.state[p] = {"step": torch.tensor(float(steps)), "exp_avg": torch.zeros_like(p), "exp_avg_sq": v.clone()}
        optimizers.append(opt)
    actor_opt, critic_opt = optimizers
    next_obs = learner.normalize(raw_next_obs)
    action, log_prob = actor(obs, noise)
    with torch.no_grad():
        next_action, next_log_prob = actor(next_obs, noises[0])
        target = reward + learner.gamma * (1 - terminated) * (critic(next_obs, next_action) - learner.eta * next_log_prob)
    actor_loss = learner.eta * log_prob - critic(obs, action)
    actor_opt.zero_grad()
    actor_loss.backward()
    critic_loss = ((target - critic(obs, action.detach())) / sigma) ** 2
    critic_opt.zero_grad()
    critic_loss.backward()
    actor_opt.step()
    critic_opt.step()
    return actor, critic


def test_one_avg_update_matches_a_plain_autograd_implementation():
    learner = make_learner()
    obs, noise, log_prob = warm_up(learner, 30)
    raw, r, term, noises = random_transitions(1, seed=9)[0]
    before = copy.deepcopy(learner)
    learner.td_scaler.update((r - learner.eta * log_prob).double(), (learner.gamma * (1 - term)).double())
    sigma = learner.td_scaler.sigma()
    assert sigma.item() != 1.0
    actor, critic = reference_update(learner, obs, noise, raw, r, term, noises, sigma)
    before(avg.StepInputs(obs, noise, log_prob, raw, r, term, noises))
    for ours, ref in [(before.actor, actor), (before.critic, critic)]:
        for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q.detach(), rtol=1e-4, atol=1e-6, msg=name)


def warm_up(learner, n):
    """n updates on random transitions, so that sigma != 1 and the statistics and Adam moments are non-trivial;
    returns the (obs, noise, log_prob) of the action to be taken next."""
    obs, noise, log_prob = torch.zeros(5), torch.zeros(2), torch.zeros(())
    for raw, r, term, noises in random_transitions(n):
        out = learner(avg.StepInputs(obs, noise, log_prob, raw, r, term, noises))
        obs, noise, log_prob = out.obs, out.noise, out.log_prob
        if term:
            learner.td_scaler.end_episode()
    return obs, noise, log_prob


@pytest.mark.parametrize("frozen", ["actor", "critic"])
def test_each_loss_moves_only_its_own_network(frozen):
    """With one network's step size at 0, that network stays put and the other takes exactly the step the
    plain-autograd reference takes from its own loss alone: the actor's loss never moves the critic's
    parameters and the critic's loss never moves the actor's."""
    learner = make_learner()
    obs, noise, log_prob = warm_up(learner, 20)
    getattr(learner, f"{frozen}_opt").lr = 0.0
    moving = "critic" if frozen == "actor" else "actor"
    raw, r, term, noises = random_transitions(1, seed=11)[0]
    before = copy.deepcopy(learner)
    before.td_scaler.update((r - before.eta * log_prob).double(), (before.gamma * (1 - term)).double())
    reference = dict(zip(["actor", "critic"], reference_update(before, obs, noise, raw, r, term, noises,
                                                               before.td_scaler.sigma())))
    frozen_before = copy.deepcopy(getattr(learner, frozen).state_dict())
    learner(avg.StepInputs(obs, noise, log_prob, raw, r, term, noises))
    for name, p in getattr(learner, frozen).state_dict().items():
        assert torch.equal(p, frozen_before[name]), name
    changed = False
    for (name, p), q in zip(getattr(learner, moving).named_parameters(), reference[moving].parameters()):
        torch.testing.assert_close(p, q.detach(), rtol=1e-4, atol=1e-6, msg=name)
        changed |= not torch.equal(p, getattr(before, moving).state_dict()[name])
    assert changed


def test_same_seed_gives_the_same_returns_twice(tmp_path):
    from helpers import run_script, scalars
    returns = []
    for name in ("first", "second"):
        out = run_script("avg.py", "--env", "Hopper-v4", "--total-timesteps", 200, "--seed", 7, "--compile", "off",
                         "--run-name", name, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        returns.append(scalars(tmp_path / "runs" / name)["charts/episodic_return"])
    assert len(returns[0]) >= 3 and returns[0] == returns[1]


def test_target_network_is_polyak_averaged():
    learner = make_learner(target_tau=0.25)
    target_before = [p.clone() for p in learner.target.parameters()]
    raw, r, term, noises = random_transitions(1)[0]
    learner(avg.StepInputs(torch.zeros(5), torch.zeros(2), torch.zeros(()), raw, r, term, noises))
    for t0, t1, p in zip(target_before, learner.target.parameters(), learner.critic.parameters()):
        torch.testing.assert_close(t1, 0.75 * t0 + 0.25 * p)
    assert make_learner().target is None  # tau = 1: no target network


def test_non_finite_reward_leaves_the_networks_untouched():
    learner = make_learner()
    before = copy.deepcopy(learner.state_dict())
    raw, _, term, noises = random_transitions(1)[0]
    out = learner(avg.StepInputs(torch.zeros(5), torch.zeros(2), torch.zeros(()), raw, torch.tensor(float("nan")), term,
                                 noises))
    assert not out.ok
    for name in ("actor.mu.weight", "critic.q.weight", "actor_opt.exp_avg_sq.trunk.0.weight"):
        assert torch.equal(before[name], learner.state_dict()[name]), name


@pytest.mark.parametrize("mapping", ["rescale", "clip"])
def test_actions_are_mapped_onto_the_action_bounds(mapping):
    """tanh's [-1, 1] goes onto [-2, 3] by rescaling (or is clipped to it): checked on the mapping itself, before the
    final clamp to the bounds (which only guards against rounding), so a wrong scale or offset shows."""
    learner = make_learner(act_dim=2, action_mapping=mapping)
    squashed = torch.linspace(-1, 1, 201).unsqueeze(-1).expand(201, 2)
    mapped = squashed * learner.action_scale + learner.action_offset
    expected = (squashed + 1) / 2 * 5 - 2 if mapping == "rescale" else squashed
    torch.testing.assert_close(mapped, expected)
    obs, noise = torch.randn(64, 5), torch.randn(64, 2) * 5  # wide noise: actions near both bounds
    tanh_u = learner.actor(obs, noise)[0]
    action = learner.act(obs, noise)[0]
    torch.testing.assert_close(action, (tanh_u + 1) / 2 * 5 - 2 if mapping == "rescale" else tanh_u)
    assert action.min() < -1.5 if mapping == "rescale" else action.min() >= -1


def run_stream(step, learner, transitions):
    obs, noise, log_prob = torch.zeros(learner.obs_stats.mean.shape[0]), torch.zeros(2), torch.zeros(())
    for raw, r, term, noises in transitions:
        out = step(avg.StepInputs(obs, noise, log_prob, raw, r, term, noises))
        action, log_prob, obs, noise = out.action, out.log_prob, out.obs, out.noise
        if term:
            learner.td_scaler.end_episode()
    return action


def test_compiled_update_matches_eager_over_many_updates():
    """The compiled step is the same math: after 300 updates on a fixed stream, parameters agree to float32
    rounding accumulated over the run (rtol 1e-3, atol 1e-5; measured max deviation about 1e-5)."""
    eager, compiled = make_learner(seed=4), make_learner(seed=4)
    transitions = random_transitions(300, seed=5)
    step = compile_update(compiled, avg.StepInputs(torch.zeros(5), torch.zeros(2), torch.zeros(()), *transitions[0]))
    assert isinstance(step, CompiledUpdate)  # compiled, or the test fails here: no eager fallback under this name
    a_eager = run_stream(eager, eager, transitions)
    a_compiled = run_stream(step, compiled, transitions)
    torch.testing.assert_close(a_compiled, a_eager, rtol=1e-3, atol=1e-4)
    assert_states_close(eager, compiled)
    assert not torch.equal(eager.actor.mu.weight, make_learner(seed=4).actor.mu.weight)  # it did learn


class HandDerivedAVG(avg.AVG):
    """The update as avg.py wrote it before its losses were written as the paper states them (issue 30): one backward
    pass of the actor's loss only, the critic's gradient obtained from it by hand, since
    d(delta^2)/dphi = -(2 delta / sigma) dQ(S, A)/dphi. Kept as an independent derivation of the same step."""

    def hand_losses(self, params, obs, noise, next_obs, next_noise, reward, discount, sigma):
        actor_params, critic_params = params
        action, log_prob = torch.func.functional_call(self.actor, actor_params, (obs, noise))
        q = torch.func.functional_call(self.critic, critic_params, (obs, action))
        with torch.no_grad():
            next_action, next_log_prob = self.actor(next_obs, next_noise)
            delta = (reward + discount * (self.critic(next_obs, next_action) - self.eta * next_log_prob) - q) / sigma
        return self.eta * log_prob - q, delta

    def forward(self, s):
        next_obs = self.normalize(s.raw_next_obs)
        discount = self.gamma * (1.0 - s.terminated)
        self.td_scaler.update((s.reward - self.eta * s.log_prob).double(), discount.double())
        sigma = self.td_scaler.sigma()
        actor_params, critic_params = dict(self.actor.named_parameters()), dict(self.critic.named_parameters())
        (actor_grads, critic_grads), delta = grad_and_aux(self.hand_losses, (actor_params, critic_params), s.obs,
                                                          s.noise, next_obs, s.noises[0], s.reward, discount, sigma)
        critic_grads = {k: g * (2 * delta / sigma) for k, g in critic_grads.items()}
        ok = torch.tensor(True)
        self.actor_opt.step(actor_params, actor_grads, ok)
        self.critic_opt.step(critic_params, critic_grads, ok)
        return avg.Acting(*self.act(next_obs, s.noises[1]), next_obs, s.noises[1], ok)


def test_the_papers_losses_give_the_hand_derived_update_over_many_steps():
    """avg.py's two losses, each differentiated by autograd, against the critic's gradient derived by hand from the
    actor's: the same parameters and Adam moments after 200 updates, to float32 rounding."""
    ours, hand = make_learner(seed=6), make_learner(seed=6)
    hand.__class__ = HandDerivedAVG
    transitions = random_transitions(200, seed=7)
    run_stream(ours, ours, transitions)
    run_stream(hand, hand, transitions)
    hand_state = hand.state_dict()
    for name, value in ours.state_dict().items():
        if not name.startswith(("metrics.", "plasticity.")):  # the hand-derived copy logs and probes nothing
            torch.testing.assert_close(hand_state[name], value, rtol=1e-3, atol=1e-5, msg=name)
    assert not torch.equal(ours.critic.q.weight, make_learner(seed=6).critic.q.weight)  # it did learn
