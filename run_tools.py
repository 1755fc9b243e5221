"""The run machinery every algorithm script needs, written once: the run flags, argument checks, resume rules, the
run directory and args.json, seeding, Ctrl-C/SIGTERM handling, environment construction and its checks, TensorBoard
and wandb, atomic checkpoints, the non-finite policy, robot-error and crash handling with their exit codes, compiling
the update (or falling back to eager), update latency and SPS logging, and the console line.

An algorithm script calls it like this (avg.py is the example to read):

    run = Run(ALGO, args, checkpoint)         # run directory, args.json, seeds, signal handlers
    env = run.make_env()                      # checked: a Box action space, a flat Box observation
    run.start(learner, summary)               # restores a resumed run's state; TensorBoard and wandb
    step_fn = run.compile(learner, example)   # the compiled update, or the learner itself (eager)
    with run.guard():                         # Ctrl-C, a robot fault, a crash: checkpoint, close, exit code
        while run.global_step < args.total_timesteps and not run.stop_signal:
            ... env.step, run.count_step, the update, run.log_window, run.end_episode ...
    return run.finish(model)

Evaluation (--eval-every, and scripts/evaluate.py) runs a learner's evaluation_action(raw_obs, episode_step,
generator) through run_episodes(); --init-from and evaluate.py read a saved policy with load_policy_source().

This module never calls into an algorithm: no learner base class, no hooks. The learner is any nn.Module whose
state_dict() is the complete learner state; that is all the machinery knows of it.
"""
import dataclasses
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch

import robots  # registers UR5Reacher-v0 and Create2Mover-v0
import update_tools

ROOT = Path(__file__).resolve().parent

# The algorithm scripts at the repository root, and what their exit statuses mean: read by scripts/sweep.py,
# scripts/slurm.py, scripts/bench.py and the tests.
SCRIPTS = ("avg", "iac", "sac_incremental", "td3_incremental", "stream_ac", "stream_q")
EXIT_CODES = {
    0: "finished",
    1: "crashed (an exception from the environment or a library; traceback in the log; resumable)",
    2: "bad input (a bad flag, environment, checkpoint or log directory)",
    3: "stopped on a non-finite loss, gradient, reward or observation (the last good state is saved)",
    4: "robot error (lost link, protective stop or another fault; the robot was stopped; resumable)",
    130: "interrupted (SIGINT, Ctrl-C; checkpoint saved)",
    143: "terminated (SIGTERM; checkpoint saved)",
}


class RunError(Exception):
    """A problem to report in one line (bad input, missing checkpoint, unusable environment): exit status 2."""


class NonFiniteStop(Exception):
    """A non-finite value with --on-nonfinite stop: the run ends with exit status 3."""


# ------------------------------------------------------------------------------------------------ flags
@dataclass
class RunArgs:
    """The flags every script has. A script's Args subclasses this and adds its hyperparameters."""
    env: str = "Hopper-v4"
    """gymnasium environment id (continuous actions), e.g. Hopper-v4, UR5Reacher-v0, Create2Mover-v0"""
    seed: int = 1
    """seed of the run (torch, numpy, random, environment)"""
    total_timesteps: int = 10_000_000
    """environment steps to run (the paper's runs: 10M)"""
    exp_name: Optional[str] = None
    """experiment name, part of the run name and the grouping key of scripts/plot.py; unset: the script's name"""
    run_name: Optional[str] = None
    """log under runs/RUN_NAME; unset: {env}__{exp_name}__{seed}__{unix time}, with any / in env as - (as sweep.py
    names runs), so that MinAtar/Breakout-v1 does not nest a directory"""

    compile: Literal["auto", "on", "off"] = "auto"
    """compile the per-step update to C++ (~20 s once, then cached); auto: on when total-timesteps >= 10000"""
    log_every: int = 1000
    """steps between loss / health / speed logs"""
    track: bool = False
    """log to Weights & Biases too (works with WANDB_MODE=offline)"""
    wandb_project_name: str = "incremental-rl"
    """wandb project"""
    wandb_entity: Optional[str] = None
    """wandb entity (team)"""
    save_model: bool = False
    """save the final networks and the observation statistics to runs/RUN_NAME/SCRIPT.model"""
    capture_video: bool = False
    """record videos of episodes to videos/RUN_NAME (needs rendering and moviepy)"""

    checkpoint_every: int = 0
    """write a checkpoint (the complete learner state) at the first episode end after every N steps; 0: at stops"""
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

    eval_every: int = 0
    """evaluate the deterministic policy at the first episode end after every N steps, on a separate environment
    seeded apart, the observation statistics frozen and no learning (eval/episodic_return); 0: never"""
    eval_episodes: int = 10
    """episodes per evaluation (--eval-every)"""
    init_from: Optional[str] = None
    """start a new run from the policy, critic and observation statistics saved in this .model file, checkpoint or
    run directory of the same script (fresh optimiser state)"""


