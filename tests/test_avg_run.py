"""avg.py run as a user runs it: logs, bad input, non-finite values, checkpoints, resume and signals."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import avg
from helpers import run_script, scalars, start_script, text_tags


def test_a_short_run_logs_what_a_researcher_reads(tmp_path):
    out = run_script("avg.py", "--env", "Hopper-v4", "--total-timesteps", 1200, "--log-every", 400,
                     "--compile", "off", "--seed", 3, "--run-name", "e2e", "--save-model", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "e2e"
    tags = scalars(run)
    for tag in ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/actor_loss",
                "losses/critic_loss", "health/td_sigma", "health/entropy", "health/abs_q", "charts/update_us_p50", "charts/update_us_p99"]:
        assert tag in tags, tag
    assert [step for step, _ in tags["charts/SPS"]] == [400, 800, 1200]
    assert any("hyperparameters" in t for t in text_tags(run))
    assert json.loads((run / "args.json").read_text())["actor_lr"] == 1.1e-5  # the paper's Hopper value
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["global_step"] == 1200
    model = torch.load(run / "avg.model", weights_only=False)
    assert model["actor"]["mu.weight"].shape == (3, 256)
    assert "paper values for Hopper" in out.stdout


BAD_INVOCATIONS = [
    (["--env", "NoSuchEnv-v0"], "cannot make environment 'NoSuchEnv-v0'"),
    (["--env", "CartPole-v1"], "needs a continuous (Box) action space"),
    (["--total-timesteps", "0"], "--total-timesteps must be positive"),
    (["--total-timesteps", "-5"], "--total-timesteps must be positive"),
    (["--actor-lr", "0"], "--actor-lr must be positive"),
    (["--critic-lr", "-0.001"], "--critic-lr must be positive"),
    (["--gamma", "1.5"], "--gamma is out of range"),
    (["--robot-host", "10.0.0.2"], "apply only to UR5Reacher-v0"),
    (["--resume", "missing.pt"], "missing.pt does not exist"),
]


@pytest.mark.parametrize("flags, message", BAD_INVOCATIONS, ids=[" ".join(f) for f, _ in BAD_INVOCATIONS])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, flags, message):
    budget = [] if "--total-timesteps" in flags else ["--total-timesteps", "100"]
    out = run_script("avg.py", *flags, *budget, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_bad_checkpoints_and_log_dirs_get_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    other = tmp_path / "other.pt"
    torch.save({"algo": "iac", "args": {}}, other)
    out = run_script("avg.py", "--env", "faulty_envs:Point-v0", "--total-timesteps", 60, "--checkpoint-every", 20,
                     "--compile", "off", "--run-name", "point", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    checkpoint, _ = avg.load_checkpoint(tmp_path / "runs" / "point")
    wrong_shape = tmp_path / "shape.pt"  # as if the environment's observation had changed size since
    torch.save({**checkpoint, "obs_dim": 99}, wrong_shape)
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"algo": "avg", "args": checkpoint["args"]}, incomplete)
    (tmp_path / "file_not_dir").mkdir()
    (tmp_path / "file_not_dir" / "runs").write_text("a file where the log directory should be")
    cases = [(["--resume", corrupt], tmp_path, "unreadable or corrupt"),
             (["--resume", other], tmp_path, "is a iac.py checkpoint, not a avg.py one"),
             (["--resume", incomplete], tmp_path, "is incomplete (no act_dim, episodes"),
             (["--resume", wrong_shape], tmp_path, "do not match faulty_envs:Point-v0 (obs 3"),
             (["--resume", tmp_path / "runs" / "point", "--env", "Hopper-v4"], tmp_path,
              "was trained with --env faulty_envs:Point-v0, not Hopper-v4"),
             (["--total-timesteps", 10], tmp_path / "file_not_dir", "cannot write the run directory")]
    for flags, cwd, message in cases:
        out = run_script("avg.py", *flags, cwd=cwd)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, \
            (flags, out.stderr)


@pytest.mark.parametrize("env, flags, culprit", [("faulty_envs:NanObservation-v0", [], "observation"),
                                                 ("faulty_envs:NanReward-v0", [], "reward"),
                                                 ("faulty_envs:HugeReward-v0", [], "reward"),
                                                 ("faulty_envs:HugeObservation-v0", ["--no-obs-norm", "--feature-norm", "none"],
                                                  "loss or gradient")])
def test_non_finite_values_stop_the_run_and_keep_the_last_good_state(tmp_path, env, flags, culprit):
    out = run_script("avg.py", "--env", env, *flags, "--total-timesteps", 200, "--compile", "off", "--run-name",
                     "nan", cwd=tmp_path)
    assert out.returncode == 3
    assert f"non-finite {culprit} at step 50" in out.stderr
    checkpoint, _ = avg.load_checkpoint(tmp_path / "runs" / "nan")
    assert checkpoint["global_step"] == 50
    assert all(torch.isfinite(v).all() for v in checkpoint["learner"].values() if v.is_floating_point())


def test_skip_mode_counts_and_continues(tmp_path):
    out = run_script("avg.py", "--env", "faulty_envs:HugeObservation-v0", "--no-obs-norm", "--feature-norm", "none",
                     "--total-timesteps", 200,
                     "--compile", "off", "--run-name", "skip", "--on-nonfinite", "skip", "--log-every", 100,
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # the overflowing observation spoils two updates, once as S' and once as S; learning then goes on
    logs = scalars(tmp_path / "runs" / "skip")
    assert logs["charts/nonfinite_skips"][-1] == (200, 2.0)
    assert logs["losses/critic_loss"][-1][0] == 200 and np.isfinite(logs["losses/critic_loss"][-1][1])


def episode_returns(run_dir):
    return [value for _, value in scalars(run_dir)["charts/episodic_return"]]


def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path):
    """Killed with SIGKILL after an episode-boundary checkpoint and resumed, a run ends with the same
    parameters and the same episode returns as the same run left alone."""
    common = ["--env", "Hopper-v4", "--total-timesteps", 2400, "--seed", 5, "--compile", "off", "--save-model"]
    whole = run_script("avg.py", *common, "--run-name", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    proc = start_script("avg.py", *common, "--run-name", "cut", "--checkpoint-every", 600, cwd=tmp_path)
    checkpoints = tmp_path / "runs" / "cut" / "checkpoints"
    deadline = time.time() + 120
    while not list(checkpoints.glob("step_*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = run_script("avg.py", "--resume", tmp_path / "runs" / "cut", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming cut" in resumed.stdout
    a = torch.load(tmp_path / "runs" / "whole" / "avg.model", weights_only=False)
    b = torch.load(tmp_path / "runs" / "cut" / "avg.model", weights_only=False)
    for name in a["actor"]:
        assert torch.equal(a["actor"][name], b["actor"][name]), name
    for name in a["critic"]:
        assert torch.equal(a["critic"][name], b["critic"][name]), name
    assert episode_returns(tmp_path / "runs" / "cut") == episode_returns(tmp_path / "runs" / "whole")


KILL_DURING_WRITE = """
import sys, time, torch, avg
folder = sys.argv[1]
complete = {"algo": "avg", "args": {}, "obs_dim": 3, "act_dim": 2, "episodes": 0, "learner": {}, "rng": {},
            "wandb_id": None}
