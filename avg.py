"""Action Value Gradient (AVG): incremental deep actor-critic with no replay buffer, no target network and no batch
update. One update per environment step, on the latest transition only:  python avg.py --env Hopper-v4

Vasan et al., "Deep Policy Gradient Methods Without Batch Updates, Target Networks, or Replay Buffers", NeurIPS 2024
(arXiv 2411.15370). Definitions and hyperparameters: docs/algorithms.md 1-4 (10: the plasticity flags). This file holds
the algorithm (hyperparameters, statistics, networks, the update, the loop); the run machinery is in incremental_utils/.
"""
import copy
import math
import sys
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from incremental_utils.encoders import camera_encoders, network_input
from incremental_utils.errors import one_line_errors
from incremental_utils.flags import (PixelArgs, PlasticityArgs, RunArgs, check_args, flags_given, parse, resume_args,
                                     weight_decay_of)
from incremental_utils.gradients import all_finite, grad_and_aux
from incremental_utils.metrics import MetricSums
from incremental_utils.observations import Observation, as_observation, zero_observation
from incremental_utils.optimizers import Adam
from incremental_utils.plasticity import Plasticity, trunk_outputs
from incremental_utils.run import Run

ALGO = "avg"


@dataclass
class Args(RunArgs, PixelArgs, PlasticityArgs):
    actor_lr: Optional[float] = None
    """actor step size; unset: the paper's value for --env (avg.py's HYPERPARAMS table)"""
    critic_lr: Optional[float] = None
    """critic step size; unset: the paper's value for --env"""
    beta1: Optional[float] = None
    """Adam's first beta (the second is 0.999); unset: the paper's value for --env"""
    entropy_coef: Optional[float] = None
    """entropy coefficient eta, fixed; unset: the paper's value for --env"""
    gamma: Optional[float] = None
    """discount factor; unset: the paper's value for --env"""
    hidden_size: int = 256
    """width of the two hidden layers of actor and critic"""

    obs_norm: bool = True
    """normalise observations with running (Welford) mean and variance"""
    feature_norm: Literal["penultimate", "layer", "rms", "none"] = "penultimate"
    """normalisation of the last hidden features: unit L2 norm (the paper's), LayerNorm, RMSNorm or none"""
    scale_td: bool = True
    """divide the TD error by the running return-based scale sigma_delta"""
    target_tau: float = 1.0
    """Polyak rate of a target critic; 1.0 means no target network (AVG), 0 a frozen one"""
    action_mapping: Literal["rescale", "clip"] = "rescale"
    """tanh's [-1, 1] to the action bounds: rescale onto them, or clip as the authors' code does (algorithms.md 1)"""


# Published hyperparameters (algorithms.md 1): actor lr, critic lr, beta1, entropy coefficient, gamma.
HYPERPARAMS = {
    "Hopper": (1.1e-5, 7.7e-5, 0.0, 0.3, 0.99),
    "Walker2d": (1.1e-5, 7.7e-5, 0.0, 0.3, 0.99),
    "Ant": (6.3e-3, 8.7e-3, 0.0, 0.07, 0.99),
    "HalfCheetah": (6.3e-3, 8.7e-3, 0.0, 0.07, 0.99),
    "Humanoid": (6.3e-3, 8.7e-3, 0.0, 0.07, 0.99),
    "dm_control/reacher-hard": (3e-6, 4.9e-3, 0.0, 0.05, 0.97),
    **{f"dm_control/dog-{task}": (6e-6, 8e-5, 0.0, 0.009, 0.95) for task in ("walk", "trot", "stand")},
    "dm_control/finger-spin": (3.8e-4, 8.7e-5, 0.9, 0.006, 0.95),
    "dm_control/dog-run": (1.8e-5, 4.8e-5, 0.0, 0.007, 0.97),
}
DEFAULT_HYPERPARAMS = HYPERPARAMS["Ant"]  # for environments the paper did not tune


