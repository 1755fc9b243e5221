"""Stream AC(lambda): streaming actor-critic with eligibility traces and overshooting-bounded gradient descent
(ObGD), or intentional updates. One update per environment step, no replay buffer, no target network, no batch.

    python stream_ac.py --env Hopper-v4                          # ObGD (--optimizer adaptive: its Adam-like variant)
    python stream_ac.py --env Hopper-v4 --optimizer intentional  # Intentional AC (SPEC.md 12)
    python stream_ac.py --env VisualDotReacher-v0                # from camera images (and proprioception)

Elsayed, Vasan and Mahmood, arXiv 2410.14606 (docs/algorithms.md 6; intentional updates: 11). Per step, S normalised,
A ~ N(mu(S), std(S)), std = softplus(.), R divided by the running std of the discounted return (--reward-scale):
delta = R + gamma (1 - terminated) V(S') - V(S); z_V <- gamma lambda z_V + grad V(S); z_pi <- gamma lambda z_pi +
grad [log pi(A|S) + eta sign(delta) H(pi(.|S))]; each network steps along delta z, its step size bounded by ObGD (or
set by the intended change). Both gradients use the pre-update parameters; traces restart at every episode end.
Departures from the authors' code: truncation bootstraps (Stream-X's terminates; intentional_ac.py bootstraps but keeps
its traces into the next episode, and has no time feature); the return trace restarts at 0 each episode; sparse init
keeps one weight per unit at least.
As theirs: log pi is the unclipped sample's, only the action sent is clipped. Images: one encoder for actor and
critic, trained by the critic (theirs: one each), 5.5 ms an update against 9.1 (docs/results.md).
"""
import functools
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
from incremental_utils.flags import (IntentionalArgs, PixelArgs, PlasticityArgs, RunArgs, check_args, fill_unset,
                                     flags_given, parse, resume_args, weight_decay_of)
from incremental_utils.gradients import grad_and_aux
from incremental_utils.metrics import MetricSums
from incremental_utils.observations import Observation, as_observation, zero_observation
from incremental_utils.optimizers import Intentional, ObGD
from incremental_utils.plasticity import Plasticity, trunk_outputs
from incremental_utils.run import Run

ALGO = "stream_ac"
# Each optimizer's step sizes (actor, critic), the Stream-X and intentional-updates papers'; a flag given wins.
STEP_SIZES = {"obgd": (1.0, 1.0), "adaptive": (1.0, 1.0), "intentional": (0.05, 0.5)}


@dataclass
class Args(RunArgs, PixelArgs, PlasticityArgs, IntentionalArgs):
    actor_lr: Optional[float] = None
    """the actor's step size: ObGD's alpha; intentional: eta, the intended change; unset: the optimizer's default"""
    critic_lr: Optional[float] = None
    """the critic's step size likewise; unset: 1.0 (obgd, adaptive) or 0.5 (intentional)"""
    gamma: float = 0.99
    """discount factor"""
    trace_lambda: float = 0.8
    """lambda of the eligibility traces"""
    kappa_policy: float = 3.0
    """ObGD's overshooting bound kappa for the actor"""
    kappa_value: float = 2.0
    """ObGD's overshooting bound kappa for the critic"""
    entropy_coef: float = 0.01
    """entropy coefficient eta"""
    hidden_size: int = 128
    """width of the two hidden layers of actor and critic"""
    sparsity: float = 0.9
    """fraction of each unit's incoming weights set to zero at initialisation"""
    optimizer: Literal["obgd", "adaptive", "intentional"] = "obgd"
    """obgd; adaptive: traces over the RMS of delta z (the paper's Adam-like one); intentional: intentional updates"""
    beta2: float = 0.999
    """adaptive, intentional: decay of the second-moment estimate (of delta z; of the gradient)"""

    obs_norm: bool = True
    """normalise observations with running (Welford) mean and variance"""
    reward_scale: bool = True
    """divide rewards by the running standard deviation of the discounted return trace"""
    time_feature: bool = True
    """append the time within the episode (-0.5 at reset, +1/time limit per step) to the observation"""


