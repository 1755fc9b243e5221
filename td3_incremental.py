"""TD3 with a replay buffer of any size: TD3-1 (buffer and batch of 1: every update uses the latest
transition) by default, batch TD3 with the usual settings, and every size in between.

    python td3_incremental.py --env Hopper-v4                       # TD3-1
    python td3_incremental.py --env Hopper-v4 --obs-norm --feature-norm penultimate --scale-td   # TD3-1+
    python td3_incremental.py --env Hopper-v4 --buffer-size 1000000 --batch-size 256 --learning-starts 25000

A deterministic actor with Gaussian exploration noise, twin critics, target policy smoothing, delayed actor and
target updates (Fujimoto et al. 2018); one critic update per environment step. The AVG paper (arXiv
2411.15370) compares AVG with TD3-1 and batch TD3, and adds the three normalisation/scaling techniques to make
TD3-1+ (docs/algorithms.md 2-5).
"""
import copy
import json
import math
import os
import random
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

import robots  # registers UR5Reacher-v0 and Create2Mover-v0

ALGO = "td3_incremental"


@dataclass
class Args:
    env: str = "Hopper-v4"
    """gymnasium environment id (continuous actions), e.g. Hopper-v4, UR5Reacher-v0, Create2Mover-v0"""
    seed: int = 1
    """seed of the run (torch, numpy, random, environment)"""
    total_timesteps: int = 10_000_000
    """environment steps to run (the paper's runs: 10M)"""
    exp_name: str = ALGO
    """experiment name, part of the run name and the grouping key of scripts/plot.py"""
    run_name: Optional[str] = None
    """log under runs/RUN_NAME; unset: {env}__{exp_name}__{seed}__{unix time}"""

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

    compile: Literal["auto", "on", "off"] = "auto"
    """compile the per-step update to C++ (~20 s once, then cached); auto: on when total-timesteps >= 10000"""
    log_every: int = 1000
    """steps between loss / health logs"""
    track: bool = False
    """log to Weights & Biases too (works with WANDB_MODE=offline)"""
    wandb_project_name: str = "incremental-rl"
    """wandb project"""
    wandb_entity: Optional[str] = None
    """wandb entity (team)"""
    save_model: bool = False
    """save the final actor and critics to runs/RUN_NAME/td3_incremental.model"""
    capture_video: bool = False
    """record videos of episodes to videos/RUN_NAME (needs rendering and moviepy)"""

    checkpoint_every: int = 0
    """write a checkpoint (replay buffer included) at the first episode end after every N steps (0: only on
    Ctrl-C/SIGTERM/NaN)"""
    keep_checkpoints: int = 3
    """how many checkpoints to keep"""
    resume: Optional[str] = None
    """continue the run saved in this checkpoint file or run directory"""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """on a NaN/inf loss, gradient, reward or observation: stop (saving the last good state) or skip the update"""

    robot_host: Optional[str] = None
    """UR5Reacher: IP of the real arm; unset: the simulated arm"""
    robot_port: Optional[str] = None
    """Create2Mover: serial device of the real robot, e.g. /dev/ttyUSB0; unset: the simulated robot"""
    realtime: bool = False
    """simulated robots: pace each step to the real robot's cycle"""


# ---------------------------------------------------------------------------------------------- statistics
# Every piece of learner state is a parameter or buffer of an nn.Module, so state_dict() is a complete
# checkpoint and compile_step() can trace the update with the state as graph inputs. Scalars are float64
# tensors of shape (1,).
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
TRACING = False  # true while compile_step() traces the update into a graph


class Linear(nn.Linear):
    """nn.Linear, written as multiply-and-sum while compile_step() traces an update on a small batch: this lets
    Inductor fuse the whole update into one C++ kernel, where calling MKL for each tiny matrix product costs
    more than the arithmetic. Large batches keep the matrix multiply. Same math either way."""

    def forward(self, x):
        if TRACING and (x.dim() == 1 or x.shape[0] <= 4):
            return (x.unsqueeze(-2) * self.weight).sum(-1) + self.bias
        return F.linear(x, self.weight, self.bias)


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
    return nn.Sequential(Linear(n_in, hidden), nn.ReLU(), Linear(hidden, hidden), nn.ReLU(), FeatureNorm(feature_norm))


