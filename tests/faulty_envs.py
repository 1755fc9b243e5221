"""Small environments that misbehave on purpose, for the scripts' fault handling tests.

Used through gymnasium's "module:EnvId" syntax with tests/ on PYTHONPATH, e.g.
    python avg.py --env faulty_envs:NanObservation-v0
"""
import gymnasium as gym
import numpy as np


class PointEnv(gym.Env):
    """Move a point towards the origin; `fault` turns step `fault_step` of the run into a bad one."""

    MOVES = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # the discrete variant's actions

    def __init__(self, fault=None, fault_step=50, episode_length=20, discrete=False):
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (3,), np.float64)
        self.action_space = gym.spaces.Discrete(5) if discrete else gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.discrete = discrete
        self.fault, self.fault_step, self.episode_length = fault, fault_step, episode_length
        self.steps_taken = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1, 1, 2)
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return np.array([*self.position, self.t / self.episode_length])

    def step(self, action):
        if self.discrete:
            if not self.action_space.contains(action):
                raise ValueError(f"invalid action {action!r} sent to the environment")
            action = self.MOVES[int(action)]
        if not np.isfinite(action).all():  # what a robot must never receive
            raise ValueError(f"non-finite action {action} sent to the environment")
        self.position = np.clip(self.position + 0.1 * np.asarray(action, dtype=np.float64), -5, 5)
        self.t += 1
        self.steps_taken += 1
        obs, reward = self._obs(), -float(np.linalg.norm(self.position))
        if self.steps_taken == self.fault_step:
            if self.fault == "nan_observation":
                obs[0] = np.nan
            elif self.fault == "nan_reward":
                reward = float("nan")
            elif self.fault == "huge_reward":  # finite in Python, infinite in float32
                reward = 1e39
            elif self.fault == "huge_observation":  # finite, but without any normalisation the values overflow float32
                obs[0] = 3e38
            elif self.fault == "crash":  # a simulator that blows up, a driver with a bug
                raise RuntimeError("the simulator blew up")
        return obs, reward, False, self.t >= self.episode_length, {}


class UnboundedPointEnv(PointEnv):
    """PointEnv whose action space has no bounds (as some environments declare)."""

    def __init__(self):
        super().__init__()
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)


class DictPointEnv(PointEnv):
    """PointEnv whose observation is a Dict of Boxes (as DeepMind Control tasks give)."""

    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Dict({"position": gym.spaces.Box(-10.0, 10.0, (2,), np.float64),
                                                  "time": gym.spaces.Box(0.0, 1.0, (1,), np.float64)})

    def _obs(self):
        return {"position": self.position.copy(), "time": np.array([self.t / self.episode_length])}


class ImagePointEnv(PointEnv):
    """PointEnv seen through a camera: uint8 frames."""

    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Box(0, 255, (10, 10, 3), np.uint8)

    def _obs(self):
        return np.zeros((10, 10, 3), np.uint8)


class OddImagePointEnv(PointEnv):
    """PointEnv with an image the pixel learners cannot use: `kind` float (float32 frames), flat (uint8 H x W, no
    channels) or two (a Dict of two images)."""

    def __init__(self, kind="float"):
        super().__init__()
        self.kind = kind
        image = {"float": gym.spaces.Box(0.0, 1.0, (10, 10, 3), np.float32),
                 "flat": gym.spaces.Box(0, 255, (10, 10), np.uint8)}.get(kind)
        self.observation_space = gym.spaces.Dict(
            {"left": gym.spaces.Box(0, 255, (10, 10, 3), np.uint8), "right": gym.spaces.Box(0, 255, (10, 10, 3), np.uint8),
             "state": gym.spaces.Box(-10.0, 10.0, (3,), np.float64)}) if kind == "two" else image

    def _obs(self):
        space = self.observation_space
        if isinstance(space, gym.spaces.Dict):
            return {k: np.zeros(v.shape, v.dtype) for k, v in space.spaces.items()}
        return np.zeros(space.shape, space.dtype)


gym.register("NanObservation-v0", entry_point=PointEnv, kwargs={"fault": "nan_observation"})
gym.register("NanReward-v0", entry_point=PointEnv, kwargs={"fault": "nan_reward"})
gym.register("HugeReward-v0", entry_point=PointEnv, kwargs={"fault": "huge_reward"})
gym.register("HugeObservation-v0", entry_point=PointEnv, kwargs={"fault": "huge_observation"})
gym.register("Crash-v0", entry_point=PointEnv, kwargs={"fault": "crash"})
gym.register("Point-v0", entry_point=PointEnv)
gym.register("Unbounded-v0", entry_point=UnboundedPointEnv)
gym.register("DictObservation-v0", entry_point=DictPointEnv)
gym.register("ImageObservation-v0", entry_point=ImagePointEnv)
for _kind in ("float", "flat", "two"):
    gym.register(f"{_kind.capitalize()}Image-v0", entry_point=OddImagePointEnv, kwargs={"kind": _kind})
for _name, _fault in [("Point", None), ("NanObservation", "nan_observation"), ("NanReward", "nan_reward"),
                     ("Crash", "crash")]:  # the same, with 5 discrete moves (stream_q.py)
    gym.register(f"Discrete{_name}-v0", entry_point=PointEnv, kwargs={"fault": _fault, "discrete": True})