# Flags that may change when a run is resumed: how it runs, not what it learns.
RESUME_OVERRIDES = {"total_timesteps", "checkpoint_every", "keep_checkpoints", "log_every", "track", "on_nonfinite",
                    "compile", "robot_host", "robot_port", "realtime", "eval_every", "eval_episodes"}
EVAL_SEED_OFFSET = 1_000_000  # evaluation episode i starts from reset(seed=args.seed + EVAL_SEED_OFFSET + i)
MODEL_FORMAT = "incremental-rl model 1"
POLICY_PARTS = ("actor", "critic", "q_net", "obs_stats")  # what a .model holds of a learner, by attribute name


def flags_given(argv, args_class):
    """Names of the Args fields set on the command line (--no-x counts as x)."""
    names = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    return {n[3:] if n.startswith("no_") and n[3:] in args_class.__dataclass_fields__ else n for n in names}


def check_args(args, positive=(), ranges=None):
    """One-line errors for flags out of range: `positive` names must be > 0 (when set), `ranges` maps a name to a
    test its value must pass (when set). The run flags every script has are checked here too."""
    for name in ("total_timesteps", "log_every", "keep_checkpoints", "eval_episodes", *positive):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise RunError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name, good in {"checkpoint_every": lambda n: n >= 0, "eval_every": lambda n: n >= 0, **(ranges or {})}.items():
        value = getattr(args, name)
        if value is not None and not good(value):
            raise RunError(f"--{name.replace('_', '-')} is out of range: {value}")
    if args.eval_every and (args.robot_host or args.robot_port):
        raise RunError("--eval-every needs a second environment, and one robot cannot run two episodes at once; "
                       "evaluate a saved policy on the robot with scripts/evaluate.py")


# ------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_KEYS = {"algo", "args", "obs_dim", "act_dim", "global_step", "episodes", "learner", "rng", "wandb_id"}


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


def load_file(path, what=""):
    """torch.load of a file this project wrote (it holds Python objects: arguments, spaces), or a one-line error."""
    if not path.is_file():
        raise RunError(f"{what}{path} does not exist")
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:
        raise RunError(f"{what}{path} is unreadable or corrupt ({type(e).__name__})") from None


