"""Action Value Gradient (AVG): incremental deep actor-critic with no replay buffer, no target network and
no batch update. One update per environment step, on the latest transition only.

    python avg.py --env Hopper-v4

Vasan et al., "Deep Policy Gradient Methods Without Batch Updates, Target Networks, or Replay Buffers",
NeurIPS 2024 (arXiv 2411.15370). Definitions and hyperparameters: docs/algorithms.md sections 1-4.
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

ALGO = "avg"


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
    """save the final actor and critic to runs/RUN_NAME/avg.model"""
    capture_video: bool = False
    """record videos of episodes to videos/RUN_NAME (needs rendering and moviepy)"""

    checkpoint_every: int = 0
    """write a checkpoint at the first episode end after every N steps (0: only on Ctrl-C/SIGTERM/NaN)"""
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


# Published hyperparameters (algorithms.md 1): actor lr, critic lr, beta1, entropy coefficient, gamma.
HYPERPARAMS = {
    "Hopper": (1.1e-5, 7.7e-5, 0.0, 0.3, 0.99),
    "Walker2d": (1.1e-5, 7.7e-5, 0.0, 0.3, 0.99),
    "Ant": (6.3e-3, 8.7e-3, 0.0, 0.07, 0.99),
    "HalfCheetah": (6.3e-3, 8.7e-3, 0.0, 0.07, 0.99),
    "Humanoid": (6.3e-3, 8.7e-3, 0.0, 0.07, 0.99),
    "dm_control/reacher-hard": (3e-6, 4.9e-3, 0.0, 0.05, 0.97),
    "dm_control/dog-walk": (6e-6, 8e-5, 0.0, 0.009, 0.95),
    "dm_control/dog-trot": (6e-6, 8e-5, 0.0, 0.009, 0.95),
    "dm_control/dog-stand": (6e-6, 8e-5, 0.0, 0.009, 0.95),
    "dm_control/finger-spin": (3.8e-4, 8.7e-5, 0.9, 0.006, 0.95),
    "dm_control/dog-run": (1.8e-5, 4.8e-5, 0.0, 0.007, 0.97),
}
DEFAULT_HYPERPARAMS = HYPERPARAMS["Ant"]  # for environments the paper did not tune


def resolve_hyperparams(args):
    """Fills the hyperparameters the user left unset with the paper's values for the env (any version)."""
    base = args.env.rsplit("-v", 1)[0]
    paper = HYPERPARAMS.get(base, DEFAULT_HYPERPARAMS)
    names = ("actor_lr", "critic_lr", "beta1", "entropy_coef", "gamma")
    for name, value in zip(names, paper):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return "paper values for " + base if base in HYPERPARAMS else "defaults (the paper's Ant/HalfCheetah values)"


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
    at termination, gamma otherwise (truncation included). sigma = 1 until the first episode has ended.
    G is recorded at every episode end; the authors' released avg.py records it only at termination and carries
    the sum over a truncation into the next episode, which mixes two episodes' returns into one G."""

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
    """nn.Linear, written as multiply-and-sum while compile_step() traces the update: for one sample this lets
    Inductor fuse the whole update, weight gradients into the Adam step included, into one C++ kernel, where
    calling MKL for each tiny matrix-vector product costs more than the arithmetic. Same math either way."""

    def forward(self, x):
        if TRACING:
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
    return nn.Sequential(Linear(n_in, hidden), nn.LeakyReLU(), Linear(hidden, hidden), nn.LeakyReLU(),
                         FeatureNorm(feature_norm))


def orthogonal_init(module):
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)
    module.requires_grad_(False)  # updated in place by Adam below; gradients come from grad_and_aux


