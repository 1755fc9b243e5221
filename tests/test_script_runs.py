"""Every algorithm script run as a user runs it: logs, bad input, non-finite values, checkpoints, resume and
signals. The machinery behind these is incremental_utils/ (unit-tested in test_run.py); here each script shows, end
to end, that its own loop uses it: the learner state it checkpoints is complete, its non-finite branches are right."""
import importlib
import json
import signal
import time

import numpy as np
import pytest
import torch

from helpers import REPO, env_for, kill_after_first_checkpoint, run_script, scalars, start_script, text_tags
from helpers import SCRIPTS
from incremental_utils.checkpoints import load_checkpoint as load
from incremental_utils.errors import RunError

per_script = pytest.mark.parametrize("algo", SCRIPTS)
TASK = {"stream_q": "CartPole-v1"}  # a task each script can run; Hopper-v4 for the continuous ones
LOSSES = {"stream_q": ["losses/td_loss", "losses/q_values"]}


def track_flag(algo):
    """--track for one script: wandb is wholly the shared code's (no script names it), and its start costs seconds."""
    return ["--track"] if algo == "avg" else []


def load_checkpoint(algo, path):
    return load(path, algo)


@per_script
def test_a_short_run_logs_what_a_researcher_reads(tmp_path, algo):
    task = TASK.get(algo, "Hopper-v4")
    out = run_script(f"{algo}.py", "--env", task, "--total-timesteps", 600, "--log-every", 200,
                     "--compile", "off", "--seed", 3, "--run-name", "e2e", "--save-model", *track_flag(algo),
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    if track_flag(algo):
        assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 1  # WANDB_MODE=offline (helpers)
    run = tmp_path / "runs" / "e2e"
    tags = scalars(run)
    for tag in ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/update_us_p50",
                "charts/update_us_p99", "charts/nonfinite_skips",
                *LOSSES.get(algo, ["losses/actor_loss", "losses/critic_loss"])]:
        assert tag in tags, tag
    assert [step for step, _ in tags["charts/SPS"]] == [200, 400, 600]
    assert any("hyperparameters" in t for t in text_tags(run))
    args = json.loads((run / "args.json").read_text())
    assert args["algo"] == algo and args["env"] == task and args["seed"] == 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["global_step"] == 600 and summary["episodes"] > 0
    model = torch.load(run / f"{algo}.model", weights_only=False)
    assert model["actor" if "actor" in model else "q_net"] and model["args"]["env"] == task