# ------------------------------------- statistics (as in avg.py: all learner state is parameters and buffers)
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
        """(x - mean) / sqrt(var + 1e-8); the prior (0, 1) until two samples (one's own mean would make it zero)."""
        mean = torch.where(self.count > 1, self.mean, 0.0)
        return (x - mean) / (self.var() + 1e-8).sqrt()


class RewardScaler(nn.Module):
    """R / sqrt(Var[u] + 1e-8), u <- gamma u + R, Var over every step seen (this one too); no mean subtracted."""

    def __init__(self, gamma):
        super().__init__()
        self.gamma = gamma
        self.stats = RunningMeanVar()
        self.register_buffer("trace", torch.zeros(1, dtype=torch.float64))

    def forward(self, reward):
        self.trace.copy_(self.gamma * self.trace + reward.double())
        self.stats.update(self.trace)
        return (reward.double() / (self.stats.var() + 1e-8).sqrt()).float().reshape(())

    def end_episode(self):
        self.trace.zero_()


# ------------------------------------------------------------------------------------------------ networks
def sparse_init_(weight, sparsity, generator=None):
    """U(+-1/sqrt(fan_in)), then ceil(sparsity fan_in) (at most fan_in - 1) of each unit's inputs zeroed (a conv's unit:
    an output channel). Returns the weight."""
    rows = weight.view(weight.shape[0], -1)
    fan_in = rows.shape[1]
    n_zero = min(math.ceil(round(sparsity * fan_in, 9)), fan_in - 1)  # round: 0.9 * 130 is 117.00000000000001
    with torch.no_grad():
        weight.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator)
        for row in rows:
            row[torch.randperm(fan_in, generator=generator)[:n_zero]] = 0
    return weight


def sparse_row(weight, row, generator, sparsity):
    """A fresh sparse-initialised row for weight[row] (continual backprop's replaced unit)."""
    weight[row] = sparse_init_(torch.empty(1, weight.shape[1]), sparsity, generator)[0]


class LayerNormAll(nn.Module):
    """LayerNorm without learnable affine over all of one sample's features (a whole feature map)."""

    def forward(self, x):
        return F.layer_norm(x, x.shape)


def trunk(obs_shape, hidden):
    """Vectors: two hidden layers, each Linear -> LayerNorm without learnable affine -> LeakyReLU. MinAtar's 10x10xC
    planes (channels last) or Atari's stacked frames (the discrete variant): stream_q.py's convolutions, then one such
    layer."""
    if len(obs_shape) == 1:
        return nn.Sequential(nn.Linear(obs_shape[0], hidden), nn.LayerNorm(hidden, elementwise_affine=False),
                             nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden, elementwise_affine=False),
                             nn.LeakyReLU())
    channels, size = obs_shape[0], obs_shape[1]  # channels first (observe() moves MinAtar's there)
    convs = [nn.Conv2d(channels, 16, 3)] if size <= 16 else [
        nn.Conv2d(channels, 32, 8, stride=5), nn.Conv2d(32, 64, 4, stride=3), nn.Conv2d(64, 64, 3, stride=2)]
    layers = [layer for conv in convs for layer in (conv, LayerNormAll(), nn.LeakyReLU())] + [nn.Flatten(0)]
    flat = nn.Sequential(*layers)(torch.zeros(channels, size, size)).numel()
    return nn.Sequential(*layers, nn.Linear(flat, hidden), LayerNormAll(), nn.LeakyReLU())


def init_(module, sparsity):
    for name, layer in module.named_modules():  # an image encoder's convolutions keep torch's initialisation
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and not name.startswith("encoder."):
            sparse_init_(layer.weight, sparsity)
            nn.init.zeros_(layer.bias)
    module.requires_grad_(False)  # updated in place by ObGD; gradients come from grad_and_aux