class Actor(nn.Module):
    """Squashed Gaussian policy: A = tanh(mu + std * noise), with log pi(A|S) corrected for the tanh.

    std = exp(log_std), log_std clamped to [-20, 2], as algorithms.md 1 defines it. (The authors' released avg.py
    passes exp(log_std) to MultivariateNormal as the covariance, so there the head is in effect a log variance:
    std = exp(log_std / 2), at most e. Not tried here at length; it changes the policy's scale and step sizes.)"""

    def __init__(self, obs_dim, act_dim, hidden, feature_norm):
        super().__init__()
        self.trunk = mlp_trunk(obs_dim, hidden, feature_norm)
        self.mu, self.log_std = Linear(hidden, act_dim), Linear(hidden, act_dim)
        orthogonal_init(self)

    def forward(self, obs, noise):
        features = self.trunk(obs)
        mu, log_std = self.mu(features), self.log_std(features).clamp(-20, 2)
        u = mu + log_std.exp() * noise
        log_prob = (-0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob


class Critic(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden, feature_norm):
        super().__init__()
        self.trunk = mlp_trunk(obs_dim + act_dim, hidden, feature_norm)
        self.q = Linear(hidden, 1)
        orthogonal_init(self)

    def forward(self, obs, action):
        return self.q(self.trunk(torch.cat([obs, action], -1))).squeeze(-1)


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
class AVG(nn.Module):
    """The whole learner. forward() is one AVG step; parameters and buffers are the complete state."""

    def __init__(self, obs_dim, act_low, act_high, args):
        super().__init__()
        act_dim = len(act_low)
        self.actor = Actor(obs_dim, act_dim, args.hidden_size, args.feature_norm)
        self.critic = Critic(obs_dim, act_dim, args.hidden_size, args.feature_norm)
        self.target = copy.deepcopy(self.critic) if args.target_tau < 1 else None
        self.actor_opt = Adam(self.actor, args.actor_lr, (args.beta1, 0.999))
        self.critic_opt = Adam(self.critic, args.critic_lr, (args.beta1, 0.999))
        self.obs_stats = RunningMeanVar((obs_dim,))
        self.td_scaler = TDErrorScaler()
        self.eta, self.gamma, self.tau = args.entropy_coef, args.gamma, args.target_tau
        self.obs_norm, self.scale_td = args.obs_norm, args.scale_td
        self.register_buffer("action_scale", torch.as_tensor((act_high - act_low) / 2, dtype=torch.float32))
        self.register_buffer("action_offset", torch.as_tensor((act_high + act_low) / 2, dtype=torch.float32))
        # Running sums since the last log: critic loss, actor loss, entropy estimate, |Q|, sigma, updates.
        self.register_buffer("metrics", torch.zeros(6, dtype=torch.float64))

    def normalize(self, raw_obs):
        """Adds the observation to the running statistics, then normalises it (algorithms.md 2)."""
        if not self.obs_norm:
            return raw_obs.float()
        self.obs_stats.update(raw_obs.double())
        return self.obs_stats.normalize(raw_obs.double()).float()

    def act(self, obs, noise):
        """The action for the environment (rescaled from [-1, 1] to its bounds) and log pi(A|S)."""
        action, log_prob = self.actor(obs, noise)
        return action * self.action_scale + self.action_offset, log_prob

    def losses(self, params, obs, noise, next_obs, next_noise, reward, discount, sigma):
        actor_params, critic_params = params
        action, log_prob = torch.func.functional_call(self.actor, actor_params, (obs, noise))
        q = torch.func.functional_call(self.critic, critic_params, (obs, action))
        with torch.no_grad():
            next_action, next_log_prob = self.actor(next_obs, next_noise)
            next_q = (self.target if self.target is not None else self.critic)(next_obs, next_action)
            delta = (reward + discount * (next_q - self.eta * next_log_prob) - q) / sigma
        # One backward pass serves both networks: the actor's gradient comes from this loss, and since
        # d(delta^2)/dphi = -(2 delta / sigma) dQ/dphi, the critic's is its phi-gradient times 2 delta / sigma.
        actor_loss = self.eta * log_prob - q
        return actor_loss, (delta, actor_loss.detach(), log_prob.detach(), q.detach())

    def forward(self, obs, noise, log_prob, raw_next_obs, reward, terminated, noises):
        """One AVG update on (S, A, R, S') (algorithms.md 1), then the next action from the updated actor.

        obs, noise and log_prob describe the action just taken: S (normalised), the Gaussian noise that drew A,
        and log pi(A|S). noises[0] draws A' for the target, noises[1] the next action. Both networks' gradients
        use the pre-update parameters; an update with a non-finite loss or gradient is not applied (ok=False)."""
        next_obs = self.normalize(raw_next_obs)
        discount = self.gamma * (1.0 - terminated)
        self.td_scaler.update((reward - self.eta * log_prob).double(), discount.double())
        sigma = self.td_scaler.sigma() if self.scale_td else torch.ones(())
        actor_params, critic_params = dict(self.actor.named_parameters()), dict(self.critic.named_parameters())
        (actor_grads, critic_grads), (delta, actor_loss, entropy, q) = grad_and_aux(
            self.losses, (actor_params, critic_params), obs, noise, next_obs, noises[0], reward, discount, sigma)
        critic_grads = {k: g * (2 * delta / sigma) for k, g in critic_grads.items()}
        # A weight's gradient is the outer product of its layer's input and its bias's gradient: when the losses
        # and the bias gradients are finite, so are all gradients.
        ok = torch.isfinite(delta + actor_loss)
        for name, grad in [*actor_grads.items(), *critic_grads.items()]:
            if name.endswith("bias"):
                ok = ok & torch.isfinite(grad).all()
        self.actor_opt.step(actor_params, actor_grads, ok)
        self.critic_opt.step(critic_params, critic_grads, ok)
        if self.target is not None:
            for target, param in zip(self.target.parameters(), critic_params.values()):
                target.copy_(torch.where(ok, target.lerp(param, self.tau), target))
        logged = torch.stack([delta.square(), actor_loss, -entropy, q.abs(), sigma, ok])
        self.metrics += torch.where(ok, logged, 0).double()
        next_action, next_log_prob = self.act(next_obs, noises[1])
        return next_action, next_log_prob, next_obs, ok


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
    for name in ("total_timesteps", "hidden_size", "log_every", "keep_checkpoints"):
        if getattr(args, name) <= 0:
            raise RunError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("actor_lr", "critic_lr"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise RunError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    checks = [("beta1", 0 <= (args.beta1 or 0) < 1), ("gamma", 0 <= (args.gamma or 0) <= 1),
              ("entropy-coef", (args.entropy_coef or 0) >= 0), ("target-tau", 0 <= args.target_tau <= 1),
              ("checkpoint-every", args.checkpoint_every >= 0)]
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
    source = resolve_hyperparams(args)
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
    agent = AVG(obs_dim, env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64), args)
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

    hyperparams = {k: getattr(args, k) for k in ("actor_lr", "critic_lr", "beta1", "entropy_coef", "gamma")}
    print(f"{ALGO}.py on {args.env}: {hyperparams} ({source}); logging to {run_dir}")
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
        step_fn = compile_or_fall_back(agent, (torch.zeros(obs_dim), torch.zeros(act_dim), torch.zeros(()),
                                                        torch.zeros(obs_dim, dtype=torch.float64), reward_t,
                                                        terminated_t, torch.zeros(2, act_dim)), args, writer)

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
        noise = torch.randn(act_dim, generator=noise_gen)
        action, log_prob = agent.act(obs, noise)
        return obs, noise, action, log_prob

    episode_return, episode_length, skipped, exit_code, message, recent_returns = 0.0, 0, 0, 0, "", []
    last_ckpt_step, last_print, log_time, log_step = global_step, 0.0, time.time(), global_step
    update_us, n_updates = np.zeros(args.log_every), 0  # latencies of this log window's updates
    try:
        if stop["signal"] is None:  # Ctrl-C during start-up (connecting, compiling): the robot never moves
            obs, noise, action, log_prob = reset()
        while global_step < args.total_timesteps and stop["signal"] is None:
            raw_next_obs, reward, terminated, truncated, info = env.step(action.numpy())
            global_step += 1
            episode_length += 1
            scalars_np[0], scalars_np[1] = reward, terminated
            bad_obs = not np.isfinite(raw_next_obs).all()
            culprit = "reward" if not np.isfinite(scalars_np[0]) else "observation" if bad_obs else None  # float32
            episode_return += float(reward) if culprit != "reward" else 0.0
            raw_next_obs = torch.from_numpy(np.asarray(raw_next_obs, dtype=np.float64))
            noises = torch.randn(2, act_dim, generator=noise_gen)
            if culprit is None:
                inputs = (obs, noise, log_prob, raw_next_obs, reward_t, terminated_t, noises)
                t0 = time.perf_counter()
                next_action, next_log_prob, next_obs, ok = step_fn(*inputs)
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
                    next_action, next_log_prob = agent.act(next_obs, noises[1])
                # cannot go on from a non-finite state, nor send a non-finite action (a rejected update's features
                # may have overflowed): end the episode
                terminated = terminated or bad_obs or not torch.isfinite(next_action).all().item()
            if global_step % args.log_every == 0 and global_step > log_step:
                means = (agent.metrics[:5] / agent.metrics[5].clamp_min(1)).tolist()
                agent.metrics.zero_()
                for tag, value in [*zip(("losses/critic_loss", "losses/actor_loss", "health/entropy",
                                         "health/abs_q", "health/td_sigma"), means),
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
                obs, noise, action, log_prob = reset()
            else:
                obs, noise, action, log_prob = next_obs, noises[1], next_action, next_log_prob
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
