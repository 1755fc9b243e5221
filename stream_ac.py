"""Stream AC(lambda): streaming actor-critic with eligibility traces and overshooting-bounded gradient descent
(ObGD). One update per environment step, no replay buffer, no target network, no batch.

    python stream_ac.py --env Hopper-v4
    python stream_ac.py --env Hopper-v4 --optimizer adaptive

Elsayed, Vasan and Mahmood, "Streaming Deep Reinforcement Learning Finally Works" (arXiv 2410.14606);
definitions in docs/algorithms.md 6.
Per step, with S the normalised observation and A ~ N(mu(S), std(S)), std = softplus(.):
    R <- R / std(u), where u <- gamma u + R is the episode's discounted return so far     (--reward-scale)
    delta = R + gamma (1 - terminated) V(S') - V(S)
    z_V  <- gamma lambda z_V  + grad V(S)
    z_pi <- gamma lambda z_pi + grad [log pi(A|S) + eta sign(delta) H(pi(.|S))]
    for each network: M = alpha kappa max(|delta|, 1) ||z||_1, theta <- theta + alpha / max(M, 1) delta z
so the critic moves V(S) toward the target and the actor follows delta grad log pi + eta |delta| grad H (the
entropy term's form is the authors' code's). Both networks' gradients use the pre-update parameters; traces and
u are reset at every episode end (termination or truncation). --optimizer adaptive replaces z, in the bound and
the update, by z / sqrt(v_hat + eps), v_hat the bias-corrected running mean of (delta z)^2 (beta2 0.999).

Choices where docs/algorithms.md is silent or where this script departs from the authors' code
(stream_ac_continuous.py):
- log pi(A|S) is the Gaussian density of the unclipped sample A; only the action sent to the environment is
  clipped to the action space (as the authors do).
- Truncation (a time limit) bootstraps, as in every script of this project; the authors' code treats it as
  termination. A time feature, -0.5 + t / time limit (the authors' form), is appended after normalisation
  (--time-feature, on by default; time limit 1000 when the environment declares none).
- The return trace u restarts at 0 at each episode's start. The authors' wrapper zeroes it with the current
  step's done flag before adding R, which carries an episode's last reward into the next episode's trace.
- Sparse init zeroes ceil(0.9 fan_in) incoming weights of each unit, but keeps at least one: for fan_in < 10
  the authors' rule would zero a whole row (e.g. a 3-dim observation plus the time feature).
Run machinery (checkpoints, resume, logs, compiled update): as avg.py.
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

ALGO = "stream_ac"


@dataclass
class Args:
    env: str = "Hopper-v4"
    """gymnasium environment id (continuous actions), e.g. Hopper-v4, UR5Reacher-v0, Create2Mover-v0"""
    seed: int = 1
    """seed of the run (torch, numpy, random, environment)"""
    total_timesteps: int = 10_000_000
    """environment steps to run"""
    exp_name: str = ALGO
    """experiment name, part of the run name and the grouping key of scripts/plot.py"""
    run_name: Optional[str] = None
    """log under runs/RUN_NAME (default: {env}__{exp_name}__{seed}__{unix time})"""

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
    """save the final actor and critic to runs/RUN_NAME/stream_ac.model"""
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
    """UR5Reacher: IP of the real arm (default: simulated arm)"""
    robot_port: Optional[str] = None
    """Create2Mover: serial device of the real robot, e.g. /dev/ttyUSB0 (default: simulated robot)"""
    realtime: bool = False
    """simulated robots: pace each step to the real robot's cycle"""


# ---------------------------------------------------------------------------------------------- statistics
# As in avg.py: all learner state is parameters and buffers of nn.Modules (state_dict() is the checkpoint, and
# compile_step() passes the state to the compiled graph); scalars are float64 tensors of shape (1,).
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


class RewardScaler(nn.Module):
    """R / sqrt(Var[u] + 1e-8), u <- gamma u + R the discounted return of the episode so far, its sample variance
    over all steps seen (the current one included); no mean subtraction. end_episode() restarts u at 0."""

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
TRACING = False  # true while compile_step() traces the update into a graph