class Actor(nn.Module):
    """Deterministic policy: A = tanh(head(features))."""

    def __init__(self, obs_dim, act_dim, hidden, feature_norm):
        super().__init__()
        self.trunk = mlp_trunk(obs_dim, hidden, feature_norm)
        self.head = Linear(hidden, act_dim)
        self.requires_grad_(False)  # PyTorch's default init; updated in place by Adam, gradients via grad_and_aux

    def forward(self, obs):
        return torch.tanh(self.head(self.trunk(obs)))


class Critic(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden, feature_norm):
        super().__init__()
        self.trunk = mlp_trunk(obs_dim + act_dim, hidden, feature_norm)
        self.q = Linear(hidden, 1)

    def forward(self, obs, action):
        return self.q(self.trunk(torch.cat([obs, action], -1))).squeeze(-1)


class TwinCritics(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden, feature_norm):
        super().__init__()
        self.q1, self.q2 = (Critic(obs_dim, act_dim, hidden, feature_norm) for _ in range(2))
        self.requires_grad_(False)

    def forward(self, obs, action):
        return self.q1(obs, action), self.q2(obs, action)


class ReplayBuffer(nn.Module):
    """The last `capacity` transitions in preallocated tensors (so they are learner state: checkpointed, and
    inputs of the compiled update). With capacity 1 it holds only the latest transition."""

    def __init__(self, capacity, obs_dim, act_dim):
        super().__init__()
        self.capacity = capacity
        for name, width in [("obs", obs_dim), ("action", act_dim), ("next_obs", obs_dim)]:
            self.register_buffer(name, torch.zeros(capacity, width))
        self.register_buffer("reward", torch.zeros(capacity))
        self.register_buffer("terminated", torch.zeros(capacity))
        self.register_buffer("added", torch.zeros(1, dtype=torch.int64))  # transitions ever added

    def add(self, obs, action, reward, next_obs, terminated):
        slot = self.added % self.capacity
        for buffer, value in [(self.obs, obs), (self.action, action), (self.reward, reward),
                              (self.next_obs, next_obs), (self.terminated, terminated)]:
            buffer.index_copy_(0, slot, value.unsqueeze(0))
        self.added += 1

    def draw(self, batch_size, generator):
        """`batch_size` indices drawn uniformly from the stored transitions, counting the one that the coming
        update adds first (so with capacity 1 the batch is that latest transition)."""
        stored = min(int(self.added) + 1, self.capacity)
        return torch.randint(stored, (batch_size,), generator=generator)

    def sample(self, indices):
        """The stored transitions at `indices`, drawn by the caller from [0, min(added, capacity))."""
        return self.obs[indices], self.action[indices], self.reward[indices], self.next_obs[indices], \
            self.terminated[indices]


