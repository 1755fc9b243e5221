"""DeepMind Control Suite tasks (through shimmy): the install works on a fresh machine, every script runs a task, Dict
observations are flattened in the documented order, the time limit is a truncation, and the published AVG
hyperparameters apply by id."""
import json

import gymnasium as gym
import numpy as np
import pytest

import avg
import iac
from incremental_utils.environments import make_env
from incremental_utils.errors import RunError
from incremental_utils.flags import check_pixel_args
from helpers import DISCRETE_ACTIONS, run_script, scalars
from helpers import SCRIPTS


def make(env_id, **fields):
    args = avg.Args(env=env_id, **fields)
    check_pixel_args(args)
    return make_env(args, "avg", images=("camera",))


def test_dict_observations_are_flattened_in_sorted_key_order():
    env = make("dm_control/finger-spin-v0")
    raw = env.unwrapped  # shimmy's environment, below the flattening
    assert list(raw.observation_space.spaces) == ["position", "touch", "velocity"]
    assert env.observation_space.shape == (9,) and env.observation_space.dtype == np.float64
    obs, _ = env.reset(seed=3)
    timestep_obs = raw._env.task.get_observation(raw._env.physics)  # the task's order: position, velocity, touch
    expected = np.concatenate([np.ravel(timestep_obs[key]) for key in sorted(timestep_obs)])
    np.testing.assert_allclose(obs, expected)
    env.close()


def test_any_dict_of_boxes_is_flattened_and_images_are_refused():
    env = make("faulty_envs:DictObservation-v0")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (3,)
    np.testing.assert_allclose(obs[:2], env.unwrapped.position)  # "position" sorts before "time"
    assert obs[2] == 0.0
    with pytest.raises(RunError, match="learns from vector observations; faulty_envs:ImageObservation-v0 "
                                                 "has images"):  # a script without the camera pipeline
        make_env(iac.Args(env="faulty_envs:ImageObservation-v0"), "iac")


def test_the_time_limit_is_a_truncation_that_bootstraps():
    """dm_env marks the last step of a time limit with discount 1: shimmy reports it as truncated, and every
    script bootstraps from a truncation (the authors' wrapper took it as a termination instead)."""
    env = make("dm_control/reacher-hard-v0")
    env.reset(seed=0)
    for step in range(1, 1001):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated
        if truncated:
            break
    assert step == 1000 and truncated and info["timestep.discount"] == 1.0
    env.close()


@pytest.mark.parametrize("env_id, expected", [
    ("dm_control/reacher-hard-v0", (3e-6, 4.9e-3, 0.0, 0.05, 0.97)),
    ("dm_control/finger-spin-v0", (3.8e-4, 8.7e-5, 0.9, 0.006, 0.95)),
    ("dm_control/dog-run-v0", (1.8e-5, 4.8e-5, 0.0, 0.007, 0.97)),
])
def test_published_hyperparameters_apply_by_id(env_id, expected):
    args = avg.Args(env=env_id)
    assert avg.resolve_hyperparams(args).startswith("paper values for")
    assert (args.actor_lr, args.critic_lr, args.beta1, args.entropy_coef, args.gamma) == expected


@pytest.mark.parametrize("algo", [name for name in SCRIPTS if name not in DISCRETE_ACTIONS])
def test_every_script_runs_a_dm_control_task(tmp_path, algo):
    out = run_script(f"{algo}.py", "--env", "dm_control/reacher-hard-v0", "--total-timesteps", 300, "--log-every",
                     100, "--compile", "off", "--run-name", "dmc", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "GLFWError" not in out.stderr  # no display needed
    logs = scalars(tmp_path / "runs" / "dmc")
    assert [step for step, _ in logs["charts/SPS"]] == [100, 200, 300]
    assert np.isfinite([value for _, value in logs["losses/critic_loss"]]).all()
    assert json.loads((tmp_path / "runs" / "dmc" / "summary.json").read_text())["global_step"] == 300


def test_dm_control_is_installed_against_the_mujoco_it_was_built_for():
    import dm_control
    import mujoco
    from importlib.metadata import PackageNotFoundError, version

    assert mujoco.__version__ == "3.17.0" and version("dm-control") == "1.0.50"
    for leftover in ("mujoco-core", "mujoco-studio"):  # what installing 3.x over 4.0 in place leaves behind
        with pytest.raises(PackageNotFoundError):
            version(leftover)
    assert dm_control and gym.make  # importable together


def test_a_dm_control_run_checkpoints_and_resumes_exactly(tmp_path):
    """dm_control's task randomness (a legacy numpy RandomState through shimmy) is saved and restored too. Each action
    held for 4 physics steps, so that the 1000-step episodes are 250 agent steps."""
    common = ["--env", "dm_control/reacher-hard-v0", "--compile", "off", "--seed", "4", "--action-repeat", "4"]
    whole = run_script("avg.py", *common, "--total-timesteps", 500, "--run-name", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    first = run_script("avg.py", *common, "--total-timesteps", 250, "--checkpoint-every", 250, "--run-name", "cut",
                       cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_script("avg.py", "--resume", "runs/cut", "--total-timesteps", 500, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    returns = [[value for _, value in scalars(tmp_path / "runs" / name)["charts/episodic_return"]]
               for name in ("whole", "cut")]
    assert len(returns[0]) == 2 and returns[0] == returns[1]
