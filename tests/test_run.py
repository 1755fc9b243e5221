"""incremental_utils/ (flags, checkpoints, environments, run), the run machinery every script shares, tested
in-process with a stand-in learner on a cheap environment: argument checks and resume rules, checkpoints (atomic
writes, loading, keeping K), environment checks, args.json provenance, logging, the console line, the order a run's
steps must come in, and how a run ends (exit codes, saved state)."""
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import pytest
import torch

import robots
from helpers import REPO, scalars
from incremental_utils import checkpoints, environments, flags
from incremental_utils.errors import EXIT_CODES, RunError
from incremental_utils.project import algorithm_scripts
from incremental_utils import logs
from incremental_utils.logs import RunLog
from incremental_utils.run import Run, nonfinite_input
from incremental_utils.metrics import MetricSums

import faulty_envs  # noqa: F401 (registers Point-v0 and the faulty environments)


@dataclass
class Args(flags.RunArgs):
    lr: float = 0.1
    """a stand-in hyperparameter"""


class Step(NamedTuple):
    obs: torch.Tensor


class Out(NamedTuple):
    ok: torch.Tensor


class Learner(torch.nn.Module):
    """Stands in for a script's learner: some state, and metrics like the real ones."""

    def __init__(self, obs_dim=3):
        super().__init__()
        self.register_buffer("sum_obs", torch.zeros(obs_dim, dtype=torch.float64))
        self.metrics = MetricSums("losses/critic_loss")

    def forward(self, s: Step):
        self.sum_obs += s.obs
        self.metrics.add(torch.tensor(True), {"losses/critic_loss": s.obs.square().sum()})
        return Out(torch.isfinite(s.obs).all())


@pytest.fixture(autouse=True)
def in_tmp_with_signals_restored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)


def train(args, fault_at=None, fault=None, checkpoint=None):
    """A script's training loop in miniature, around the shared machinery. fault: what happens at step fault_at."""
    run = Run("tiny", args, checkpoint)
    env = run.make_env()
    learner = Learner(env.observation_space.shape[0])
    run.start(learner, "stand-in", parts={"learner": learner})
    update = run.compile(learner, Step(torch.zeros(3, dtype=torch.float64)))
    with run.guard():
        run.reset_env()
        while run.running():
            raw_next_obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            seen = run.count_step(reward, raw_next_obs)
            if run.global_step == fault_at:
                if fault == "crash":
                    raise RuntimeError("the simulator blew up")
                if fault == "robot":
                    raise robots.RobotError("lost the robot")
                if fault == "sigint":
                    run.stop_signal = signal.SIGINT
                if fault == "sigterm":
                    run.stop_signal = signal.SIGTERM
            out = run.step(update, Step(torch.from_numpy(raw_next_obs))) if seen else None
            run.log_window()
            if run.episode_over(out, terminated, truncated):
                run.end_episode(info)
                run.reset_env()
    return run, run.finish()


def test_exit_codes_and_scripts_are_listed_once():
    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 130, 143}
    scripts = algorithm_scripts()
    assert len(scripts) >= 6 and all((REPO / f"{name}.py").exists() for name in scripts)
    # and every algorithm script at the top of the repository is in the list
    assert {p.stem for p in REPO.glob("*.py") if "\nALGO = " in p.read_text()} == set(scripts)


def test_flags_given_names_fields_and_no_flags():
    assert flags.flags_given(["--env", "X", "--no-track", "--lr=3", "--seed", "4"], Args) == {"env", "track",
                                                                                                  "lr", "seed"}


