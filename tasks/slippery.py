"""Slippery floors: MuJoCo locomotion tasks whose floor friction changes under the learner, for continual learning.

    gym.make("SlipperyHopper-v0")                        # Hopper-v4; a new friction every 1M steps
    gym.make("SlipperyAnt-v0")                           # Ant-v4; every 2M steps (the loss-of-plasticity protocol)
    gym.make("SlipperyHopper-v0", change_every=500_000)  # from a script: --env-kwargs change_every=500000
    gym.make("SlipperyHopper-v0", friction=0.05)         # one friction, held fixed
    gym.make("SlipperyHopper-v0", segment=3)             # segment 3's friction of the run's schedule, held fixed

After Dohare et al.'s Slippery Ant (Nature 2024; shibhansh/loss-of-plasticity): the floor's sliding friction (the first
of the floor geom's three friction numbers; the other two stay the task's) is set anew at the first episode end after
every `change_every` steps of the environment, to values drawn log-uniformly on [0.02, 2.0]. The schedule is a function
of the seed of the first reset (a script resets with its --seed), so every learner run with that seed meets the same
frictions at the same steps; segment k's friction is schedule(seed)[k], the first (segment 0) included.

One departure from the loss-of-plasticity code, without which the friction would not change anything: MuJoCo gives a
contact the larger friction of its two geoms, and the bodies' own geoms have 1.0 (Ant) and 0.9-2.0 (Hopper's foot:
2.0), so a floor set below those is not felt (measured: Hopper-v4's trajectory under random actions is identical with
the floor at 0.02, 1.0 and 2.0). Here the floor has contact priority, so its friction is the contact's.

The state that must survive a resume (the schedule's seed, the steps seen, the segment, the friction) is task_state();
load_task_state() puts it back (incremental_utils checkpoints it with the run, and shows an evaluation environment
the training one's current floor). step()'s info carries {"task":
{"friction", "segment"}}, which the run logs as env/friction and env/segment at each episode's end.
"""
import math

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v4 import AntEnv
from gymnasium.envs.mujoco.hopper_v4 import HopperEnv

LOW, HIGH = 0.02, 2.0  # the frictions' range, drawn log-uniformly
SCHEDULE_STREAM = 20241  # mixed into the seed: the schedule's draws are a stream of their own
CHANGE_EVERY = {"SlipperyHopper-v0": 1_000_000, "SlipperyAnt-v0": 2_000_000}


def schedule(seed, segments):
    """The first `segments` frictions of the schedule of `seed` (segment 0 first)."""
    rng = np.random.default_rng([SCHEDULE_STREAM, int(seed)])
    return np.exp(rng.uniform(math.log(LOW), math.log(HIGH), segments))


class SlipperyFloor:
    """The changing floor, mixed into a gymnasium MuJoCo task (SlipperyHopper, SlipperyAnt below)."""

    def _init_floor(self, change_every, friction, segment):
        for name, value in (("change_every", change_every), ("friction", friction), ("segment", segment)):
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if change_every is not None and not change_every > 0:
            raise ValueError(f"change_every must be positive, got {change_every}")
        if friction is not None and not (math.isfinite(friction) and friction > 0):
            raise ValueError(f"friction must be positive, got {friction}")
        if segment is not None and (segment < 0 or segment != int(segment)):
            raise ValueError(f"segment must be a whole number >= 0, got {segment}")
        if friction is not None and segment is not None:
            raise ValueError("give friction or segment, not both")
        self.floor = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "floor")
        self.model.geom_priority[self.floor] = 1  # the floor's friction is the contact's (module docstring)
        self.change_every, self.fixed_friction = int(change_every), friction
        self.fixed_segment = None if segment is None else int(segment)
        self.seed = self.friction = None
        self.steps = self.segment = self.last_change = 0

    @property
    def changing(self):
        return self.fixed_friction is None and self.fixed_segment is None

    def _set_friction(self, value):
        self.friction = float(value)
        self.model.geom_friction[self.floor, 0] = self.friction

    def reset(self, *, seed=None, options=None):
        if self.friction is None:  # the first reset: the schedule starts from its seed
            self.seed = 0 if seed is None else int(seed)
            self.segment = self.fixed_segment or 0
            self._set_friction(self.fixed_friction if self.fixed_friction is not None else
                               schedule(self.seed, self.segment + 1)[self.segment])
        elif self.changing and self.steps - self.last_change >= self.change_every:
            self.segment, self.last_change = self.segment + 1, self.steps
            self._set_friction(schedule(self.seed, self.segment + 1)[self.segment])
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        info["task"] = {"friction": self.friction, "segment": self.segment}
        return obs, reward, terminated, truncated, info

    def task_state(self):
        return {"seed": self.seed, "steps": self.steps, "segment": self.segment, "last_change": self.last_change,
                "friction": self.friction}

    def load_task_state(self, state, hold=False):
        """Puts back a task_state(); with `hold`, keeps its friction fixed from here on (an evaluation environment
        following the training one's current floor)."""
        self.seed, self.steps, self.segment = state["seed"], state["steps"], state["segment"]
        self.last_change = state["last_change"]
        if state["friction"] is not None:
            self._set_friction(state["friction"])
            if hold:
                self.fixed_friction = self.friction


class SlipperyHopper(SlipperyFloor, HopperEnv):
    def __init__(self, change_every=CHANGE_EVERY["SlipperyHopper-v0"], friction=None, segment=None, **kwargs):
        HopperEnv.__init__(self, **kwargs)
        self._init_floor(change_every, friction, segment)


class SlipperyAnt(SlipperyFloor, AntEnv):
    def __init__(self, change_every=CHANGE_EVERY["SlipperyAnt-v0"], friction=None, segment=None, **kwargs):
        AntEnv.__init__(self, **kwargs)
        self._init_floor(change_every, friction, segment)
