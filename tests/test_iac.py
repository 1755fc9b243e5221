"""iac.py, piece by piece, against independent computations (torch.distributions, torch.optim.Adam, a plain-autograd
IAC update), and the compiled update against the eager one."""
import copy
import math

import numpy as np
import pytest
import torch

import iac
from incremental_utils.compiling import CompiledUpdate, compile_update
from helpers import assert_states_close, run_script, scalars

IAC_PLUS = {"obs_norm": True, "feature_norm": "penultimate", "scale_td": True}


def make_learner(obs_dim=5, act_dim=2, seed=0, **overrides):
    torch.manual_seed(seed)
    return iac.IAC(obs_dim, np.full(act_dim, -2.0), np.full(act_dim, 3.0), iac.Args(**overrides))


def random_transitions(n, obs_dim=5, act_dim=2, seed=1, terminal_every=7):
    """(raw S', R, terminated, noise for the next action), with a termination every `terminal_every` steps."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(obs_dim, generator=g, dtype=torch.float64) * 3 + 1, torch.randn((), generator=g),
             torch.tensor(float(i % terminal_every == terminal_every - 1)), torch.randn(act_dim, generator=g))
            for i in range(n)]


def run_stream(step, learner, transitions):
    obs, u = torch.zeros(learner.obs_stats.mean.shape[0]), torch.zeros(learner.action_scale.shape[0])
    for raw, r, term, noise in transitions:
        action, u, obs, ok = step(iac.StepInputs(obs, u, raw, r, term, noise))
        if term:
            learner.td_scaler.end_episode()
    return obs, u, action


def test_defaults_are_plain_iac_with_the_authors_hyperparameters():
    args = iac.Args()
    assert (args.actor_lr, args.critic_lr, args.beta1, args.entropy_coef, args.gamma) == (6e-5, 8.7e-4, 0.9, 0.6, 0.99)
    assert (args.obs_norm, args.feature_norm, args.scale_td) == (False, "none", False)


def test_log_prob_and_entropy_match_torch_distributions():
    torch.manual_seed(0)
    actor = iac.Actor(6, 3, 32, "none")
    obs = torch.randn(10, 6)
    mu, log_std = actor(obs)
    u = mu + log_std.exp() * torch.randn(10, 3)
    normal = torch.distributions.Normal(mu, log_std.exp())
    squashed = torch.distributions.TransformedDistribution(normal, [torch.distributions.TanhTransform()])
    expected = squashed.log_prob(torch.tanh(u).clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    torch.testing.assert_close(iac.log_prob(mu, log_std, u), expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(iac.entropy(log_std), normal.entropy().sum(-1))


def test_log_std_is_clamped_and_actions_are_rescaled_to_the_bounds():
    learner = make_learner()
    with torch.no_grad():
        learner.actor.log_std.bias.fill_(50.0)
    assert learner.actor(torch.randn(5))[1].max().item() == 2.0
    actions = torch.stack([learner.act(torch.randn(5), torch.randn(2))[0] for _ in range(200)])
    assert actions.min() >= -2.0 and actions.max() <= 3.0 and actions.max() - actions.min() > 3.0


def test_critic_is_a_state_value_with_orthogonal_weights():
    critic = iac.Critic(7, 64, "none")
    assert critic(torch.randn(7)).shape == ()
    w = critic.trunk[2].weight
    torch.testing.assert_close(w @ w.T, torch.eye(64), atol=1e-5, rtol=0)
    assert all(torch.all(m.bias == 0) for m in critic.modules() if isinstance(m, torch.nn.Linear))


def reference_update(learner, obs, u, raw_next_obs, reward, terminated, sigma):
    """One IAC update written the usual way: modules, .backward(), torch.optim.Adam, torch.distributions."""
    actor, critic = copy.deepcopy(learner.actor).requires_grad_(True), copy.deepcopy(learner.critic).requires_grad_(True)
    optimizers = []
    for net, ours in [(actor, learner.actor_opt), (critic, learner.critic_opt)]:
        opt = torch.optim.Adam(net.parameters(), lr=ours.lr, betas=(ours.beta1, 0.999))
        steps = round(math.log(ours.beta2_power.item()) / math.log(0.999))
        first = ours.exp_avg.parameters() if ours.exp_avg is not None else (torch.zeros_like(p) for p in net.parameters())
        for p, m, v in zip(net.parameters(), first, ours.exp_avg_sq.parameters()):  # continue from our state
            opt.state[p] = {"step": torch.tensor(float(steps)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        optimizers.append(opt)
    actor_opt, critic_opt = optimizers
    next_obs = learner.normalize(raw_next_obs)
    with torch.no_grad():
        target = reward + learner.gamma * (1 - terminated) * critic(next_obs)
    delta = (target - critic(obs)) / sigma
    mu, log_std = actor(obs)
    gaussian = torch.distributions.Normal(mu, log_std.exp())
    log_pi = (gaussian.log_prob(u) - torch.log1p(-torch.tanh(u) ** 2)).sum()  # change of variables A = tanh(u)
    actor_loss = -(log_pi * delta.detach() + learner.eta * gaussian.entropy().sum())
    actor_opt.zero_grad()
    actor_loss.backward()
    critic_opt.zero_grad()
    (delta ** 2).backward()
    actor_opt.step()
    critic_opt.step()
    return actor, critic


@pytest.mark.parametrize("variant", ["IAC", "IAC+"])
@pytest.mark.parametrize("terminated", [0.0, 1.0])
def test_one_iac_update_matches_a_plain_autograd_implementation(variant, terminated):
    learner = make_learner(**(IAC_PLUS if variant == "IAC+" else {}))
    obs, u, _ = run_stream(learner, learner, random_transitions(30))  # non-trivial statistics and Adam moments
    raw, r, _, _ = random_transitions(1, seed=9)[0]
    term = torch.tensor(terminated)
    before = copy.deepcopy(learner)
    learner.td_scaler.update(r.double(), (learner.gamma * (1 - term)).double())
    sigma = learner.td_scaler.sigma() if learner.scale_td else torch.ones(())
    assert (sigma.item() != 1.0) == (variant == "IAC+")
    actor, critic = reference_update(learner, obs, u, raw, r, term, sigma)
    before(iac.StepInputs(obs, u, raw, r, term, torch.zeros(2)))
    for ours, ref in [(before.actor, actor), (before.critic, critic)]:
        for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q.detach(), rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(before.actor.mu.weight, learner.actor.mu.weight)  # the update did move the actor


def test_td_error_scaler_sees_raw_rewards_and_undiscounted_returns():
    learner = make_learner(scale_td=True)
    transitions = random_transitions(40)
    run_stream(learner, learner, transitions)
    rewards = np.array([r.item() for _, r, _, _ in transitions])
    np.testing.assert_allclose(learner.td_scaler.reward.mean.item(), rewards.mean(), rtol=1e-6)
    returns = [rewards[i:i + 7].sum() for i in range(0, 35, 7)]  # a termination every 7 steps
    np.testing.assert_allclose(learner.td_scaler.return_sq.mean.item(), np.mean(np.square(returns)), rtol=1e-5)


def test_non_finite_reward_leaves_the_networks_untouched():
    learner = make_learner(beta1=0.9)
    before = copy.deepcopy(learner.state_dict())
    raw, _, term, noise = random_transitions(1)[0]
    assert not learner(iac.StepInputs(torch.zeros(5), torch.zeros(2), raw, torch.tensor(float("nan")), term, noise)).ok
    for name in ("actor.mu.weight", "critic.v.weight", "actor_opt.exp_avg_sq.trunk.0.weight",
                 "critic_opt.exp_avg.trunk.2.bias", "critic_opt.beta2_power"):
        assert torch.equal(before[name], learner.state_dict()[name]), name


def test_compiled_update_matches_eager_over_many_updates():
    """The compiled step is the same math: after 300 IAC+ updates on a fixed stream (every code path: observation
    and feature normalisation, TD-error scaling, Adam with beta1 0.9), parameters and optimiser state agree to
    float32 rounding accumulated over the run (rtol 1e-3, atol 1e-5; measured max deviation about 1e-5)."""
    overrides = dict(IAC_PLUS, hidden_size=64)
    eager, compiled = make_learner(seed=4, **overrides), make_learner(seed=4, **overrides)
    transitions = random_transitions(300, seed=5)
    step = compile_update(compiled, iac.StepInputs(torch.zeros(5), torch.zeros(2), *transitions[0]))
    assert isinstance(step, CompiledUpdate)
    *_, a_eager = run_stream(eager, eager, transitions)
    *_, a_compiled = run_stream(step, compiled, transitions)
    torch.testing.assert_close(a_compiled, a_eager, rtol=1e-3, atol=1e-4)
    assert_states_close(eager, compiled)
    assert not torch.equal(eager.actor.mu.weight, make_learner(seed=4, **overrides).actor.mu.weight)  # it learned


@pytest.mark.parametrize("env, skips, lengths", [
    # the overflowing observation spoils two updates, once as S' and once as S
    ("faulty_envs:HugeObservation-v0", 2, [20, 20, 20, 20]),
    # a NaN reward: no update, and the episode ends there (the learner never sees it)
    ("faulty_envs:NanReward-v0", 1, [20, 20, 10, 20])])
def test_skip_mode_goes_on_after_a_non_finite_value(tmp_path, env, skips, lengths):
    out = run_script("iac.py", "--env", env, "--on-nonfinite", "skip", "--total-timesteps", 80, "--log-every", 80,
                     "--compile", "off", "--run-name", "skip", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    logs = scalars(tmp_path / "runs" / "skip")
    assert logs["charts/nonfinite_skips"][-1] == (80, float(skips))
    assert [value for _, value in logs["charts/episodic_length"]] == lengths
    assert np.isfinite(logs["losses/critic_loss"][-1][1])