@pytest.mark.parametrize("fields, message", [({"total_timesteps": 0}, "--total-timesteps must be positive, got 0"),
                                             ({"log_every": -1}, "--log-every must be positive"),
                                             ({"keep_checkpoints": 0}, "--keep-checkpoints must be positive"),
                                             ({"checkpoint_every": -5}, "--checkpoint-every is out of range: -5"),
                                             ({"seed": -1}, "--seed must be between 0 and 2**31 - 1, got -1"),
                                             ({"seed": 2**31}, "--seed must be between 0 and 2**31 - 1, got 2147483648"),
                                             ({"run_name": "../elsewhere"}, "--run-name must name a directory "
                                                                           "inside runs/, got '../elsewhere'"),
                                             ({"run_name": "/tmp/x"}, "--run-name must name a directory inside"),
                                             ({"run_name": " "}, "--run-name must name a directory inside"),
                                             ({"lr": 0.0}, "--lr must be positive, got 0.0"),
                                             ({"lr": 2.0}, "--lr is out of range: 2.0")])
def test_check_args_gives_one_line_per_bad_flag(fields, message):
    args = Args(**fields)
    with pytest.raises(RunError, match=re.escape(message)):
        flags.check_args(args, positive=("lr",) if fields.get("lr") == 0.0 else (),
                             ranges={"lr": lambda lr: lr < 1})


def test_a_finished_run_writes_its_provenance_logs_and_summary(capsys):
    run, code = train(Args(env="faulty_envs:Point-v0", total_timesteps=100, log_every=50, run_name="ok",
                           save_model=True))
    assert code == 0
    saved = json.loads((run.dir / "args.json").read_text())
    assert saved["algo"] == "tiny" and saved["exp_name"] == "tiny" and saved["lr"] == 0.1
    made = saved["made_with"]
    assert made["torch"] == torch.__version__ and made["numpy"] == np.__version__ and made["gymnasium"] == gym.__version__
    assert made["python"] == ".".join(map(str, sys.version_info[:3])) and made["mujoco"]
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", made["git_commit"]) and isinstance(made["git_dirty"], bool)
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary == {"finished": True, "global_step": 100, "episodes": 5, "mean_return_last10": pytest.approx(
        np.mean([v for _, v in scalars(run.dir)["charts/episodic_return"]]))}
    logs = scalars(run.dir)
    assert [s for s, _ in logs["charts/SPS"]] == [50, 100] and [s for s, _ in logs["losses/critic_loss"]] == [50, 100]
    assert {"charts/update_us_p50", "charts/update_us_p99", "charts/update_us_max", "charts/nonfinite_skips",
            "charts/episodic_length"} <= set(logs)
    assert torch.load(run.dir / "tiny.model", weights_only=False)["args"]["run_name"] == "ok"
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("global_step="))
    assert re.fullmatch(r"global_step=20, episode=1, episodic_return=-?\d+\.\d, SPS=\d+, time_left=\d\d:\d\d:\d\d",
                        line), line


def test_console_line_says_speed_and_time_left_from_recent_throughput(monkeypatch, tmp_path):
    log = RunLog(tmp_path, Args(env="faulty_envs:Point-v0", total_timesteps=100_000, run_name="line"), 0, False)
    clock = [0.0]
    monkeypatch.setattr(logs.time, "time", lambda: clock[0])
    log.loop_starts(0)
    clock[0] = 10.0  # a slow first 10 s: 100 steps/s
    assert log.console_line(1000, 3, 1.5).endswith("SPS=100, time_left=00:16:30")
    clock[0] = 25.0  # then 1000 steps/s; the slow start no longer counts
    assert log.console_line(16000, 9, 2.0) == ("global_step=16000, episode=9, episodic_return=2.0, SPS=1000, "
                                               "time_left=00:01:24")
    log.close(0)


