"""Stream AC(lambda): streaming actor-critic with eligibility traces and overshooting-bounded gradient descent
(ObGD). One update per environment step, no replay buffer, no target network, no batch.

    python stream_ac.py --env Hopper-v4                  # --optimizer adaptive: the Adam-like variant
    python stream_ac.py --env VisualDotReacher-v0        # from camera images (and proprioception)

Elsayed, Vasan and Mahmood, arXiv 2410.14606; definitions in docs/algorithms.md 6. Per step, with S the normalised
observation, A ~ N(mu(S), std(S)), std = softplus(.), u <- gamma u + R the episode's discounted return so far:
    R <- R / std(u) (--reward-scale);  delta = R + gamma (1 - terminated) V(S') - V(S)
    z_V <- gamma lambda z_V + grad V(S);  z_pi <- gamma lambda z_pi + grad [log pi(A|S) + eta sign(delta) H(pi(.|S))]
    for each network: M = alpha kappa max(|delta|, 1) ||z||_1, theta <- theta + alpha / max(M, 1) delta z
Both gradients use the pre-update parameters; traces and u restart at every episode end. --optimizer adaptive uses
z / sqrt(v_hat + eps) for z, v_hat the bias-corrected running mean of (delta z)^2 (beta2 0.999).
Departures from the authors' stream_ac_continuous.py (or choices where algorithms.md is silent): truncation bootstraps
(theirs terminates); u restarts at 0 each episode (theirs carries an episode's last reward over); sparse init keeps
one weight per unit at least (theirs zeroes a row for fan_in < 10). As theirs: log pi is the unclipped sample's
density, only the action sent is clipped; the time feature -0.5 + t / limit (1000 if undeclared) follows normalisation.
Images: one encoder for actor and critic, trained by the critic (theirs has one per network): an update costs 5.5 ms
against 9.1 with one each on VisualDotReacher-v0, and with AVG the shared one learned sooner (docs/results.md).
"""
import math
import sys
from dataclasses import dataclass
from typing import Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from incremental_utils.errors import one_line_errors
from incremental_utils.flags import PixelArgs, RunArgs, check_args, flags_given, parse, resume_args
from incremental_utils.gradients import grad_and_aux
from incremental_utils.metrics import MetricSums
from incremental_utils.observations import Observation, as_observation, zero_observation
from incremental_utils.optimizers import ObGD
from incremental_utils.run import Run

ALGO = "stream_ac"


@dataclass
class Args(RunArgs, PixelArgs):
    actor_lr: float = 1.0
    """step size alpha of the actor's ObGD (the paper: 1.0)"""
    critic_lr: float = 1.0
    """step size alpha of the critic's ObGD (the paper: 1.0)"""
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
    optimizer: Literal["obgd", "adaptive"] = "obgd"
    """obgd, or adaptive: traces divided by the running RMS of delta*z (the paper's Adam-like variant)"""
    beta2: float = 0.999
    """adaptive: decay of the second-moment estimate of delta*z"""

    obs_norm: bool = True
    """normalise observations with running (Welford) mean and variance"""
    reward_scale: bool = True
    """divide rewards by the running standard deviation of the discounted return trace"""
    time_feature: bool = True
    """append the time within the episode (-0.5 at reset, +1/time limit per step) to the observation"""
    shared_encoder: bool = True
    """images: one encoder for actor and critic, trained by the critic (1.7x faster than one each; docs/results.md)"""
    augment: Literal["none", "shift"] = "none"
    """images: random shifts of an update's S by up to 2% of the image's side (the acting pass sees the centre)"""


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
def sparse_init_(weight, sparsity):
    """U(+-1/sqrt(fan_in)), then ceil(sparsity fan_in) (at most fan_in - 1) of each unit's inputs zeroed (a conv's unit:
    an output channel)."""
    rows = weight.view(weight.shape[0], -1)
    fan_in = rows.shape[1]
    n_zero = min(math.ceil(round(sparsity * fan_in, 9)), fan_in - 1)  # round: 0.9 * 130 is 117.00000000000001
    with torch.no_grad():
        weight.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        for row in rows:
            row[torch.randperm(fan_in)[:n_zero]] = 0