class Adam(nn.Module):
    """torch.optim.Adam (no weight decay) written out so that it fuses into the compiled step. The moments
    live in zeroed copies of the network, under the parameters' own names. The update is applied only if `ok`
    is true, so a non-finite gradient never reaches the weights: eagerly it is skipped, and when traced for
    compiling every write is masked (a branch on a tensor cannot be traced; the mask fuses for free). With
    beta1 = 0 (the paper's usual choice) the first moment is the gradient itself and is not stored."""

    def __init__(self, network, lr, betas, eps=1e-8):
        super().__init__()
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.exp_avg_sq = copy.deepcopy(network).requires_grad_(False)
        self.exp_avg = copy.deepcopy(network).requires_grad_(False) if self.beta1 > 0 else None
        for moment in (self.exp_avg_sq, self.exp_avg):
            for p in moment.parameters() if moment is not None else []:
                p.zero_()
        self.register_buffer("beta1_power", torch.ones(1, dtype=torch.float64))
        self.register_buffer("beta2_power", torch.ones(1, dtype=torch.float64))

    def step(self, params, grads, ok):
        exp_avg_sq = dict(self.exp_avg_sq.named_parameters())
        exp_avg = dict(self.exp_avg.named_parameters()) if self.exp_avg is not None else None
        if not TRACING:
            if ok:
                self.eager_step(list(params.values()), [grads[k] for k in params], [exp_avg_sq[k] for k in params],
                                [exp_avg[k] for k in params] if exp_avg is not None else None)
            return

        def keep(new, old):
            return old.copy_(torch.where(ok, new, old))

        keep(self.beta1_power * self.beta1, self.beta1_power)
        keep(self.beta2_power * self.beta2, self.beta2_power)
        step_size = self.lr / (1 - self.beta1_power).float()
        bias_correction2_sqrt = (1 - self.beta2_power).sqrt().float()
        for name, param in params.items():
            grad = grads[name]
            v = keep(self.beta2 * exp_avg_sq[name] + (1 - self.beta2) * grad.square(), exp_avg_sq[name])
            m = grad if exp_avg is None else keep(self.beta1 * exp_avg[name] + (1 - self.beta1) * grad,
                                                   exp_avg[name])
            keep(param - step_size * m / (v.sqrt() / bias_correction2_sqrt + self.eps), param)

    def eager_step(self, params, grads, exp_avg_sq, exp_avg):
        """The same update with foreach kernels: a few calls for all parameters instead of a dozen per tensor."""
        self.beta1_power *= self.beta1
        self.beta2_power *= self.beta2
        torch._foreach_mul_(exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - self.beta2)
        if exp_avg is not None:
            torch._foreach_lerp_(exp_avg, grads, 1 - self.beta1)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, (1 - self.beta2_power).sqrt().item())
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avg if exp_avg is not None else grads, denom,
                                value=-self.lr / (1 - self.beta1_power).item())


def grad_and_aux(loss_fn, params, *args):
    """Gradients of loss_fn w.r.t. the parameter dicts `params`, and its auxiliary outputs."""
    params = tuple({k: p.detach().requires_grad_() for k, p in d.items()} for d in params)
    with torch.enable_grad():
        loss, aux = loss_fn(params, *args)
        grads = iter(torch.autograd.grad(loss, [p for d in params for p in d.values()]))
    return tuple({k: next(grads) for k in d} for d in params), aux


