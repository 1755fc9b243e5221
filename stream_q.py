"""Stream Q(lambda) and Stream SARSA(lambda): streaming value-based control for discrete actions, with eligibility
traces and overshooting-bounded gradient descent (ObGD). One update per environment step; no replay buffer, no
target network, no batch.

    python stream_q.py --env CartPole-v1
    python stream_q.py --env MinAtar/Breakout-v1                  # MinAtar: in the project's dependencies
    python stream_q.py --env MinAtar/Breakout-v1 --sarsa          # Stream SARSA(lambda)
    python stream_q.py --env ALE/Breakout-v5                      # Atari: pip install -e ".[atari]"

Elsayed, Vasan and Mahmood, "Streaming Deep Reinforcement Learning Finally Works" (arXiv 2410.14606); definitions
in docs/algorithms.md 9. Per step, with S the normalised observation and A epsilon-greedy in Q(S, .):
    R <- R / std(u), u <- gamma u + R the episode's discounted return so far                 (--reward-scale)
    Q(lambda): delta = R + gamma (1 - terminated) max_a Q(S', a) - Q(S, A)
    SARSA:     delta = R + gamma (1 - terminated) Q(S', A') - Q(S, A), A' the next action, drawn before the update
    z <- gamma lambda c z + grad Q(S, A),  c = 0 if A was an exploratory pick other than the greedy action
                                                 (Q(lambda) only; SARSA: c = 1)
    M = alpha kappa max(|delta|, 1) ||z||_1,  theta <- theta + alpha / max(M, 1) delta z
epsilon falls linearly from --epsilon-start to --epsilon-end over --exploration-fraction of the budget, then stays.
Q(lambda) draws the next action from the updated network, SARSA from the network before the update (its target
needs it). --optimizer adaptive replaces z, in the bound and the step, by z / sqrt(v_hat + eps) as in stream_ac.py;
--optimizer intentional is Intentional Q(lambda) (docs/algorithms.md 11): the same delta and trace, the step solved
for an intended change eta (--lr, 0.25) of Q(S, A) (incremental_utils/optimizers.py Intentional).
--plasticity-every logs the plasticity/ diagnostics of the Q-network's hidden layers (docs/algorithms.md 10).

The network follows the observation: two hidden layers (Linear -> LayerNorm without affine -> LeakyReLU) for
vectors; for MinAtar's 10x10xC planes Conv2d(C, 16, 3) -> LayerNorm over the whole feature map -> LeakyReLU ->
Linear(1024, 128) -> LayerNorm -> LeakyReLU; for Atari's 4 stacked 84x84 frames three such convolutions (32 8x8 /5,
64 4x4 /3, 64 3x3 /2) and Linear(256, 128). Sparse init on every weight, biases 0.

Choices where docs/algorithms.md is silent, or where this script departs from the authors' code:
- Watkins's cut (c above) uses the greediness of A, the action whose gradient enters the trace, before that gradient
  enters it, as Sutton and Barto define Watkins's Q(lambda): the TD error of an exploratory action is not credited
  to the pairs before it. The authors' code zeroes the trace after the update that used it, one step later.
- Truncation (a time limit) bootstraps, as in every script here; the authors' code treats it as termination. Traces
  and u restart at every episode end. Classic control keeps the environment's own time limit (the authors' script
  raises it to 10,000 steps); a time feature, -0.5 + t / time limit, is appended to vector observations.
- Sparse init keeps at least one incoming weight per unit (as stream_ac.py does).
Run machinery (checkpoints, resume, logs, compiling): incremental_utils/, as for every script.
"""
import math
import sys
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from incremental_utils.errors import one_line_errors
from incremental_utils.flags import (DiagnosticArgs, IntentionalArgs, RunArgs, check_args, fill_unset, flags_given,
                                     parse, resume_args)
from incremental_utils.gradients import grad_and_aux
from incremental_utils.metrics import MetricSums
from incremental_utils.optimizers import Intentional, ObGD
from incremental_utils.plasticity import Plasticity, trunk_outputs
from incremental_utils.run import Run

ALGO = "stream_q"


STEP_SIZES = {"obgd": 1.0, "adaptive": 1.0, "intentional": 0.25}  # the Stream-X and intentional papers'