@pytest.mark.parametrize("env, fault, code, step, message", [
    ("Crash-v0", None, 1, 49, "tiny.py: failed at step 49 (above), outside the update; the state before this step is "
                              "saved in runs/end/checkpoints/step_000000000049.pt and resuming is safe: python tiny.py "
                              "--resume runs/end"),
    ("Point-v0", "robot", 4, 30, "tiny.py: robot error at step 30: lost the robot; resume with: python tiny.py "
                                 "--resume runs/end"),
    ("NanReward-v0", None, 3, 50, "tiny.py: non-finite reward at step 50; the update was not applied and the last "
                                  "good state is saved"),
    ("Point-v0", "sigint", 130, 30, "tiny.py: stopped by SIGINT at step 30; checkpoint written to "
                                    "runs/end/checkpoints/step_000000000030.pt; resume with: python tiny.py --resume "
                                    "runs/end"),
    ("Point-v0", "sigterm", 143, 30, "tiny.py: stopped by SIGTERM at step 30; checkpoint written to "
                                     "runs/end/checkpoints/step_000000000030.pt; resume with: python tiny.py --resume "
                                     "runs/end")])
def test_every_way_a_run_ends_saves_its_state_and_says_why(capsys, env, fault, code, step, message):
    run, exit_code = train(Args(env=f"faulty_envs:{env}", total_timesteps=100, run_name="end", log_every=10),
                           fault_at=30, fault=fault)
    err = capsys.readouterr().err
    assert exit_code == code and err.strip().splitlines()[-1] == message or \
        err.strip().splitlines()[-1].startswith(message), err
    assert ("Traceback" in err) == (env == "Crash-v0")
    checkpoint, _ = checkpoints.load_checkpoint(run.dir, "tiny")
    assert checkpoint["global_step"] == step and checkpoint["mid_episode"]
    assert checkpoint["learner"]["sum_obs"].isfinite().all()
    assert "charts/episodic_return" in scalars(run.dir)  # TensorBoard flushed
    assert not (run.dir / "summary.json").exists()


def test_resume_restores_counters_and_streams_and_continues_the_logs():
    args = dict(env="faulty_envs:Point-v0", run_name="cut", log_every=10)
    whole, _ = train(Args(**{**args, "run_name": "whole"}, total_timesteps=100))
    cut, code = train(Args(**args, total_timesteps=100), fault_at=41, fault="sigint")
    assert code == 130
    resumed_args, checkpoint = flags.resume_args(Args(resume=str(cut.dir), total_timesteps=100),
                                                     {"resume", "total_timesteps"}, "tiny")
    assert resumed_args.run_name == "cut" and checkpoint["global_step"] == 41
    resumed, code = train(resumed_args, checkpoint=checkpoint)
    assert code == 0 and resumed.global_step == 100
    # Both processes' event files may bear the same second in their names, so TensorBoard's file order says nothing:
    # every step is logged once, none lost or repeated across the cut.
    steps = [s for s, _ in scalars(cut.dir)["charts/SPS"]]
    assert sorted(steps) == list(range(10, 101, 10))


def test_checkpoints_keep_the_last_k():
    run, _ = train(Args(env="faulty_envs:Point-v0", total_timesteps=200, run_name="keep", checkpoint_every=20,
                        keep_checkpoints=2))
    assert [p.name for p in sorted((run.dir / "checkpoints").glob("step_*.pt"))] == ["step_000000000180.pt",
                                                                                     "step_000000000200.pt"]


def test_bad_checkpoints_are_refused_in_one_line(tmp_path):
    run, _ = train(Args(env="faulty_envs:Point-v0", total_timesteps=40, run_name="good", checkpoint_every=20))
    good, _ = checkpoints.load_checkpoint(run.dir, "tiny")
    assert good["global_step"] == 40  # the newest in the run directory
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    torch.save([1, 2], tmp_path / "foreign.pt")
    torch.save({**good, "algo": "iac"}, tmp_path / "other.pt")
    torch.save({"algo": "tiny", "args": good["args"]}, tmp_path / "incomplete.pt")
    torch.save({**good, "args": {**good["args"], "an_old_flag": 1}}, tmp_path / "version.pt")
    cases = [("missing.pt", "missing.pt does not exist"), ("empty", "no checkpoint found in"),
             ("corrupt.pt", "is unreadable or corrupt"), ("foreign.pt", "is not a checkpoint of this project"),
             ("other.pt", "is a iac.py checkpoint, not a tiny.py one"),
             ("incomplete.pt", "is incomplete (no act_dim, episodes"),
             ("version.pt", "was written by another version of tiny.py")]
    for name, message in cases:
        with pytest.raises(RunError) as error:
            flags.resume_args(Args(resume=str(tmp_path / name)), {"resume"}, "tiny")
        assert message in str(error.value), name