class Actor(nn.Module):
    """Gaussian policy N(mu(S), std(S)^2), std = softplus of a linear head, unsquashed; or (n_actions) softmax(logits).
    Images: its own encoder, or (shared) the critic's, read without a gradient: the critic's trace trains it."""

    def __init__(self, obs_shape, act_dim, hidden, sparsity, n_actions=None, encoder=None, shared=None):
        super().__init__()
        self.encoder = encoder
        self.__dict__["shared"] = shared  # the critic's encoder, not a part of the actor: its parameters are not ours
        self.trunk = trunk(obs_shape, hidden)
        if n_actions:
            self.logits = nn.Linear(hidden, n_actions)
        else:
            self.mu, self.std = nn.Linear(hidden, act_dim), nn.Linear(hidden, act_dim)
        init_(self, sparsity)

    def forward(self, obs, augment=False, hidden=None):  # hidden: a list that receives each hidden layer's units
        features = trunk_outputs(self.trunk, network_input(self.encoder or self.shared, obs, augment), hidden)
        if hasattr(self, "logits"):
            return self.logits(features).log_softmax(-1), None
        return self.mu(features), F.softplus(self.std(features))


class Critic(nn.Module):
    """State value V(S)."""

    def __init__(self, obs_shape, hidden, sparsity, encoder=None):
        super().__init__()
        self.encoder = encoder
        self.trunk = trunk(obs_shape, hidden)
        self.v = nn.Linear(hidden, 1)
        init_(self, sparsity)

    def forward(self, obs, augment=False, hidden=None):
        return self.v(trunk_outputs(self.trunk, network_input(self.encoder, obs, augment), hidden)).squeeze(-1)


# ------------------------------------------------------------------------------------------------- learner
class StepInputs(NamedTuple):
    """What one update reads, by name (built by step_inputs(), the same way for every step and for the compiler)."""
    obs: torch.Tensor           # S, normalised, with its time feature
    sample: torch.Tensor        # A as drawn (unclipped; discrete: the action's index)
    raw_next_obs: torch.Tensor  # S' as the environment gave it (float64; images: an Observation)
    reward: torch.Tensor        # R
    terminated: torch.Tensor    # 1.0 if S' ends the task, else 0.0; a time limit is not termination
    noise: torch.Tensor         # draws the next action: N(0, I), or U(0, 1) for a categorical draw
    perturbation: torch.Tensor = torch.zeros(0)  # --upgd: one N(0, 1) draw per parameter of actor and critic


class Acting(NamedTuple):
    """Where the agent is between steps, S and the action it takes there: what an update returns, and reset()."""
    action: torch.Tensor  # A for the environment (clipped to its bounds)
    sample: torch.Tensor  # A as drawn
    obs: torch.Tensor     # S, normalised, with its time feature
    ok: torch.Tensor      # false when the update that led here was not applied (a non-finite value)


def step_inputs(now, raw_next_obs, reward, terminated, noise, generator=None, pad=0, perturbations=0):
    """One update's inputs from where the agent is (`now`) and what the environment returned."""
    return StepInputs(now.obs, now.sample, as_observation(raw_next_obs, pad, generator), torch.tensor(float(reward)),
                      torch.tensor(float(terminated)), noise, torch.randn(perturbations, generator=generator))


