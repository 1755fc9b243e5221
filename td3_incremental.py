"""TD3 with a replay buffer of any size: TD3-1 (buffer and batch of 1: every update uses the latest
transition) by default, batch TD3 with the usual settings, and every size in between.

    python td3_incremental.py --env Hopper-v4                       # TD3-1
    python td3_incremental.py --env Hopper-v4 --obs-norm --feature-norm penultimate --scale-td   # TD3-1+
    python td3_incremental.py --env Hopper-v4 --buffer-size 1000000 --batch-size 256 --learning-starts 25000

A deterministic actor with Gaussian exploration noise, twin critics, target policy smoothing, delayed actor and
target updates (Fujimoto et al. 2018); one critic update per environment step. The AVG paper (arXiv
2411.15370) compares AVG with TD3-1 and batch TD3, and adds the three normalisation/scaling techniques to make
TD3-1+ (docs/algorithms.md 2-5). Run machinery (checkpoints, resume, logs, compiling):
incremental_utils/, as for every script.
"""
import copy
import sys
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from incremental_utils.errors import RunError, one_line_errors
from incremental_utils.flags import RunArgs, check_args, flags_given, parse, resume_args
from incremental_utils.gradients import all_finite, grad_and_aux
from incremental_utils.metrics import MetricSums
from incremental_utils.optimizers import Adam
from incremental_utils.replay import ReplayBuffer
from incremental_utils.run import Run

ALGO = "td3_incremental"


@dataclass
class Args(RunArgs):
    buffer_size: int = 1
    """replay buffer capacity in transitions (1: TD3-1; the batch baseline uses 1000000)"""
    batch_size: int = 1
    """transitions per update, sampled uniformly from the buffer (batch baseline: 256)"""
    learning_starts: int = 0
    """steps of uniformly random actions before updates start (batch baseline: 25000)"""
    actor_lr: float = 3e-4
    """actor step size"""
    critic_lr: float = 3e-4
    """critic step size"""
    beta1: float = 0.9
    """Adam's first beta for both optimisers; the second is 0.999"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target actor and critics"""
    policy_delay: int = 2
    """critic updates per actor (and target) update"""
    exploration_noise: float = 0.1
    """std of the Gaussian noise added to actions (in units of half the action range)"""
    policy_noise: float = 0.2
    """std of the target policy smoothing noise"""
    noise_clip: float = 0.5
    """clip of the target policy smoothing noise"""
    hidden_size: int = 256
    """width of the two hidden (ReLU) layers of actor and critics"""

    obs_norm: bool = False
    """normalise observations with running (Welford) mean and variance (part of TD3-1+)"""
    feature_norm: Literal["penultimate", "layer", "rms", "none"] = "none"
    """normalisation of the last hidden features (penultimate: unit L2 norm, part of TD3-1+)"""
    scale_td: bool = False
    """divide the TD errors by the running return-based scale sigma_delta (part of TD3-1+)"""


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
        """(x - mean) / sqrt(var + 1e-8). Until there are two samples the statistics are the prior, mean 0 and
        variance 1: normalising a first observation by its own mean would make it exactly zero, and so the
        actor's first features, where the gradient of the penultimate normalisation is unbounded (in testing
        it inflated Adam's second moments for ~50k steps)."""
        mean = torch.where(self.count > 1, self.mean, 0.0)
        return (x - mean) / (self.var() + 1e-8).sqrt()


class TDErrorScaler(nn.Module):
    """sigma_delta^2 = Var[R] + Var[gamma_t] E[G^2] (return-based scaling, algorithms.md 4). As in the authors' code,
    R is entropy-augmented (R - eta log pi(A|S)) and G is the undiscounted sum of those rewards. gamma_t is 0
    at termination, gamma otherwise (truncation included). sigma = 1 until the first episode has ended."""

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
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         FeatureNorm(feature_norm))


class Actor(nn.Module):
    """Deterministic policy: A = tanh(head(features))."""

    def __init__(self, obs_dim, act_dim, hidden, feature_norm):
        super().__init__()
        self.trunk = mlp_trunk(obs_dim, hidden, feature_norm)
        self.head = nn.Linear(hidden, act_dim)
        self.requires_grad_(False)  # PyTorch's default init; updated in place by Adam, gradients via grad_and_aux

    def forward(self, obs):
        return torch.tanh(self.head(self.trunk(obs)))


