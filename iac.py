"""Incremental one-step actor-critic (IAC), the AVG paper's simplest incremental baseline: a state-value critic
and a likelihood-ratio policy gradient, one update per environment step on the latest transition, with no
replay buffer, no target network and no batch.

    python iac.py --env Hopper-v4                                              # IAC
    python iac.py --env Hopper-v4 --obs-norm --feature-norm penultimate --scale-td   # IAC+

Per step (algorithms.md 5), with S the (optionally normalised) observation and A = tanh(u), u ~ N(mu(S), std(S)):
    delta = (R + gamma (1 - terminated) V(S') - V(S)) / sigma_delta       (sigma_delta = 1 without --scale-td)
    critic: minimise delta^2;  actor: ascend delta * grad log pi(A|S) + eta * grad H(pi(.|S))
A is sampled without gradient (likelihood ratio, no reparameterisation) and delta is a constant in the actor's
gradient. H is the closed-form entropy of the pre-squash Gaussian, as in the authors' released IAC. Truncation
(a time limit) bootstraps; termination does not. Both networks' gradients use the pre-update parameters.
The policy is AVG's: std = exp(log_std), log_std clamped to [-20, 2]. (The authors' IAC passes exp(log_std) to
MultivariateNormal as the covariance, so there the head is in effect a log variance and std is at most e.)

The TD-error scaler (--scale-td, algorithms.md 4) receives the raw rewards, as the authors' IAC does (IAC's TD error
contains no entropy term, so entropy-augmented rewards would misstate its scale), and, like avg.py, the
undiscounted episode return G (the authors' IAC accumulated a discounted G).

Hyperparameter defaults are those of the authors' released IAC script; the paper publishes no per-environment
values for IAC. The three techniques are off by default (plain IAC); all three on is IAC+.
Vasan et al., NeurIPS 2024 (arXiv 2411.15370). Run machinery (checkpoints, resume, logs, compiling): incremental_utils/,
as for every script.
"""
import math
import sys
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from incremental_utils.errors import one_line_errors
from incremental_utils.flags import RunArgs, check_args, flags_given, parse, resume_args
from incremental_utils.gradients import all_finite, grad_and_aux
from incremental_utils.metrics import MetricSums
from incremental_utils.optimizers import Adam
from incremental_utils.run import Run

ALGO = "iac"


@dataclass
class Args(RunArgs):
    actor_lr: float = 6e-5
    """actor step size (default: the authors' IAC script; the paper publishes no tuned IAC values)"""
    critic_lr: float = 8.7e-4
    """critic step size (default: the authors' IAC script)"""
    beta1: float = 0.9
    """Adam's first beta; the second is 0.999 (default: the authors' IAC script)"""
    entropy_coef: float = 0.6
    """entropy coefficient eta, fixed (default: the authors' IAC script)"""
    gamma: float = 0.99
    """discount factor"""
    hidden_size: int = 256
    """width of the two hidden layers of actor and critic"""

    obs_norm: bool = False
    """normalise observations with running (Welford) mean and variance (on for IAC+)"""
    feature_norm: Literal["penultimate", "layer", "rms", "none"] = "none"
    """normalisation of the last hidden features: unit L2 norm (IAC+ uses penultimate), LayerNorm, RMSNorm or none"""
    scale_td: bool = False
    """divide the TD error by the running return-based scale sigma_delta (on for IAC+)"""


