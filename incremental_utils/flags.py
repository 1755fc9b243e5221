"""The flags every algorithm script has (RunArgs, which each script's Args extends, so that --help lists them all),
the checks of their values, and the rules of --resume: which flags may change when a run is continued."""
import contextlib
import io
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import tyro

from .checkpoints import load_checkpoint
from .errors import RunError
from .image_envs import MIN_SIDE


@dataclass
class RunArgs:
    """The flags every script has. A script's Args subclasses this and adds its hyperparameters. (Each help text is
    one line: tyro keeps a docstring's line breaks.)"""
    env: str = "Hopper-v4"
    """gymnasium environment id, e.g. Hopper-v4, dm_control/reacher-hard-v0, UR5Reacher-v0, Create2Mover-v0"""
    seed: int = 1
    """seed of the run (torch, numpy, random, environment)"""
    total_timesteps: int = 10_000_000
    """steps to run, each one update: environment steps, or with --action-repeat N agent steps of N environment steps (the paper's runs: 10M)"""
    exp_name: Optional[str] = None
    """experiment name, part of the run name and the grouping key of scripts/plot.py; unset: the script's name"""
    run_name: Optional[str] = None
    """log under runs/RUN_NAME; unset: ENV__EXP_NAME__SEED__UNIXTIME, a / in the env id written as -"""

    compile: Literal["auto", "on", "off"] = "auto"
    """compile the per-step update to C++ (~20 s once, then cached); auto: when total-timesteps >= 10000"""
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
    """a NaN/inf loss, gradient, reward or observation: stop (the last good state saved), or skip that update"""

    robot_host: Optional[str] = None
    """UR5Reacher: IP of the real arm; unset: the simulated arm"""
    robot_port: Optional[str] = None
    """Create2Mover: serial device of the real robot, e.g. /dev/ttyUSB0; unset: the simulated robot"""
    realtime: bool = False
    """simulated robots: pace each step to the real robot's cycle"""

    eval_every: int = 0
    """evaluate the deterministic policy (no learning, separate environment) after every N steps; 0: never"""
    eval_episodes: int = 10
    """episodes per evaluation (--eval-every)"""
    init_from: Optional[str] = None
    """start a new run from the policy, critic and statistics in this .model, checkpoint or run directory"""
    env_kwargs: Tuple[str, ...] = ()
    """keyword arguments for the environment, KEY=VALUE each, e.g. --env-kwargs change_every=500000 (SlipperyHopper-v0)"""


@dataclass
class PixelArgs:
    """The flags of the scripts that learn from camera images (incremental_utils/image_envs.py says what they do)."""
    pixels: bool = False
    """observe the environment's rendered RGB camera (gymnasium MuJoCo, dm_control/..., the simulated robots)"""
    image_size: int = 84
    """side of the square image that --pixels renders"""
    render_camera: Optional[str] = None
    """--pixels: the camera to render, by name or index; unset: the environment's default"""
    fast_render: bool = False
    """--pixels on MuJoCo tasks: draw no shadows or reflections, several times faster on a CPU; the images differ"""
    proprio: bool = True
    """keep the environment's vector observation (proprioception) beside the image"""
    frame_stack: int = 3
    """images: how many of the latest frames make one observation"""
    action_repeat: Optional[int] = None
    """repeat each action N environment steps, rewards summed (one agent step); unset: 8/4/2 for dm_control with --pixels, as the benchmarks do"""
    camera: Optional[str] = None
    """UR5VisualReacher: the real camera, an OpenCV device (0, /dev/video0 or a stream URL); unset: simulated"""
    shared_encoder: bool = True
    """images: one encoder for actor and critic, trained by the critic (1.7x faster than one each, learns sooner)"""
    augment: Literal["none", "shift"] = "none"
    """images: random shifts of an update's S by up to 2% of the image's side (the acting pass sees the centre)"""


@dataclass
class DiagnosticArgs:
    """The flags of the scripts that watch plasticity (incremental_utils/plasticity.py; docs/algorithms.md 10)."""
    plasticity_every: int = 10_000
    """steps between plasticity/ diagnostics (dormant units, effective rank, mean |w|) over the latest 1000 steps; 0: none"""
    dormant_tau: float = 0.025
    """a unit is tau-dormant when its mean |activation| is at most tau times its layer's average (ReDo)"""