class Linear(nn.Linear):
    """nn.Linear, written as multiply-and-sum while compile_step() traces the update, so that Inductor fuses the
    whole one-sample update into one C++ kernel instead of calling MKL per tiny matrix-vector product."""

    def forward(self, x):
        if TRACING:
            return (x.unsqueeze(-2) * self.weight).sum(-1) + self.bias
        return F.linear(x, self.weight, self.bias)


def sparse_init_(weight, sparsity):
    """Uniform in +-1/sqrt(fan_in), then ceil(sparsity * fan_in) of each unit's incoming weights set to zero, at
    most fan_in - 1 of them (module docstring)."""
    fan_out, fan_in = weight.shape
    n_zero = min(math.ceil(round(sparsity * fan_in, 9)), fan_in - 1)  # round: 0.9 * 130 is 117.00000000000001
    with torch.no_grad():
        weight.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        for row in weight:
            row[torch.randperm(fan_in)[:n_zero]] = 0


def trunk(n_in, hidden):
    """Two hidden layers, each Linear -> LayerNorm without learnable affine -> LeakyReLU."""
    return nn.Sequential(Linear(n_in, hidden), nn.LayerNorm(hidden, elementwise_affine=False), nn.LeakyReLU(),
                         Linear(hidden, hidden), nn.LayerNorm(hidden, elementwise_affine=False), nn.LeakyReLU())


def init_(module, sparsity):
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            sparse_init_(layer.weight, sparsity)
            nn.init.zeros_(layer.bias)
    module.requires_grad_(False)  # updated in place by ObGD; gradients come from grad_and_aux


class Actor(nn.Module):
    """Gaussian policy N(mu(S), std(S)^2), std = softplus of a linear head; no squashing."""

    def __init__(self, obs_dim, act_dim, hidden, sparsity):
        super().__init__()
        self.trunk = trunk(obs_dim, hidden)
        self.mu, self.std = Linear(hidden, act_dim), Linear(hidden, act_dim)
        init_(self, sparsity)

    def forward(self, obs):
        features = self.trunk(obs)
        return self.mu(features), F.softplus(self.std(features))


