"""The AVG paper's robot tasks as gymnasium environments, simulated (MuJoCo, the default) or on real hardware.

    import gymnasium as gym, robots
    env = gym.make("UR5Reacher-v0")                            # simulated UR5; host="192.168.1.10": the real arm
    env = gym.make("UR5VisualReacher-v0")                      # the UR5 finding its target in a camera image
    env = gym.make("Create2Mover-v0")                          # simulated Create 2; port="/dev/ttyUSB0": the real one

Tasks, flags, safety and the real-hardware setup: robots/README.md.
"""
import os

import gymnasium as gym

if not os.environ.get("DISPLAY"):  # headless: the simulated robots render off-screen (MuJoCo reads this at import)
    os.environ.setdefault("MUJOCO_GL", "egl")

ENV_IDS = ("UR5Reacher-v0", "UR5VisualReacher-v0", "Create2Mover-v0")
CAMERA_IDS = ("UR5VisualReacher-v0",)  # tasks whose observation includes a camera image (a real one: camera=DEVICE)


class RobotError(RuntimeError):
    """A robot fault reported to the user in one line (lost link, protective stop, safety limit)."""


# Entry points are strings so that importing robots loads neither MuJoCo nor a hardware driver.
for _id, _entry_point, _steps in (("UR5Reacher-v0", "robots.ur5:UR5Reacher", 100),  # 4 s of 40 ms cycles
                                  ("UR5VisualReacher-v0", "robots.ur5_visual:UR5VisualReacher", 150),  # 6 s
                                  ("Create2Mover-v0", "robots.create2:Create2Mover", 600)):  # 90 s of 150 ms
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry_point, max_episode_steps=_steps)