@dataclass
class Args(RunArgs, DiagnosticArgs, IntentionalArgs):
    env: str = "CartPole-v1"
    """gymnasium id with discrete actions: CartPole-v1, MinAtar/Breakout-v1, ALE/Breakout-v5 (Atari), ..."""
    total_timesteps: int = 5_000_000
    """environment steps to run (the paper's MinAtar runs: 5M)"""
    sarsa: bool = False
    """Stream SARSA(lambda): bootstrap from the next action taken (default: Stream Q(lambda), from the greedy one)"""
    lr: Optional[float] = None
    """step size: ObGD's alpha; intentional: eta, the intended change of Q(S, A); unset: 1.0 (obgd, adaptive), 0.25"""
    gamma: float = 0.99
    """discount factor"""
    trace_lambda: float = 0.8
    """lambda of the eligibility trace"""
    kappa: float = 2.0
    """ObGD's overshooting bound kappa"""
    epsilon_start: float = 1.0
    """exploration rate at the first step"""
    epsilon_end: float = 0.01
    """exploration rate after --exploration-fraction of the budget"""
    exploration_fraction: Optional[float] = None
    """fraction of --total-timesteps over which epsilon falls; unset: the authors' 0.05 for vectors, 0.2 for images"""
    hidden_size: Optional[int] = None
    """width of the hidden layers; unset: 32 for vector observations, 128 for images (the authors' defaults)"""
    sparsity: float = 0.9
    """fraction of each unit's incoming weights set to zero at initialisation"""
    optimizer: Literal["obgd", "adaptive", "intentional"] = "obgd"
    """obgd; adaptive: the trace divided by the running RMS of delta*z; intentional: intentional updates"""
    beta2: float = 0.999
    """adaptive, intentional: decay of the second-moment estimate (of delta*z; of the gradient)"""

    obs_norm: bool = True
    """normalise observations with running (Welford) mean and variance (per element, images too)"""
    reward_scale: bool = True
    """divide rewards by the running standard deviation of the discounted return trace"""
    time_feature: bool = True
    """append the time within the episode to vector observations (never to images)"""


def resolve_defaults(args, obs_shape):
    """The defaults that depend on the observation (or the optimizer); returns where the step size came from."""
    images, source = len(obs_shape) > 1, fill_unset(args, {"lr": STEP_SIZES[args.optimizer]}, args.optimizer)
    args.exploration_fraction = args.exploration_fraction if args.exploration_fraction is not None else (
        0.2 if images else 0.05)
    args.hidden_size = args.hidden_size or (128 if images else 32)
    args.time_feature = args.time_feature and not images
    return source


def epsilon_at(step, args):
    """epsilon for the action of environment step `step` (1, 2, ...): linear, then constant."""
    duration = args.exploration_fraction * args.total_timesteps
    if duration <= 0:
        return args.epsilon_end
    return max(args.epsilon_start + (args.epsilon_end - args.epsilon_start) * step / duration, args.epsilon_end)


# ---------------------------------------------------------------------------------------------- statistics
# As in stream_ac.py: all learner state is parameters and buffers of nn.Modules (state_dict() is the checkpoint, and
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
def sparse_init_(weight, sparsity):
    """Uniform in +-1/sqrt(fan_in), then ceil(sparsity * fan_in) of each unit's incoming weights set to zero, at
    most fan_in - 1 of them. A convolution's unit is an output channel; its fan-in, in_channels x kernel area."""
    rows = weight.view(weight.shape[0], -1)
    fan_in = rows.shape[1]
    n_zero = min(math.ceil(round(sparsity * fan_in, 9)), fan_in - 1)  # round: 0.9 * 130 is 117.00000000000001
    with torch.no_grad():
        weight.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        for row in rows:
            row[torch.randperm(fan_in)[:n_zero]] = 0


class LayerNormAll(nn.Module):
    """LayerNorm without learnable affine over all of one sample's features (a whole feature map for convolutions),
    as the authors' networks normalise."""

    def forward(self, x):
        return F.layer_norm(x, x.shape)


def block(layer):
    return [layer, LayerNormAll(), nn.LeakyReLU()]