class LayerNormAll(nn.Module):
    """LayerNorm without learnable affine over all of one sample's features (a whole feature map)."""

    def forward(self, x):
        return F.layer_norm(x, x.shape)


class PixelEncoder(nn.Module):
    """Images to 128 features (SPEC.md 10, the authors' visual Stream AC encoder): pixels / 255, three 3x3 convolutions
    of stride 2 (32, 64, 64 channels, ReLU between), then a spatial softmax: each channel's expected (x, y) on a [-1, 1]
    grid. With `pad` > 0 it sees a crop `pad` smaller each side: at the shift (--augment shift), else the centre."""

    def __init__(self, image_shape, pad=0):
        super().__init__()
        channels, height, width = image_shape
        self.pad, self.size, self.features = pad, (height - 2 * pad, width - 2 * pad), 2 * 64
        # The last convolution has no bias: a constant per channel cancels in the softmax (its gradient: rounding noise)
        self.convs = nn.Sequential(nn.Conv2d(channels, 32, 3, stride=2), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2),
                                   nn.ReLU(), nn.Conv2d(64, 64, 3, stride=2, bias=False))
        h, w = self.convs(torch.zeros(1, channels, *self.size)).shape[-2:]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], -1))  # (h * w, 2), x along the width

    def forward(self, image, shift=None):
        (h, w), pad, batch = self.size, self.pad, image.dim() == 4
        image = image[..., pad:pad + h, pad:pad + w] if shift is None else (  # a gather: the offset is an input
            image.index_select(-2, shift[0] + torch.arange(h)).index_select(-1, shift[1] + torch.arange(w)))
        maps = self.convs(image.float() / 255 if batch else image.float().unsqueeze(0) / 255)
        keypoints = (maps.flatten(-2).softmax(-1) @ self.grid).flatten(-2)  # each channel's expected x and y
        return keypoints if batch else keypoints.squeeze(0)


def network_input(encoder, obs, augment=False):
    """What a trunk reads: the observation itself, or for images the encoder's features beside the proprioception."""
    return obs if encoder is None else torch.cat([encoder(obs.image, obs.shift if augment else None), obs.vector], -1)


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

    def forward(self, obs, augment=False):
        features = self.trunk(network_input(self.encoder or self.shared, obs, augment))
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

    def forward(self, obs, augment=False):
        return self.v(self.trunk(network_input(self.encoder, obs, augment))).squeeze(-1)


# ------------------------------------------------------------------------------------------------- learner
class StepInputs(NamedTuple):
    """What one update reads, by name (built by step_inputs(), the same way for every step and for the compiler)."""
    obs: torch.Tensor           # S, normalised, with its time feature
    sample: torch.Tensor        # A as drawn (unclipped; discrete: the action's index)
    raw_next_obs: torch.Tensor  # S' as the environment gave it (float64; images: an Observation)
    reward: torch.Tensor        # R
    terminated: torch.Tensor    # 1.0 if S' ends the task, else 0.0; a time limit is not termination
    noise: torch.Tensor         # draws the next action: N(0, I), or U(0, 1) for a categorical draw


class Acting(NamedTuple):
    """Where the agent is between steps, S and the action it takes there: what an update returns, and reset()."""
    action: torch.Tensor  # A for the environment (clipped to its bounds)
    sample: torch.Tensor  # A as drawn
    obs: torch.Tensor     # S, normalised, with its time feature
    ok: torch.Tensor      # false when the update that led here was not applied (a non-finite value)


def step_inputs(now, raw_next_obs, reward, terminated, noise, generator=None, pad=0):
    """One update's inputs from where the agent is (`now`) and what the environment returned."""
    return StepInputs(now.obs, now.sample, as_observation(raw_next_obs, pad, generator), torch.tensor(float(reward)),
                      torch.tensor(float(terminated)), noise)