def test_resume_applies_run_settings_and_refuses_experiment_changes():
    run, _ = train(Args(env="faulty_envs:Point-v0", total_timesteps=40, run_name="r", checkpoint_every=20))
    args, _ = flags.resume_args(Args(resume=str(run.dir), total_timesteps=99, log_every=7, lr=0.5),
                                    {"resume", "total_timesteps", "log_every"}, "tiny")
    assert (args.total_timesteps, args.log_every, args.lr) == (99, 7, 0.1)  # lr not given: the saved one
    for given, message in [({"lr": 0.5}, "was trained with --lr 0.1, not 0.5"),
                           ({"env": "Hopper-v4"}, "was trained with --env faulty_envs:Point-v0, not Hopper-v4")]:
        with pytest.raises(RunError, match=re.escape(message)):
            flags.resume_args(Args(resume=str(run.dir), **given), {"resume", *given}, "tiny")


def test_a_checkpoint_of_another_shape_or_learner_is_refused():
    run, _ = train(Args(env="faulty_envs:Point-v0", total_timesteps=40, run_name="s", checkpoint_every=20))
    checkpoint, _ = checkpoints.load_checkpoint(run.dir, "tiny")
    for bad, message in [({**checkpoint, "obs_dim": 99}, "checkpoint shapes (obs 99, action 2) do not match"),
                         ({**checkpoint, "learner": {"other": torch.zeros(1)}}, "does not fit this tiny.py")]:
        args = Args(**bad["args"])
        again = Run("tiny", args, bad)
        again.make_env()
        with pytest.raises(RunError, match=re.escape(message)):
            again.start(Learner())
        again.env.close()


KILL_DURING_WRITE = """
import sys, time, torch
from incremental_utils import checkpoints
folder = sys.argv[1]
checkpoints.save_atomic({"global_step": 1, "payload": torch.arange(1000.0)}, folder + "/step_000000000001.pt")
def slow_save(obj, f):  # writes part of the file, then hangs until killed
    f.write(b"PARTIAL" * 100000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow_save
checkpoints.save_atomic({"global_step": 2}, folder + "/step_000000000002.pt")
"""


def test_kill_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_WRITE, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert [p.name for p in tmp_path.glob("step_*.pt")] == ["step_000000000001.pt"]
    assert any(p.name.startswith(".step_000000000002.pt.tmp") for p in tmp_path.iterdir())  # the torn write
    assert torch.equal(torch.load(tmp_path / "step_000000000001.pt")["payload"], torch.arange(1000.0))


@pytest.mark.parametrize("env, checks, message", [
    ("NoSuchEnv-v0", {}, "cannot make environment 'NoSuchEnv-v0'"),
    ("CartPole-v1", {}, "tiny.py needs a continuous (Box) action space; CartPole-v1 has Discrete(2)"),
    ("faulty_envs:Unbounded-v0", {}, "tiny.py squashes actions with tanh and needs finite action bounds"),
    ("faulty_envs:ImageObservation-v0", {}, "tiny.py learns from vector observations; faulty_envs:ImageObservation-v0 "
                                            "has images: Box(0, 255, (10, 10, 3), uint8)"),
])
def test_environments_a_script_cannot_use_are_refused_in_one_line(env, checks, message):
    with pytest.raises(RunError, match=re.escape(message)):
        environments.make_env(Args(env=env), "tiny", **checks)


def test_unbounded_actions_are_fine_for_a_script_that_clips():
    env = environments.make_env(Args(env="faulty_envs:Unbounded-v0"), "tiny", finite_action_bounds=False)
    assert np.isinf(env.action_space.high).all() and env.observation_space.shape == (3,)
    env.close()


