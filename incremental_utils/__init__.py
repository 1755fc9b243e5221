"""What every algorithm script imports, written once, one job per module:

- flags.py         the run flags every script has (RunArgs), argument checks, the rules of --resume
- environments.py  making and checking an environment (gymnasium, DeepMind Control, MinAtar, Atari, the robots)
- checkpoints.py   atomic checkpoints, saved policies (.model files) and the provenance written with them
- run.py           the run itself: directory, counters, logs, stops, exit status (Run)
- evaluation.py    whole episodes of a policy without learning (--eval-every, scripts/evaluate.py)
- compiling.py     the per-step update as one compiled C++ call, and why it fell back when it does
- optimizers.py    the optimisers, each one written form with masked writes: Adam, ObGD (and their remedies)
- gradients.py     gradients by parameter name, and the cheap finiteness check
- replay.py        the replay buffer as tensors (sac_incremental.py, td3_incremental.py)
- metrics.py       logged values summed inside the learner, by TensorBoard tag
- image_envs.py    the environment wrappers of the pixel scripts: rendering, one image beside the vectors, frame
                   stacks, action repeat
- observations.py  observations as the learners read them: tensors, and the camera observation (Observation)
- errors.py        the one-line errors and the table of exit statuses
- project.py       the list of algorithm scripts (pyproject.toml's py-modules), for scripts/ and the tests

None of it names an algorithm or calls into one: there is no learner base class, no hook and no registry. A script
builds its learner (an nn.Module whose state_dict() is its complete state) and hands the run what it needs.
"""
