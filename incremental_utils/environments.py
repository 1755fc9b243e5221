"""Making an environment for an algorithm script, and checking that the script can use it: gymnasium ids (and
module:Id), DeepMind Control through shimmy, MinAtar, Atari with the usual preprocessing, and the robots of robots/.
Problems are one-line RunErrors."""
import functools
import os
import sys
import warnings

import gymnasium as gym
import numpy as np

import robots  # registers UR5Reacher-v0, UR5VisualReacher-v0 and Create2Mover-v0
import tasks  # registers VisualDotReacher-v0 and DotReacher-v0

from .errors import RunError
from .pixels import ActionRepeat, action_repeat, box_leaves, images_in, make_rendering, pixel_observations


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


def make_env(args, algo, action_spaces=(gym.spaces.Box,), finite_action_bounds=True, images=False, pixels=False):
    """gym.make with the robot flags and video recording, checked to have an action space of `action_spaces`
    (1-D Boxes, with finite bounds if asked) and vector observations. Problems are one-line RunErrors.

    `pixels` (the script learns continuous actions from camera images): an observation with an image, or any
    environment with --pixels, becomes {"image", "proprio"} as incremental_utils/pixels.py describes. --action-repeat
    applies to every environment of such a script.

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
                                      ("realtime", args.realtime or None), ("camera", getattr(args, "camera", None))]
                    if v is not None}
    if robot_kwargs and args.env not in robots.ENV_IDS:
        raise RunError(f"--robot-host/--robot-port/--realtime apply only to {', '.join(robots.ENV_IDS)}")
    if "camera" in robot_kwargs and args.env not in robots.CAMERA_IDS:
        raise RunError(f"--camera applies only to {', '.join(robots.CAMERA_IDS)}")
    rendering = pixels and getattr(args, "pixels", False)
    if pixels and not rendering and (getattr(args, "fast_render", False) or getattr(args, "render_camera", None)):
        raise RunError("--render-camera and --fast-render choose how --pixels renders; add --pixels (an environment "
                       "with a camera image of its own is used as it is)")
    if getattr(args, "pixels", False) and not pixels:
        raise RunError(f"{algo}.py has --pixels but makes its environment without pixels=True")
    if args.capture_video and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"  # headless: render off-screen
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is out of date\. You should consider upgrading")
            make = lambda **kwargs: gym.make(args.env, **robot_kwargs, **kwargs)  # noqa: E731
            env = make_rendering(args.env, args, make) if rendering else make(
                **({"render_mode": "rgb_array"} if args.capture_video else {}), **({"frameskip": 1} if atari else {}))
        note_older_version(args.env)
        if atari:
            env = gym.wrappers.FrameStackObservation(gym.wrappers.AtariPreprocessing(env, noop_max=30), 4)
    except (robots.RobotError, RunError):
        raise
    except Exception as e:  # unknown id, missing dependency, broken rendering setup, ...
        message = " ".join(str(e).split()) if isinstance(e, gym.error.Error) else f"{type(e).__name__}: {e}"
        raise RunError(f"cannot make environment {args.env!r}: {message[:300]}") from None
    if args.capture_video:
        env = record_video(env, args)
    try:
        camera_path = pixels and isinstance(env.action_space, gym.spaces.Box) and (
            rendering or bool(images_in(env.observation_space)))
        problem = unusable(env, args.env, algo, action_spaces, finite_action_bounds, images or camera_path)
        if problem:
            raise RunError(problem)
        repeat = action_repeat(args) if pixels else 1
        if repeat < 1:
            raise RunError(f"--action-repeat must be at least 1, got {repeat}")
        if pixels:
            args.action_repeat = repeat  # resolved, for args.json
        if repeat > 1:
            env = ActionRepeat(env, repeat)
        if camera_path:
            return pixel_observations(env, args.env, args)
        if pixels and (getattr(args, "frame_stack", 3) != 3 or not getattr(args, "proprio", True)):
            raise RunError(f"--frame-stack and --no-proprio are for image observations; {args.env} has none "
                           f"({env.observation_space}): add --pixels to render one")
    except BaseException:
        env.close()
        raise
    obs_space = env.observation_space
    if len(obs_space.shape or ()) != 1 and not (images and is_image(obs_space)):  # a Dict, or another Box
        env = gym.wrappers.FlattenObservation(env)
    return env


def record_video(env, args):
    try:
        env.reset()
        env.render()  # fail now, not at the first recorded episode
        return gym.wrappers.RecordVideo(env, f"videos/{args.run_name}")
    except Exception as e:
        env.close()
        raise RunError(f"--capture-video cannot record {args.env}: {' '.join(str(e).split())[:200]} (needs "
                       "moviepy, and MUJOCO_GL=egl or osmesa where there is no display)") from None


def unusable(env, env_id, algo, action_spaces, finite_action_bounds, images):
    """Why `algo` cannot use env's spaces, in one line, or None."""
    action_space, obs_space = env.action_space, env.observation_space
    if not isinstance(action_space, action_spaces) or (isinstance(action_space, gym.spaces.Box)
                                                        and len(action_space.shape) != 1):
        if action_spaces == (gym.spaces.Box,):
            return (f"{algo}.py needs a continuous (Box) action space; {env_id} has {action_space} (for discrete "
                    "actions: stream_q.py)")
        if action_spaces == (gym.spaces.Discrete,):
            return (f"{algo}.py needs a discrete action space; {env_id} has {action_space} (for continuous "
                    "actions: stream_ac.py, avg.py)")
        return f"{algo}.py cannot act in {action_space}"
    if finite_action_bounds and isinstance(action_space, gym.spaces.Box) and not (
            np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
        return f"{algo}.py squashes actions with tanh and needs finite action bounds; {env_id} has {action_space}"
    if not images and any(is_image(leaf) for leaf in box_leaves(obs_space)):
        return f"{algo}.py learns from vector observations; {env_id} has images: {obs_space}"
    if not all(isinstance(leaf, gym.spaces.Box) for leaf in box_leaves(obs_space)):
        return f"{algo}.py needs Box observations (or a Dict of Boxes); {env_id} has {obs_space}"
    return None


def zero_observation(space):
    """An observation of `space` with every entry zero (a Dict part by part): what a script compiles its update with."""
    if isinstance(space, gym.spaces.Dict):
        return {k: zero_observation(v) for k, v in space.spaces.items()}
    return np.zeros(space.shape, space.dtype)


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