def load_checkpoint(path, algo):
    """The newest checkpoint in a run directory (or the file `path`), checked to be a complete `algo` checkpoint."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        candidates = sorted(folder.glob("step_*.pt"))
        if not candidates:
            raise RunError(f"no checkpoint found in {path}")
        path = candidates[-1]
    checkpoint = load_file(path, "checkpoint ")
    if not isinstance(checkpoint, dict) or "algo" not in checkpoint:
        raise RunError(f"{path} is not a checkpoint of this project")
    if checkpoint["algo"] != algo:
        raise RunError(f"{path} is a {checkpoint['algo']}.py checkpoint, not a {algo}.py one")
    missing = CHECKPOINT_KEYS - set(checkpoint)
    if missing:
        raise RunError(f"checkpoint {path} is incomplete (no {', '.join(sorted(missing))})")
    return checkpoint, path


def resume_args(args, given, algo):
    """With --resume: the saved run's arguments, with the run settings given on this command line applied (an
    experiment setting given with another value is refused), and the checkpoint. Otherwise args and None."""
    if not args.resume:
        return args, None
    checkpoint, path = load_checkpoint(args.resume, algo)
    try:
        saved = type(args)(**checkpoint["args"])
    except TypeError as e:
        raise RunError(f"{path} was written by another version of {algo}.py ({e})") from None
    for name in sorted(set(given) - {"resume"}):
        if name in RESUME_OVERRIDES:
            setattr(saved, name, getattr(args, name))
        elif getattr(args, name) != getattr(saved, name):
            raise RunError(f"{path} was trained with --{name.replace('_', '-')} {getattr(saved, name)}, "
                           f"not {getattr(args, name)}")
    print(f"resuming {saved.run_name} from {path} at step {checkpoint['global_step']}")
    return saved, checkpoint


# ---------------------------------------------------------------------------------------- saved policies
def load_policy_source(path, algo=None):
    """What rebuilding a policy needs, from a run directory (its .model if it has one, else its newest checkpoint), a
    .model file or a checkpoint: {"algo", "args", "obs_dim", "act_dim", "spaces" (None for a checkpoint), "parts"
    ({name: state_dict} of POLICY_PARTS), "path", "global_step"}. With `algo`, a file of another script is refused."""
    path = Path(path)
    if path.is_dir():
        models = sorted(path.glob("*.model"))
        if models:
            path = models[0]
        else:
            saved = read_json(path / "args.json")
            path = load_checkpoint(path, algo or (saved or {}).get("algo", "?"))[1]
    saved = load_file(path)
    is_model = isinstance(saved, dict) and saved.get("format") == MODEL_FORMAT
    if not is_model and not (isinstance(saved, dict) and CHECKPOINT_KEYS <= set(saved)):
        raise RunError(f"{path} is not a model, checkpoint or run directory of this project")
    if algo and saved["algo"] != algo:
        raise RunError(f"{path} was saved by {saved['algo']}.py, not {algo}.py")
    if is_model:
        parts = {name: saved[name] for name in POLICY_PARTS if name in saved}
        spaces = (saved["observation_space"], saved["action_space"])
    else:
        learner = saved["learner"]
        parts = {name: {k[len(name) + 1:]: v for k, v in learner.items() if k.startswith(name + ".")}
                 for name in POLICY_PARTS}
        parts = {name: state for name, state in parts.items() if state}
        spaces = None
    return {"algo": saved["algo"], "args": saved["args"], "obs_dim": saved["obs_dim"], "act_dim": saved["act_dim"],
            "spaces": spaces, "parts": parts, "path": str(path), "global_step": saved["global_step"]}


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def space_shapes(env):
    space = env.action_space
    return env.observation_space.shape[0], (space.shape[0] if space.shape else int(space.n))


def check_spaces(env, source, path):
    """Refuses, in one line, an environment whose spaces differ from those the saved policy was trained on (a model
    keeps the spaces; a checkpoint only their sizes)."""
    obs_dim, act_dim = space_shapes(env)
    if source["spaces"] is not None:
        saved_obs, saved_action = source["spaces"][0].shape, source["spaces"][1]
        same = env.observation_space.shape == saved_obs and (obs_dim, act_dim) == (source["obs_dim"], source["act_dim"])
        if same and isinstance(env.action_space, gym.spaces.Box):
            same = (np.allclose(saved_action.low, env.action_space.low)
                    and np.allclose(saved_action.high, env.action_space.high))
    else:
        saved_obs, saved_action = (source["obs_dim"],), f"of size {source['act_dim']}"
        same = (obs_dim, act_dim) == (source["obs_dim"], source["act_dim"])
    if not same:
        raise RunError(f"{path} was trained with observations of shape {saved_obs} and actions {saved_action}; "
                       f"{env.spec.id if env.spec else 'this environment'} has {env.observation_space.shape} and "
                       f"{env.action_space}")


def load_policy(learner, source):
    """Loads the saved networks and observation statistics into the learner's parts of the same names."""
    for name, state in source["parts"].items():
        try:
            getattr(learner, name).load_state_dict(state)
        except RuntimeError as e:
            reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
            raise RunError(f"the {name} saved in {source['path']} does not fit this run's ({reason}); use the saved "
                           "run's --hidden-size and --feature-norm") from None


def run_episodes(env, act, episodes, seed, generator=None):
    """Runs whole episodes without learning: act(raw_obs, episode_step, generator) -> the environment's action (a
    tensor); episode i starts from env.reset(seed=seed + i). An episode whose action is non-finite ends there (no
    such action is ever sent). Returns (returns, lengths)."""
    returns, lengths = [], []
    for i in range(episodes):
        raw_obs, _ = env.reset(seed=seed + i)
        total, steps, done = 0.0, 0, False
        while not done:
            action = act(torch.from_numpy(np.asarray(raw_obs, dtype=np.float64)), steps, generator)
            if not torch.isfinite(action).all():
                break
            raw_obs, reward, terminated, truncated, _ = env.step(action.numpy())
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
    return returns, lengths