@dataclass
class PlasticityArgs(DiagnosticArgs):
    """The diagnostics' flags and the remedies' (weight decay, UPGD, continual backprop), off by default."""
    weight_decay: Optional[float] = None
    """decoupled decay toward zero, p <- (1 - step size x wd) p each step; unset: 0.001 with --upgd (its default), else 0"""
    upgd: bool = False
    """utility-based perturbed gradient descent: avg.py's Adam becomes adaptive UPGD; stream_ac.py gates ObGD's step"""
    upgd_sigma: float = 1e-3
    """UPGD: standard deviation of the perturbation"""
    upgd_beta_utility: float = 0.999
    """UPGD: decay of each weight's utility trace"""
    reinit: Literal["none", "cbp"] = "none"
    """cbp: continual backprop, the lowest-utility mature hidden units replaced by freshly initialised ones"""
    replacement_rate: float = 1e-4
    """cbp: units replaced per mature unit per step (at most one per layer per step, the rest carried over)"""
    maturity_threshold: int = 10_000
    """cbp: steps a unit lives before it may be replaced"""
    utility_decay: float = 0.99
    """cbp: decay of each unit's contribution-utility trace"""


@dataclass
class IntentionalArgs:
    """The flags of --optimizer intentional (incremental_utils/optimizers.py Intentional; SPEC.md 12)."""
    clip_mult: float = 20.0
    """intentional: delta is clipped at clip_mult times the running RMS of delta"""
    beta_clip: float = 0.9998
    """intentional: decay of the running mean of delta^2 that sets the clip"""
    beta_norm: float = 0.9998
    """intentional: decay of the running mean of |clipped delta| that normalises the policy's delta"""


def check_intentional_args(args):
    if not args.clip_mult > 0:
        raise RunError(f"--clip-mult must be positive, got {args.clip_mult}")
    for name in ("beta_clip", "beta_norm", "beta2"):
        if not 0 <= getattr(args, name) < 1:
            raise RunError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    if args.optimizer == "intentional" and isinstance(args, PlasticityArgs) and (args.upgd or args.weight_decay):
        raise RunError("--upgd and --weight-decay act on ObGD's step; --optimizer intentional takes neither")


# The pixel benchmarks' action repeat per DeepMind Control domain (DrQ, CURL, RAD); other domains and tasks: 1.
DMC_ACTION_REPEAT = {"cartpole": 8, "reacher": 4, "cheetah": 4, "cup": 4, "ball_in_cup": 4, "finger": 2, "walker": 2}


def default_action_repeat(args):
    """--action-repeat unset: the pixel benchmarks' value for a dm_control task with --pixels, else 1."""
    if args.pixels and args.env.startswith("dm_control/"):
        return DMC_ACTION_REPEAT.get(args.env.split("/", 1)[1].split("-")[0], 1)
    return 1


# Flags that may change when a run is resumed: how it runs, not what it learns.
RESUME_OVERRIDES = {"total_timesteps", "checkpoint_every", "keep_checkpoints", "log_every", "track", "on_nonfinite",
                    "compile", "robot_host", "robot_port", "realtime", "eval_every", "eval_episodes", "camera"}


def parse(args_class, argv=None):
    """tyro.cli, with a bad flag said in one line as every other bad input is (tyro draws a box of many lines)."""
    box = io.StringIO()
    try:
        with contextlib.redirect_stderr(box):
            args = tyro.cli(args_class, args=argv)
    except SystemExit as e:
        if not e.code:  # --help: printed to stdout
            raise
        sections, part = [], []
        for line in box.getvalue().splitlines()[1:-1]:  # inside the box: sections between rules
            line = line.strip().strip("│").strip()
            if line and set(line) <= {"─"}:
                sections, part = sections + [part], []
            elif line:
                part.append(line)
        said = " ".join(sections[0]).rstrip(".") if sections and sections[0] else "bad command line"
        meant = [p[1].split()[0] for p in sections[1:] if len(p) > 1 and p[0].startswith("Perhaps you meant")]
        prog = Path(sys.argv[0]).name
        print(f"{prog}: error: {said}" + (f" (perhaps {meant[0]})" if meant else "") + f"; see {prog} --help",
              file=sys.stderr)
        sys.exit(2)
    sys.stderr.write(box.getvalue())
    return args


def flags_given(argv, args_class):
    """Names of the Args fields set on the command line (--no-x counts as x)."""
    names = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    return {n[3:] if n.startswith("no_") and n[3:] in args_class.__dataclass_fields__ else n for n in names}