class StreamAC(nn.Module):
    """The whole learner. forward() is one Stream AC(lambda) step; parameters and buffers are the complete state."""

    def __init__(self, obs_shape, act_low, act_high, args, time_limit=1000, n_actions=None, image_shape=None):
        """Continuous actions in [act_low, act_high] or n_actions discrete ones; obs_shape: the vector's (a camera's
        proprioception's) or MinAtar/Atari frames'; image_shape: (C, H, W) of a camera's frames."""
        super().__init__()
        obs_shape = (obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)
        self.time_feature = args.time_feature and len(obs_shape) == 1  # not for MinAtar/Atari frames
        self.channels_last = len(obs_shape) == 3 and obs_shape[-1] < obs_shape[0]  # MinAtar's planes
        self.augment, self.pad, (critic_encoder, actor_encoder), shared = camera_encoders(image_shape, args)
        in_shape = (obs_shape[0] + self.time_feature + (critic_encoder.features if image_shape else 0),) \
            if len(obs_shape) == 1 else (obs_shape[-1], *obs_shape[:2]) if self.channels_last else obs_shape
        self.discrete, act_dim = n_actions is not None, n_actions or len(act_low)
        self.actor = Actor(in_shape, act_dim, args.hidden_size, args.sparsity, n_actions, actor_encoder, shared)
        self.critic = Critic(in_shape, args.hidden_size, args.sparsity, critic_encoder)
        decay, upgd = args.gamma * args.trace_lambda, (args.upgd_sigma, args.upgd_beta_utility) if args.upgd else None
        self.actor_opt, self.critic_opt = [  # intentional: the policy's form normalises its delta
            Intentional(net, lr, decay, args.beta2, args.clip_mult, args.beta_clip, policy, args.beta_norm)
            if args.optimizer == "intentional" else ObGD(net, lr, kappa, decay, args.optimizer == "adaptive", args.beta2,
                                                          weight_decay=weight_decay_of(args), upgd=upgd)
            for net, lr, kappa, policy in ((self.actor, args.actor_lr, args.kappa_policy, True),
                                           (self.critic, args.critic_lr, args.kappa_value, False))]
        heads = ("logits",) if self.discrete else ("mu", "std")
        self.plasticity = Plasticity({"actor": (self.actor, self.actor.trunk, heads, self.actor_opt),
                                      "critic": (self.critic, self.critic.trunk, ("v",), self.critic_opt)}, args,
                                     functools.partial(sparse_row, sparsity=args.sparsity))
        self.obs_stats = RunningMeanVar(obs_shape)
        self.reward_scaler = RewardScaler(args.gamma)
        self.eta, self.gamma = args.entropy_coef, args.gamma
        self.obs_norm, self.reward_scale = args.obs_norm, args.reward_scale
        self.time_limit = time_limit  # of the time feature, -0.5 + t / time_limit
        self.register_buffer("episode_step", torch.zeros(1, dtype=torch.float64))  # t, the time feature's counter
        if not self.discrete:
            self.register_buffer("action_low", torch.as_tensor(act_low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(act_high, dtype=torch.float32))
        self.metrics = MetricSums("losses/critic_loss", "losses/actor_loss", "health/entropy", "health/abs_v",
                                  "health/reward_std", *(f"health/{net}_{name}" for net in ("actor", "critic")
                                                         for name in self.actor_opt.health_names))

    def observe(self, raw_obs, t, learn=True):
        """Normalises the observation (algorithms.md 2; statistics updated if `learn`; of images only the
        proprioception), then appends the time feature."""
        if isinstance(raw_obs, Observation):
            return Observation(raw_obs.image, self.observe(raw_obs.vector, t, learn), raw_obs.shift)
        obs = raw_obs.float()
        if self.obs_norm:
            if learn:
                self.obs_stats.update(raw_obs.double())
            obs = self.obs_stats.normalize(raw_obs.double()).float()
        if self.channels_last:
            return obs.movedim(-1, 0)
        return torch.cat([obs, t.reshape(1).float()]) if self.time_feature else obs

    def act(self, obs, noise):
        """The action for the environment (clipped to its bounds) and the sample A; discrete: by inverse CDF, twice."""
        mu, std = self.actor(obs)
        if self.discrete:
            sample = (mu.exp().cumsum(-1) < noise).sum(-1).clamp_max(mu.shape[-1] - 1)
            return sample, sample
        sample = mu + std * noise
        return torch.clamp(sample, self.action_low, self.action_high), sample

    def log_prob_and_entropy(self, policy, sample):
        """log pi(A|S) and the entropy H(pi(.|S)) of the Gaussian, or (discrete) of the categorical."""
        mu, std = policy
        if self.discrete:  # mu holds log-probabilities
            return mu.gather(-1, sample.reshape(1)).squeeze(-1), -(mu.exp() * mu).sum(-1)
        log_prob = (-0.5 * ((sample - mu) / std).square() - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_prob, (std.log() + 0.5 * (1 + math.log(2 * math.pi))).sum(-1)

    @torch.no_grad()
    def evaluation_action(self, raw_obs, episode_step, generator=None):
        """The action for raw_obs without learning (statistics frozen): the clipped mean (the most probable action),
        or a sample with a generator."""
        obs = self.observe(as_observation(raw_obs), torch.tensor(episode_step / self.time_limit - 0.5), learn=False)
        if self.discrete:
            return self.actor(obs)[0].argmax() if generator is None else \
                self.act(obs, torch.rand((), generator=generator))[0]
        noise = torch.zeros(self.action_low.shape) if generator is None else torch.randn(self.action_low.shape,
                                                                                          generator=generator)
        return self.act(obs, noise)[0]

    def objectives(self, params, obs, sample, next_obs, reward, discount, hidden):  # hidden: lists, for plasticity
        actor_params, critic_params = params
        v = torch.func.functional_call(self.critic, critic_params, (obs, self.augment, hidden["critic"]))
        with torch.no_grad():
            next_v = self.critic(next_obs)
        delta = (reward + discount * next_v - v).detach()
        policy = torch.func.functional_call(self.actor, actor_params, (obs, self.augment, hidden["actor"]))
        log_pi, ent = self.log_prob_and_entropy(policy, sample)
        # The two networks share no parameter, so one backward pass of the sum gives each its own gradient:
        # grad V(S) for the critic, grad [log pi + eta sign(delta) H] for the actor.
        actor_loss = -(delta * log_pi + self.eta * delta.abs() * ent)
        return v + log_pi + self.eta * torch.sign(delta) * ent, (delta, actor_loss.detach(), ent.detach(), v.detach())

    def acting(self, obs, noise, ok=True):
        return Acting(*self.act(obs, noise), obs, torch.tensor(ok))

    def forward(self, s: StepInputs):
        """One update on (S, A, R, S') (algorithms.md 6; not applied if not finite, ok=False), then the next action."""
        self.episode_step += 1
        next_obs = self.observe(s.raw_next_obs, self.episode_step / self.time_limit - 0.5)
        reward = self.reward_scaler(s.reward) if self.reward_scale else s.reward
        reward_std = (self.reward_scaler.stats.var() + 1e-8).sqrt().float().reshape(())  # 1 when not scaling
        discount = self.gamma * (1.0 - s.terminated)
        actor_params, critic_params = dict(self.actor.named_parameters()), dict(self.critic.named_parameters())
        hidden = {"actor": [], "critic": []} if self.plasticity.active else {"actor": None, "critic": None}
        (actor_grads, critic_grads), (delta, actor_loss, ent, v) = grad_and_aux(
            self.objectives, (actor_params, critic_params), s.obs, s.sample, next_obs, reward, discount, hidden)
        noise = s.perturbation.split([self.actor_opt.noise_size, self.critic_opt.noise_size])  # --upgd
        actor_step = self.actor_opt.propose(actor_grads, delta, params=actor_params, noise=noise[0])
        critic_step = self.critic_opt.propose(critic_grads, delta, params=critic_params, noise=noise[1])
        # The norms sum every trace entry: finite norms mean finite traces, hence finite updates.
        ok = torch.isfinite(delta + actor_loss + actor_step["norm"] + critic_step["norm"])
        self.actor_opt.apply(actor_params, actor_step, ok)
        self.critic_opt.apply(critic_params, critic_step, ok)
        self.plasticity.record(ok, hidden if self.plasticity.active else None)
        self.metrics.add(ok, {"losses/critic_loss": delta.square(), "losses/actor_loss": actor_loss,
                              "health/entropy": ent, "health/abs_v": v.abs(), "health/reward_std": reward_std,
                              **{f"health/{net}_{name}": value for net, step in (("actor", actor_step),
                                 ("critic", critic_step)) for name, value in step["health"].items()}})
        return Acting(*self.act(next_obs, s.noise), next_obs, ok)

    def end_episode(self):
        """Traces, the return trace and the time feature restart at every episode end (termination or truncation)."""
        self.episode_step.zero_()
        self.actor_opt.end_episode()
        self.critic_opt.end_episode()
        self.reward_scaler.end_episode()


def make_learner(env, args):
    """The learner for env's spaces (main() and scripts/evaluate.py build it the same way)."""
    fill_unset(args, dict(zip(("actor_lr", "critic_lr"), STEP_SIZES[args.optimizer])), args.optimizer)  # tests too
    time_limit = (env.spec.max_episode_steps if env.spec is not None else None) or 1000
    time_limit = math.ceil(time_limit / (args.action_repeat or 1))  # in the agent's steps
    space, obs_space = env.action_space, env.observation_space
    if isinstance(space, gym.spaces.Discrete):
        return StreamAC(obs_space.shape, None, None, args, time_limit, int(space.n))
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    if isinstance(obs_space, gym.spaces.Dict):  # images: {"image", "proprio"} (incremental_utils/image_envs.py)
        return StreamAC(obs_space["proprio"].shape, low, high, args, time_limit, image_shape=obs_space["image"].shape)
    return StreamAC(obs_space.shape, low, high, args, time_limit)


# ---------------------------------------------------------------------------------------------------- run
def policy_parts(agent):
    """The modules a saved policy holds (--save-model, --init-from, scripts/evaluate.py)."""
    return {"actor": agent.actor, "critic": agent.critic, "obs_stats": agent.obs_stats}


def main(args, given=frozenset()):
    args, checkpoint = resume_args(args, given, ALGO)
    source = fill_unset(args, dict(zip(("actor_lr", "critic_lr"), STEP_SIZES[args.optimizer])), args.optimizer)
    check_args(args, positive=("hidden_size", "actor_lr", "critic_lr", "kappa_policy", "kappa_value"),
               ranges={"gamma": lambda g: 0 <= g <= 1, "trace_lambda": lambda l: 0 <= l <= 1, "entropy_coef": lambda e:
                       e >= 0, "sparsity": lambda s: 0 <= s < 1, "beta2": lambda b: 0 <= b < 1})
    run = Run(ALGO, args, checkpoint)  # seeding; the run directory once start() has accepted the environment
    env = run.make_env(action_spaces=(gym.spaces.Box, gym.spaces.Discrete), finite_action_bounds=False,
                       images=("frames", "camera"))  # continuous actions are clipped, not squashed
    agent = make_learner(env, args)
    blank, noise_shape = zero_observation(env.observation_space), () if agent.discrete else env.action_space.shape

    def draw_noise():  # U(0, 1) for a categorical draw, N(0, I) for a Gaussian one
        return (torch.rand if agent.discrete else torch.randn)(noise_shape, generator=run.noise_gen)
    hyperparams = {k: getattr(args, k) for k in ("optimizer", "actor_lr", "critic_lr", "gamma", "trace_lambda",
                                                 "kappa_policy", "kappa_value", "entropy_coef", "weight_decay", "upgd",
                                                 "reinit")}
    run.start(agent, f"{hyperparams} ({source})", policy=agent.evaluation_action, parts=policy_parts(agent))
    if run.resumed:
        agent.end_episode()  # the partial episode at a mid-episode save is dropped
    first = agent.acting(agent.observe(as_observation(blank), torch.tensor(-0.5), learn=False),
                         torch.zeros(noise_shape))
    perturbations = agent.actor_opt.noise_size + agent.critic_opt.noise_size  # --upgd's noise, drawn each step
    update = run.compile(agent, step_inputs(first, blank, 0.0, False, torch.zeros(noise_shape), None, agent.pad,
                                            perturbations))

    def reset():
        obs = agent.observe(as_observation(run.reset_env(), agent.pad, run.noise_gen), torch.tensor(-0.5))
        return agent.acting(obs, draw_noise())

    with run.guard():  # Ctrl-C, SIGTERM, a non-finite value, a robot fault or a crash: saved, closed, reported
        now = reset() if run.running() else None  # Ctrl-C while connecting or compiling: the robot never moves
        while run.running():
            raw_next_obs, reward, terminated, truncated, info = env.step(now.action.numpy())
            seen = run.count_step(reward, raw_next_obs)  # the run's counters; False: a non-finite value, skipped
            # ALGO LOGIC: one Stream AC(lambda) update on (S, A, R, S'), and the next action from the updated actor
            inputs = step_inputs(now, raw_next_obs, reward, terminated, draw_noise(), run.noise_gen, agent.pad,
                                 perturbations)
            out = run.step(update, inputs) if seen else None
            agent.plasticity.replace_units(run.noise_gen)  # --reinit cbp: outside the update (a varying number)
            # TRY NOT TO MODIFY: logging, episode ends (a skipped step ends its episode), checkpoints
            run.log_window()
            if run.episode_over(out, terminated, truncated):
                agent.end_episode()
                run.end_episode(info)  # and --eval-every, --checkpoint-every
                now = reset()
            else:
                now = out
    return run.finish()


if __name__ == "__main__":
    cli_args = parse(Args)
    with one_line_errors(ALGO):
        sys.exit(main(cli_args, flags_given(sys.argv[1:], Args)))