class Critic(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden, feature_norm):
        super().__init__()
        self.trunk = mlp_trunk(obs_dim + act_dim, hidden, feature_norm)
        self.q = nn.Linear(hidden, 1)

    def forward(self, obs, action):
        return self.q(self.trunk(torch.cat([obs, action], -1))).squeeze(-1)


class TwinCritics(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden, feature_norm):
        super().__init__()
        self.q1, self.q2 = (Critic(obs_dim, act_dim, hidden, feature_norm) for _ in range(2))
        self.requires_grad_(False)

    def forward(self, obs, action):
        return self.q1(obs, action), self.q2(obs, action)


# ------------------------------------------------------------------------------------------------- learner
class StepInputs(NamedTuple):
    """What one step reads, by name (built by step_inputs(), the same way for every step and for the compiler)."""
    obs: torch.Tensor              # S, normalised
    action: torch.Tensor           # A in [-1, 1], as stored
    raw_next_obs: torch.Tensor     # S' as the environment gave it (float64)
    reward: torch.Tensor           # R
    terminated: torch.Tensor       # 1.0 if S' ends the task, else 0.0; a time limit is not termination
    indices: torch.Tensor          # which stored transitions make the batch
    smoothing_noise: torch.Tensor  # (batch, |A|), N(0, I): the target policy smoothing
    next_noise: torch.Tensor       # N(0, I): the next action's exploration noise
    uniform: torch.Tensor          # U(-1, 1): the next action while the buffer is still filling


class Acting(NamedTuple):
    """Where the agent is between steps, S and the action it takes there: what a step returns, and reset()."""
    action: torch.Tensor      # A in [-1, 1] (as stored and seen by the critics)
    env_action: torch.Tensor  # A in the environment's bounds
    obs: torch.Tensor         # S, normalised
    ok: torch.Tensor          # false when the update that led here was not applied (a non-finite loss or gradient)


def step_inputs(now, raw_next_obs, reward, terminated, replay, batch_size, generator):
    """One step's inputs from where the agent is (`now`) and what the environment returned."""
    act_dim = now.action.shape[0]
    return StepInputs(now.obs, now.action, torch.as_tensor(raw_next_obs, dtype=torch.float64),
                      torch.tensor(float(reward)), torch.tensor(float(terminated)), replay.draw(batch_size, generator),
                      torch.randn(batch_size, act_dim, generator=generator), torch.randn(act_dim, generator=generator),
                      torch.rand(act_dim, generator=generator) * 2 - 1)