# ------------------------------------------------------------------------------------------------- learner
def all_finite(loss, grads):
    """A weight's gradient sums outer products of its layer's inputs and its bias's per-sample gradients: when
    the loss and the bias gradients are finite, so are all gradients."""
    ok = torch.isfinite(loss)
    for name, grad in grads.items():
        if name.endswith("bias"):
            ok = ok & torch.isfinite(grad).all()
    return ok


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
        self.exploration_noise, self.policy_noise, self.noise_clip = (args.exploration_noise, args.policy_noise,
                                                                      args.noise_clip)
        self.obs_norm, self.scale_td = args.obs_norm, args.scale_td
        self.register_buffer("action_scale", torch.as_tensor((act_high - act_low) / 2, dtype=torch.float32))
        self.register_buffer("action_offset", torch.as_tensor((act_high + act_low) / 2, dtype=torch.float32))
        self.register_buffer("critic_updates", torch.zeros(1, dtype=torch.int64))
        # Running sums since the last log: critic loss, actor loss, |Q|, sigma, critic updates, actor updates.
        self.register_buffer("metrics", torch.zeros(6, dtype=torch.float64))

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

    def observe(self, obs, action, raw_next_obs, reward, terminated):
        """Normalises S', feeds the TD-error scale statistics and stores (S, A, R, S', terminated). Returns S'."""
        next_obs = self.normalize(raw_next_obs)
        self.td_scaler.update(reward.double(), (self.gamma * (1.0 - terminated)).double())
        self.replay.add(obs, action, reward, next_obs, terminated)
        return next_obs

    def critic_loss(self, params, obs, action, target, sigma):
        q1, q2 = torch.func.functional_call(self.critic, params[0], (obs, action))
        loss = (((q1 - target) / sigma).square() + ((q2 - target) / sigma).square()).mean()
        return loss, (loss.detach(), q1.detach().abs().mean())

    def actor_loss(self, params, obs):
        action = torch.func.functional_call(self.actor, params[0], (obs,))
        loss = -self.critic.q1(obs, action).mean()
        return loss, loss.detach()

    def forward(self, obs, action, raw_next_obs, reward, terminated, indices, smoothing_noise, next_noise):
        """Stores (S, A, R, S') and makes one TD3 critic update on the stored transitions at `indices` (the
        latest one for TD3-1); every --policy-delay updates also the actor (against the updated critics) and
        the targets. smoothing_noise is standard normal noise for the target policy smoothing, next_noise the
        exploration noise of the next action. Parts with a non-finite loss or gradient are not applied. The
        actor's gradient is computed on every step and applied on its turn only: one compiled graph serves all
        steps."""
        next_obs = self.observe(obs, action, raw_next_obs, reward, terminated)
        sigma = self.td_scaler.sigma() if self.scale_td else torch.ones(())
        batch_obs, batch_action, batch_reward, batch_next_obs, batch_terminated = self.replay.sample(indices)
        with torch.no_grad():
            smoothing = (self.policy_noise * smoothing_noise).clamp(-self.noise_clip, self.noise_clip)
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
        self.metrics += torch.stack([torch.where(ok, critic_loss, 0), torch.where(actors_turn, actor_loss, 0),
                                     torch.where(ok, abs_q, 0), torch.where(ok, sigma, 0), ok, actors_turn]).double()
        next_action, next_env_action = self.act(next_obs, next_noise)
        return next_action, next_env_action, next_obs, ok & actor_ok


def compile_step(learner, example_inputs):
    """Compiles learner.forward (one update) into a single call of Inductor-generated C++. make_fx traces the
    step, backward pass included, into a graph whose inputs are the learner's state tensors and the step's
    inputs; Inductor compiles it (cached on disk for later runs). Unlike torch.compile, the call checks no
    Dynamo guards: those cost about 50 of 190 microseconds per update here."""
    from torch.fx.experimental.proxy_tensor import make_fx
    import torch._inductor.config as inductor_config

    state = [*learner.parameters(), *learner.buffers()]
    names = [*dict(learner.named_parameters()), *dict(learner.named_buffers())]

    def step(*tensors):
        return torch.func.functional_call(learner, dict(zip(names, tensors)), tensors[len(names):])

    global TRACING
    TRACING = True
    try:
        graph = make_fx(step)(*[t.clone() for t in state], *example_inputs)
    finally:
        TRACING = False
    with inductor_config.patch(cpp_wrapper=True, memory_planning=True, compile_threads=1):
        compiled = torch._inductor.standalone_compile(graph, [*state, *example_inputs],
                                                      dynamic_shapes="from_example_inputs")
    return lambda *inputs: compiled(*state, *inputs)


def compile_or_fall_back(learner, example_inputs, args, writer):
    print("compiling the update (once; cached on disk for later runs)...")
    t0 = time.perf_counter()
    try:
        step = compile_step(learner, example_inputs)
    except Exception as e:  # no C++ compiler, an unsupported torch version, ...
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if args.compile == "on":
            raise RunError(f"compiling the update failed ({reason}); run with --compile off") from None
        print(f"warning: compiling the update failed ({reason}); continuing uncompiled", file=sys.stderr)
        return learner
    print(f"compiled the update in {time.perf_counter() - t0:.1f} s")
    writer.add_scalar("charts/compile_seconds", time.perf_counter() - t0)
    return step


# -------------------------------------------------------------------------------------------------- run
class RunError(Exception):
    """A problem to report in one line (bad input, missing checkpoint, robot fault), exit status 2."""


