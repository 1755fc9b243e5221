"""The environment wrappers of the scripts that learn from pixels: an environment whose observation is an image (uint8,
H x W x C) or a Dict of one image and vectors, or, with --pixels, any environment that can render, becomes one that
gives {"image": the last --frame-stack frames, uint8, channels first (K*C, H, W), "proprio": the vectors, float64,
flattened in key order (empty with --no-proprio)}. --action-repeat repeats each action, rewards summed, and renders
only the frame the agent sees. Problems are one-line RunErrors."""
import importlib
import os

import gymnasium as gym
import numpy as np

from .errors import RunError

IMAGE, VECTOR = "image", "proprio"
# The pixel scripts' encoders (three unpadded 3x3 convolutions of stride 2) leave nothing of a smaller image.
MIN_SIDE = 15


def box_leaves(space):
    """The spaces inside a (nested) Dict, or [space]."""
    if isinstance(space, gym.spaces.Dict):
        return [leaf for part in space.spaces.values() for leaf in box_leaves(part)]
    return [space]


def images_in(space):
    """The image parts of an observation space: (key or None, Box) pairs; raises for an image it cannot use."""
    spaces = space.spaces.items() if isinstance(space, gym.spaces.Dict) else [(None, space)]
    found = []
    for key, part in spaces:
        if not isinstance(part, gym.spaces.Box):
            continue
        name = f"{key!r} " if key else ""
        looks_like_image = part.dtype == np.uint8 or len(part.shape) >= 3
        if looks_like_image and (part.dtype != np.uint8 or len(part.shape) != 3):
            raise RunError(f"the image {name}must be uint8 of shape (height, width, channels), got {part.dtype} of "
                           f"shape {part.shape}")
        if looks_like_image:
            found.append((key, part))
    return found


def spec_of(env_id):
    """gymnasium's registration of an id, "module:Id" ids included (the module registers them when imported)."""
    module, _, name = env_id.rpartition(":")
    if module:
        importlib.import_module(module)
    try:
        return gym.spec(name)
    except gym.error.Error as e:
        raise RunError(f"cannot make environment {env_id!r}: {' '.join(str(e).split())[:300]}") from None


def make_rendering(env_id, args, make):
    """gym.make for --pixels: the environment made to render RGB frames of --image-size at the chosen camera."""
    size, camera = args.image_size, args.render_camera
    camera = int(camera) if str(camera).isdigit() else camera  # an index, or a camera's name
    if env_id.startswith("dm_control/"):
        kwargs = {"render_kwargs": {"width": size, "height": size, "camera_id": 0 if camera is None else camera}}
        if args.fast_render:
            kwargs["render_kwargs"]["render_flag_overrides"] = {"shadow": False, "reflection": False}
    elif "gymnasium.envs.mujoco" in str(spec_of(env_id).entry_point):
        kwargs = {"width": size, "height": size}
        if camera is not None:
            kwargs["camera_id" if isinstance(camera, int) else "camera_name"] = camera
    else:
        if camera is not None or args.fast_render:
            flag = "--render-camera" if camera is not None else "--fast-render"
            raise RunError(f"{flag} applies to gymnasium's MuJoCo and DeepMind Control tasks; {env_id} renders its "
                           "own view")
        kwargs = {}
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless: render off-screen
    try:
        env = make(render_mode="rgb_array", **kwargs)
    except TypeError as e:  # an environment that takes no render_mode
        raise RunError(f"--pixels: {env_id} cannot render ({' '.join(str(e).split())[:200]})") from None
    model = getattr(env.unwrapped, "model", None)
    if "width" in kwargs and camera is not None and model is not None:  # gymnasium falls back to its free camera
        import mujoco
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        if camera not in names and camera not in range(model.ncam):
            env.close()
            raise RunError(f"--render-camera {camera}: {env_id} has no such camera; it has {model.ncam}: {names}")
    return env