class StreamAC(nn.Module):
    """The whole learner. forward() is one Stream AC(lambda) step; parameters and buffers are the complete state."""

    def __init__(self, obs_shape, act_low, act_high, args, time_limit=1000, n_actions=None, image_shape=None):
        """Continuous actions in [act_low, act_high], or n_actions discrete ones. obs_shape: the vector's (with a
        camera, the proprioception's) or MinAtar/Atari frames' shape; image_shape: (C, H, W) of a camera's frames."""
        super().__init__()
        obs_shape = (obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)
        self.time_feature = args.time_feature and len(obs_shape) == 1  # not for MinAtar/Atari frames
        self.channels_last = len(obs_shape) == 3 and obs_shape[-1] < obs_shape[0]  # MinAtar's planes
        self.augment = image_shape is not None and args.augment == "shift"
        self.pad = round(0.02 * image_shape[-1]) if self.augment else 0
        encoders = [PixelEncoder(image_shape, self.pad) for _ in range(1 if args.shared_encoder else 2)] \
            if image_shape is not None else [None, None]
        in_shape = (obs_shape[0] + self.time_feature + (encoders[0].features if image_shape else 0),) \
            if len(obs_shape) == 1 else (obs_shape[-1], *obs_shape[:2]) if self.channels_last else obs_shape
        self.discrete, act_dim = n_actions is not None, n_actions or len(act_low)
        self.actor = Actor(in_shape, act_dim, args.hidden_size, args.sparsity, n_actions,
                           encoders[1] if len(encoders) > 1 else None, encoders[0] if len(encoders) == 1 else None)
        self.critic = Critic(in_shape, args.hidden_size, args.sparsity, encoders[0])
        adaptive, decay = args.optimizer == "adaptive", args.gamma * args.trace_lambda
        self.actor_opt = ObGD(self.actor, args.actor_lr, args.kappa_policy, decay, adaptive, args.beta2)
        self.critic_opt = ObGD(self.critic, args.critic_lr, args.kappa_value, decay, adaptive, args.beta2)
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
                                  "health/actor_step_size", "health/critic_step_size", "health/actor_trace_l1",
                                  "health/critic_trace_l1", "health/reward_std")

    def observe(self, raw_obs, t, learn=True):
        """Adds the observation to the running statistics (unless not `learn`), normalises it (algorithms.md 2),
        appends the time feature. Images: the proprioception so; pixels never, the encoder scales them to [0, 1]."""
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
        """The environment's action for raw_obs without learning (--eval-every, scripts/evaluate.py): observation
        statistics frozen; the clipped mean, or a sample when a generator is given."""
        obs = self.observe(as_observation(raw_obs), torch.tensor(episode_step / self.time_limit - 0.5), learn=False)
        if self.discrete:  # the most probable action, or a sample
            return self.actor(obs)[0].argmax() if generator is None else \
                self.act(obs, torch.rand((), generator=generator))[0]
        noise = torch.zeros(self.action_low.shape) if generator is None else torch.randn(self.action_low.shape,
                                                                                          generator=generator)
        return self.act(obs, noise)[0]

    def objectives(self, params, obs, sample, next_obs, reward, discount):
        actor_params, critic_params = params
        v = torch.func.functional_call(self.critic, critic_params, (obs, self.augment))
        with torch.no_grad():
            next_v = self.critic(next_obs)
        delta = (reward + discount * next_v - v).detach()
        policy = torch.func.functional_call(self.actor, actor_params, (obs, self.augment))
        log_pi, ent = self.log_prob_and_entropy(policy, sample)
        # The two networks share no parameter, so one backward pass of the sum gives each its own gradient:
        # grad V(S) for the critic, grad [log pi + eta sign(delta) H] for the actor.
        actor_loss = -(delta * log_pi + self.eta * delta.abs() * ent)
        return v + log_pi + self.eta * torch.sign(delta) * ent, (delta, actor_loss.detach(), ent.detach(), v.detach())

    def acting(self, obs, noise, ok=True):
        return Acting(*self.act(obs, noise), obs, torch.tensor(ok))

    def forward(self, s: StepInputs):
        """One Stream AC(lambda) update on (S, A, R, S') (algorithms.md 6), then the next action from the updated
        actor. An update with a non-finite value is not applied (ok=False)."""
        self.episode_step += 1
        next_obs = self.observe(s.raw_next_obs, self.episode_step / self.time_limit - 0.5)
        reward = self.reward_scaler(s.reward) if self.reward_scale else s.reward
        reward_std = (self.reward_scaler.stats.var() + 1e-8).sqrt().float().reshape(())  # 1 when not scaling
        discount = self.gamma * (1.0 - s.terminated)
        actor_params, critic_params = dict(self.actor.named_parameters()), dict(self.critic.named_parameters())
        (actor_grads, critic_grads), (delta, actor_loss, ent, v) = grad_and_aux(
            self.objectives, (actor_params, critic_params), s.obs, s.sample, next_obs, reward, discount)
        actor_step = self.actor_opt.propose(actor_grads, delta)
        critic_step = self.critic_opt.propose(critic_grads, delta)
        # The L1 norms sum every trace entry: finite norms mean finite traces, hence finite updates.
        ok = torch.isfinite(delta + actor_loss + actor_step["norm"] + critic_step["norm"])
        self.actor_opt.apply(actor_params, actor_step, delta, ok)
        self.critic_opt.apply(critic_params, critic_step, delta, ok)
        self.metrics.add(ok, {"losses/critic_loss": delta.square(), "losses/actor_loss": actor_loss,
                              "health/entropy": ent, "health/abs_v": v.abs(), "health/reward_std": reward_std,
                              "health/actor_step_size": actor_step["step_size"],
                              "health/actor_trace_l1": actor_step["norm"],
                              "health/critic_step_size": critic_step["step_size"],
                              "health/critic_trace_l1": critic_step["norm"]})
        return Acting(*self.act(next_obs, s.noise), next_obs, ok)

    def end_episode(self):
        """Traces, the return trace and the time feature restart at every episode end (termination or truncation)."""
        self.episode_step.zero_()
        self.actor_opt.end_episode()
        self.critic_opt.end_episode()
        self.reward_scaler.end_episode()