# ---------------------------------------------------------------------------------------------- statistics
# As in avg.py: all learner state is parameters and buffers of nn.Modules (state_dict() is the checkpoint;
# incremental_utils/compiling.py says what else the compiler needs); scalars are float64 tensors of shape (1,).
class RunningMeanVar(nn.Module):
    """Welford's running mean and sample variance, one sample at a time (algorithms.md 2)."""

    def __init__(self, shape=(1,)):
        super().__init__()
        self.register_buffer("count", torch.zeros(1, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(shape, dtype=torch.float64))

    def update(self, x):
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def var(self):  # 1 until there are two samples
        return torch.where(self.count > 1, self.m2 / (self.count - 1).clamp_min(1), 1.0)

    def normalize(self, x):
        """(x - mean) / sqrt(var + 1e-8), with the prior mean 0 and variance 1 until there are two samples: a
        first observation normalised by its own mean would be exactly zero."""
        mean = torch.where(self.count > 1, self.mean, 0.0)
        return (x - mean) / (self.var() + 1e-8).sqrt()


class TDErrorScaler(nn.Module):
    """sigma_delta^2 = Var[R] + Var[gamma_t] E[G^2] (return-based scaling, algorithms.md 4). Here R is the raw
    reward and G the undiscounted episode return (module docstring). gamma_t is 0 at termination, gamma otherwise.
    sigma = 1 until the first episode has ended."""

    def __init__(self):
        super().__init__()
        self.reward, self.discount, self.return_sq = RunningMeanVar(), RunningMeanVar(), RunningMeanVar()
        self.register_buffer("episode_return", torch.zeros(1, dtype=torch.float64))

    def update(self, reward, discount):
        self.reward.update(reward)
        self.discount.update(discount)
        self.episode_return += reward

    def end_episode(self):
        self.return_sq.update(self.episode_return.square())
        self.episode_return.zero_()

    def sigma(self):
        var = self.reward.var() + self.discount.var() * self.return_sq.mean
        return torch.where(self.return_sq.count > 0, var.clamp_min(1e-8).sqrt(), 1.0).float().reshape(())


# ------------------------------------------------------------------------------------------------ networks
class FeatureNorm(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, h):
        if self.kind == "penultimate":  # psi / ||psi||_2 (algorithms.md 3)
            return F.normalize(h, dim=-1)
        if self.kind == "layer":
            return F.layer_norm(h, h.shape[-1:])
        if self.kind == "rms":
            return F.rms_norm(h, h.shape[-1:])
        return h


def mlp_trunk(n_in, hidden, feature_norm):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(),
                         FeatureNorm(feature_norm))


def orthogonal_init(module):
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)
    module.requires_grad_(False)  # updated in place by Adam; gradients come from grad_and_aux


class Actor(nn.Module):
    """Squashed Gaussian policy, AVG's: A = tanh(u), u ~ N(mu, std). forward gives mu and log std."""

    def __init__(self, obs_dim, act_dim, hidden, feature_norm):
        super().__init__()
        self.trunk = mlp_trunk(obs_dim, hidden, feature_norm)
        self.mu, self.log_std = nn.Linear(hidden, act_dim), nn.Linear(hidden, act_dim)
        orthogonal_init(self)

    def forward(self, obs):
        features = self.trunk(obs)
        return self.mu(features), self.log_std(features).clamp(-20, 2)


def log_prob(mu, log_std, u):
    """log pi(tanh(u)|S): the Gaussian density of the pre-squash sample u, corrected for the tanh."""
    gaussian = (-0.5 * ((u - mu) / log_std.exp()).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return gaussian - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)


def entropy(log_std):
    """Entropy of the pre-squash Gaussian N(mu, diag(std^2))."""
    return (log_std + 0.5 * (1 + math.log(2 * math.pi))).sum(-1)


class Critic(nn.Module):
    """State value V(S)."""

    def __init__(self, obs_dim, hidden, feature_norm):
        super().__init__()
        self.trunk = mlp_trunk(obs_dim, hidden, feature_norm)
        self.v = nn.Linear(hidden, 1)
        orthogonal_init(self)

    def forward(self, obs):
        return self.v(self.trunk(obs)).squeeze(-1)


# ------------------------------------------------------------------------------------------------- learner
class StepInputs(NamedTuple):
    """What one update reads, by name (built by step_inputs(), the same way for every step and for the compiler)."""
    obs: torch.Tensor           # S, normalised
    u: torch.Tensor             # the pre-squash sample that gave A = tanh(u)
    raw_next_obs: torch.Tensor  # S' as the environment gave it (float64)
    reward: torch.Tensor        # R
    terminated: torch.Tensor    # 1.0 if S' ends the task, else 0.0; a time limit is not termination
    noise: torch.Tensor         # N(0, I), draws the next action


