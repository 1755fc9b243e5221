"""tasks/slippery.py: floors whose friction changes under the learner. The schedule (log-uniform on [0.02, 2], the
same for every run of a seed), when it changes (the first episode end after change_every steps), the fixed forms, that
the friction is felt (the floor's contact priority), one-line refusals, and what a run makes of it: env/ tags,
summary.json, evaluation on the training floor, and a resume after kill -9 that goes on with the same schedule."""
import json
import math
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch

import tasks  # noqa: F401 (registers the ids)
from helpers import kill_after_first_checkpoint, run_script, scalars
from tasks import slippery


def episodes(env, steps, rng):
    """(step at which each episode ended, its task info), random actions."""
    env.reset(seed=3)
    ends = []
    for t in range(1, steps + 1):
        *_, terminated, truncated, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        if terminated or truncated:
            ends.append((t, info["task"]))
            env.reset()
    return ends


def test_the_schedule_is_log_uniform_and_the_same_for_every_run_of_a_seed():
    draws = slippery.schedule(0, 20_000)
    logs = np.log(draws)
    assert draws.min() >= 0.02 and draws.max() <= 2.0
    assert np.mean(logs) == pytest.approx((math.log(0.02) + math.log(2.0)) / 2, abs=0.02)
    assert np.median(draws) == pytest.approx(0.2, rel=0.05)  # log-uniform: the geometric mean
    np.testing.assert_array_equal(slippery.schedule(7, 5), slippery.schedule(7, 10)[:5])
    assert not np.array_equal(slippery.schedule(7, 5), slippery.schedule(8, 5))


def test_the_friction_changes_at_the_first_episode_end_after_change_every_steps():
    env = gym.make("SlipperyHopper-v0", change_every=100)
    ends = episodes(env, 600, np.random.default_rng(0))
    expected = slippery.schedule(3, 10)
    last_change, segment = 0, 0
    for (t, task), (t_next, task_next) in zip(ends, ends[1:]):
        assert task["friction"] == pytest.approx(expected[task["segment"]])
        if task_next["segment"] != task["segment"]:  # it changed at the reset after the episode that ended at t
            assert task_next["segment"] == task["segment"] + 1 and t - last_change >= 100
            last_change = t
        else:
            assert t - last_change < 100 or task["segment"] == segment
        segment = task["segment"]
    assert ends[-1][1]["segment"] >= 4
    assert env.unwrapped.model.geom_friction[env.unwrapped.floor, 0] == pytest.approx(ends[-1][1]["friction"])
    env.close()


def test_fixed_forms_hold_one_friction():
    fixed = gym.make("SlipperyHopper-v0", friction=0.05, change_every=10)
    assert {task["friction"] for _, task in episodes(fixed, 300, np.random.default_rng(1))} == {0.05}
    segment = gym.make("SlipperyAnt-v0", segment=3)
    ends = episodes(segment, 50, np.random.default_rng(1)) or [(0, segment.step(np.zeros(8))[4]["task"])]
    assert ends[0][1] == {"friction": pytest.approx(slippery.schedule(3, 4)[3]), "segment": 3}


def test_the_floors_friction_is_felt():
    """MuJoCo takes the larger friction of the two geoms in contact; without the floor's priority a floor below
    Hopper's foot (2.0) changes nothing. With it, a slippery floor changes the trajectory."""
    def trajectory(friction):
        env = gym.make("SlipperyHopper-v0", friction=friction)
        obs, _ = env.reset(seed=0)
        rng, out = np.random.default_rng(0), []
        for _ in range(40):
            obs, *_ = env.step(rng.uniform(-1, 1, 3))
            out.append(obs)
        env.close()
        return np.array(out)
    assert np.abs(trajectory(0.02) - trajectory(1.0)).max() > 1e-2


@pytest.mark.parametrize("flags, message", [
    (["--env-kwargs", "friction=0"], "friction must be positive, got 0"),
    (["--env-kwargs", "change_every=-5"], "change_every must be positive, got -5"),
    (["--env-kwargs", "change_every=0"], "change_every must be positive, got 0"),
    (["--env-kwargs", "slipperiness=3"], "--env-kwargs slipperiness: SlipperyHopper-v0 takes no such keyword"),
    (["--env-kwargs", "friction=0.1", "segment=2"], "give friction or segment, not both")])
def test_bad_task_settings_get_one_line_and_exit_2(tmp_path, flags, message):
    out = run_script("avg.py", "--env", "SlipperyHopper-v0", *flags, "--total-timesteps", 10, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_a_run_logs_the_floor_evaluates_on_it_and_resumes_the_schedule_after_kill_9(tmp_path):
    """Changes every 300 steps, checkpoints every 400: killed after the first checkpoint (past the first change) and
    resumed, the run meets the same frictions at the same steps and ends with the same networks as one left alone."""
    common = ["--env", "SlipperyHopper-v0", "--env-kwargs", "change_every=300", "--total-timesteps", 1500,
              "--seed", 4, "--compile", "off", "--save-model", "--log-every", 100, "--eval-every", 700,
              "--eval-episodes", 1]
    whole = run_script("stream_ac.py", *common, "--run-name", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert kill_after_first_checkpoint("stream_ac.py", *common, "--run-name", "cut", "--checkpoint-every", 400,
                                       run_dir=tmp_path / "runs" / "cut", cwd=tmp_path) == -signal.SIGKILL
    checkpoint = torch.load(sorted((tmp_path / "runs" / "cut" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert checkpoint["task"]["segment"] >= 1  # the cut comes after a change
    resumed = run_script("stream_ac.py", "--resume", tmp_path / "runs" / "cut", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    logs = {name: scalars(tmp_path / "runs" / name) for name in ("whole", "cut")}
    frictions = logs["whole"]["env/friction"]
    assert len({value for _, value in frictions}) >= 4
    expected = slippery.schedule(4, 10)
    assert all(any(value == pytest.approx(f, rel=1e-6) for f in expected) for _, value in frictions)
    assert sorted(logs["cut"]["env/friction"]) == sorted(frictions)
    assert sorted(logs["cut"]["env/segment"]) == sorted(logs["whole"]["env/segment"])
    a = torch.load(tmp_path / "runs" / "whole" / "stream_ac.model", weights_only=False)
    b = torch.load(tmp_path / "runs" / "cut" / "stream_ac.model", weights_only=False)
    assert all(torch.equal(a["actor"][k], b["actor"][k]) for k in a["actor"])
    summary = json.loads((tmp_path / "runs" / "whole" / "summary.json").read_text())
    assert summary["task"] == {"friction": pytest.approx(frictions[-1][1], rel=1e-6),
                               "segment": logs["whole"]["env/segment"][-1][1]}
    assert "eval/episodic_return" in logs["whole"]


def test_an_evaluation_environment_is_shown_the_training_floor_and_keeps_it():
    from incremental_utils.environments import load_task_state, task_state
    train, evaluation = gym.make("SlipperyHopper-v0", change_every=50), gym.make("SlipperyHopper-v0", change_every=50)
    episodes(train, 400, np.random.default_rng(2))
    load_task_state(evaluation, task_state(train), hold=True)
    friction = train.unwrapped.friction
    assert [task["friction"] for _, task in episodes(evaluation, 400, np.random.default_rng(3))] == \
        [pytest.approx(friction)] * len(episodes(evaluation, 400, np.random.default_rng(3)))
    assert task_state(gym.make("Hopper-v4")) is None  # a task that does not change has no state