class TD3(nn.Module):
    """The whole learner. forward() stores a transition and makes one update; parameters and buffers (the
    replay buffer included) are the complete state."""

    def __init__(self, obs_dim, act_low, act_high, args):
        super().__init__()
        act_dim = len(act_low)
        self.actor = Actor(obs_dim, act_dim, args.hidden_size, args.feature_norm)
        self.critic = TwinCritics(obs_dim, act_dim, args.hidden_size, args.feature_norm)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_opt = Adam(self.actor, args.actor_lr, (args.beta1, 0.999))
        self.critic_opt = Adam(self.critic, args.critic_lr, (args.beta1, 0.999))
        self.replay = ReplayBuffer(args.buffer_size, obs_dim, act_dim)
        self.obs_stats = RunningMeanVar((obs_dim,))
        self.td_scaler = TDErrorScaler()
        self.gamma, self.tau, self.policy_delay = args.gamma, args.tau, args.policy_delay
        self.learning_starts = args.learning_starts
        self.exploration_noise, self.policy_noise, self.noise_clip = (args.exploration_noise, args.policy_noise,
                                                                      args.noise_clip)
        self.obs_norm, self.scale_td = args.obs_norm, args.scale_td
        self.register_buffer("action_scale", torch.as_tensor((act_high - act_low) / 2, dtype=torch.float32))
        self.register_buffer("action_offset", torch.as_tensor((act_high + act_low) / 2, dtype=torch.float32))
        self.register_buffer("critic_updates", torch.zeros(1, dtype=torch.int64))
        self.critic_metrics = MetricSums("losses/critic_loss", "health/abs_q", "health/td_sigma")
        self.actor_metrics = MetricSums("losses/actor_loss")  # over the actor's updates only

    def normalize(self, raw_obs):
        """Adds the observation to the running statistics, then normalises it (algorithms.md 2)."""
        if not self.obs_norm:
            return raw_obs.float()
        self.obs_stats.update(raw_obs.double())
        return self.obs_stats.normalize(raw_obs.double()).float()

    def act(self, obs, noise):
        """The actor's action plus exploration noise (standard normal `noise` times --exploration-noise),
        clipped to [-1, 1] (as stored and seen by the critics), and the environment's action."""
        action = (self.actor(obs) + self.exploration_noise * noise).clamp(-1, 1)
        return action, action * self.action_scale + self.action_offset

    def explore(self, obs, noise, uniform, ok=True):
        """The behaviour policy, as an Acting: uniformly random actions until the buffer holds --learning-starts
        transitions, then the actor's with exploration noise."""
        if not self.learning():
            return Acting(uniform, uniform * self.action_scale + self.action_offset, obs, torch.tensor(ok))
        return Acting(*self.act(obs, noise), obs, torch.tensor(ok))

    def learning(self):
        """Whether updates have begun: --learning-starts transitions stored (the counter exploration reads too)."""
        return int(self.replay.added) >= self.learning_starts

    @torch.no_grad()
    def evaluation_action(self, raw_obs, episode_step, generator=None):
        """The environment's action for raw_obs without learning (--eval-every, scripts/evaluate.py): observation
        statistics frozen; the actor's action, or with exploration noise when a generator is given."""
        obs = self.obs_stats.normalize(raw_obs.double()).float() if self.obs_norm else raw_obs.float()
        noise = torch.zeros(self.action_scale.shape) if generator is None else torch.randn(self.action_scale.shape,
                                                                                            generator=generator)
        return self.act(obs, noise)[1]

    def observe(self, s: StepInputs):
        """Normalises S', feeds the TD-error scale statistics and stores (S, A, R, S', terminated). Returns S'."""
        next_obs = self.normalize(s.raw_next_obs)
        self.td_scaler.update(s.reward.double(), (self.gamma * (1.0 - s.terminated)).double())
        self.replay.add(s.obs, s.action, s.reward, next_obs, s.terminated)
        return next_obs

    def store(self, s: StepInputs):
        """Before --learning-starts: stores (S, A, R, S') without an update; the next action from explore()."""
        return self.explore(self.observe(s), s.next_noise, s.uniform)

    def critic_loss(self, params, obs, action, target, sigma):
        q1, q2 = torch.func.functional_call(self.critic, params[0], (obs, action))
        loss = (((q1 - target) / sigma).square() + ((q2 - target) / sigma).square()).mean()
        return loss, (loss.detach(), q1.detach().abs().mean())

    def actor_loss(self, params, obs):
        action = torch.func.functional_call(self.actor, params[0], (obs,))
        loss = -self.critic.q1(obs, action).mean()
        return loss, loss.detach()

    def forward(self, s: StepInputs):
        """Stores (S, A, R, S') and makes one TD3 critic update on the stored transitions at s.indices (the
        latest one for TD3-1); every --policy-delay updates also the actor (against the updated critics) and
        the targets. Parts with a non-finite loss or gradient are not applied. The actor's gradient is computed
        on every step and applied on its turn only: one compiled graph serves all steps."""
        next_obs = self.observe(s)
        sigma = self.td_scaler.sigma() if self.scale_td else torch.ones(())
        batch_obs, batch_action, batch_reward, batch_next_obs, batch_terminated = self.replay.sample(s.indices)
        with torch.no_grad():
            smoothing = (self.policy_noise * s.smoothing_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (self.actor_target(batch_next_obs) + smoothing).clamp(-1, 1)
            next_q = torch.minimum(*self.critic_target(batch_next_obs, next_action))
            target = batch_reward + self.gamma * (1.0 - batch_terminated) * next_q
        critic_params = dict(self.critic.named_parameters())
        (critic_grads,), (critic_loss, abs_q) = grad_and_aux(self.critic_loss, (critic_params,), batch_obs,
                                                             batch_action, target, sigma)
        ok = all_finite(critic_loss, critic_grads)
        self.critic_opt.step(critic_params, critic_grads, ok)
        self.critic_updates += ok
        actor_params = dict(self.actor.named_parameters())
        (actor_grads,), actor_loss = grad_and_aux(self.actor_loss, (actor_params,), batch_obs)
        actor_ok = ok & all_finite(actor_loss, actor_grads)
        actors_turn = actor_ok & (self.critic_updates % self.policy_delay == 0).squeeze()
        self.actor_opt.step(actor_params, actor_grads, actors_turn)
        for target_net, net in [(self.actor_target, self.actor), (self.critic_target, self.critic)]:
            for target_param, param in zip(target_net.parameters(), net.parameters()):
                target_param.copy_(torch.where(actors_turn, target_param.lerp(param, self.tau), target_param))
        self.critic_metrics.add(ok, {"losses/critic_loss": critic_loss, "health/abs_q": abs_q,
                                     "health/td_sigma": sigma})
        self.actor_metrics.add(actors_turn, {"losses/actor_loss": actor_loss})
        return Acting(*self.act(next_obs, s.next_noise), next_obs, ok & actor_ok)


def make_learner(env, args):
    """The learner for env's spaces (main() and scripts/evaluate.py build it the same way)."""
    return TD3(env.observation_space.shape[0], env.action_space.low.astype(np.float64),
               env.action_space.high.astype(np.float64), args)


# ---------------------------------------------------------------------------------------------------- run
def policy_parts(agent):
    """The modules a saved policy holds (--save-model, --init-from, scripts/evaluate.py)."""
    return {"actor": agent.actor, "critic": agent.critic, "obs_stats": agent.obs_stats}


def main(args, given=frozenset()):
    args, checkpoint = resume_args(args, given, ALGO)
    check_args(args, positive=("hidden_size", "buffer_size", "batch_size", "actor_lr", "critic_lr", "policy_delay"),
               ranges={"beta1": lambda b: 0 <= b < 1, "gamma": lambda g: 0 <= g <= 1, "tau": lambda t: 0 < t <= 1,
                       "exploration_noise": lambda s: s >= 0, "policy_noise": lambda s: s >= 0,
                       "noise_clip": lambda c: c >= 0, "learning_starts": lambda n: n >= 0})
    if args.batch_size > args.buffer_size:
        raise RunError(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}")
    run = Run(ALGO, args, checkpoint)  # seeding; the run directory once start() has accepted the environment
    env = run.make_env(finite_action_bounds=True)
    agent = make_learner(env, args)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    hyperparams = {k: getattr(args, k) for k in ("buffer_size", "batch_size", "learning_starts", "actor_lr",
                                                  "critic_lr", "gamma", "tau", "policy_delay")}
    run.start(agent, str(hyperparams), policy=agent.evaluation_action, parts=policy_parts(agent))
    if run.resumed:
        agent.td_scaler.episode_return.zero_()  # the partial episode at a mid-episode save is dropped
    elif args.init_from:
        agent.actor_target.load_state_dict(agent.actor.state_dict())
        agent.critic_target.load_state_dict(agent.critic.state_dict())
    first = Acting(*agent.act(torch.zeros(obs_dim), torch.zeros(act_dim)), torch.zeros(obs_dim), torch.tensor(True))
    update = run.compile(agent, step_inputs(first, np.zeros(obs_dim), 0.0, False, agent.replay, args.batch_size,
                                            torch.Generator()))

    def reset():
        obs = agent.normalize(torch.as_tensor(run.reset_env(), dtype=torch.float64))
        return agent.explore(obs, torch.randn(act_dim, generator=run.noise_gen),
                             torch.rand(act_dim, generator=run.noise_gen) * 2 - 1)

    with run.guard():  # Ctrl-C, SIGTERM, a non-finite value, a robot fault or a crash: saved, closed, reported
        now = reset() if run.running() else None  # Ctrl-C while connecting or compiling: the robot never moves
        while run.running():
            raw_next_obs, reward, terminated, truncated, info = env.step(now.env_action.numpy())
            seen = run.count_step(reward, raw_next_obs)  # the run's counters; False: a non-finite value, skipped
            # ALGO LOGIC: store (S, A, R, S') and, once --learning-starts are stored, one TD3 update; the next action
            inputs = step_inputs(now, raw_next_obs, reward, terminated, agent.replay, args.batch_size, run.noise_gen)
            learning = agent.learning()
            out = run.step(update if learning else agent.store, inputs, timed=learning) if seen else None
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