class Acting(NamedTuple):
    """Where the agent is between steps, S and the action it takes there: what an update returns, and reset()."""
    action: torch.Tensor  # A, in the environment's bounds
    u: torch.Tensor       # its pre-squash sample
    obs: torch.Tensor     # S, normalised
    ok: torch.Tensor      # false when the update that led here was not applied (a non-finite loss or gradient)


def step_inputs(now, raw_next_obs, reward, terminated, generator):
    """One update's inputs from where the agent is (`now`) and what the environment returned."""
    return StepInputs(now.obs, now.u, torch.as_tensor(raw_next_obs, dtype=torch.float64), torch.tensor(float(reward)),
                      torch.tensor(float(terminated)), torch.randn(now.u.shape[0], generator=generator))


class IAC(nn.Module):
    """The whole learner. forward() is one IAC step; parameters and buffers are the complete state."""

    def __init__(self, obs_dim, act_low, act_high, args):
        super().__init__()
        act_dim = len(act_low)
        self.actor = Actor(obs_dim, act_dim, args.hidden_size, args.feature_norm)
        self.critic = Critic(obs_dim, args.hidden_size, args.feature_norm)
        self.actor_opt = Adam(self.actor, args.actor_lr, (args.beta1, 0.999))
        self.critic_opt = Adam(self.critic, args.critic_lr, (args.beta1, 0.999))
        self.obs_stats = RunningMeanVar((obs_dim,))
        self.td_scaler = TDErrorScaler()
        self.eta, self.gamma = args.entropy_coef, args.gamma
        self.obs_norm, self.scale_td = args.obs_norm, args.scale_td
        self.register_buffer("action_scale", torch.as_tensor((act_high - act_low) / 2, dtype=torch.float32))
        self.register_buffer("action_offset", torch.as_tensor((act_high + act_low) / 2, dtype=torch.float32))
        self.metrics = MetricSums("losses/critic_loss", "losses/actor_loss", "health/entropy", "health/abs_v",
                                  "health/td_sigma")

    def normalize(self, raw_obs):
        """Adds the observation to the running statistics, then normalises it (algorithms.md 2)."""
        if not self.obs_norm:
            return raw_obs.float()
        self.obs_stats.update(raw_obs.double())
        return self.obs_stats.normalize(raw_obs.double()).float()

    def act(self, obs, noise):
        """The action for the environment (rescaled from [-1, 1] to its bounds) and its pre-squash sample u."""
        mu, log_std = self.actor(obs)
        u = mu + log_std.exp() * noise
        return torch.tanh(u) * self.action_scale + self.action_offset, u

    @torch.no_grad()
    def evaluation_action(self, raw_obs, episode_step, generator=None):
        """The environment's action for raw_obs without learning (--eval-every, scripts/evaluate.py): observation
        statistics frozen; tanh of the mean, or a sample when a generator is given."""
        obs = self.obs_stats.normalize(raw_obs.double()).float() if self.obs_norm else raw_obs.float()
        noise = torch.zeros(self.action_scale.shape) if generator is None else torch.randn(self.action_scale.shape,
                                                                                            generator=generator)
        return self.act(obs, noise)[0]

    def losses(self, params, obs, u, next_obs, reward, discount, sigma):
        actor_params, critic_params = params
        v = torch.func.functional_call(self.critic, critic_params, (obs,))
        with torch.no_grad():
            next_v = self.critic(next_obs)
        delta = (reward + discount * next_v - v) / sigma
        mu, log_std = torch.func.functional_call(self.actor, actor_params, (obs,))
        ent = entropy(log_std)
        actor_loss = -(log_prob(mu, log_std, u) * delta.detach() + self.eta * ent)
        # The two networks share no parameter, so one backward pass of the sum gives each its own gradient.
        return actor_loss + delta.square(), (delta.detach(), actor_loss.detach(), ent.detach(), v.detach())

    def acting(self, obs, noise, ok=True):
        return Acting(*self.act(obs, noise), obs, torch.tensor(ok))

    def forward(self, s: StepInputs):
        """One IAC update on (S, A, R, S') (algorithms.md 5), then the next action from the updated actor.
        An update with a non-finite loss or gradient is not applied (ok=False)."""
        next_obs = self.normalize(s.raw_next_obs)
        discount = self.gamma * (1.0 - s.terminated)
        self.td_scaler.update(s.reward.double(), discount.double())
        sigma = self.td_scaler.sigma() if self.scale_td else torch.ones(())
        actor_params, critic_params = dict(self.actor.named_parameters()), dict(self.critic.named_parameters())
        (actor_grads, critic_grads), (delta, actor_loss, ent, v) = grad_and_aux(
            self.losses, (actor_params, critic_params), s.obs, s.u, next_obs, s.reward, discount, sigma)
        ok = all_finite(delta + actor_loss, actor_grads, critic_grads)
        self.actor_opt.step(actor_params, actor_grads, ok)
        self.critic_opt.step(critic_params, critic_grads, ok)
        self.metrics.add(ok, {"losses/critic_loss": delta.square(), "losses/actor_loss": actor_loss,
                              "health/entropy": ent, "health/abs_v": v.abs(), "health/td_sigma": sigma})
        return Acting(*self.act(next_obs, s.noise), next_obs, ok)


