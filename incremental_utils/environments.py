"""Making an environment for an algorithm script, and checking that the script can use it: gymnasium ids (and
module:Id), DeepMind Control through shimmy, MinAtar, Atari with the usual preprocessing, and the robots of robots/.
Problems are one-line RunErrors."""
import functools
import os
import re
import sys
import warnings

import gymnasium as gym
import numpy as np

import robots  # registers UR5Reacher-v0, UR5VisualReacher-v0 and Create2Mover-v0
import tasks  # registers VisualDotReacher-v0 and DotReacher-v0

from .errors import RunError
from .flags import PixelArgs, env_kwargs
from .image_envs import ActionRepeat, box_leaves, images_in, make_rendering, pixel_observations


def is_image(space):
    return isinstance(space, gym.spaces.Box) and (space.dtype == np.uint8 or len(space.shape) >= 3)


@functools.lru_cache(maxsize=None)
def note_older_version(env_id):
    """Said once per process, where gymnasium would print a coloured deprecation warning with its source line."""
    try:
        namespace, name, version = gym.envs.registration.parse_env_id(env_id)
        newest = gym.envs.registration.find_highest_version(namespace, name)
    except Exception:  # an id gymnasium cannot parse: gym.make reports it
        return
    if version is None or newest is None or newest <= version:
        return
    why = ("the AVG paper's results are on the v4 MuJoCo tasks, so this project keeps them as the defaults"
           if version == 4 and name in ("Hopper", "Walker2d", "HalfCheetah", "Ant", "Humanoid") else
           "ask for the newer one by its id if you want it")
    print(f"note: {env_id} is an older version of the task (gymnasium's newest is v{newest}); {why}", file=sys.stderr)


def make_env(args, algo, action_spaces=(gym.spaces.Box,), finite_action_bounds=True, images=()):
    """gym.make with the robot flags and video recording, checked to have an action space of `action_spaces`
    (1-D Boxes, with finite bounds if asked). Problems are one-line RunErrors.

    `images` names the kinds of image observation the script learns from; image_kind() decides, once, which one an
    environment gives. "frames": an image observation used whole (MinAtar's planes, Atari's stacked frames) by a
    convolutional trunk. "camera" (a script whose Args has PixelArgs): an observation with an image, or any
    environment with --pixels, becomes {"image", "proprio"} as image_envs.py describes, and --action-repeat applies to
    every environment of the script.

    Vector observations: a Dict of Boxes (DeepMind Control's, say) or a multi-dimensional Box that is not an image is
    flattened into one vector by gymnasium's FlattenObservation: the Dict's parts in the order of its keys, which
    gymnasium's Dict space sorts alphabetically (for dm_control/finger-spin: position, touch, velocity), each part in
    C order.

    MinAtar ids (MinAtar/Breakout-v1, ...) are registered here; Atari ids (ALE/Breakout-v5, ...) get the usual
    preprocessing: no-op starts (up to 30), 4 frames skipped (max-pooled), 84x84 greyscale, 4 stacked (channels
    first), the whole game one episode."""
    camera_flags = args if isinstance(args, PixelArgs) else None
    if ("camera" in images) != (camera_flags is not None):
        raise ValueError(f"{algo}.py: images=('camera',) goes with PixelArgs in its Args")
    rendering = camera_flags is not None and camera_flags.pixels
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
                                      ("realtime", args.realtime or None),
                                      ("camera", camera_flags.camera if camera_flags else None)] if v is not None}
    if robot_kwargs and args.env not in robots.ENV_IDS:
        raise RunError(f"--robot-host/--robot-port/--realtime apply only to {', '.join(robots.ENV_IDS)}")
    if "camera" in robot_kwargs and args.env not in robots.CAMERA_IDS:
        raise RunError(f"--camera applies only to {', '.join(robots.CAMERA_IDS)}")
    extra = env_kwargs(args)
    clash = sorted(set(extra) & {*robot_kwargs, "render_mode", "width", "height", "camera_id", "frameskip"})
    if clash:
        raise RunError(f"--env-kwargs {clash[0]}: set by the script's own flags; use those")
    if args.capture_video and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"  # headless: render off-screen
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is out of date\. You should consider upgrading")
            make = lambda **kwargs: gym.make(args.env, **robot_kwargs, **extra, **kwargs)  # noqa: E731
            env = make_rendering(args.env, camera_flags, make) if rendering else make(
                **({"render_mode": "rgb_array"} if args.capture_video else {}), **({"frameskip": 1} if atari else {}))
        note_older_version(args.env)
        if atari:
            env = gym.wrappers.FrameStackObservation(gym.wrappers.AtariPreprocessing(env, noop_max=30), 4)
    except (robots.RobotError, RunError):
        raise
    except Exception as e:  # unknown id, missing dependency, broken rendering setup, ...
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if isinstance(e, TypeError) and unknown and unknown[1] in extra:
            raise RunError(f"--env-kwargs {unknown[1]}: {args.env} takes no such keyword") from None
        message = " ".join(str(e).split()) if isinstance(e, gym.error.Error) else f"{type(e).__name__}: {e}"
        raise RunError(f"cannot make environment {args.env!r}: {message[:300]}") from None
    if args.capture_video:
        env = record_video(env, args)
    try:
        kind = check_spaces_usable(env, args.env, algo, action_spaces, finite_action_bounds, images, rendering)
        if camera_flags is not None and camera_flags.action_repeat > 1:
            env = ActionRepeat(env, camera_flags.action_repeat)
        if kind == "camera":
            return pixel_observations(env, args.env, camera_flags)
        if camera_flags is not None and (camera_flags.frame_stack != PixelArgs.frame_stack or not camera_flags.proprio):
            raise RunError(f"--frame-stack and --no-proprio are for image observations; {args.env} has none "
                           f"({env.observation_space}): add --pixels to render one")
    except BaseException:
        env.close()
        raise
    if kind is None and len(env.observation_space.shape or ()) != 1:  # a Dict, or another Box
        env = gym.wrappers.FlattenObservation(env)
    return env