def log_prob(mu, std, action):
    return (-0.5 * ((action - mu) / std).square() - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def entropy(std):
    return (std.log() + 0.5 * (1 + math.log(2 * math.pi))).sum(-1)


class Critic(nn.Module):
    """State value V(S)."""

    def __init__(self, obs_dim, hidden, sparsity):
        super().__init__()
        self.trunk = trunk(obs_dim, hidden)
        self.v = Linear(hidden, 1)
        init_(self, sparsity)

    def forward(self, obs):
        return self.v(self.trunk(obs)).squeeze(-1)


class ObGD(nn.Module):
    """Overshooting-bounded gradient descent on an eligibility trace (algorithms.md 6), written out so that it fuses
    into the compiled step. The trace (and, adaptive, the second moment v) live in zeroed copies of the network under
    the parameters' own names. propose() computes the new state; apply() writes it only where `ok` is true, so a
    non-finite value never reaches the weights or the traces."""

    def __init__(self, network, lr, kappa, trace_decay, adaptive, beta2, eps=1e-8):
        super().__init__()
        self.lr, self.kappa, self.trace_decay, self.beta2, self.eps = lr, kappa, trace_decay, beta2, eps
        self.trace = copy.deepcopy(network).requires_grad_(False)
        self.second_moment = copy.deepcopy(network).requires_grad_(False) if adaptive else None
        for state in (self.trace, self.second_moment):
            for p in state.parameters() if state is not None else []:
                p.zero_()
        self.register_buffer("beta2_power", torch.ones(1, dtype=torch.float64))

    def propose(self, grads, delta):
        """New traces z, new second moments, the direction (z, or z / sqrt(v_hat + eps)), its L1 norm and the
        effective step size alpha / max(M, 1)."""
        traces = dict(self.trace.named_parameters())
        z = {name: self.trace_decay * traces[name] + grad for name, grad in grads.items()}
        v, beta2_power, direction = {}, self.beta2_power, z
        if self.second_moment is not None:
            moments = dict(self.second_moment.named_parameters())
            beta2_power = self.beta2_power * self.beta2
            v = {name: self.beta2 * moments[name] + (1 - self.beta2) * (delta * z[name]).square() for name in z}
            bias_correction = (1 - beta2_power).float()
            direction = {name: z[name] / (v[name] / bias_correction + self.eps).sqrt() for name in z}
        norm = sum(d.abs().sum() for d in direction.values())
        bound = self.lr * self.kappa * delta.abs().clamp_min(1.0) * norm
        step_size = self.lr / bound.clamp_min(1.0)
        return {"z": z, "v": v, "beta2_power": beta2_power, "direction": direction, "norm": norm,
                "step_size": step_size}

    def apply(self, params, proposal, delta, ok):
        def keep(new, old):
            old.copy_(torch.where(ok, new, old))

        traces = dict(self.trace.named_parameters())
        moments = dict(self.second_moment.named_parameters()) if self.second_moment is not None else {}
        keep(proposal["beta2_power"], self.beta2_power)
        for name, param in params.items():
            keep(param + proposal["step_size"] * delta * proposal["direction"][name], param)
            keep(proposal["z"][name], traces[name])
            if name in moments:
                keep(proposal["v"][name], moments[name])

    def end_episode(self):
        for z in self.trace.parameters():
            z.zero_()


def grad_and_aux(loss_fn, params, *args):
    """Gradients of loss_fn w.r.t. the parameter dicts `params`, and its auxiliary outputs."""
    params = tuple({k: p.detach().requires_grad_() for k, p in d.items()} for d in params)
    with torch.enable_grad():
        loss, aux = loss_fn(params, *args)
        grads = iter(torch.autograd.grad(loss, [p for d in params for p in d.values()]))
    return tuple({k: next(grads) for k in d} for d in params), aux


# ------------------------------------------------------------------------------------------------- learner
class StreamAC(nn.Module):
    """The whole learner. forward() is one Stream AC(lambda) step; parameters and buffers are the complete state."""

    def __init__(self, obs_dim, act_low, act_high, args):
        super().__init__()
        act_dim, in_dim = len(act_low), obs_dim + args.time_feature
        self.actor = Actor(in_dim, act_dim, args.hidden_size, args.sparsity)
        self.critic = Critic(in_dim, args.hidden_size, args.sparsity)
        adaptive, decay = args.optimizer == "adaptive", args.gamma * args.trace_lambda
        self.actor_opt = ObGD(self.actor, args.actor_lr, args.kappa_policy, decay, adaptive, args.beta2)
        self.critic_opt = ObGD(self.critic, args.critic_lr, args.kappa_value, decay, adaptive, args.beta2)
        self.obs_stats = RunningMeanVar((obs_dim,))
        self.reward_scaler = RewardScaler(args.gamma)
        self.eta, self.gamma = args.entropy_coef, args.gamma
        self.obs_norm, self.reward_scale, self.time_feature = args.obs_norm, args.reward_scale, args.time_feature
        self.register_buffer("action_low", torch.as_tensor(act_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(act_high, dtype=torch.float32))
        # Running sums since the last log: critic loss, actor loss, entropy, |V|, actor and critic step sizes,
        # actor and critic trace L1 norms (as used in the bound), reward scale, updates.
        self.register_buffer("metrics", torch.zeros(10, dtype=torch.float64))

    def observe(self, raw_obs, t):
        """Adds the observation to the running statistics, normalises it (algorithms.md 2), appends the time feature."""
        obs = raw_obs.float()
        if self.obs_norm:
            self.obs_stats.update(raw_obs.double())
            obs = self.obs_stats.normalize(raw_obs.double()).float()
        return torch.cat([obs, t.reshape(1).float()]) if self.time_feature else obs

    def act(self, obs, noise):
        """The action for the environment (clipped to its bounds) and the unclipped sample A."""
        mu, std = self.actor(obs)
        sample = mu + std * noise
        return torch.clamp(sample, self.action_low, self.action_high), sample

    def objectives(self, params, obs, sample, next_obs, reward, discount):
        actor_params, critic_params = params
        v = torch.func.functional_call(self.critic, critic_params, (obs,))
        with torch.no_grad():
            next_v = self.critic(next_obs)
        delta = (reward + discount * next_v - v).detach()
        mu, std = torch.func.functional_call(self.actor, actor_params, (obs,))
        log_pi, ent = log_prob(mu, std, sample), entropy(std)
        # The two networks share no parameter, so one backward pass of the sum gives each its own gradient:
        # grad V(S) for the critic, grad [log pi + eta sign(delta) H] for the actor.
        actor_loss = -(delta * log_pi + self.eta * delta.abs() * ent)
        return v + log_pi + self.eta * torch.sign(delta) * ent, (delta, actor_loss.detach(), ent.detach(), v.detach())

    def forward(self, obs, sample, raw_next_obs, reward, terminated, next_t, noise):
        """One Stream AC(lambda) update on (S, A, R, S') (algorithms.md 6), then the next action from the updated actor.

        obs is S (normalised, with its time feature), sample the unclipped A, next_t the time feature of S';
        noise draws the next action. An update with a non-finite value is not applied (ok=False)."""
        next_obs = self.observe(raw_next_obs, next_t)
        if self.reward_scale:
            reward = self.reward_scaler(reward)
        reward_std = (self.reward_scaler.stats.var() + 1e-8).sqrt().float().reshape(())  # 1 when not scaling
        discount = self.gamma * (1.0 - terminated)
        actor_params, critic_params = dict(self.actor.named_parameters()), dict(self.critic.named_parameters())
        (actor_grads, critic_grads), (delta, actor_loss, ent, v) = grad_and_aux(
            self.objectives, (actor_params, critic_params), obs, sample, next_obs, reward, discount)
        actor_step = self.actor_opt.propose(actor_grads, delta)
        critic_step = self.critic_opt.propose(critic_grads, delta)
        # The L1 norms sum every trace entry: finite norms mean finite traces, hence finite updates.
        ok = torch.isfinite(delta + actor_loss + actor_step["norm"] + critic_step["norm"])
        self.actor_opt.apply(actor_params, actor_step, delta, ok)
        self.critic_opt.apply(critic_params, critic_step, delta, ok)
        self.metrics += torch.where(ok, torch.stack([
            delta.square(), actor_loss, ent, v.abs(), actor_step["step_size"], critic_step["step_size"],
            actor_step["norm"], critic_step["norm"], reward_std, ok]), 0).double()
        next_action, next_sample = self.act(next_obs, noise)
        return next_action, next_sample, next_obs, ok

    def end_episode(self):
        """Traces and the return trace restart at every episode end (termination or truncation)."""
        self.actor_opt.end_episode()
        self.critic_opt.end_episode()
        self.reward_scaler.end_episode()


def compile_step(learner, example_inputs):
    """Compiles learner.forward (one update) into a single call of Inductor-generated C++, as avg.py does: make_fx
    traces the step, backward pass included, into a graph whose inputs are the learner's state tensors and the
    step's inputs; Inductor compiles it (cached on disk). The call checks no Dynamo guards."""
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
    # Unlike avg.py, no finite action bounds are needed: actions are clipped, and clipping to +-inf is a no-op.
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise RunError(f"{ALGO}.py needs a flat Box observation space; {args.env} has {env.observation_space} "
                       "(gymnasium.wrappers.FlattenObservation can flatten it)")
    return env


def validate(args):
    for name in ("total_timesteps", "hidden_size", "log_every", "keep_checkpoints"):
        if getattr(args, name) <= 0:
            raise RunError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("actor_lr", "critic_lr", "kappa_policy", "kappa_value"):
        if not getattr(args, name) > 0:
            raise RunError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    checks = [("gamma", 0 <= args.gamma <= 1), ("trace-lambda", 0 <= args.trace_lambda <= 1),
              ("entropy-coef", args.entropy_coef >= 0), ("sparsity", 0 <= args.sparsity < 1),
              ("beta2", 0 <= args.beta2 < 1), ("checkpoint-every", args.checkpoint_every >= 0)]
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
    time_limit = (env.spec.max_episode_steps if env.spec is not None else None) or 1000
    agent = StreamAC(obs_dim, env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64),
                     args)
    global_step, episodes, wandb_id = 0, 0, None
    if checkpoint:
        if (checkpoint["obs_dim"], checkpoint["act_dim"]) != (obs_dim, act_dim):
            raise RunError(f"checkpoint shapes (obs {checkpoint['obs_dim']}, action {checkpoint['act_dim']}) do not "
                           f"match {args.env} (obs {obs_dim}, action {act_dim})")
        agent.load_state_dict(checkpoint["learner"])  # copies in place
        agent.end_episode()  # a partial episode at a Ctrl-C save is dropped
        global_step, episodes, wandb_id = checkpoint["global_step"], checkpoint["episodes"], checkpoint["wandb_id"]
        noise_gen.set_state(checkpoint["rng"]["noise"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        random.setstate(checkpoint["rng"]["python"])

    hyperparams = {k: getattr(args, k) for k in ("actor_lr", "critic_lr", "gamma", "trace_lambda", "kappa_policy",
                                                 "kappa_value", "entropy_coef", "optimizer")}
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
    scalars = torch.zeros(3)  # reward, terminated and the time feature of S', written through a numpy view
    scalars_np, reward_t, terminated_t, next_t = scalars.numpy(), scalars[0], scalars[1], scalars[2]
    step_fn = agent
    if use_compile:  # before the first reset: a real robot must not wait for the compiler mid-episode
        step_fn = compile_or_fall_back(agent, (torch.zeros(obs_dim + args.time_feature), torch.zeros(act_dim),
                                               torch.zeros(obs_dim, dtype=torch.float64), reward_t, terminated_t,
                                               next_t, torch.zeros(act_dim)), args, writer)

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
        obs = agent.observe(torch.from_numpy(np.asarray(raw_obs, dtype=np.float64)), torch.tensor(-0.5))
        action, sample = agent.act(obs, torch.randn(act_dim, generator=noise_gen))
        return obs, action, sample

    episode_return, episode_length, skipped, exit_code, message, recent_returns = 0.0, 0, 0, 0, "", []
    last_ckpt_step, last_print, log_time, log_step = global_step, 0.0, time.time(), global_step
    update_us, n_updates = np.zeros(args.log_every), 0  # latencies of this log window's updates
    try:
        if stop["signal"] is None:  # Ctrl-C during start-up (connecting, compiling): the robot never moves
            obs, action, sample = reset()
        while global_step < args.total_timesteps and stop["signal"] is None:
            raw_next_obs, reward, terminated, truncated, info = env.step(action.numpy())
            global_step += 1
            episode_length += 1
            scalars_np[:] = reward, terminated, episode_length / time_limit - 0.5
            bad_obs = not np.isfinite(raw_next_obs).all()
            culprit = "reward" if not np.isfinite(scalars_np[0]) else "observation" if bad_obs else None  # float32
            episode_return += float(reward) if culprit != "reward" else 0.0
            noise = torch.randn(act_dim, generator=noise_gen)
            raw_next_obs = torch.from_numpy(np.asarray(raw_next_obs, dtype=np.float64))
            if culprit is None:
                inputs = (obs, sample, raw_next_obs, reward_t, terminated_t, next_t, noise)
                t0 = time.perf_counter()
                next_action, next_sample, next_obs, ok = step_fn(*inputs)
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
                    next_obs = agent.observe(raw_next_obs, next_t)
                    next_action, next_sample = agent.act(next_obs, noise)
                # cannot go on from a non-finite state, nor send a non-finite action (a rejected update's features
                # may have overflowed): end the episode
                terminated = terminated or bad_obs or not torch.isfinite(next_action).all().item()
            if global_step % args.log_every == 0 and global_step > log_step:
                means = (agent.metrics[:9] / agent.metrics[9].clamp_min(1)).tolist()
                agent.metrics.zero_()
                for tag, value in [*zip(("losses/critic_loss", "losses/actor_loss", "health/entropy", "health/abs_v",
                                         "health/actor_step_size", "health/critic_step_size", "health/actor_trace_l1",
                                         "health/critic_trace_l1", "health/reward_std"), means),
                                   *zip(("charts/update_us_p50", "charts/update_us_p99", "charts/update_us_max"),
                                        np.percentile(update_us[:n_updates], [50, 99, 100]) if n_updates else []),
                                   ("charts/nonfinite_skips", skipped),
                                   ("charts/SPS", (global_step - log_step) / (time.time() - log_time))]:
                    writer.add_scalar(tag, value, global_step)
                log_time, log_step, n_updates = time.time(), global_step, 0
            if terminated or truncated:
                agent.end_episode()
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
                obs, action, sample = reset()
            else:
                obs, action, sample = next_obs, next_action, next_sample
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
