"""Cheap tasks drawn in numpy, for learning from pixels without OpenGL (tests, benchmarks, learning curves).

    import gymnasium as gym, tasks
    env = gym.make("VisualDotReacher-v0")   # 84x84 RGB image of the arena + the dot's position and velocity
    env = gym.make("DotReacher-v0")         # the same task from a vector: the dot's state and the target's position
"""
import gymnasium as gym

ENV_IDS = ("VisualDotReacher-v0", "DotReacher-v0")

for _id, _visual in (("VisualDotReacher-v0", True), ("DotReacher-v0", False)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point="tasks.dot_reacher:DotReacher", kwargs={"visual": _visual},
                     max_episode_steps=100)