def resolve_hyperparams(args):
    """Fills the hyperparameters the user left unset with the paper's values for the env (any version)."""
    base = args.env.rsplit("-v", 1)[0]
    paper = HYPERPARAMS.get(base, DEFAULT_HYPERPARAMS)
    for name, value in zip(("actor_lr", "critic_lr", "beta1", "entropy_coef", "gamma"), paper):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return "paper values for " + base if base in HYPERPARAMS else "the paper's Ant/HalfCheetah values, as defaults"


# ---------------------------------------------------------------------------------------------- statistics
# Every piece of learner state is a parameter or buffer of an nn.Module, so state_dict() is a complete checkpoint
# (incremental_utils/compiling.py says what else the compiler needs). Scalars are float64 tensors of shape (1,).
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
        """(x - mean) / sqrt(var + 1e-8), with the prior (0, 1) until two samples: a first observation normalised by
        its own mean is zero, where the penultimate norm's gradient is unbounded (it inflated Adam's moments)."""
        mean = torch.where(self.count > 1, self.mean, 0.0)
        return (x - mean) / (self.var() + 1e-8).sqrt()


class TDErrorScaler(nn.Module):
    """sigma_delta^2 = Var[R] + Var[gamma_t] E[G^2] (algorithms.md 4), R entropy-augmented (R - eta log pi(A|S)) and G
    their undiscounted sum, as in the authors' code; gamma_t is 0 at termination, else gamma; sigma = 1 until a first
    episode has ended. G is recorded at every episode end (the authors' only at termination, mixing two episodes)."""

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


def orthogonal_row(weight, row, generator):
    """A fresh row of an orthogonal initialisation of `weight`'s shape (continual backprop's replaced unit)."""
    weight[row] = nn.init.orthogonal_(torch.empty_like(weight), generator=generator)[row]


def orthogonal_init(module):
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)
    module.requires_grad_(False)  # updated in place by Adam; gradients come from grad_and_aux