avg.save_atomic({**complete, "global_step": 1, "payload": torch.arange(1000.0)}, folder + "/step_000000000001.pt")
real_save = torch.save
def slow_save(obj, f):  # writes part of the file, then hangs until killed
    f.write(b"PARTIAL" * 100000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow_save
avg.save_atomic({**complete, "global_step": 2}, folder + "/step_000000000002.pt")
"""


def test_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_WRITE, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert [p.name for p in tmp_path.glob("step_*.pt")] == ["step_000000000001.pt"]
    assert any(p.name.startswith(".step_000000000002.pt.tmp") for p in tmp_path.iterdir())  # the torn write
    checkpoint, path = avg.load_checkpoint(tmp_path)
    assert checkpoint["global_step"] == 1 and torch.equal(checkpoint["payload"], torch.arange(1000.0))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_checkpoint_flush_and_exit_cleanly(tmp_path, signum, code):
    proc = start_script("avg.py", "--env", "faulty_envs:Point-v0", "--total-timesteps", 10 ** 7, "--compile", "off",
                        "--run-name", "sig", "--log-every", 100, cwd=tmp_path)
    for line in proc.stdout:
        if line.startswith("global_step="):
            break
    time.sleep(0.5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert f"stopped by {signal.Signals(signum).name} at step" in stderr and "--resume" in stderr
    run = tmp_path / "runs" / "sig"
    checkpoint, _ = avg.load_checkpoint(run)
    assert "charts/episodic_return" in scalars(run)  # TensorBoard was flushed
    resumed = run_script("avg.py", "--resume", run, "--total-timesteps", checkpoint["global_step"] + 300,
                         cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["global_step"] == checkpoint["global_step"] + 300