def test_avg_logs_its_health_signals_and_uses_the_paper_values(tmp_path):
    out = run_script("avg.py", "--env", "Hopper-v4", "--total-timesteps", 300, "--log-every", 300,
                     "--compile", "off", "--run-name", "health", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    tags = scalars(tmp_path / "runs" / "health")
    assert {"health/td_sigma", "health/entropy", "health/abs_q"} <= set(tags)
    assert json.loads((tmp_path / "runs" / "health" / "args.json").read_text())["actor_lr"] == 1.1e-5
    assert "paper values for Hopper" in out.stdout


BAD_ARGUMENTS = [  # (Args fields, message); checked in-process, the command line layer below
    ({"env": "NoSuchEnv-v0"}, "cannot make environment 'NoSuchEnv-v0'"),
    ({"env": "CartPole-v1"}, "needs a continuous (Box) action space"),
    ({"total_timesteps": 0}, "--total-timesteps must be positive"),
    ({"total_timesteps": -5}, "--total-timesteps must be positive"),
    ({"actor_lr": 0.0}, "--actor-lr must be positive"),
    ({"critic_lr": -0.001}, "--critic-lr must be positive"),
    ({"gamma": 1.5}, "--gamma is out of range"),
    ({"robot_host": "10.0.0.2"}, "apply only to UR5Reacher-v0"),
    ({"resume": "missing.pt"}, "missing.pt does not exist"),
]


@per_script
@pytest.mark.parametrize("fields, message", BAD_ARGUMENTS, ids=[str(f) for f, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_with_a_clear_message(tmp_path, monkeypatch, algo, fields, message):
    if algo == "stream_ac" and fields.get("env") == "CartPole-v1":  # it acts in discrete spaces too
        fields, message = {"env": "Blackjack-v1"}, "needs Box observations"
    if algo == "stream_q":  # its counterparts of the continuous scripts' cases
        translate = {"CartPole-v1": ("Hopper-v4", "needs a discrete action space"), "actor_lr": "lr",
                     "critic_lr": "kappa"}
        fields = {translate.get(k, k): v for k, v in fields.items()}
        if fields.get("env") in translate:
            fields["env"], message = translate[fields["env"]]
        message = message.replace("--actor-lr", "--lr").replace("--critic-lr", "--kappa")
    module = importlib.import_module(algo)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunError) as error:
        module.main(module.Args(**{"total_timesteps": 100, **fields}), set(fields))
    assert message in str(error.value)


@per_script
@pytest.mark.parametrize("flags, message", [(["--env", "NoSuchEnv-v0"], "cannot make environment"),
                                            (["--total-timesteps", "-5"], "--total-timesteps must be positive"),
                                            (["--sed", "3"], "Unrecognized options: --sed, 3 (perhaps --seed)"),
                                            (["--seed", "abc"], "Error parsing --seed: invalid literal for int()")])
def test_bad_input_on_the_command_line_gets_one_line_and_exit_2(tmp_path, algo, flags, message):
    out = run_script(f"{algo}.py", *flags, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith(f"{algo}.py: error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


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
    checkpoint, _ = load_checkpoint("avg", tmp_path / "runs" / "nan")
    assert checkpoint["global_step"] == 50
    assert all(torch.isfinite(v).all() for v in checkpoint["learner"].values() if v.is_floating_point())


@per_script
@pytest.mark.parametrize("env, culprit", [("NanObservation-v0", "observation"), ("NanReward-v0", "reward")])
def test_every_script_stops_on_non_finite_input(tmp_path, algo, env, culprit):
    out = run_script(f"{algo}.py", "--env", env_for(algo, env), "--total-timesteps", 200, "--compile", "off",
                     "--run-name", "nan",
                     cwd=tmp_path)
    assert out.returncode == 3 and f"non-finite {culprit} at step 50" in out.stderr, out.stderr
    checkpoint, _ = load_checkpoint(algo, tmp_path / "runs" / "nan")
    assert checkpoint["global_step"] == 50


@per_script
def test_an_environment_crash_shows_its_traceback_and_keeps_the_run(tmp_path, algo):
    out = run_script(f"{algo}.py", "--env", env_for(algo, "Crash-v0"), "--total-timesteps", 200, "--compile", "off",
                     "--run-name", "crash", cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert "RuntimeError: the simulator blew up" in out.stderr and "Traceback" in out.stderr
    assert lines[-1] == (f"{algo}.py: failed at step 49 (above), outside the update; the state before this step is "
                         "saved in runs/crash/checkpoints/step_000000000049.pt and resuming is safe: python "
                         f"{REPO / algo}.py --resume runs/crash")
    checkpoint, _ = load_checkpoint(algo, tmp_path / "runs" / "crash")
    assert checkpoint["global_step"] == 49 and checkpoint["mid_episode"]


@per_script
def test_skip_mode_ends_the_episode_at_a_non_finite_reward_and_goes_on(tmp_path, algo):
    """A non-finite reward: no update (the learner never sees it), the episode ends there and the run goes on (the env
    raises if a non-finite action ever reaches it)."""
    out = run_script(f"{algo}.py", "--env", env_for(algo, "NanReward-v0"), "--total-timesteps", 200, "--compile", "off",
                     "--run-name", "skip", "--on-nonfinite", "skip", "--log-every", 100, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    logs = scalars(tmp_path / "runs" / "skip")
    assert logs["charts/nonfinite_skips"][-1] == (200, 1.0)
    assert [int(v) for _, v in logs["charts/episodic_length"]][:4] == [20, 20, 10, 20]
    assert all(np.isfinite(value) for _, value in logs["charts/episodic_return"])
    loss = LOSSES.get(algo, ["losses/critic_loss"])[0]
    assert logs[loss][-1][0] == 200 and np.isfinite(logs[loss][-1][1])


def test_skip_mode_never_sends_a_non_finite_action(tmp_path):
    """An observation that overflows the unnormalised features: the update is rejected, the next action may be
    non-finite, so the episode ends instead of sending it; learning goes on."""
    out = run_script("avg.py", "--env", "faulty_envs:HugeObservation-v0", "--no-obs-norm", "--feature-norm", "none",
                     "--total-timesteps", 200, "--compile", "off", "--run-name", "skip", "--on-nonfinite", "skip",
                     "--log-every", 100, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    logs = scalars(tmp_path / "runs" / "skip")
    assert 1 <= logs["charts/nonfinite_skips"][-1][1] <= 2
    assert logs["losses/critic_loss"][-1][0] == 200 and np.isfinite(logs["losses/critic_loss"][-1][1])


def episode_returns(run_dir):
    return [value for _, value in scalars(run_dir)["charts/episodic_return"]]


@per_script
def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, algo):
    """Killed with SIGKILL after an episode-boundary checkpoint and resumed, a run ends with the same
    parameters and the same episode returns as the same run left alone."""
    common = ["--env", env_for(algo, "Point-v0"), "--total-timesteps", 600, "--seed", 5, "--compile", "off",
              "--save-model"]
    whole = run_script(f"{algo}.py", *common, "--run-name", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert kill_after_first_checkpoint(f"{algo}.py", *common, "--run-name", "cut", "--checkpoint-every", 200,
                                       *track_flag(algo), run_dir=tmp_path / "runs" / "cut", cwd=tmp_path,
                                       timeout=120) == -signal.SIGKILL
    resumed = run_script(f"{algo}.py", "--resume", tmp_path / "runs" / "cut", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming cut" in resumed.stdout
    if track_flag(algo):
        wandb_runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
        assert len(wandb_runs) == 2 and len({run.name.rsplit("-", 1)[1] for run in wandb_runs}) == 1  # same run id
    a = torch.load(tmp_path / "runs" / "whole" / f"{algo}.model", weights_only=False)
    b = torch.load(tmp_path / "runs" / "cut" / f"{algo}.model", weights_only=False)
    for network in [name for name in ("actor", "critic", "q_net", "obs_stats") if name in a]:
        assert a[network].keys() == b[network].keys()
        for name in a[network]:
            assert torch.equal(a[network][name], b[network][name]), (network, name)
    assert episode_returns(tmp_path / "runs" / "cut") == episode_returns(tmp_path / "runs" / "whole")


@pytest.mark.parametrize("algo, signum, code", [(algo, signal.SIGINT, 130) for algo in SCRIPTS]
                         + [("avg", signal.SIGTERM, 143)])
def test_signals_checkpoint_flush_and_exit_cleanly(tmp_path, algo, signum, code):
    proc = start_script(f"{algo}.py", "--env", env_for(algo, "Point-v0"), "--total-timesteps", 10 ** 7, "--compile", "off",
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
    checkpoint, _ = load_checkpoint(algo, run)
    assert "charts/episodic_return" in scalars(run)  # TensorBoard was flushed
    resumed = run_script(f"{algo}.py", "--resume", run, "--total-timesteps", checkpoint["global_step"] + 300,
                         cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["global_step"] == checkpoint["global_step"] + 300


def test_ctrl_c_during_start_up_stops_before_the_first_step(tmp_path):
    """Ctrl-C while the update compiles (or a robot connects): no environment step is taken, exit 130."""
    proc = start_script("avg.py", "--env", "faulty_envs:Point-v0", "--total-timesteps", 10 ** 6, "--compile", "on",
                        "--run-name", "early", cwd=tmp_path)
    for line in proc.stdout:
        if line.startswith("compiling the update"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "stopped by SIGINT at step 0" in stderr
    assert "global_step=" not in stdout
    checkpoint, _ = load_checkpoint("avg", tmp_path / "runs" / "early")
    assert checkpoint["global_step"] == 0 and checkpoint["episodes"] == 0