class Actor(nn.Module):
    """Squashed Gaussian policy: A = tanh(mu + std * noise), log pi(A|S) corrected for the tanh; std = exp(log_std),
    log_std clamped to [-20, 2] (algorithms.md 1; the authors' avg.py uses exp(log_std) as the variance). Images: its
    own encoder, or (shared) the critic's, read without a gradient: the critic's loss trains it."""

    def __init__(self, in_dim, act_dim, hidden, feature_norm, encoder=None, shared=None):
        super().__init__()
        self.encoder = encoder
        self.__dict__["shared"] = shared  # the critic's encoder, not a part of the actor: its parameters are not ours
        self.trunk = mlp_trunk(in_dim, hidden, feature_norm)
        self.mu, self.log_std = nn.Linear(hidden, act_dim), nn.Linear(hidden, act_dim)
        orthogonal_init(self)

    def forward(self, obs, noise, augment=False, hidden=None):  # hidden: a list that receives each hidden layer's
        features = trunk_outputs(self.trunk, network_input(self.encoder or self.shared, obs, augment), hidden)  # units
        mu, log_std = self.mu(features), self.log_std(features).clamp(-20, 2)
        u = mu + log_std.exp() * noise
        log_prob = (-0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob


class Critic(nn.Module):
    def __init__(self, in_dim, act_dim, hidden, feature_norm, encoder=None):
        super().__init__()
        self.encoder = encoder
        self.trunk = mlp_trunk(in_dim + act_dim, hidden, feature_norm)
        self.q = nn.Linear(hidden, 1)
        orthogonal_init(self)

    def forward(self, obs, action, augment=False, hidden=None):
        x = torch.cat([network_input(self.encoder, obs, augment), action], -1)
        return self.q(trunk_outputs(self.trunk, x, hidden)).squeeze(-1)


# ------------------------------------------------------------------------------------------------- learner
class StepInputs(NamedTuple):
    """What one update reads, by name (built by step_inputs(), the same way for every step and for the compiler)."""
    obs: torch.Tensor           # S, normalised
    noise: torch.Tensor         # the N(0, I) draw that gave A
    log_prob: torch.Tensor      # log pi(A|S)
    raw_next_obs: torch.Tensor  # S' as the environment gave it (float64)
    reward: torch.Tensor        # R
    terminated: torch.Tensor    # 1.0 if S' ends the task (a fall), else 0.0; a time limit is not termination
    noises: torch.Tensor        # (2, |A|): draws A' for the TD target, and the next action
    perturbation: torch.Tensor = torch.zeros(0)  # --upgd: one N(0, 1) draw per parameter of actor and critic


class Acting(NamedTuple):
    """Where the agent is between steps, S and the action it takes there: what an update returns, and reset()."""
    action: torch.Tensor    # A, in the environment's bounds
    log_prob: torch.Tensor  # log pi(A|S)
    obs: torch.Tensor       # S, normalised
    noise: torch.Tensor     # the N(0, I) draw that gave A
    ok: torch.Tensor        # false when the update that led here was not applied (a non-finite loss or gradient)


def step_inputs(now, raw_next_obs, reward, terminated, generator, pad=0, perturbations=0):
    """One update's inputs from where the agent is (`now`) and what the environment returned."""
    return StepInputs(now.obs, now.noise, now.log_prob, as_observation(raw_next_obs, pad, generator),
                      torch.tensor(float(reward)), torch.tensor(float(terminated)),
                      torch.randn(2, now.noise.shape[0], generator=generator),
                      torch.randn(perturbations, generator=generator))


class AVG(nn.Module):
    """The whole learner. forward() is one AVG step; parameters and buffers are the complete state."""

    def __init__(self, obs_dim, act_low, act_high, args, image_shape=None):
        """obs_dim: the vector observation's size (with images, the proprioception's); image_shape: (C, H, W)."""
        super().__init__()
        act_dim, hidden, norm = len(act_low), args.hidden_size, args.feature_norm
        # One shared encoder by default: 5.9 ms an update against 10.1 with one each, and it learned sooner (results.md)
        self.augment, self.pad, (critic_encoder, actor_encoder), shared = camera_encoders(image_shape, args)
        in_dim = obs_dim + (critic_encoder.features if image_shape is not None else 0)
        self.actor = Actor(in_dim, act_dim, hidden, norm, actor_encoder, shared)
        self.critic = Critic(in_dim, act_dim, hidden, norm, critic_encoder)
        self.target = copy.deepcopy(self.critic) if args.target_tau < 1 else None
        upgd = (args.upgd_sigma, args.upgd_beta_utility) if args.upgd else None  # UPGD in place of Adam
        self.actor_opt = Adam(self.actor, args.actor_lr, (args.beta1, 0.999), weight_decay=weight_decay_of(args), upgd=upgd)
        self.critic_opt = Adam(self.critic, args.critic_lr, (args.beta1, 0.999), weight_decay=weight_decay_of(args),
                               upgd=upgd)
        self.plasticity = Plasticity({"actor": (self.actor, self.actor.trunk, ("mu", "log_std"), self.actor_opt),
                                      "critic": (self.critic, self.critic.trunk, ("q",), self.critic_opt)}, args,
                                     orthogonal_row)
        self.obs_stats = RunningMeanVar((obs_dim,))
        self.td_scaler = TDErrorScaler()
        self.eta, self.gamma, self.tau = args.entropy_coef, args.gamma, args.target_tau
        self.obs_norm, self.scale_td = args.obs_norm, args.scale_td
        scale, offset = ((act_high - act_low) / 2, (act_high + act_low) / 2) if args.action_mapping == "rescale" else \
            (np.ones_like(act_low), np.zeros_like(act_low))
        for name, value in [("action_scale", scale), ("action_offset", offset), ("action_low", act_low),
                            ("action_high", act_high)]:
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32))
        self.metrics = MetricSums("losses/critic_loss", "losses/actor_loss", "health/entropy", "health/abs_q",
                                  "health/td_sigma")

    def normalize(self, raw_obs, learn=True):
        """Adds the observation to the running statistics (unless not `learn`), then normalises it (algorithms.md 2).
        Images: the proprioception is normalised; pixels are never, the encoder scales them to [0, 1]."""
        if isinstance(raw_obs, Observation):
            return Observation(raw_obs.image, self.normalize(raw_obs.vector, learn), raw_obs.shift)
        if not self.obs_norm:
            return raw_obs.float()
        if learn:
            self.obs_stats.update(raw_obs.double())
        return self.obs_stats.normalize(raw_obs.double()).float()

    def act(self, obs, noise):
        """The action for the environment (from [-1, 1] to its bounds, --action-mapping) and log pi(A|S)."""
        action, log_prob = self.actor(obs, noise)
        env_action = torch.clamp(action * self.action_scale + self.action_offset, self.action_low, self.action_high)
        return env_action, log_prob

    @torch.no_grad()
    def evaluation_action(self, raw_obs, episode_step, generator=None):
        """The action for raw_obs without learning (statistics frozen): tanh of the mean, or a sample with a generator."""
        obs = self.normalize(as_observation(raw_obs), learn=False)
        noise = torch.zeros(self.action_scale.shape) if generator is None else torch.randn(self.action_scale.shape,
                                                                                            generator=generator)
        return self.act(obs, noise)[0]

    def losses(self, params, obs, noise, next_obs, next_noise, reward, discount, sigma, hidden):
        """The paper's two losses (algorithms.md 1), summed for one backward pass: each reads the other network only
        detached, so autograd gives each network the gradient of its own loss alone. hidden: {network: list or None}
        receives the hidden units at (S, A) for the plasticity tools, from these passes (no extra forward pass)."""
        actor_params, critic_params = params
        #### Actor loss: eta log pi(A_theta|S) - Q(S, A_theta), the gradient reaching the actor through the action.
        # N.B. the critic's parameters are detached: this loss must not change the critic.
        action, log_prob = torch.func.functional_call(self.actor, actor_params, (obs, noise, self.augment,
                                                                                 hidden["actor"]))
        frozen_critic = {name: p.detach() for name, p in critic_params.items()}
        actor_loss = self.eta * log_prob - torch.func.functional_call(self.critic, frozen_critic,
                                                                      (obs, action, self.augment))
        #### Critic loss: delta^2, the TD error with A' ~ pi(.|S') drawn without gradient, scaled by sigma_delta.
        # N.B. A is detached: this loss must not change the actor.
        q = torch.func.functional_call(self.critic, critic_params, (obs, action.detach(), self.augment,
                                                                     hidden["critic"]))
        with torch.no_grad():
            next_action, next_log_prob = self.actor(next_obs, next_noise)
            next_q = (self.target if self.target is not None else self.critic)(next_obs, next_action)
            target = reward + discount * (next_q - self.eta * next_log_prob)
        delta = (target - q) / sigma
        critic_loss = delta.square()
        return actor_loss + critic_loss, (delta.detach(), actor_loss.detach(), log_prob.detach(), q.detach())

    def acting(self, obs, noise, ok=True):
        return Acting(*self.act(obs, noise), obs, noise, torch.tensor(ok))

    def forward(self, s: StepInputs):
        """One AVG update on (S, A, R, S') (algorithms.md 1), both gradients at the pre-update parameters, not applied
        if not finite (ok=False); then the next action. s.noises: A' for the target, and the next action."""
        next_obs = self.normalize(s.raw_next_obs)
        discount = self.gamma * (1.0 - s.terminated)
        self.td_scaler.update((s.reward - self.eta * s.log_prob).double(), discount.double())
        sigma = self.td_scaler.sigma() if self.scale_td else torch.ones(())
        actor_params, critic_params = dict(self.actor.named_parameters()), dict(self.critic.named_parameters())
        hidden = {"actor": [], "critic": []} if self.plasticity.active else {"actor": None, "critic": None}
        (actor_grads, critic_grads), (delta, actor_loss, policy_log_prob, q) = grad_and_aux(
            self.losses, (actor_params, critic_params), s.obs, s.noise, next_obs, s.noises[0], s.reward, discount,
            sigma, hidden)
        ok = all_finite(delta + actor_loss, actor_grads, critic_grads)
        noise = s.perturbation.split([self.actor_opt.noise_size, self.critic_opt.noise_size])  # --upgd
        self.actor_opt.step(actor_params, actor_grads, ok, noise[0])
        self.critic_opt.step(critic_params, critic_grads, ok, noise[1])
        self.plasticity.record(ok, hidden if self.plasticity.active else None)
        if self.target is not None:
            for target, param in zip(self.target.parameters(), critic_params.values()):
                target.copy_(torch.where(ok, target.lerp(param, self.tau), target))
        self.metrics.add(ok, {"losses/critic_loss": delta.square(), "losses/actor_loss": actor_loss,
                              "health/entropy": -policy_log_prob, "health/abs_q": q.abs(), "health/td_sigma": sigma})
        return Acting(*self.act(next_obs, s.noises[1]), next_obs, s.noises[1], ok)