def make_learner(env, args):
    """The learner for env's spaces (main() and scripts/evaluate.py build it the same way)."""
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
    hyperparams = {k: getattr(args, k) for k in ("actor_lr", "critic_lr", "gamma", "trace_lambda", "kappa_policy",
                                                 "kappa_value", "entropy_coef", "optimizer")}
    run.start(agent, str(hyperparams), policy=agent.evaluation_action, parts=policy_parts(agent))
    if run.resumed:
        agent.end_episode()  # the partial episode at a mid-episode save is dropped
    first = agent.acting(agent.observe(as_observation(blank), torch.tensor(-0.5), learn=False),
                         torch.zeros(noise_shape))
    update = run.compile(agent, step_inputs(first, blank, 0.0, False, torch.zeros(noise_shape), None, agent.pad))

    def reset():
        obs = agent.observe(as_observation(run.reset_env(), agent.pad, run.noise_gen), torch.tensor(-0.5))
        return agent.acting(obs, draw_noise())

    with run.guard():  # Ctrl-C, SIGTERM, a non-finite value, a robot fault or a crash: saved, closed, reported
        now = reset() if run.running() else None  # Ctrl-C while connecting or compiling: the robot never moves
        while run.running():
            raw_next_obs, reward, terminated, truncated, info = env.step(now.action.numpy())
            seen = run.count_step(reward, raw_next_obs)  # the run's counters; False: a non-finite value, skipped
            # ALGO LOGIC: one Stream AC(lambda) update on (S, A, R, S'), and the next action from the updated actor
            inputs = step_inputs(now, raw_next_obs, reward, terminated, draw_noise(), run.noise_gen, agent.pad)
            out = run.step(update, inputs) if seen else None
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