class RenderedImage(gym.ObservationWrapper):
    """--pixels: the observation becomes {"frame": the rendered RGB frame, resized to size x size if it is not,
    "state": the original observation}."""

    def __init__(self, env, size, env_id, fast=False):
        super().__init__(env)
        self.size, self.env_id, self.fast, self._flags_set = size, env_id, fast, None
        frame = self._frame(first=True)
        self.observation_space = gym.spaces.Dict({"frame": gym.spaces.Box(0, 255, frame.shape, np.uint8),
                                                  "state": env.observation_space})

    # Two gymnasium MuJoCo envs in one process (training and evaluation) share a thread's OpenGL: gymnasium makes a
    # context current only when it makes it, and frees its MuJoCo render context whenever Python collects it, in
    # whichever context is current then. Either way the other env's frames come out black, so make ours current.
    def _viewer(self):
        viewer = getattr(getattr(self.env.unwrapped, "mujoco_renderer", None), "viewer", None)
        if hasattr(viewer, "make_context_current"):
            viewer.make_context_current()
            if self.fast and self._flags_set is not viewer:  # gymnasium takes no render flags: set them once on
                import mujoco                                    # its viewer, which it makes at the first frame
                for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                    viewer.scn.flags[flag] = 0
                self._flags_set = viewer
            return viewer

    def close(self):
        viewer = self._viewer()
        if viewer is not None and getattr(viewer, "con", None) is not None:
            viewer.con.free()  # now, in its own context
        super().close()

    def _frame(self, first=False):
        self._viewer()
        try:
            if first:
                self.env.reset()
            frame = self.env.render()
        except Exception as e:  # no OpenGL, a robot that renders nothing, ...
            raise RunError(f"--pixels: {self.env_id} cannot render ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]}; headless machines render with MUJOCO_GL=egl)") from None
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] != 3:
            raise RunError(f"--pixels: {self.env_id} renders no RGB frame (got {type(frame).__name__})")
        if frame.shape[:2] != (self.size, self.size):
            import cv2
            frame = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def observation(self, observation):
        return {"frame": self._frame(), "state": observation}


class ImageAndVector(gym.ObservationWrapper):
    """An observation with exactly one image as {"image": the image, "proprio": every other part flattened}."""

    def __init__(self, env, env_id, proprio=True):
        super().__init__(env)
        space = env.observation_space
        found = images_in(space)
        if len(found) != 1:
            raise RunError(f"{env_id} must have exactly one image in its observation, has {len(found)}: {space}")
        self.image_key, image = found[0]
        if min(image.shape[:2]) < MIN_SIDE:
            raise RunError(f"{env_id}'s image is {image.shape[0]}x{image.shape[1]} (height x width): the encoder needs "
                           f"at least {MIN_SIDE} pixels a side")
        rest = {k: v for k, v in space.spaces.items() if k != self.image_key} if self.image_key else {}
        if proprio and not all(isinstance(leaf, gym.spaces.Box) for leaf in box_leaves(gym.spaces.Dict(rest))):
            raise RunError(f"the vector parts of {env_id}'s observation must be Boxes: {space}")
        self.rest = gym.spaces.Dict(rest) if rest and proprio else None
        size = gym.spaces.flatdim(self.rest) if self.rest is not None else 0
        self.observation_space = gym.spaces.Dict({IMAGE: image, VECTOR: gym.spaces.Box(-np.inf, np.inf, (size,),
                                                                                        np.float64)})

    def observation(self, observation):
        if self.image_key is None:
            return {IMAGE: observation, VECTOR: np.zeros(0)}
        image = observation[self.image_key]
        if self.rest is None:
            return {IMAGE: image, VECTOR: np.zeros(0)}
        rest = {k: observation[k] for k in self.rest.spaces}
        return {IMAGE: image, VECTOR: gym.spaces.flatten(self.rest, rest).astype(np.float64)}


class FrameStack(gym.Wrapper):
    """The last k images, channels first and stacked along the channels: (k * C, H, W). A reset fills the stack with
    the first frame."""

    def __init__(self, env, k):
        super().__init__(env)
        height, width, channels = env.observation_space[IMAGE].shape
        self.k, self.channels = k, channels
        self.frames = np.zeros((k * channels, height, width), np.uint8)
        self.observation_space = gym.spaces.Dict({IMAGE: gym.spaces.Box(0, 255, self.frames.shape, np.uint8),
                                                  VECTOR: env.observation_space[VECTOR]})

    def _push(self, observation, fill=False):
        frame = np.moveaxis(observation[IMAGE], -1, 0)
        if fill:
            self.frames[:] = np.tile(frame, (self.k, 1, 1))
        else:
            self.frames[:-self.channels] = self.frames[self.channels:]
            self.frames[-self.channels:] = frame
        return {IMAGE: self.frames.copy(), VECTOR: observation[VECTOR]}

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        return self._push(observation, fill=True), info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._push(observation), reward, terminated, truncated, info


class ActionRepeat(gym.Wrapper):
    """Each action for `n` environment steps (fewer if the episode ends), the rewards summed."""

    def __init__(self, env, n):
        super().__init__(env)
        self.n = n

    def step(self, action):
        total = 0.0
        for _ in range(self.n):
            observation, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return observation, total, terminated, truncated, info


def pixel_observations(env, env_id, args):
    """The environment as the pixel learners see it (see the module docstring); `env` renders if --pixels (and repeats
    its actions already, if asked)."""
    if args.pixels:
        if images_in(env.observation_space):
            raise RunError(f"--pixels: {env_id} has a camera image already; run it without --pixels")
        env = RenderedImage(env, args.image_size, env_id, args.fast_render)
    return FrameStack(ImageAndVector(env, env_id, args.proprio), args.frame_stack)