def make_learner(env, args):
    """The learner for env's spaces (main() and scripts/evaluate.py build it the same way)."""
    return IAC(env.observation_space.shape[0], env.action_space.low.astype(np.float64),
               env.action_space.high.astype(np.float64), args)


# ---------------------------------------------------------------------------------------------------- run
def policy_parts(agent):
    """The modules a saved policy holds (--save-model, --init-from, scripts/evaluate.py)."""
    return {"actor": agent.actor, "critic": agent.critic, "obs_stats": agent.obs_stats}


def main(args, given=frozenset()):
    args, checkpoint = resume_args(args, given, ALGO)
    check_args(args, positive=("hidden_size", "actor_lr", "critic_lr"),
               ranges={"beta1": lambda b: 0 <= b < 1, "gamma": lambda g: 0 <= g <= 1, "entropy_coef": lambda e: e >= 0})
    run = Run(ALGO, args, checkpoint)  # seeding; the run directory once start() has accepted the environment
    env = run.make_env(finite_action_bounds=True)
    agent = make_learner(env, args)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    variant = "IAC+" if args.obs_norm and args.feature_norm != "none" and args.scale_td else "IAC"
    hyperparams = {k: getattr(args, k) for k in ("actor_lr", "critic_lr", "beta1", "entropy_coef", "gamma")}
    run.start(agent, f"{variant}, {hyperparams}", policy=agent.evaluation_action, parts=policy_parts(agent))
    if run.resumed:
        agent.td_scaler.episode_return.zero_()  # the partial episode at a mid-episode save is dropped
    update = run.compile(agent, step_inputs(agent.acting(torch.zeros(obs_dim), torch.zeros(act_dim)),
                                            np.zeros(obs_dim), 0.0, False, torch.Generator()))

    def reset():
        obs = agent.normalize(torch.as_tensor(run.reset_env(), dtype=torch.float64))
        return agent.acting(obs, torch.randn(act_dim, generator=run.noise_gen))

    with run.guard():  # Ctrl-C, SIGTERM, a non-finite value, a robot fault or a crash: saved, closed, reported
        now = reset() if run.running() else None  # Ctrl-C while connecting or compiling: the robot never moves
        while run.running():
            raw_next_obs, reward, terminated, truncated, info = env.step(now.action.numpy())
            seen = run.count_step(reward, raw_next_obs)  # the run's counters; False: a non-finite value, skipped
            # ALGO LOGIC: one IAC update on (S, A, R, S'), and the next action from the updated actor
            inputs = step_inputs(now, raw_next_obs, reward, terminated, run.noise_gen)
            out = run.step(update, inputs) if seen else None
            # TRY NOT TO MODIFY: logging, episode ends (a skipped step ends its episode), checkpoints
            run.log_window()
            if run.episode_over(out, terminated, truncated):
                agent.td_scaler.end_episode()
                run.end_episode(info)  # and --eval-every, --checkpoint-every
                now = reset()
            else:
                now = out
    return run.finish()


if __name__ == "__main__":
    cli_args = parse(Args)
    with one_line_errors(ALGO):
        sys.exit(main(cli_args, flags_given(sys.argv[1:], Args)))