def make_env(args):
    robot_kwargs = {k: v for k, v in [("host", args.robot_host), ("port", args.robot_port),
                                      ("realtime", args.realtime or None)] if v is not None}
    if robot_kwargs and args.env not in robots.ENV_IDS:
        raise RunError(f"--robot-host/--robot-port/--realtime apply only to {', '.join(robots.ENV_IDS)}")
    if args.capture_video and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"  # headless: render off-screen
    try:
        env = gym.make(args.env, **robot_kwargs, **({"render_mode": "rgb_array"} if args.capture_video else {}))
    except robots.RobotError:
        raise
    except Exception as e:  # unknown id, missing dependency, broken rendering setup, ...
        message = " ".join(str(e).split()) if isinstance(e, gym.error.Error) else f"{type(e).__name__}: {e}"
        raise RunError(f"cannot make environment {args.env!r}: {message[:300]}") from None
    if args.capture_video:
        try:
            env.reset()
            env.render()  # fail now, not at the first recorded episode
            env = gym.wrappers.RecordVideo(env, f"videos/{args.run_name}")
        except Exception as e:
            raise RunError(f"--capture-video cannot record {args.env}: {' '.join(str(e).split())[:200]} (needs "
                           "moviepy, and MUJOCO_GL=egl or osmesa where there is no display)") from None
    if not isinstance(env.action_space, gym.spaces.Box) or len(env.action_space.shape) != 1:
        raise RunError(f"{ALGO}.py needs a continuous (Box) action space; {args.env} has {env.action_space}")
    if not (np.isfinite(env.action_space.low).all() and np.isfinite(env.action_space.high).all()):
        raise RunError(f"{ALGO}.py squashes actions with tanh and needs finite action bounds; {args.env} has "
                       f"{env.action_space}")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise RunError(f"{ALGO}.py needs a flat Box observation space; {args.env} has {env.observation_space} "
                       "(gymnasium.wrappers.FlattenObservation can flatten it)")
    return env


def validate(args):
    for name in ("total_timesteps", "hidden_size", "log_every", "keep_checkpoints", "buffer_size", "batch_size",
                 "actor_lr", "critic_lr", "policy_delay"):
        if not getattr(args, name) > 0:
            raise RunError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.batch_size > args.buffer_size:
        raise RunError(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}")
    checks = [("beta1", 0 <= args.beta1 < 1), ("gamma", 0 <= args.gamma <= 1), ("tau", 0 < args.tau <= 1),
              ("exploration-noise", args.exploration_noise >= 0), ("policy-noise", args.policy_noise >= 0),
              ("noise-clip", args.noise_clip >= 0),
              ("learning-starts", args.learning_starts >= 0), ("checkpoint-every", args.checkpoint_every >= 0)]
    for name, good in checks:
        if not good:
            raise RunError(f"--{name} is out of range: {getattr(args, name.replace('-', '_'))}")