class QNetwork(nn.Module):
    """Q(S, .) for one observation: an MLP for vectors, a small conv net for MinAtar planes (channels last) or stacked
    Atari frames (channels first); see the module docstring."""

    def __init__(self, obs_shape, n_actions, hidden, sparsity):
        super().__init__()
        self.channels_last = len(obs_shape) == 3 and obs_shape[-1] < obs_shape[0]
        if len(obs_shape) == 1:
            layers = [*block(nn.Linear(obs_shape[0], hidden)), *block(nn.Linear(hidden, hidden))]
        else:
            channels, size = (obs_shape[-1], obs_shape[0]) if self.channels_last else (obs_shape[0], obs_shape[1])
            convs = [nn.Conv2d(channels, 16, 3)] if size <= 16 else [
                nn.Conv2d(channels, 32, 8, stride=5), nn.Conv2d(32, 64, 4, stride=3), nn.Conv2d(64, 64, 3, stride=2)]
            layers = [layer for conv in convs for layer in block(conv)] + [nn.Flatten(0)]
            flat = nn.Sequential(*layers)(torch.zeros(channels, size, size)).numel()
            layers += block(nn.Linear(flat, hidden))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, n_actions)
        for layer in self.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                sparse_init_(layer.weight, sparsity)
                nn.init.zeros_(layer.bias)
        self.requires_grad_(False)  # updated in place by ObGD; gradients come from grad_and_aux

    def forward(self, obs, hidden=None):  # hidden: a list that receives each hidden layer's units
        return self.head(trunk_outputs(self.features, obs.movedim(-1, 0) if self.channels_last else obs, hidden))


# ------------------------------------------------------------------------------------------------- learner
class StepInputs(NamedTuple):
    """What one update reads, by name (built by step_inputs(), the same way for every step and for the compiler)."""
    obs: torch.Tensor            # S, normalised, with its time feature
    action: torch.Tensor         # A
    greedy: torch.Tensor         # whether A was the greedy action when drawn
    raw_next_obs: torch.Tensor   # S' as the environment gave it (float64)
    reward: torch.Tensor         # R
    terminated: torch.Tensor     # 1.0 if S' ends the task, else 0.0; a time limit is not termination
    coin: torch.Tensor           # U(0, 1): A' explores when coin < epsilon
    random_action: torch.Tensor  # A' when it explores
    epsilon: torch.Tensor        # the exploration rate for A'


class Acting(NamedTuple):
    """Where the agent is between steps, S and the action it takes there: what an update returns, and reset()."""
    action: torch.Tensor  # A
    greedy: torch.Tensor  # whether A is the greedy action
    obs: torch.Tensor     # S, normalised, with its time feature
    ok: torch.Tensor      # false when the update that led here was not applied (a non-finite value)


def step_inputs(now, raw_next_obs, reward, terminated, epsilon, n_actions, generator):
    """One update's inputs from where the agent is (`now`) and what the environment returned."""
    return StepInputs(now.obs, now.action, now.greedy, torch.as_tensor(raw_next_obs, dtype=torch.float64),
                      torch.tensor(float(reward)), torch.tensor(float(terminated)),
                      torch.rand((), generator=generator), torch.randint(n_actions, (), generator=generator),
                      torch.tensor(float(epsilon)))


