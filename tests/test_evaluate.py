"""Evaluation, deployment and warm starts, as a user runs them: --eval-every during training (and that it changes
nothing about training), scripts/evaluate.py on a run directory, a .model and a checkpoint of every script, on
bad input, and on an (emulated) real Create 2 stopped with Ctrl-C; --init-from."""
import contextlib
import io
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, env_for, run_script, scalars, script_env, script_module
from robots import open_interface as oi
from robots.create2_emulator import Create2Emulator
from robots_helpers import wait_for
from helpers import SCRIPTS

per_script = pytest.mark.parametrize("algo", SCRIPTS)
POINT = ["--env", "faulty_envs:Point-v0", "--compile", "off", "--seed", "7"]


def point(algo):
    return ["--env", env_for(algo, "Point-v0"), "--compile", "off", "--seed", "7"]


def evaluate(*args, cwd, timeout=300):
    """scripts/evaluate.py as a user runs it, in its own process."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), *map(str, args)], cwd=cwd,
                          env=script_env(), capture_output=True, text=True, timeout=timeout)


def evaluate_here(*args, cwd):
    """scripts/evaluate.py's main() in this process, as a CompletedProcess: the same code without the 3-4 s a new
    process spends importing torch, for the tests that run it many times (the CLI itself is tested by `evaluate`)."""
    stdout, stderr, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)  # as in the scripts' processes
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = script_module("evaluate").main([str(a) for a in args])
            except SystemExit as e:  # the argument parser's refusals
                code = e.code
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["evaluate.py", *args], code, stdout.getvalue(), stderr.getvalue())



def evaluate_json(*args, cwd):
    out = evaluate_here(*args, "--json", cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def training_returns(run_dir):
    return [value for _, value in scalars(run_dir)["charts/episodic_return"]]


@per_script
def test_evaluation_during_training_changes_nothing_about_training(tmp_path, algo):
    plain = run_script(f"{algo}.py", *point(algo), "--total-timesteps", 400, "--run-name", "plain", "--save-model",
                       cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    evaluated = run_script(f"{algo}.py", *point(algo), "--total-timesteps", 400, "--run-name", "eval", "--save-model",
                           "--eval-every", 100, "--eval-episodes", 3, "--checkpoint-every", 100, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    runs = tmp_path / "runs"
    assert training_returns(runs / "eval") == training_returns(runs / "plain")
    a = torch.load(runs / "plain" / f"{algo}.model", weights_only=False)
    b = torch.load(runs / "eval" / f"{algo}.model", weights_only=False)
    for part in [name for name in ("actor", "critic", "q_net", "obs_stats") if name in a]:
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    logs = scalars(runs / "eval")
    # Point-v0 episodes are 20 steps: the first episode end after each 100 steps is at 100, 200, 300, 400
    assert [step for step, _ in logs["eval/episodic_return"]] == [100, 200, 300, 400]
    assert "eval/episodic_return_std" in logs and "eval/episodic_return" not in scalars(runs / "plain")
    # the deterministic policy on the evaluation seeds: what evaluate.py measures for the state saved at that step
    final = evaluate_json(runs / "eval" / "checkpoints" / "step_000000000400.pt", "--episodes", 3, "--seed",
                          7 + 1_000_000, cwd=tmp_path)
    assert final["mean_return"] == pytest.approx(logs["eval/episodic_return"][-1][1], rel=1e-5)


@per_script
def test_evaluate_reads_a_run_directory_a_model_and_a_checkpoint(tmp_path, algo):
    out = run_script(f"{algo}.py", *point(algo), "--total-timesteps", 200, "--run-name", "r", "--save-model",
                     "--checkpoint-every", 100, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "r"
    # the last checkpoint, at the last episode end; the model also counts the reset after it in its statistics
    checkpoint = run / "checkpoints" / "step_000000000200.pt"
    results = [evaluate_json(path, "--episodes", 4, cwd=tmp_path) for path in (run, run / f"{algo}.model", checkpoint)]
    for result in results:
        assert result["algo"] == algo and result["episodes"] == 4 and result["lengths"] == [20] * 4
    assert results[0]["returns"] == results[1]["returns"]  # a run directory means its model; deterministic
    np.testing.assert_allclose(results[2]["returns"], results[1]["returns"], rtol=0.02)
    stochastic = evaluate_json(checkpoint, "--episodes", 4, "--stochastic", cwd=tmp_path)
    if algo != "stream_q":  # its stochastic policy explores with probability --epsilon-end, 0.01: maybe never here
        assert stochastic["returns"] != results[2]["returns"]
    text = evaluate_here(run, "--episodes", 3, cwd=tmp_path)
    assert text.returncode == 0 and "mean return" in text.stdout and "95% CI [" in text.stdout


def test_evaluate_refuses_bad_input_in_one_line(tmp_path):
    out = run_script("avg.py", *POINT, "--total-timesteps", 40, "--run-name", "r", "--save-model", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (tmp_path / "junk.model").write_bytes(b"not a model")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    model = tmp_path / "runs" / "r" / "avg.model"
    bare = run_script("avg.py", *POINT, "--total-timesteps", 40, "--run-name", "bare", cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    cases = [(["missing.model"], "missing.model does not exist"),
             ([tmp_path / "runs" / "bare"], "runs/bare holds no saved policy: the run finished without --save-model "
                                            "and kept no checkpoint; train with --save-model (or --checkpoint-every N)"),
             (["junk.model"], "is unreadable or corrupt"),
             (["foreign.pt"], "is not a model, checkpoint or run directory of this project"),
             ([model, "--env", "Pendulum-v1"], "was trained with observations of shape (3,) and actions Box(-1.0, 1.0, (2,)"),
             ([model, "--env", "NoSuchEnv-v0"], "cannot make environment 'NoSuchEnv-v0'"),
             ([model, "--episodes", "0"], "--episodes must be positive"),
             ([model, "--seed", "-1"], "--seed must be between 0 and 2**32 - 10 (the number of episodes), got -1")]
    for i, (args, message) in enumerate(cases):
        out = (evaluate if i == 0 else evaluate_here)(*args, cwd=tmp_path)  # one through the command line
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("evaluate.py: error: ") and message in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_init_from_refuses_another_scripts_file_or_shapes(tmp_path):
    out = run_script("avg.py", *POINT, "--total-timesteps", 40, "--run-name", "r", "--save-model", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    model = tmp_path / "runs" / "r" / "avg.model"
    point = ["--env", "faulty_envs:Point-v0"]
    for script, flags, message in [("iac.py", point, "was saved by avg.py, not iac.py"),
                                   ("avg.py", ["--env", "Pendulum-v1"], "was trained with observations of shape (3,)"),
                                   ("avg.py", [*point, "--hidden-size", "32"], "does not fit this run's")]:
        out = run_script(script, *flags, "--init-from", model, "--total-timesteps", 40, "--compile", "off",
                         cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_eval_on_a_real_robot_is_refused(tmp_path):
    out = run_script("avg.py", "--env", "Create2Mover-v0", "--robot-port", "/dev/null", "--eval-every", 1000,
                     cwd=tmp_path)
    assert out.returncode == 2 and "one robot cannot run two episodes at once" in out.stderr, out.stderr


def test_ctrl_c_during_evaluation_on_a_real_create2_leaves_it_stopped(tmp_path):
    out = run_script("avg.py", "--env", "Create2Mover-v0", "--total-timesteps", 300, "--compile", "off",
                     "--run-name", "sim", "--save-model", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with Create2Emulator(wall_distance=100.0) as robot:  # a long corridor: no bump ends an episode
        proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "evaluate.py"), "runs/sim",
                                 "--robot-port", robot.path, "--episodes", "50"], cwd=tmp_path, env=script_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: sum(1 for wheels in robot.drive_commands() if any(wheels)) > 8, timeout=120)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 130, stderr
        assert "stopped by SIGINT" in stderr and "Traceback" not in stderr
        assert robot.drive_commands()[-1] == (0, 0) and (robot.left, robot.right) == (0, 0)
        assert wait_for(lambda: robot.mode == oi.MODE_OFF, timeout=2)


def test_videos_of_training_and_of_evaluation_are_recorded_headless(tmp_path):
    """Off-screen rendering (EGL) with moviepy, on a machine without a display: .ci/run installs the libraries."""
    env = {"DISPLAY": ""}
    out = run_script("avg.py", "--env", "UR5Reacher-v0", "--total-timesteps", 200, "--compile", "off",
                     "--capture-video", "--save-model", "--run-name", "vid", cwd=tmp_path, **env)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "videos" / "vid").glob("*.mp4")) == ["rl-video-episode-0.mp4",
                                                                                   "rl-video-episode-1.mp4"]
    out = evaluate("runs/vid", "--episodes", 1, "--capture-video", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    videos = list((tmp_path / "videos" / "evaluate_vid").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