def fill_unset(args, defaults, source):
    """Sets each flag of `defaults` ({name: value}) that the user left unset (None); returns where the values came
    from, for the start-up line (e.g. "intentional defaults: actor_lr, critic_lr")."""
    unset = [name for name in defaults if getattr(args, name) is None]
    for name in unset:
        setattr(args, name, defaults[name])
    return f"{source} defaults: {', '.join(unset)}" if unset else "as given"


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
    if not 0 <= args.seed < 2**31:  # numpy and the environments take 32-bit seeds; evaluation adds an offset
        raise RunError(f"--seed must be between 0 and 2**31 - 1, got {args.seed}")
    name = Path(args.run_name or ".")
    if args.run_name is not None and (not args.run_name.strip() or name.is_absolute() or ".." in name.parts):
        raise RunError(f"--run-name must name a directory inside runs/, got {args.run_name!r}")
    if isinstance(args, PixelArgs):
        check_pixel_args(args)
    if isinstance(args, DiagnosticArgs):
        check_plasticity_args(args)
    if isinstance(args, IntentionalArgs):
        check_intentional_args(args)
    env_kwargs(args)  # a malformed KEY=VALUE is refused now
    if args.eval_every and (args.robot_host or args.robot_port or (isinstance(args, PixelArgs) and args.camera)):
        raise RunError("--eval-every needs a second environment, and one robot cannot run two episodes at once; "
                       "evaluate a saved policy on the robot with scripts/evaluate.py")


def check_pixel_args(args):
    """The camera flags' checks, and the action repeat's default resolved here, once, so args.json records it."""
    if args.action_repeat is None:
        args.action_repeat = default_action_repeat(args)
    for name, least in (("action_repeat", 1), ("frame_stack", 1), ("image_size", MIN_SIDE)):
        if getattr(args, name) < least:
            why = " (the encoder's smallest image)" if name == "image_size" else ""
            raise RunError(f"--{name.replace('_', '-')} must be at least {least}{why}, got {getattr(args, name)}")
    if not args.pixels and (args.fast_render or args.render_camera is not None):
        raise RunError("--render-camera and --fast-render choose how --pixels renders; add --pixels (an environment "
                       "with a camera image of its own is used as it is)")


def weight_decay_of(args):
    """--weight-decay, or its default where unset: UPGD's 1e-3 (SPEC.md 11) with --upgd, none without."""
    if args.weight_decay is not None:
        return args.weight_decay
    return 1e-3 if args.upgd else 0.0


def check_plasticity_args(args):
    """The plasticity flags' checks, and weight decay's default resolved (so args.json records it)."""
    checks = {"plasticity_every": lambda n: n >= 0, "dormant_tau": lambda t: 0 <= t < 1}
    if isinstance(args, PlasticityArgs):
        args.weight_decay = weight_decay_of(args)
        checks.update({"weight_decay": lambda w: w >= 0, "upgd_sigma": lambda s: s >= 0,
                       "upgd_beta_utility": lambda b: 0 <= b < 1, "replacement_rate": lambda r: 0 <= r <= 1,
                       "maturity_threshold": lambda m: m >= 0, "utility_decay": lambda d: 0 <= d < 1})
    for name, good in checks.items():
        if not good(getattr(args, name)):
            raise RunError(f"--{name.replace('_', '-')} is out of range: {getattr(args, name)}")


def env_kwargs(args):
    """--env-kwargs as a dict, each VALUE read as a number, true/false or none where it is one, else as text."""
    out = {}
    for item in args.env_kwargs:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise RunError(f"--env-kwargs takes KEY=VALUE pairs, got {item!r}")
        lowered = text.strip().lower()
        if lowered in ("true", "false", "none"):
            value = {"true": True, "false": False, "none": None}[lowered]
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        out[key] = value
    return out


def resume_args(args, given, algo):
    """With --resume: the saved run's arguments, with the run settings given on this command line applied (an
    experiment setting given with another value is refused), and the checkpoint. Otherwise args and None."""
    if not args.resume:
        return args, None
    checkpoint, path = load_checkpoint(args.resume, algo)
    known = set(type(args).__dataclass_fields__)
    # A flag added since the checkpoint was written takes its default; one since removed cannot be honoured.
    saved_args = {k: v for k, v in checkpoint["args"].items() if k in known}
    unknown = sorted(set(checkpoint["args"]) - known)
    if unknown:
        raise RunError(f"{path} was written by another version of {algo}.py (it has --{unknown[0].replace('_', '-')}, "
                       "which this one does not)")
    saved = type(args)(**saved_args)
    for name in sorted(set(given) - {"resume"}):
        if name in RESUME_OVERRIDES:
            setattr(saved, name, getattr(args, name))
        elif getattr(args, name) != getattr(saved, name):
            raise RunError(f"{path} was trained with --{name.replace('_', '-')} {getattr(saved, name)}, "
                           f"not {getattr(args, name)}")
    print(f"resuming {saved.run_name} from {path} at step {checkpoint['global_step']}")
    return saved, checkpoint


def resume_command(algo, path):
    """The whole command that continues a run from `path` (a checkpoint or run directory), as a user types it."""
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(f"{algo}.py") else f"{algo}.py"
    return f"python {shlex.quote(script)} --resume {shlex.quote(str(Path(path)))}"
