"""Cheap tasks drawn in numpy, for learning from pixels without OpenGL (tests, benchmarks, learning curves).

    import gymnasium as gym, tasks
    env = gym.make("VisualDotReacher-v0")   # 84x84 RGB image of the arena + the dot's position and velocity
    env = gym.make("DotReacher-v0")         # the same task from a vector: the dot's state and the target's position

and tasks that change under the learner, for continual learning (tasks/slippery.py):

    env = gym.make("SlipperyHopper-v0")     # Hopper-v4 whose floor friction changes every 1M steps
    env = gym.make("SlipperyAnt-v0")        # Ant-v4, every 2M steps (the loss-of-plasticity protocol)
"""
import gymnasium as gym

ENV_IDS = ("VisualDotReacher-v0", "DotReacher-v0", "SlipperyHopper-v0", "SlipperyAnt-v0")

for _id, _visual in (("VisualDotReacher-v0", True), ("DotReacher-v0", False)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point="tasks.dot_reacher:DotReacher", kwargs={"visual": _visual},
                     max_episode_steps=100)

for _id, _entry in (("SlipperyHopper-v0", "SlipperyHopper"), ("SlipperyAnt-v0", "SlipperyAnt")):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=f"tasks.slippery:{_entry}", max_episode_steps=1000)