class StreamQ(nn.Module):
    """The whole learner. forward() is one Stream Q(lambda) or SARSA(lambda) step; parameters and buffers are the
    complete state."""

    def __init__(self, obs_shape, n_actions, args, time_limit=1000):
        super().__init__()
        in_shape = (obs_shape[0] + 1,) if args.time_feature else tuple(obs_shape)
        self.q_net = QNetwork(in_shape, n_actions, args.hidden_size, args.sparsity)
        decay = args.gamma * args.trace_lambda
        self.opt = Intentional(self.q_net, args.lr, decay, args.beta2, args.clip_mult, args.beta_clip) \
            if args.optimizer == "intentional" else ObGD(self.q_net, args.lr, args.kappa, decay,
                                                         args.optimizer == "adaptive", args.beta2)
        self.plasticity = Plasticity({"q": (self.q_net, self.q_net.features, ("head",), self.opt)}, args, None)
        self.obs_stats = RunningMeanVar(tuple(obs_shape))
        self.reward_scaler = RewardScaler(args.gamma)
        self.gamma, self.sarsa, self.n_actions, self.time_limit = args.gamma, args.sarsa, n_actions, time_limit
        self.epsilon_end = args.epsilon_end
        self.register_buffer("episode_step", torch.zeros(1, dtype=torch.float64))  # t, the time feature's counter
        self.obs_norm, self.reward_scale, self.time_feature = args.obs_norm, args.reward_scale, args.time_feature
        self.metrics = MetricSums("losses/td_loss", "losses/q_values", "charts/epsilon", "health/reward_std",
                                  *(f"health/{name}" for name in self.opt.health_names))

    def observe(self, raw_obs, t):
        """Adds the observation to the running statistics, normalises it (algorithms.md 2), appends the time feature."""
        obs = raw_obs.float()
        if self.obs_norm:
            self.obs_stats.update(raw_obs.double())
            obs = self.obs_stats.normalize(raw_obs.double()).float()
        return torch.cat([obs, t.reshape(1).float()]) if self.time_feature else obs

    def act(self, q, explore, random_action):
        """Epsilon-greedy in q (explore: the coin came up "explore"); returns the action and whether it is greedy."""
        greedy = q.argmax()
        action = torch.where(explore, random_action, greedy)
        return action, action == greedy

    @torch.no_grad()
    def evaluation_action(self, raw_obs, episode_step, generator=None):
        """The action for raw_obs without learning (--eval-every, scripts/evaluate.py): observation statistics
        frozen; greedy, or epsilon-greedy with --epsilon-end when a generator is given."""
        obs = self.obs_stats.normalize(raw_obs.double()).float() if self.obs_norm else raw_obs.float()
        if self.time_feature:
            obs = torch.cat([obs, torch.tensor([episode_step / self.time_limit - 0.5])])
        q = self.q_net(obs)
        if generator is None:
            return q.argmax()
        explore = torch.rand((), generator=generator) < self.epsilon_end
        return self.act(q, explore, torch.randint(self.n_actions, (), generator=generator))[0]

    def q_taken(self, params, obs, action, hidden):  # hidden: a list for the plasticity tools' hidden units, or None
        q = torch.func.functional_call(self.q_net, params[0], (obs, hidden)).gather(0, action.reshape(1)).squeeze(0)
        return q, q.detach()

    def acting(self, obs, explore, random_action, ok=True):
        return Acting(*self.act(self.q_net(obs), explore, random_action), obs, torch.tensor(ok))

    def forward(self, s: StepInputs):
        """One update on (S, A, R, S') (algorithms.md 9), and the next action A' (it explores when s.coin <
        s.epsilon, as s.random_action). An update with a non-finite value is not applied (ok=False)."""
        self.episode_step += 1
        next_obs = self.observe(s.raw_next_obs, self.episode_step / self.time_limit - 0.5)
        reward = self.reward_scaler(s.reward) if self.reward_scale else s.reward
        reward_std = (self.reward_scaler.stats.var() + 1e-8).sqrt().float().reshape(())  # 1 when not scaling
        params = dict(self.q_net.named_parameters())
        hidden = [] if self.plasticity.active else None
        (grads,), q = grad_and_aux(self.q_taken, (params,), s.obs, s.action, hidden)
        explore = s.coin < s.epsilon
        with torch.no_grad():
            next_q = self.q_net(next_obs)  # before the update
        if self.sarsa:
            next_action, next_greedy = self.act(next_q, explore, s.random_action)
            target = next_q.gather(0, next_action.reshape(1)).squeeze(0)
        else:
            target = next_q.max()
        delta = reward + self.gamma * (1.0 - s.terminated) * target - q
        cut = torch.ones(()) if self.sarsa else s.greedy.float()  # Watkins: no credit past an exploratory action
        step = self.opt.propose(grads, delta, cut)
        ok = torch.isfinite(delta + step["norm"])
        self.opt.apply(params, step, ok)
        self.plasticity.record(ok, {"q": hidden} if self.plasticity.active else None)
        self.metrics.add(ok, {"losses/td_loss": delta.square(), "losses/q_values": q, "charts/epsilon": s.epsilon,
                              "health/reward_std": reward_std,
                              **{f"health/{name}": value for name, value in step["health"].items()}})
        if not self.sarsa:
            next_action, next_greedy = self.act(self.q_net(next_obs), explore, s.random_action)
        return Acting(next_action, next_greedy, next_obs, ok)

    def end_episode(self):
        """The trace, the return trace and the time feature restart at every episode end (termination or truncation)."""
        self.episode_step.zero_()
        self.opt.end_episode()
        self.reward_scaler.end_episode()