def image_kind(env, env_id, algo, images, rendering):
    """The one decision about images: None (vector observations), "camera" (the pixel pipeline: rendered with --pixels,
    or an environment's own camera image, for continuous actions) or "frames" (an image observation used whole: the
    discrete scripts' games). An image the script cannot learn from is refused in one line."""
    continuous = isinstance(env.action_space, gym.spaces.Box)
    if "camera" in images and continuous and (rendering or images_in(env.observation_space)):
        return "camera"
    if any(is_image(leaf) for leaf in box_leaves(env.observation_space)):
        if "frames" in images and is_image(env.observation_space):
            return "frames"
        raise RunError(f"{algo}.py learns from vector observations; {env_id} has images: {env.observation_space}")
    return None


def record_video(env, args):
    try:
        env.reset()
        env.render()  # fail now, not at the first recorded episode
        return gym.wrappers.RecordVideo(env, f"videos/{args.run_name}")
    except Exception as e:
        env.close()
        raise RunError(f"--capture-video cannot record {args.env}: {' '.join(str(e).split())[:200]} (needs "
                       "moviepy, and MUJOCO_GL=egl or osmesa where there is no display)") from None


def check_spaces_usable(env, env_id, algo, action_spaces, finite_action_bounds, images, rendering):
    """Refuses, in one line, spaces `algo` cannot use; returns image_kind()'s answer for the observations."""
    action_space, obs_space = env.action_space, env.observation_space
    if not isinstance(action_space, action_spaces) or (isinstance(action_space, gym.spaces.Box)
                                                        and len(action_space.shape) != 1):
        if action_spaces == (gym.spaces.Box,):
            raise RunError(f"{algo}.py needs a continuous (Box) action space; {env_id} has {action_space} (for "
                           "discrete actions: stream_q.py)")
        if action_spaces == (gym.spaces.Discrete,):
            raise RunError(f"{algo}.py needs a discrete action space; {env_id} has {action_space} (for continuous "
                           "actions: stream_ac.py, avg.py)")
        raise RunError(f"{algo}.py cannot act in {action_space}")
    if finite_action_bounds and isinstance(action_space, gym.spaces.Box) and not (
            np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
        raise RunError(f"{algo}.py squashes actions with tanh and needs finite action bounds; {env_id} has "
                       f"{action_space}")
    kind = image_kind(env, env_id, algo, images, rendering)
    if kind != "frames" and not all(isinstance(leaf, gym.spaces.Box) for leaf in box_leaves(obs_space)):
        raise RunError(f"{algo}.py needs Box observations (or a Dict of Boxes); {env_id} has {obs_space}")
    return kind


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


# A task that changes over time (tasks/slippery.py) keeps its own state: its unwrapped environment has task_state()
# and load_task_state(state, hold); the run checkpoints it, and evaluation is shown the training task as it is now.
def task_state(env):
    """The task's own state (a dict), or None for a task that does not change."""
    return env.unwrapped.task_state() if callable(getattr(env.unwrapped, "task_state", None)) else None


def load_task_state(env, state, hold=False):
    """Puts back task_state(); with `hold`, the task stays as it is from here on (an evaluation environment)."""
    if state is not None and callable(getattr(env.unwrapped, "load_task_state", None)):
        env.unwrapped.load_task_state(state, hold=hold)