def test_robot_flags_apply_only_to_robot_environments():
    with pytest.raises(RunError, match="apply only to UR5Reacher-v0"):
        environments.make_env(Args(robot_host="10.0.0.2"), "tiny")


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("a file where the log directory should be")
    run = Run("tiny", Args(env="faulty_envs:Point-v0", run_name="x"))
    run.make_env()
    with pytest.raises(RunError, match="cannot write the run directory runs/x"):
        run.start(Learner())


def test_a_refused_run_leaves_no_run_directory_behind(tmp_path):
    """Bad flags and unusable environments are refused before anything is written."""
    run = Run("tiny", Args(env="CartPole-v1", run_name="refused"))
    with pytest.raises(RunError, match="needs a continuous"):
        run.make_env()
    assert not (tmp_path / "runs").exists()


class Exploding(Learner):
    """A learner whose update raises halfway, after one of its writes: what a bug in an edited update does."""

    def forward(self, s: Step):
        self.sum_obs += s.obs
        if self.sum_obs.abs().sum() > 0 and int(self.explode_at) == 0:
            raise ValueError("a bug in the edited update")
        self.explode_at -= 1
        self.metrics.add(torch.tensor(True), {"losses/critic_loss": s.obs.square().sum()})
        return Out(torch.isfinite(s.obs).all())