def make_learner(env, args):
    """The learner for env's spaces (main() and scripts/evaluate.py build it the same way)."""
    resolve_defaults(args, env.observation_space.shape)
    time_limit = (env.spec.max_episode_steps if env.spec is not None else None) or 1000
    return StreamQ(env.observation_space.shape, int(env.action_space.n), args, time_limit)


# ---------------------------------------------------------------------------------------------------- run
def policy_parts(agent):
    """The modules a saved policy holds (--save-model, --init-from, scripts/evaluate.py)."""
    return {"q_net": agent.q_net, "obs_stats": agent.obs_stats}


def main(args, given=frozenset()):
    args, checkpoint = resume_args(args, given, ALGO)
    source = fill_unset(args, {"lr": STEP_SIZES[args.optimizer]}, args.optimizer)
    unit = lambda x: 0 <= x <= 1  # noqa: E731
    check_args(args, positive=("lr", "kappa", "hidden_size"),
               ranges={"gamma": unit, "trace_lambda": unit, "epsilon_start": unit, "epsilon_end": unit,
                       "exploration_fraction": unit, "sparsity": lambda s: 0 <= s < 1, "beta2": lambda b: 0 <= b < 1})
    run = Run(ALGO, args, checkpoint)  # seeding; the run directory once start() has accepted the environment
    env = run.make_env(action_spaces=(gym.spaces.Discrete,), images=("frames",))
    agent = make_learner(env, args)
    obs_shape, n_actions = env.observation_space.shape, int(env.action_space.n)
    hyperparams = {k: getattr(args, k) for k in ("sarsa", "lr", "gamma", "trace_lambda", "kappa", "epsilon_end",
                                                 "exploration_fraction", "hidden_size", "optimizer")}
    name = f"{'Intentional' if args.optimizer == 'intentional' else 'Stream'} {'SARSA' if args.sarsa else 'Q'}(lambda)"
    run.start(agent, f"{name}, {hyperparams} ({source})", policy=agent.evaluation_action,
              parts=policy_parts(agent))
    if run.resumed:
        agent.end_episode()  # the partial episode at a mid-episode save is dropped
    in_shape = (obs_shape[0] + 1,) if args.time_feature else obs_shape
    first = agent.acting(torch.zeros(in_shape), torch.tensor(False), torch.zeros((), dtype=torch.long))
    update = run.compile(agent, step_inputs(first, np.zeros(obs_shape), 0.0, False, 1.0, n_actions,
                                            torch.Generator()))

    def reset():
        obs = agent.observe(torch.as_tensor(run.reset_env(), dtype=torch.float64), torch.tensor(-0.5))
        explore = torch.rand((), generator=run.noise_gen) < epsilon_at(run.global_step + 1, args)
        return agent.acting(obs, explore, torch.randint(n_actions, (), generator=run.noise_gen))

    with run.guard():  # Ctrl-C, SIGTERM, a non-finite value, a robot fault or a crash: saved, closed, reported
        now = reset() if run.running() else None
        while run.running():
            raw_next_obs, reward, terminated, truncated, info = env.step(now.action.numpy())
            seen = run.count_step(reward, raw_next_obs)  # the run's counters; False: a non-finite value, skipped
            # ALGO LOGIC: one Stream Q(lambda) / SARSA(lambda) update on (S, A, R, S'), and the next action
            epsilon = epsilon_at(run.global_step + 1, args)
            inputs = step_inputs(now, raw_next_obs, reward, terminated, epsilon, n_actions, run.noise_gen)
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
