"""Shared helpers for the tests: running the algorithm scripts as a user would (subprocesses), reading their logs,
and comparing learners."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import torch

from incremental_utils.project import algorithm_scripts

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def script_module(name):
    """scripts/<name>.py imported as the module `name`: scripts/ is not a package, and its tools import one another
    by name (evaluate.py imports plot), so it goes on sys.path."""
    if str(REPO / "scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "scripts"))
    return importlib.import_module(name)


def script_env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
               WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def run_script(script, *args, cwd, timeout=600, **env):
    """Runs `python <script> args...` in `cwd` and returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=script_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def start_script(script, *args, cwd, **env):
    return subprocess.Popen([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=script_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after_first_checkpoint(script, *args, run_dir, cwd, timeout=300):
    """Starts a script, kills it with SIGKILL as soon as its first checkpoint is on disk (or at the timeout), and
    returns its exit status: what a crash mid-run leaves behind, for the resume tests."""
    import time

    proc = start_script(script, *args, cwd=cwd)
    checkpoints, deadline = Path(run_dir) / "checkpoints", time.time() + timeout
    while not list(checkpoints.glob("step_*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    return proc.wait()


def scalars(run_dir):
    """{tag: [(step, value), ...]} from a run directory's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def text_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc.Tags().get("tensors", [])


SCRIPTS = algorithm_scripts()  # the one list of scripts (pyproject.toml's py-modules)
DISCRETE_ACTIONS = {"stream_q"}  # scripts that act in discrete action spaces only


def env_for(algo, name):
    """The faulty_envs environment `name` (e.g. "Point-v0") in the variant whose actions `algo` takes."""
    return f"faulty_envs:{'Discrete' if algo in DISCRETE_ACTIONS else ''}{name}"


def assert_states_close(expected, actual, rtol=1e-3, atol=1e-5):
    """Two learners' whole state (parameters and buffers) agree entry by entry, named in the failure message."""
    assert list(expected.state_dict()) == list(actual.state_dict())
    for (name, p), q in zip(expected.state_dict().items(), actual.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=rtol, atol=atol, msg=name)


def cut_and_resume(script, *args, cwd):
    """Runs `script args` whole (run "whole"), and again killed with SIGKILL after its first checkpoint (checkpoints
    every 200 steps) then resumed (run "cut"); asserts each step went as it should and returns both saved models, for
    the exact-resume tests. args must include --save-model."""
    import signal

    whole = run_script(script, *args, "--run-name", "whole", cwd=cwd)
    assert whole.returncode == 0, whole.stderr
    assert kill_after_first_checkpoint(script, *args, "--run-name", "cut", "--checkpoint-every", 200,
                                       run_dir=Path(cwd) / "runs" / "cut", cwd=cwd) == -signal.SIGKILL
    resumed = run_script(script, "--resume", Path(cwd) / "runs" / "cut", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    name = Path(script).stem
    models = [torch.load(Path(cwd) / "runs" / run / f"{name}.model", weights_only=False) for run in ("whole", "cut")]
    return whole, models