def save_atomic(obj, path):
    """torch.save to a temporary file, fsync, rename: a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path):
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        candidates = sorted(folder.glob("step_*.pt"))
        if not candidates:
            raise RunError(f"no checkpoint found in {path}")
        path = candidates[-1]
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, weights_only=False)
    except Exception as e:
        raise RunError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__})") from None
    if not isinstance(checkpoint, dict) or "algo" not in checkpoint:
        raise RunError(f"{path} is not a checkpoint of this project")
    if checkpoint["algo"] != ALGO:
        raise RunError(f"{path} is a {checkpoint['algo']}.py checkpoint, not a {ALGO}.py one")
    missing = {"args", "obs_dim", "act_dim", "global_step", "episodes", "learner", "rng", "wandb_id"} - set(checkpoint)
    if missing:
        raise RunError(f"checkpoint {path} is incomplete (no {', '.join(sorted(missing))})")
    return checkpoint, path


RESUME_OVERRIDES = {"total_timesteps", "checkpoint_every", "keep_checkpoints", "log_every", "track", "on_nonfinite",
                    "compile", "robot_host", "robot_port", "realtime"}


def flags_given(argv):
    """Names of the Args fields set on the command line (--no-x counts as x)."""
    names = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    return {n[3:] if n.startswith("no_") and n[3:] in Args.__dataclass_fields__ else n for n in names}


def main(args, given=frozenset()):
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C kills at once

    checkpoint = None
    if args.resume:
        checkpoint, path = load_checkpoint(args.resume)
        saved = Args(**checkpoint["args"])
        for name in given - {"resume"}:  # flags on this command line: run settings apply, the experiment's must match
            if name in RESUME_OVERRIDES:
                setattr(saved, name, getattr(args, name))
            elif getattr(args, name) != getattr(saved, name):
                raise RunError(f"{path} was trained with --{name.replace('_', '-')} {getattr(saved, name)}, "
                               f"not {getattr(args, name)}")
        args = saved
        print(f"resuming {args.run_name} from {path} at step {checkpoint['global_step']}")
    validate(args)
    args.run_name = args.run_name or f"{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / args.run_name
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "args.json").write_text(json.dumps({"algo": ALGO, **asdict(args)}, indent=1))
    except OSError as e:
        raise RunError(f"cannot write the run directory {run_dir}: {e.strerror}") from None

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    noise_gen = torch.Generator().manual_seed(args.seed)
    signal.signal(signal.SIGINT, on_signal)  # from here on Ctrl-C and SIGTERM stop the run cleanly
    signal.signal(signal.SIGTERM, on_signal)
    env = make_env(args)
    env.action_space.seed(args.seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = TD3(obs_dim, env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64), args)
    global_step, episodes, wandb_id = 0, 0, None
    if checkpoint:
        if (checkpoint["obs_dim"], checkpoint["act_dim"]) != (obs_dim, act_dim):
            raise RunError(f"checkpoint shapes (obs {checkpoint['obs_dim']}, action {checkpoint['act_dim']}) do not "
                           f"match {args.env} (obs {obs_dim}, action {act_dim})")
        agent.load_state_dict(checkpoint["learner"])  # copies in place
        agent.td_scaler.episode_return.zero_()  # a partial episode at a Ctrl-C save is dropped
        global_step, episodes, wandb_id = checkpoint["global_step"], checkpoint["episodes"], checkpoint["wandb_id"]
        noise_gen.set_state(checkpoint["rng"]["noise"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        random.setstate(checkpoint["rng"]["python"])

    hyperparams = {k: getattr(args, k) for k in ("buffer_size", "batch_size", "learning_starts", "actor_lr",
                                                  "critic_lr", "gamma", "tau", "policy_delay")}
    print(f"{ALGO}.py on {args.env}: {hyperparams}; logging to {run_dir}")
    if args.track:
        import wandb
        wandb_id = wandb_id or os.urandom(4).hex()  # kept in checkpoints, so a resumed run continues this one
        try:
            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=vars(args), name=args.run_name, id=wandb_id, resume="allow", save_code=True)
        except Exception as e:  # not logged in, no network, bad entity: wandb's own exception types vary
            env.close()
            raise RunError(f"wandb did not start: {str(e).strip().splitlines()[0]} (WANDB_MODE=offline logs "
                           "locally)") from None
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(run_dir), purge_step=global_step + 1 if checkpoint else None)  # hide logs past it
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" +
                    "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    use_compile = args.compile == "on" or (args.compile == "auto" and args.total_timesteps >= 10_000)
    scalars = torch.zeros(2)  # reward and terminated, written through a numpy view each step
    scalars_np, reward_t, terminated_t = scalars.numpy(), scalars[0], scalars[1]
    step_fn = agent
    if use_compile:  # before the first reset: a real robot must not wait for the compiler mid-episode
        step_fn = compile_or_fall_back(agent, (torch.zeros(obs_dim), torch.zeros(act_dim),
                                                        torch.zeros(obs_dim, dtype=torch.float64), reward_t,
                                                        terminated_t, torch.zeros(args.batch_size, dtype=torch.long),
                                                        torch.zeros(args.batch_size, act_dim), torch.zeros(act_dim)), args, writer)

    def save_checkpoint(mid_episode):
        writer.flush()  # the logs up to this step are on disk before the checkpoint that follows them
        path = run_dir / "checkpoints" / f"step_{global_step:012d}.pt"
        rng = {"noise": noise_gen.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
               "python": random.getstate(), "env": env.unwrapped.np_random.bit_generator.state}
        save_atomic({"algo": ALGO, "args": asdict(args), "obs_dim": obs_dim, "act_dim": act_dim,
                     "global_step": global_step, "episodes": episodes, "mid_episode": mid_episode,
                     "learner": agent.state_dict(), "rng": rng, "wandb_id": wandb_id}, path)
        for old in sorted(path.parent.glob("step_*.pt"))[:-args.keep_checkpoints]:
            old.unlink()
        return path

    def reset():
        if checkpoint and episodes == checkpoint["episodes"] and global_step == checkpoint["global_step"]:
            env.unwrapped.np_random.bit_generator.state = checkpoint["rng"]["env"]
            raw_obs, _ = env.reset()
        else:
            raw_obs, _ = env.reset(seed=args.seed if global_step == 0 else None)
        obs = agent.normalize(torch.from_numpy(np.asarray(raw_obs, dtype=np.float64)))
        return (obs, *choose_action(obs))

    def choose_action(obs):
        """Uniformly random actions until --learning-starts, then the policy's with exploration noise. Returns A
        in [-1, 1] and the environment's action."""
        if global_step < args.learning_starts:
            action = torch.rand(act_dim, generator=noise_gen) * 2 - 1
            return action, action * agent.action_scale + agent.action_offset
        return agent.act(obs, torch.randn(act_dim, generator=noise_gen))

    episode_return, episode_length, skipped, exit_code, message, recent_returns = 0.0, 0, 0, 0, "", []
    last_ckpt_step, last_print, log_time, log_step = global_step, 0.0, time.time(), global_step
    update_us, n_updates = np.zeros(args.log_every), 0  # latencies of this log window's updates
    try:
        if stop["signal"] is None:  # Ctrl-C during start-up (connecting, compiling): the robot never moves
            obs, action, env_action = reset()
        while global_step < args.total_timesteps and stop["signal"] is None:
            raw_next_obs, reward, terminated, truncated, info = env.step(env_action.numpy())
            global_step += 1
            episode_length += 1
            scalars_np[0], scalars_np[1] = reward, terminated
            bad_obs = not np.isfinite(raw_next_obs).all()
            culprit = "reward" if not np.isfinite(scalars_np[0]) else "observation" if bad_obs else None  # float32
            episode_return += float(reward) if culprit != "reward" else 0.0
            raw_next_obs = torch.from_numpy(np.asarray(raw_next_obs, dtype=np.float64))
            if culprit is None and global_step <= args.learning_starts:  # filling the buffer
                next_obs = agent.observe(obs, action, raw_next_obs, reward_t, terminated_t)
                next_action, next_env_action = choose_action(next_obs)
            elif culprit is None:
                indices = agent.replay.draw(args.batch_size, noise_gen)
                inputs = (obs, action, raw_next_obs, reward_t, terminated_t, indices,
                          torch.randn(args.batch_size, act_dim, generator=noise_gen),
                          torch.randn(act_dim, generator=noise_gen))
                t0 = time.perf_counter()
                next_action, next_env_action, next_obs, ok = step_fn(*inputs)
                update_us[n_updates % args.log_every] = 1e6 * (time.perf_counter() - t0)
                n_updates += 1
                culprit = None if ok else "loss or gradient"
            if culprit is not None:
                skipped += 1
                if args.on_nonfinite == "stop":
                    path = save_checkpoint(mid_episode=True)
                    exit_code, message = 3, (f"non-finite {culprit} at step {global_step}; the update was not "
                                             f"applied and the last good state is saved in {path}")
                    break
                if culprit == "reward" and not bad_obs:  # S' is good: carry on from it, without an update
                    next_obs = agent.normalize(raw_next_obs)
                    next_action, next_env_action = choose_action(next_obs)
                # cannot go on from a non-finite state, nor send a non-finite action (a rejected update's features
                # may have overflowed): end the episode
                terminated = terminated or bad_obs or not torch.isfinite(next_action).all().item()
            if global_step % args.log_every == 0 and global_step > log_step:
                critic_updates, actor_updates = agent.metrics[4].clamp_min(1), agent.metrics[5].clamp_min(1)
                means = [agent.metrics[0] / critic_updates, agent.metrics[1] / actor_updates,
                         agent.metrics[2] / critic_updates, agent.metrics[3] / critic_updates]
                means = [m.item() for m in means] if agent.metrics[4] else []
                agent.metrics.zero_()
                for tag, value in [*zip(("losses/critic_loss", "losses/actor_loss", "health/abs_q", "health/td_sigma"),
                                        means),
                                   *zip(("charts/update_us_p50", "charts/update_us_p99", "charts/update_us_max"),
                                        np.percentile(update_us[:n_updates], [50, 99, 100]) if n_updates else []),
                                   ("charts/nonfinite_skips", skipped),
                                   ("charts/SPS", (global_step - log_step) / (time.time() - log_time))]:
                    writer.add_scalar(tag, value, global_step)
                log_time, log_step, n_updates = time.time(), global_step, 0
            if terminated or truncated:
                agent.td_scaler.end_episode()
                episodes += 1
                recent_returns = (recent_returns + [episode_return])[-10:]
                writer.add_scalar("charts/episodic_return", episode_return, global_step)
                writer.add_scalar("charts/episodic_length", episode_length, global_step)
                if "overruns" in info:
                    writer.add_scalar("charts/cycle_overruns", info["overruns"], global_step)
                if time.time() - last_print >= 1.0:  # at most a line a second
                    print(f"global_step={global_step}, episode={episodes}, episodic_return={episode_return:.1f}")
                    last_print = time.time()
                episode_return, episode_length = 0.0, 0
                if args.checkpoint_every and global_step - last_ckpt_step >= args.checkpoint_every:
                    save_checkpoint(mid_episode=False)
                    last_ckpt_step = global_step
                obs, action, env_action = reset()
            else:
                obs, action, env_action = next_obs, next_action, next_env_action
        if stop["signal"] is not None and not exit_code:
            path = save_checkpoint(mid_episode=True)  # the episode in progress is dropped on resume
            exit_code = 130 if stop["signal"] == signal.SIGINT else 143
            message = (f"stopped by {signal.Signals(stop['signal']).name} at step {global_step}; "
                       f"resume with --resume {path}")
    except robots.RobotError as e:  # the environment has already stopped the robot
        path = save_checkpoint(mid_episode=True)
        exit_code, message = 4, f"robot error at step {global_step}: {e}; resume with --resume {path}"
    except Exception:  # a bug or failure in the environment or a library: show where, and keep the run
        traceback.print_exc()
        path = save_checkpoint(mid_episode=True)
        exit_code, message = 1, f"failed at step {global_step} (above); resume with --resume {path}"
    finally:
        env.close()
        writer.close()
        if args.track:
            import wandb
            wandb.finish(exit_code=exit_code)
    if exit_code:
        print(f"{ALGO}.py: {message}", file=sys.stderr)
        return exit_code
    if args.save_model:
        save_atomic({"actor": agent.actor.state_dict(), "critic": agent.critic.state_dict(),
                     "obs_stats": agent.obs_stats.state_dict(), "args": asdict(args)}, run_dir / f"{ALGO}.model")
    (run_dir / "summary.json").write_text(json.dumps({
        "finished": True, "global_step": global_step, "episodes": episodes,
        "mean_return_last10": float(np.mean(recent_returns)) if recent_returns else None}))
    print(f"done: {global_step} steps, {episodes} episodes, logs in {run_dir}")
    return 0


if __name__ == "__main__":
    cli_args = tyro.cli(Args)
    try:
        sys.exit(main(cli_args, flags_given(sys.argv[1:])))
    except RunError as e:
        print(f"{ALGO}.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except robots.RobotError as e:
        print(f"{ALGO}.py: robot error: {e}", file=sys.stderr)
        sys.exit(4)