@pytest.mark.parametrize("checkpointed", [True, False])
def test_an_update_that_raises_shows_its_traceback_and_saves_no_half_written_state(capsys, checkpointed):
    """An exception inside the update: the traceback, nothing saved of the half-updated learner, and the way back,
    the last checkpoint if there is one. (An exception outside the update saves the state: see the test above.)"""
    args = Args(env="faulty_envs:Point-v0", total_timesteps=100, run_name="bug", checkpoint_every=20 if checkpointed
                else 0)
    run = Run("tiny", args)
    env = run.make_env()
    learner = Exploding(env.observation_space.shape[0])
    learner.register_buffer("explode_at", torch.tensor(45))
    run.start(learner, "stand-in")
    update = run.compile(learner, Step(torch.zeros(3, dtype=torch.float64)))
    with run.guard():
        run.reset_env()
        while run.running():
            raw_next_obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            out = run.step(update, Step(torch.from_numpy(raw_next_obs))) if run.count_step(reward, raw_next_obs) \
                else None
            run.log_window()
            if run.episode_over(out, terminated, truncated):
                run.end_episode(info)
                run.reset_env()
    assert run.finish() == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: a bug in the edited update" in err
    saved = sorted((run.dir / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in saved] == (["step_000000000020.pt", "step_000000000040.pt"] if checkpointed else [])
    last = err.strip().splitlines()[-1]
    assert last.startswith("tiny.py: the update raised at step 46 (above), so the learner may be half-updated and "
                           "its state was not saved; ")
    assert last.endswith("resuming from the last checkpoint, step_000000000040.pt, is safe: python tiny.py --resume "
                         "runs/bug" if checkpointed else "no checkpoint was written before it, so there is nothing to "
                         "resume")


@pytest.mark.parametrize("reward, obs, culprit", [
    (1.0, np.zeros(3), None), (3.4028e38, np.zeros(3), None),   # float32's largest is still finite
    (1e39, np.zeros(3), "reward"), (float("nan"), np.zeros(3), "reward"), (-float("inf"), np.zeros(3), "reward"),
    (1.0, np.array([0.0, np.nan]), "observation"), (1.0, np.array([np.inf], dtype=np.float32), "observation"),
    (1.0, np.ones((10, 10, 4), dtype=bool), None), (1.0, np.full(4, 255, dtype=np.uint8), None),
    (np.float32(2.0), [0.0, 1.0], None)])
def test_count_step_names_the_non_finite_input_as_the_learner_would_see_it(reward, obs, culprit):
    assert nonfinite_input(reward, obs) == culprit
    run = Run("tiny", Args(env="faulty_envs:Point-v0", on_nonfinite="skip"))
    run.stage = "looping"  # count_step alone, outside a loop
    assert run.count_step(reward, obs) == (culprit is None)
    assert run.global_step == run.episode_length == 1 and run.skipped == (culprit is not None)
    assert run.episode_return == (float(reward) if culprit != "reward" else 0.0)


def test_default_run_name_writes_a_namespaced_env_id_flat_as_sweep_does():
    run = Run("tiny", Args(env="MinAtar/Breakout-v1", seed=4))
    assert run.dir.parent.name == "runs" and run.dir.name.startswith("MinAtar-Breakout-v1__tiny__4__")


def test_a_run_refuses_its_steps_out_of_order():
    args = Args(env="faulty_envs:Point-v0", total_timesteps=10, run_name="order")
    run = Run("tiny", args)
    learner = Learner()
    with pytest.raises(RuntimeError, match=r"Run.start\(\) needs Run.make_env\(\) first"):
        run.start(learner)
    run.make_env()
    with pytest.raises(RuntimeError, match=r"Run.compile\(\) needs Run.start\(\) first"):
        run.compile(learner, Step(torch.zeros(3, dtype=torch.float64)))
    run.start(learner)
    with pytest.raises(RuntimeError, match=r"Run.guard\(\) needs Run.compile\(\) first"):
        with run.guard():
            pass
    run.compile(learner, Step(torch.zeros(3, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match=r"Run.finish\(\) needs Run.guard\(\) first"):
        run.finish()
    with run.guard():
        pass
    assert run.finish() == 0


def test_args_json_says_how_the_update_runs_and_why(capsys):
    run, _ = train(Args(env="faulty_envs:Point-v0", total_timesteps=100, run_name="mode", compile="auto"))
    saved = json.loads((run.dir / "args.json").read_text())
    assert saved["update"] == {"compiled": False, "why": "--compile auto with a budget under 10000 steps"}
    assert "update: eager (--compile auto with a budget under 10000 steps)" in capsys.readouterr().out


@pytest.mark.parametrize("env, skips", [("NanReward-v0", 1), ("NanObservation-v0", 1)])
def test_skip_mode_skips_the_update_and_ends_the_episode_at_a_non_finite_input(env, skips):
    run, code = train(Args(env=f"faulty_envs:{env}", total_timesteps=100, run_name="skip", on_nonfinite="skip",
                           log_every=10))
    assert code == 0 and run.skipped == skips
    lengths = [int(v) for _, v in scalars(run.dir)["charts/episodic_length"]]
    assert lengths[:3] == [20, 20, 10]  # the third episode ended at step 50, where the bad value came
    assert run.learner.sum_obs.isfinite().all()  # the learner never saw it


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_torch_outside_the_tested_releases_runs_eager_or_stops_in_one_line(monkeypatch, capsys, mode):
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    run = Run("tiny", Args(env="faulty_envs:Point-v0", total_timesteps=20_000, run_name="fence", compile=mode))
    run.make_env()
    learner = Learner()
    run.start(learner)
    if mode == "on":
        with pytest.raises(RunError, match=r"compiling the update failed \(torch 2\.99\.0 is not a release the compiled "
                                           r"update is tested with \(2\.13\), and it rests on torch internals\)"):
            run.compile(learner, Step(torch.zeros(3, dtype=torch.float64)))
        return
    assert run.compile(learner, Step(torch.zeros(3, dtype=torch.float64))) is learner
    why = json.loads((run.dir / "args.json").read_text())["update"]
    assert why == {"compiled": False, "why": "--compile auto: compiling failed (torch 2.99.0 is not a release the "
                                             "compiled update is tested with (2.13), and it rests on torch internals)"}
    out = capsys.readouterr()
    assert "compiling the update (in a child" not in out.out
    assert out.err.count("\n") == 1 and "warning: the update runs eager" in out.err
    with run.guard():
        pass
    run.finish()