def make_learner(env, args):
    """The learner for env's spaces (main() and scripts/evaluate.py build it the same way)."""
    space, low, high = env.observation_space, env.action_space.low.astype(np.float64), \
        env.action_space.high.astype(np.float64)
    if isinstance(space, gym.spaces.Dict):  # images: {"image", "proprio"} (incremental_utils/image_envs.py)
        return AVG(space["proprio"].shape[0], low, high, args, image_shape=space["image"].shape)
    return AVG(space.shape[0], low, high, args)


# ---------------------------------------------------------------------------------------------------- run
def policy_parts(agent):
    """The modules a saved policy holds (--save-model, --init-from, scripts/evaluate.py)."""
    return {"actor": agent.actor, "critic": agent.critic, "obs_stats": agent.obs_stats}


def main(args, given=frozenset()):
    args, checkpoint = resume_args(args, given, ALGO)
    source = resolve_hyperparams(args)
    check_args(args, positive=("hidden_size", "actor_lr", "critic_lr"),
               ranges={"beta1": lambda b: 0 <= b < 1, "gamma": lambda g: 0 <= g <= 1,
                       "entropy_coef": lambda e: e >= 0, "target_tau": lambda t: 0 <= t <= 1})
    run = Run(ALGO, args, checkpoint)  # seeding; the run directory once start() has accepted the environment
    env = run.make_env(finite_action_bounds=True, images=("camera",))
    agent = make_learner(env, args)
    blank, act_dim = zero_observation(env.observation_space), env.action_space.shape[0]
    hyperparams = {k: getattr(args, k) for k in ("actor_lr", "critic_lr", "beta1", "entropy_coef", "gamma",
                                                 "weight_decay", "upgd", "reinit")}
    run.start(agent, f"{hyperparams} ({source})", policy=agent.evaluation_action, parts=policy_parts(agent))
    if run.resumed:
        agent.td_scaler.episode_return.zero_()  # the partial episode at a mid-episode save is dropped
    elif args.init_from and agent.target is not None:
        agent.target.load_state_dict(agent.critic.state_dict())
    first = agent.acting(agent.normalize(as_observation(blank), learn=False), torch.zeros(act_dim))
    perturbations = agent.actor_opt.noise_size + agent.critic_opt.noise_size  # --upgd's noise, drawn each step
    update = run.compile(agent, step_inputs(first, blank, 0.0, False, torch.Generator(), agent.pad, perturbations))

    def reset():
        obs = agent.normalize(as_observation(run.reset_env(), agent.pad, run.noise_gen))
        return agent.acting(obs, torch.randn(act_dim, generator=run.noise_gen))

    with run.guard():  # Ctrl-C, SIGTERM, a non-finite value, a robot fault or a crash: saved, closed, reported
        now = reset() if run.running() else None  # Ctrl-C while connecting or compiling: the robot never moves
        while run.running():
            raw_next_obs, reward, terminated, truncated, info = env.step(now.action.numpy())
            seen = run.count_step(reward, raw_next_obs)  # the run's counters; False: a non-finite value, skipped
            # ALGO LOGIC: one AVG update on (S, A, R, S'), and A' from the updated actor
            inputs = step_inputs(now, raw_next_obs, reward, terminated, run.noise_gen, agent.pad, perturbations)
            out = run.step(update, inputs) if seen else None
            agent.plasticity.replace_units(run.noise_gen)  # --reinit cbp: outside the update (a varying number)
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