# --------------------------------------------------------------------------------------------- provenance
def made_with():
    """The versions and the checkout that made a run, for args.json. (MuJoCo's from the package metadata: importing
    it here would fix its OpenGL backend before make_env chooses one for rendering.)"""
    from importlib.metadata import version

    versions = {"python": platform.python_version(), "torch": torch.__version__, "gymnasium": gym.__version__,
                "mujoco": version("mujoco"), "numpy": np.__version__}
    try:
        def git(*cmd):
            return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        versions["git_commit"] = git("rev-parse", "HEAD")
        versions["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # not a checkout (an installed copy), or no git
        versions["git_commit"] = versions["git_dirty"] = None
    return versions


# ------------------------------------------------------------------------------------------- environments
def is_image(space):
    return isinstance(space, gym.spaces.Box) and (space.dtype == np.uint8 or len(space.shape) >= 3)


def box_leaves(space):
    """The spaces inside a (nested) Dict, or [space]."""
    if isinstance(space, gym.spaces.Dict):
        return [leaf for part in space.spaces.values() for leaf in box_leaves(part)]
    return [space]


def make_env(args, algo, action_spaces=(gym.spaces.Box,), finite_action_bounds=True, images=False):
    """gym.make with the robot flags and video recording, checked to have an action space of `action_spaces`
    (1-D Boxes, with finite bounds if asked) and vector observations. Problems are one-line RunErrors.

    Observations: a Dict of Boxes (DeepMind Control's, say) or a multi-dimensional Box that is not an image is
    flattened into one vector by gymnasium's FlattenObservation: the Dict's parts in the order of its keys, which
    gymnasium's Dict space sorts alphabetically (for dm_control/finger-spin: position, touch, velocity), each part in
    C order. Images (uint8, or three or more dimensions) are refused unless `images`.

    MinAtar ids (MinAtar/Breakout-v1, ...) are registered here; Atari ids (ALE/Breakout-v5, ...) get the usual
    preprocessing: no-op starts (up to 30), 4 frames skipped (max-pooled), 84x84 greyscale, 4 stacked (channels
    first), the whole game one episode."""
    if args.env.startswith("dm_control/"):
        if not os.environ.get("DISPLAY"):
            os.environ.setdefault("MUJOCO_GL", "egl")  # dm_control picks its renderer at import; no display here
        import shimmy  # noqa: F401 (registers the dm_control/ ids with gymnasium)
    if args.env.startswith("MinAtar/"):
        import minatar.gym
        if args.env not in gym.registry:
            minatar.gym.register_envs()  # importing the package is not enough
    atari = args.env.startswith("ALE/")
    if atari:
        try:
            import ale_py
        except ImportError:
            raise RunError(f"{args.env} needs ale-py: pip install -e '.[atari]'") from None
        gym.register_envs(ale_py)
    robot_kwargs = {k: v for k, v in [("host", args.robot_host), ("port", args.robot_port),
                                      ("realtime", args.realtime or None)] if v is not None}
    if robot_kwargs and args.env not in robots.ENV_IDS:
        raise RunError(f"--robot-host/--robot-port/--realtime apply only to {', '.join(robots.ENV_IDS)}")
    if args.capture_video and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"  # headless: render off-screen
    try:
        env = gym.make(args.env, **robot_kwargs, **({"render_mode": "rgb_array"} if args.capture_video else {}),
                       **({"frameskip": 1} if atari else {}))
        if atari:
            env = gym.wrappers.FrameStackObservation(gym.wrappers.AtariPreprocessing(env, noop_max=30), 4)
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
            env.close()
            raise RunError(f"--capture-video cannot record {args.env}: {' '.join(str(e).split())[:200]} (needs "
                           "moviepy, and MUJOCO_GL=egl or osmesa where there is no display)") from None
    action_space, obs_space = env.action_space, env.observation_space
    problem = None
    if not isinstance(action_space, action_spaces) or (isinstance(action_space, gym.spaces.Box)
                                                        and len(action_space.shape) != 1):
        if action_spaces == (gym.spaces.Box,):
            problem = (f"{algo}.py needs a continuous (Box) action space; {args.env} has {action_space} (for "
                       "discrete actions: stream_q.py)")
        elif action_spaces == (gym.spaces.Discrete,):
            problem = (f"{algo}.py needs a discrete action space; {args.env} has {action_space} (for continuous "
                       "actions: stream_ac.py, avg.py)")
        else:
            problem = f"{algo}.py cannot act in {action_space}"
    elif finite_action_bounds and isinstance(action_space, gym.spaces.Box) and not (
            np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
        problem = f"{algo}.py squashes actions with tanh and needs finite action bounds; {args.env} has {action_space}"
    elif not images and any(is_image(leaf) for leaf in box_leaves(obs_space)):
        problem = f"{algo}.py learns from vector observations; {args.env} has images: {obs_space}"
    elif not all(isinstance(leaf, gym.spaces.Box) for leaf in box_leaves(obs_space)):
        problem = f"{algo}.py needs Box observations (or a Dict of Boxes); {args.env} has {obs_space}"
    if problem:
        env.close()
        raise RunError(problem)
    if len(obs_space.shape or ()) != 1 and not (images and is_image(obs_space)):  # a Dict, or another Box
        env = gym.wrappers.FlattenObservation(env)
    return env


def env_random_state(env):
    """The state of the environment's random stream: a numpy Generator's, or (DeepMind Control's task randomness
    through shimmy) a legacy RandomState's."""
    rng = env.unwrapped.np_random
    return rng.bit_generator.state if hasattr(rng, "bit_generator") else rng.get_state()


def set_env_random_state(env, state):
    rng = env.unwrapped.np_random
    if hasattr(rng, "bit_generator"):
        rng.bit_generator.state = state
    else:
        rng.set_state(state)


@contextmanager
def one_line_errors(algo):
    """For a script's __main__: bad input is one line and exit 2, a robot fault at start-up one line and exit 4."""
    try:
        yield
    except RunError as e:
        print(f"{algo}.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except robots.RobotError as e:
        print(f"{algo}.py: robot error: {e}", file=sys.stderr)
        sys.exit(4)


# ---------------------------------------------------------------------------------------------------- run
class Run:
    """One training run: its directory, counters, random streams, logs, checkpoints and exit status."""

    def __init__(self, algo, args, checkpoint=None):
        self.algo, self.args, self.checkpoint = algo, args, checkpoint
        args.exp_name = args.exp_name or algo
        args.run_name = args.run_name or \
            f"{args.env.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        self.dir = Path("runs") / args.run_name
        try:
            (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot write the run directory {self.dir}: {e.strerror}") from None
        # Seeding: every source of randomness. The learner's noise has its own generator, saved in checkpoints.
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.set_num_threads(1)  # thread pools only slow one-sample updates down
        self.noise_gen = torch.Generator().manual_seed(args.seed)
        self.stop_signal = None  # from here on Ctrl-C and SIGTERM stop the run cleanly, at the next step
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.env = self.eval_env = self.learner = self.writer = None
        self.global_step = self.episodes = self.skipped = self.exit_code = 0
        self.episode_return, self.episode_length, self.recent_returns = 0.0, 0, []
        self.wandb_id, self.message = None, ""
        self.update_us, self.n_updates = np.zeros(args.log_every), 0  # latencies of this log window's updates

    def _on_signal(self, signum, frame):
        self.stop_signal = signum
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C kills at once

    @property
    def resumed(self):
        return self.checkpoint is not None

    def make_env(self, **checks):
        """The training environment (see make_env for `checks`), seeded; kept for checkpoints and closing. With
        --eval-every, also the evaluation environment, a separate instance (without video)."""
        self.env = make_env(self.args, self.algo, **checks)
        self.env.action_space.seed(self.args.seed)
        if self.args.eval_every:
            self.eval_env = make_env(dataclasses.replace(self.args, capture_video=False), self.algo, **checks)
        return self.env

    def start(self, learner, summary=""):
        """Restores a resumed run's learner, counters and random streams, or loads --init-from's policy, critic and
        observation statistics into a new one; opens TensorBoard and wandb."""
        args, env, self.learner = self.args, self.env, learner
        obs_dim, act_dim = self.shapes()
        if self.checkpoint:
            checkpoint = self.checkpoint
            if (checkpoint["obs_dim"], checkpoint["act_dim"]) != (obs_dim, act_dim):
                raise RunError(f"checkpoint shapes (obs {checkpoint['obs_dim']}, action {checkpoint['act_dim']}) do "
                               f"not match {args.env} (obs {obs_dim}, action {act_dim})")
            try:
                learner.load_state_dict(checkpoint["learner"])  # copies in place
            except RuntimeError as e:
                raise RunError(f"the checkpoint's learner state does not fit this {self.algo}.py "
                               f"({str(e).splitlines()[0]})") from None
            self.global_step, self.episodes = checkpoint["global_step"], checkpoint["episodes"]
            self.wandb_id = checkpoint["wandb_id"]
            self.noise_gen.set_state(checkpoint["rng"]["noise"])
            torch.set_rng_state(checkpoint["rng"]["torch"])
            np.random.set_state(checkpoint["rng"]["numpy"])
            random.setstate(checkpoint["rng"]["python"])
        elif args.init_from:
            source = load_policy_source(args.init_from, self.algo)
            check_spaces(self.env, source, args.init_from)
            load_policy(learner, source)
            print(f"starting from {source['path']} (step {source['global_step']} of {source['args']['run_name']})")
        # written here, once a script has filled in the defaults that depend on the environment
        (self.dir / "args.json").write_text(json.dumps({"algo": self.algo, **asdict(args), "made_with": made_with()},
                                                       indent=1))
        print(f"{self.algo}.py on {args.env}: {summary}; logging to {self.dir}")
        if args.track:
            import wandb
            self.wandb_id = self.wandb_id or os.urandom(4).hex()  # kept in checkpoints: a resumed run continues it
            try:
                wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                           config=vars(args), name=args.run_name, id=self.wandb_id, resume="allow", save_code=True)
            except Exception as e:  # not logged in, no network, bad entity: wandb's own exception types vary
                env.close()
                raise RunError(f"wandb did not start: {str(e).strip().splitlines()[0]} (WANDB_MODE=offline logs "
                               "locally)") from None
        from torch.utils.tensorboard import SummaryWriter
        # purge_step hides what a killed run logged after its checkpoint
        self.writer = SummaryWriter(str(self.dir), purge_step=self.global_step + 1 if self.checkpoint else None)
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" +
                             "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
        self.last_checkpoint_step, self.last_eval_step = self.global_step, self.global_step
        self.last_print, self.loop_start = 0.0, None
        self.log_time, self.log_step = time.time(), self.global_step

    def shapes(self):
        """(observation size, action size or number of actions) of the training environment."""
        return space_shapes(self.env)

    def compile(self, learner, example_inputs):
        """The compiled update (--compile on, or auto with a budget of at least 10k steps), else the learner itself.
        Compiled before the first reset: a real robot must not wait for the compiler mid-episode."""
        mode = self.args.compile
        if mode == "off" or (mode == "auto" and self.args.total_timesteps < 10_000):
            return learner
        print("compiling the update (once; cached on disk for later runs)...")
        t0 = time.perf_counter()
        try:
            step = update_tools.compile_update(learner, example_inputs)
        except Exception as e:  # no C++ compiler, an unsupported torch version, ...
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            if mode == "on":
                raise RunError(f"compiling the update failed ({reason}); run with --compile off") from None
            print(f"warning: compiling the update failed ({reason}); continuing uncompiled", file=sys.stderr)
            return learner
        print(f"compiled the update in {time.perf_counter() - t0:.1f} s")
        self.writer.add_scalar("charts/compile_seconds", time.perf_counter() - t0)
        return step

    # ---------------------------------------------------------------------------------- per step
    def reset_env(self):
        """env.reset(): seeded at the run's first step; on resuming, the environment's saved random stream."""
        checkpoint = self.checkpoint
        if checkpoint and (self.episodes, self.global_step) == (checkpoint["episodes"], checkpoint["global_step"]):
            set_env_random_state(self.env, checkpoint["rng"]["env"])
            raw_obs, _ = self.env.reset()
        else:
            raw_obs, _ = self.env.reset(seed=self.args.seed if self.global_step == 0 else None)
        if self.loop_start is None:  # speeds count from here, not from before compiling
            self.loop_start = (time.time(), self.global_step)
            self.log_time = time.time()
        return raw_obs

    def count_step(self, reward, next_obs):
        """Counts an environment step; names a non-finite reward (in float32, as the learner sees it) or
        observation, else None. A non-finite reward stays out of the episode's return."""
        self.global_step += 1
        self.episode_length += 1
        reward = float(reward)
        if not (math.isfinite(reward) and abs(reward) < 3.4e38):  # float32's largest is 3.40282e38
            with np.errstate(over="ignore"):
                if not np.isfinite(np.float32(reward)):
                    return "reward"
        self.episode_return += reward
        next_obs = np.asarray(next_obs)  # integer and boolean observations (MinAtar's) are always finite
        return None if next_obs.dtype.kind not in "fc" or np.isfinite(next_obs).all() else "observation"

    def timed(self, step_fn, *inputs):
        """step_fn(*inputs), its latency recorded for this log window's percentiles."""
        t0 = time.perf_counter()
        out = step_fn(*inputs)
        self.update_us[self.n_updates % self.args.log_every] = 1e6 * (time.perf_counter() - t0)
        self.n_updates += 1
        return out

    def nonfinite(self, culprit):
        """A non-finite value at this step, whose update was not applied: with --on-nonfinite stop the run ends
        here (exit 3, the last good state saved); with skip it is counted and the run goes on."""
        self.skipped += 1
        if self.args.on_nonfinite == "stop":
            raise NonFiniteStop(culprit)

    def log_window(self, *metrics):
        """Every --log-every steps: the means of the learner's MetricSums, update latency, skips and SPS."""
        if self.global_step % self.args.log_every or self.global_step <= self.log_step:
            return
        scalars = {tag: mean for sums in metrics for tag, mean in sums.pop_means().items()}
        if self.n_updates:
            scalars.update(zip(("charts/update_us_p50", "charts/update_us_p99", "charts/update_us_max"),
                               np.percentile(self.update_us[:self.n_updates], [50, 99, 100])))
        scalars["charts/nonfinite_skips"] = self.skipped
        scalars["charts/SPS"] = (self.global_step - self.log_step) / (time.time() - self.log_time)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, self.global_step)
        self.log_time, self.log_step, self.n_updates = time.time(), self.global_step, 0

    def end_episode(self, info, policy=None):
        """Logs the episode that just ended, prints the console line (at most one a second), evaluates `policy` when
        --eval-every is due (see evaluate) and writes a checkpoint when one is due. Call it after the learner's own
        end-of-episode bookkeeping."""
        self.episodes += 1
        self.recent_returns = (self.recent_returns + [self.episode_return])[-10:]
        self.writer.add_scalar("charts/episodic_return", self.episode_return, self.global_step)
        self.writer.add_scalar("charts/episodic_length", self.episode_length, self.global_step)
        if "overruns" in info:
            self.writer.add_scalar("charts/cycle_overruns", info["overruns"], self.global_step)
        if time.time() - self.last_print >= 1.0:
            print(self.console_line())
            self.last_print = time.time()
        self.episode_return, self.episode_length = 0.0, 0
        every = self.args.eval_every
        if every and policy is not None and self.global_step // every > self.last_eval_step // every:
            self.evaluate(policy)
        if self.args.checkpoint_every and self.global_step - self.last_checkpoint_step >= self.args.checkpoint_every:
            self.save_checkpoint(mid_episode=False)
            self.last_checkpoint_step = self.global_step

    def evaluate(self, policy):
        """--eval-episodes episodes of policy(raw_obs, episode_step, None), its deterministic action without learning,
        on the evaluation environment; the same start states every time. Touches none of training's random streams,
        so a run gives the same training returns with and without evaluation."""
        returns, lengths = run_episodes(self.eval_env, policy, self.args.eval_episodes,
                                        self.args.seed + EVAL_SEED_OFFSET)
        self.writer.add_scalar("eval/episodic_return", np.mean(returns), self.global_step)
        self.writer.add_scalar("eval/episodic_return_std", np.std(returns), self.global_step)
        self.writer.add_scalar("eval/episodic_length", np.mean(lengths), self.global_step)
        print(f"eval at global_step={self.global_step}: mean return {np.mean(returns):.1f} (std {np.std(returns):.1f}) "
              f"over {len(returns)} episodes")
        self.last_eval_step = self.global_step

    def console_line(self):
        start_time, start_step = self.loop_start or (time.time(), self.global_step)
        sps = (self.global_step - start_step) / max(time.time() - start_time, 1e-9)
        left = (self.args.total_timesteps - self.global_step) / sps if sps > 0 else float("inf")
        left_text = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} days"
        return (f"global_step={self.global_step}, episode={self.episodes}, episodic_return={self.episode_return:.1f}, "
                f"SPS={sps:.0f}, time_left={left_text}")

    # ----------------------------------------------------------------------------------- the end
    def save_checkpoint(self, mid_episode):
        self.writer.flush()  # the logs up to this step are on disk before the checkpoint that follows them
        path = self.dir / "checkpoints" / f"step_{self.global_step:012d}.pt"
        rng = {"noise": self.noise_gen.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
               "python": random.getstate(), "env": env_random_state(self.env)}
        obs_dim, act_dim = self.shapes()
        save_atomic({"algo": self.algo, "args": asdict(self.args), "obs_dim": obs_dim, "act_dim": act_dim,
                     "global_step": self.global_step, "episodes": self.episodes, "mid_episode": mid_episode,
                     "learner": self.learner.state_dict(), "rng": rng, "wandb_id": self.wandb_id}, path)
        for old in sorted(path.parent.glob("step_*.pt"))[:-self.args.keep_checkpoints]:
            old.unlink()
        return path

    @contextmanager
    def guard(self):
        """Around the training loop: whatever ends it (the budget, Ctrl-C/SIGTERM, a non-finite value, a robot fault,
        an exception), the state is saved where it is needed, the environment (and robot) stopped and closed, the
        logs flushed, and exit_code/message set. Exceptions are not re-raised: finish() reports them."""
        try:
            yield
            if self.stop_signal is not None:
                path = self.save_checkpoint(mid_episode=True)  # the episode in progress is dropped on resume
                self.exit_code = 130 if self.stop_signal == signal.SIGINT else 143
                self.message = (f"stopped by {signal.Signals(self.stop_signal).name} at step {self.global_step}; "
                                f"resume with --resume {path}")
        except NonFiniteStop as e:
            path = self.save_checkpoint(mid_episode=True)
            self.exit_code, self.message = 3, (f"non-finite {e} at step {self.global_step}; the update was not "
                                               f"applied and the last good state is saved in {path}")
        except robots.RobotError as e:  # the environment has already stopped the robot
            path = self.save_checkpoint(mid_episode=True)
            self.exit_code = 4
            self.message = f"robot error at step {self.global_step}: {e}; resume with --resume {path}"
        except Exception:  # a bug or failure in the environment or a library: show where, and keep the run
            traceback.print_exc()
            path = self.save_checkpoint(mid_episode=True)
            self.exit_code = 1
            self.message = f"failed at step {self.global_step} (above); resume with --resume {path}"
        finally:
            self.env.close()
            if self.eval_env is not None:
                self.eval_env.close()
            self.writer.close()
            if self.args.track:
                import wandb
                wandb.finish(exit_code=self.exit_code)

    def finish(self, model):
        """The exit status. A run that ended early prints why (one line); a finished one writes summary.json and,
        with --save-model, SCRIPT.model: `model` ({name: state_dict} of POLICY_PARTS) with what rebuilding the policy
        needs (the script, its arguments, the spaces) and how it was made."""
        if self.exit_code:
            print(f"{self.algo}.py: {self.message}", file=sys.stderr)
            return self.exit_code
        if self.args.save_model:
            obs_dim, act_dim = self.shapes()
            save_atomic({"format": MODEL_FORMAT, "algo": self.algo, "args": asdict(self.args), **model,
                         "obs_dim": obs_dim, "act_dim": act_dim, "observation_space": self.env.observation_space,
                         "action_space": self.env.action_space, "global_step": self.global_step,
                         "made_with": made_with()}, self.dir / f"{self.algo}.model")
        (self.dir / "summary.json").write_text(json.dumps({
            "finished": True, "global_step": self.global_step, "episodes": self.episodes,
            "mean_return_last10": float(np.mean(self.recent_returns)) if self.recent_returns else None}))
        print(f"done: {self.global_step} steps, {self.episodes} episodes, logs in {self.dir}")
        return 0

