"""What the robot environments promise the algorithm scripts: registration, gymnasium's API (env checker), one-line
errors on bad input, rendering, and the fixed real-time cycle of the paced simulation with its overrun count."""
import os
import subprocess
import sys
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import robots

# Create 2 actions are wheel speeds in mm/s as the task defines them; the checker only recommends [-1, 1].
ALLOWED_CHECKER_ADVICE = "we recommend using a symmetric and normalized space"


def test_import_registers_the_tasks_with_their_episode_lengths():
    assert robots.ENV_IDS == ("UR5Reacher-v0", "UR5VisualReacher-v0", "Create2Mover-v0")
    assert robots.CAMERA_IDS == ("UR5VisualReacher-v0",)
    assert gym.spec("UR5Reacher-v0").max_episode_steps == 100
    assert gym.spec("UR5VisualReacher-v0").max_episode_steps == 150
    assert gym.spec("Create2Mover-v0").max_episode_steps == 600
    assert issubclass(robots.RobotError, RuntimeError)


@pytest.mark.parametrize("env_id", robots.ENV_IDS)
def test_gymnasium_env_checker_passes(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    complaints = [str(w.message) for w in caught if ALLOWED_CHECKER_ADVICE not in str(w.message)]
    assert complaints == []
    env.close()


@pytest.mark.parametrize("env_id", robots.ENV_IDS)
def test_spaces_fit_the_algorithm_scripts(env_id):
    env = gym.make(env_id)
    vector = env.observation_space["proprio"] if env_id in robots.CAMERA_IDS else env.observation_space
    assert vector.shape == ((6,) if env_id in robots.CAMERA_IDS else (8,)) and env.action_space.shape == (2,)
    assert np.isfinite(env.action_space.low).all() and np.isfinite(env.action_space.high).all()
    obs, info = env.reset(seed=1)
    assert info["overruns"] == 0
    for _ in range(50):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space and np.isfinite(reward)
        assert info["overruns"] == 0  # unpaced simulation: the world waits for the agent
        if terminated or truncated:
            env.reset()
    env.close()
    env.close()  # closing twice is harmless


@pytest.mark.parametrize("env_id", robots.ENV_IDS)
@pytest.mark.parametrize("action, words", [([np.nan, 0.0], "finite"), ([0.1, 0.1, 0.1], "needs 2")])
def test_bad_actions_are_one_line_errors(env_id, action, words):
    env = gym.make(env_id)
    env.reset(seed=0)
    with pytest.raises(robots.RobotError, match=words) as error:
        env.unwrapped.step(np.array(action))
    assert "\n" not in str(error.value)


@pytest.mark.filterwarnings("ignore:.*render_mode='ansi'")  # gymnasium's own remark before ours
@pytest.mark.parametrize("env_id, kwargs, words", [
    ("UR5Reacher-v0", {"render_mode": "ansi"}, "renders only 'rgb_array'"),
    ("Create2Mover-v0", {"render_mode": "ansi"}, "renders only 'rgb_array'"),
    ("UR5Reacher-v0", {"host": "10.0.0.1", "render_mode": "rgb_array"}, "simulated arm only"),
    ("Create2Mover-v0", {"cycle_time": 0.0}, "too short"),
    ("Create2Mover-v0", {"cycle_time": "fast"}, "number of seconds"),
    ("Create2Mover-v0", {"port": "/dev/pts/999999", "cycle_time": 0.01}, "at least 0.015 s"),
])
def test_bad_arguments_are_one_line_errors(env_id, kwargs, words):
    with pytest.raises(robots.RobotError, match=words):
        gym.make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", robots.ENV_IDS)
def test_rgb_array_rendering(env_id, tmp_path):
    """Rendering needs an OpenGL context; headless machines get one from EGL, chosen before mujoco is imported,
    hence a separate process."""
    code = ("import gymnasium as gym, robots\n"
            f"env = gym.make({env_id!r}, render_mode='rgb_array')\n"
            "env.reset(seed=0)\n"
            "frame = env.render()\n"
            "print(frame.shape, frame.dtype, int(frame.std() > 5))\n"
            "env.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, MUJOCO_GL="egl"))
    if out.returncode and ("OpenGL" in out.stderr or "EGL" in out.stderr or "gladLoadGL" in out.stderr):
        pytest.skip("no OpenGL (EGL) on this machine")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["uint8", "1"]  # an image with something drawn in it


PACED = [("UR5Reacher-v0", {}, 0.04), ("Create2Mover-v0", {"cycle_time": 0.03}, 0.03)]


@pytest.mark.parametrize("env_id, kwargs, cycle", PACED)
def test_realtime_simulation_keeps_the_cycle_and_counts_overruns(env_id, kwargs, cycle):
    env = gym.make(env_id, realtime=True, **kwargs)
    env.reset(seed=0)
    start = time.monotonic()
    for _ in range(10):
        _, _, terminated, _, info = env.step(np.zeros(2))
    took = time.monotonic() - start
    assert 10 * cycle * 0.97 <= took < 10 * cycle * 1.5
    assert info["overruns"] == 0 and not terminated
    for expected in (1, 2, 3):  # an agent that takes two cycles to decide misses the cycle every step
        time.sleep(2 * cycle)
        _, _, _, _, info = env.step(np.zeros(2))
        assert info["overruns"] == expected
    env.close()


def test_paced_steps_of_a_prompt_agent_end_on_the_cycle_grid():
    env = gym.make("UR5Reacher-v0", realtime=True)
    env.reset(seed=0)
    ends = []
    for _ in range(12):
        env.step(np.zeros(2))
        ends.append(time.monotonic())
    gaps = np.diff(ends)
    assert abs(gaps.mean() - 0.04) < 0.004  # no drift: boundaries are a grid, not sleep(0.04) after the work
    env.close()
