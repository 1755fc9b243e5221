"""scripts/sweep.py and the recipes in scripts/experiments/, end to end with tiny real avg.py runs (Pendulum-v1, a
few hundred steps, --compile off)."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("sweep")  # one worker: the module fixture is built once

ROOT = Path(__file__).resolve().parent.parent
SWEEP = [sys.executable, str(ROOT / "scripts" / "sweep.py")]
EXPERIMENTS = ROOT / "scripts" / "experiments"
TINY = ["--compile", "off", "--log-every", "100"]


def run(cmd, cwd, timeout=180):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def snapshot(run_dir):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(run_dir).iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    code, out = run([*SWEEP, "avg", "--envs", "Pendulum-v1", "--seeds", "1-2", "--total-timesteps", "300",
                     "--jobs", "2", *TINY], cwd)
    return cwd, code, out


def test_two_tiny_runs_run_in_parallel_and_log(tiny_sweep):
    cwd, code, out = tiny_sweep
    assert code == 0, out
    assert "sweep summary: 2 run(s): 2 finished" in out, out
    lines = out.splitlines()
    first_end = next(i for i, ln in enumerate(lines) if ln.startswith("[1/2] finished"))
    assert sum("start Pendulum-v1__avg__" in ln for ln in lines[:first_end]) == 2, out  # --jobs 2: side by side
    for seed in (1, 2):
        run_dir = cwd / "runs" / f"Pendulum-v1__avg__{seed}"
        args = json.loads((run_dir / "args.json").read_text())
        assert (args["env"], args["seed"], args["exp_name"], args["total_timesteps"]) == ("Pendulum-v1", seed, "avg",
                                                                                         300)
        assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 300
        assert list(run_dir.glob("events.out.tfevents.*"))
        log = (run_dir / "stdout.log").read_text()
        assert log.startswith("=== ") and "done: 300 steps" in log


def test_rerun_skips_finished_runs(tiny_sweep):
    cwd = tiny_sweep[0]
    before = {seed: snapshot(cwd / "runs" / f"Pendulum-v1__avg__{seed}") for seed in (1, 2)}
    t0 = time.time()
    code, out = run([*SWEEP, "avg", "--envs", "Pendulum-v1", "--seeds", "1-2", "--total-timesteps", "300", *TINY], cwd)
    assert code == 0 and "2 run(s): 2 skipped" in out and "start" not in out, out
    assert time.time() - t0 < 15  # no run was started
    assert {seed: snapshot(cwd / "runs" / f"Pendulum-v1__avg__{seed}") for seed in (1, 2)} == before
    # The same run names with another budget are not silently taken as done.
    code, out = run([*SWEEP, "avg", "--envs", "Pendulum-v1", "--seeds", "1", "--total-timesteps", "400", *TINY], cwd)
    assert code == 1 and "made by a different command" in out, out


def child_pids(pid):
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(stat.parent.name))
    return pids


def test_stopped_sweep_resumes_and_partial_run_restarts(tmp_path):
    # A run dir from a crash before any checkpoint: events but nothing to resume from.
    partial = tmp_path / "runs" / "Pendulum-v1__avg__4"
    partial.mkdir(parents=True)
    (partial / "events.out.tfevents.0.crashed").write_bytes(b"stale")
    (partial / "stdout.log").write_text("the crashed attempt\n")
    cmd = [*SWEEP, "avg", "--envs", "Pendulum-v1", "--seeds", "3", "--total-timesteps", "1000", *TINY]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "runs" / "Pendulum-v1__avg__3" / "stdout.log"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and "global_step=" in log.read_text()):
        time.sleep(0.1)
    children = child_pids(proc.pid)
    assert len(children) == 1
    environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{children[0]}/environ").read_text().split("\0") if "=" in kv)
    assert environ["OMP_NUM_THREADS"] == "1" and environ["MKL_NUM_THREADS"] == "1"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert "interrupted Pendulum-v1__avg__3" in out and "exit 143" in out, out
    assert list((log.parent / "checkpoints").glob("step_*.pt")) and not (log.parent / "summary.json").exists()

    code, out = run([*SWEEP, "avg", "--envs", "Pendulum-v1", "--seeds", "3-4", "--total-timesteps", "1000", *TINY],
                    tmp_path)
    assert code == 0, out
    assert "resume Pendulum-v1__avg__3" in out and "restart Pendulum-v1__avg__4" in out, out
    for seed in (3, 4):
        assert json.loads((tmp_path / "runs" / f"Pendulum-v1__avg__{seed}" / "summary.json").read_text())[
                   "global_step"] == 1000
    assert log.read_text().count("=== ") == 2  # one log, both attempts
    aside = tmp_path / "runs" / ".discarded" / "Pendulum-v1__avg__4.1"
    assert (aside / "stdout.log").read_text() == "the crashed attempt\n"
    assert not (partial / "events.out.tfevents.0.crashed").exists()


def test_failed_run_is_reported_with_its_reason(tmp_path):
    code, out = run([*SWEEP, "avg", "--envs", "NoSuchEnv-v0", "--seeds", "1", "--total-timesteps", "300", *TINY],
                    tmp_path)
    assert code == 1, out
    assert "failed: NoSuchEnv-v0__avg__1: exit 2, bad input: avg.py: error: cannot make environment" in out, out


@pytest.mark.parametrize("args, message", [
    (["avg", "--envs", "Hopper-v4", "--seeds", "3-1"], "bad seed range '3-1'"),
    (["avg", "--envs", "Hopper-v4", "--seeds", "x"], "bad seed spec 'x'"),
    (["avg", "--envs", "Hopper-v4", "--seeds", "1", "--seed", "2"], "--seed is set by the sweep"),
    (["avg", "--envs", "Hopper-v4", "--seeds", "1", "--total-timesteps", "1.5"], "positive integer"),
    (["avg", "--envs", "Hopper-v4", "--seeds", "1", "--jobs", "0"], "--jobs must be at least 1"),
    (["ppo", "--envs", "Hopper-v4", "--seeds", "1"], "invalid choice: 'ppo'"),
    (["avg", "--envs", "Hopper-v4", "--seeds", "1", "--exp-name", "a__b"], "may not contain"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    code, out = run([*SWEEP, *args], tmp_path)
    assert code == 2 and len(out.strip().splitlines()) == 1 and message in out, out
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_commands_and_runs_nothing(tmp_path):
    code, out = run([*SWEEP, "iac", "--envs", "Hopper-v4,Walker2d-v4", "--seeds", "1-3", "--total-timesteps", "1e6",
                     "--dry-run", "--no-obs-norm"], tmp_path)
    assert code == 0, out
    lines = out.strip().splitlines()
    assert len(lines) == 6 and all("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1" in ln for ln in lines)
    assert "iac.py --env Walker2d-v4 --seed 3 --exp-name iac --run-name Walker2d-v4__iac__3 --total-timesteps " \
           "1000000 --no-obs-norm" in lines[-1]
    assert not (tmp_path / "runs").exists()


# -------------------------------------------------------------------------------------------------- recipes
def test_normalization_ablation_recipe_end_to_end(tmp_path):
    """The 8 on/off combinations reach avg.py as the flags their names say, and the recipe plots the result."""
    cmd = [sys.executable, str(EXPERIMENTS / "normalization_ablation.py"), "--budget", "200", "--num-seeds", "1",
           "--envs", "Pendulum-v1", "--jobs", "2", "--", *TINY]
    code, out = run(cmd, tmp_path, timeout=300)
    assert code == 0, out
    assert "8 run(s): 8 finished" in out, out
    names = set()
    for run_dir in (tmp_path / "runs").glob("Pendulum-v1__avg-*__1"):
        args = json.loads((run_dir / "args.json").read_text())
        used = [label for label, on in (("obs", args["obs_norm"]), ("pen", args["feature_norm"] == "penultimate"),
                                        ("td", args["scale_td"])) if on]
        assert args["exp_name"] == "avg-" + ("+".join(used) or "none")
        assert args["feature_norm"] in ("penultimate", "none") and args["total_timesteps"] == 200
        names.add(args["exp_name"])
    assert len(names) == 8
    table = (tmp_path / "figures" / "normalization_ablation.md").read_text()
    assert sum(ln.startswith("| Pendulum-v1 | avg-") for ln in table.splitlines()) == 8
    assert table.splitlines()[2].startswith("| Pendulum-v1 | avg-obs+pen+td | 1 |")  # legend/table in recipe order
    for ext in ("png", "pdf"):
        assert (tmp_path / "figures" / f"normalization_ablation.{ext}").stat().st_size > 5000
    code, out = run(cmd, tmp_path)
    assert code == 0 and "8 run(s): 8 skipped" in out, out


RECIPES = {  # recipe: (variants, default environments x seeds, a flag each variant's command must carry)
    "avg_vs_baselines.py": (6, "5 env(s) x 30 seed(s)", {"sac-batch": "--buffer-size 1000000 --batch-size 256",
                                                         "td3-1": "td3_incremental.py", "iac": "--no-obs-norm",
                                                         "stream_ac": "stream_ac.py"}),
    "normalization_ablation.py": (8, "5 env(s) x 30 seed(s)", {"avg-none": "--no-obs-norm --feature-norm none "
                                                                           "--no-scale-td"}),
    "plus_variants.py": (7, "5 env(s) x 30 seed(s)", {"sac-1+": "--buffer-size 1 --batch-size 1 --learning-starts 0 "
                                                                "--obs-norm --feature-norm penultimate --scale-td"}),
    "target_network_ablation.py": (4, "5 env(s) x 30 seed(s)", {"avg-tau0.005": "--target-tau 0.005"}),
    "feature_norm.py": (4, "5 env(s) x 30 seed(s)", {"avg-fn-rms": "--feature-norm rms"}),
    "buffer_size.py": (14, "5 env(s) x 30 seed(s)", {
        "td3-buf100": "--buffer-size 100 --batch-size 100 --learning-starts 25000",
        "sac-buf1M": "--buffer-size 1000000 --batch-size 256 --learning-starts 5000"}),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_dry_run_has_the_paper_defaults(tmp_path, recipe):
    variants, grid, flags = RECIPES[recipe]
    code, out = run([sys.executable, str(EXPERIMENTS / recipe), "--dry-run"], tmp_path)
    assert code == 0, out
    assert f"{variants} variants x {grid} = {variants * 150} runs of 10,000,000 steps" in out, out
    commands = [ln for ln in out.splitlines() if "OMP_NUM_THREADS=1" in ln]
    assert len(commands) == variants * 150
    for exp_name, flag in flags.items():
        mine = [c for c in commands if f"--exp-name {exp_name} " in c]
        assert len(mine) == 150 and all(flag in c for c in mine), (exp_name, mine[:1])
    assert not (tmp_path / "runs").exists()


def test_recipe_small_and_slurm_dry_run(tmp_path):
    code, out = run([sys.executable, str(EXPERIMENTS / "target_network_ablation.py"), "--small", "--taus", "1",
                     "0.01", "--slurm", "--dry-run", "--time", "1:00:00"], tmp_path)
    assert code == 0, out
    assert "2 variants x 1 env(s) x 3 seed(s) = 6 runs of 50,000 steps" in out
    assert "--array=0-5" in out and "#SBATCH --cpus-per-task=1" in out and "#SBATCH --time=1:00:00" in out
    assert out.count("# task ") == 6 and "--target-tau 0.01" in out
    assert not (tmp_path / "sweeps").exists()


def test_every_exit_status_a_script_can_end_with_is_explained(tmp_path):
    from helpers import script_module
    from incremental_utils.errors import EXIT_CODES
    sweep = script_module("sweep")

    log = tmp_path / "stdout.log"
    log.write_text("avg.py: robot error at step 12: lost the robot; resume with --resume runs/x\n")
    assert sweep.explain_exit(4, log) == ("exit 4, robot error: avg.py: robot error at step 12: lost the robot; "
                                          "resume with --resume runs/x")
    for code, meaning in EXIT_CODES.items():
        assert sweep.explain_exit(code, tmp_path / "no-log").startswith(f"exit {code}, {meaning.split(' (')[0]}")
    assert sweep.explain_exit(-9, tmp_path / "no-log") == "exit -9, killed by SIGKILL (out of memory?)"


def test_the_stream_x_recipe_has_its_own_defaults(tmp_path):
    code, out = run([sys.executable, str(EXPERIMENTS / "stream_x_discrete.py"), "--small", "--dry-run"], tmp_path)
    assert code == 0, out
    assert "3 variants x 1 env(s) x 3 seed(s) = 9 runs of 100,000 steps" in out
    assert "stream_q.py --env CartPole-v1 --seed 1 --exp-name stream_sarsa" in out and "--sarsa" in out
    code, out = run([sys.executable, str(EXPERIMENTS / "stream_x_discrete.py"), "--dry-run"], tmp_path)
    assert "x 5 env(s) x 30 seed(s) = 450 runs of 5,000,000 steps" in out and "MinAtar/Seaquest-v1" in out


def test_recipes_with_their_own_seeds_budgets_and_environments_per_variant(tmp_path):
    code, out = run([sys.executable, str(EXPERIMENTS / "hopper_10m.py"), "--dry-run"], tmp_path)
    assert code == 0, out
    commands = [ln for ln in out.splitlines() if "OMP_NUM_THREADS=1" in ln]
    per_exp = {name: [c for c in commands if f"--exp-name {name} " in c]
               for name in ("avg", "iac", "sac-1", "td3-1", "stream_ac", "sac-batch")}
    assert {name: len(c) for name, c in per_exp.items()} == {"avg": 5, "iac": 1, "sac-1": 1, "td3-1": 1,
                                                            "stream_ac": 3, "sac-batch": 1}
    assert all("--total-timesteps 10000000 " in c for c in commands if "sac-batch" not in c)
    assert "--total-timesteps 1000000 --buffer-size 1000000" in per_exp["sac-batch"][0]
    assert all("--checkpoint-every 500000 " in c for name in per_exp if name != "sac-batch" for c in per_exp[name])
    assert "--checkpoint-every 100000 " in per_exp["sac-batch"][0]
    code, out = run([sys.executable, str(EXPERIMENTS / "pixels_dot_reacher.py"), "--dry-run"], tmp_path)
    assert code == 0, out
    commands = [ln for ln in out.splitlines() if "OMP_NUM_THREADS=1" in ln]
    runs = sorted(c.split("--run-name ")[1].split()[0] for c in commands)
    images = [f"VisualDotReacher-v0__{exp}__{seed}" for exp in ("avg-pixels", "stream_ac-pixels") for seed in (1, 2, 3)]
    separate = [f"VisualDotReacher-v0__avg-pixels-separate__{seed}" for seed in (1, 2)]
    vectors = [f"DotReacher-v0__{exp}__{seed}" for exp in ("avg", "stream_ac") for seed in (1, 2, 3)]
    assert runs == sorted(images + separate + vectors)
    assert all(("--no-shared-encoder" in c) == ("separate" in c) for c in commands)
    code, out = run([sys.executable, str(EXPERIMENTS / "pixels_dm_control.py"), "--dry-run"], tmp_path)
    assert code == 0, out
    commands = [ln for ln in out.splitlines() if "OMP_NUM_THREADS=1" in ln]
    runs = sorted(c.split("--run-name ")[1].split()[0] for c in commands)
    paired = ("avg", "avg-pixels", "stream_ac", "stream_ac-pixels", "stream_ac-repeat4")
    assert runs == sorted([f"dm_control-reacher-easy-v0__{exp}__{seed}" for exp in paired for seed in (1, 2)]
                          + ["dm_control-reacher-easy-v0__avg-repeat4__1", "dm_control-reacher-easy-v0__avg-pixels-only__1"])
    assert all(("--pixels" in c) == ("-pixels" in c) and "--total-timesteps 100000 " in c for c in commands)
    assert all(("--no-proprio" in c) == ("pixels-only" in c) and ("--action-repeat 4" in c) == ("repeat4" in c)
               for c in commands)


def test_the_continual_and_intentional_recipes(tmp_path):
    """continual.py: 6 long runs per seed (two algorithms x plain, UPGD, CBP), 10 fresh learners per algorithm on
    seed 1's frictions, each for one segment; intentional.py --fidelity: the runs beside the authors'."""
    code, out = run([sys.executable, str(EXPERIMENTS / "continual.py"), "--dry-run"], tmp_path)
    assert code == 0, out
    commands = [ln for ln in out.splitlines() if "OMP_NUM_THREADS=1" in ln]
    long = [c for c in commands if "fresh" not in c]
    fresh = [c for c in commands if "fresh" in c]
    assert len(long) == 18 and all("--total-timesteps 10000000 " in c and "change_every=1000000" in c for c in long)
    assert sum("--upgd" in c for c in long) == 6 and sum("--reinit cbp" in c for c in long) == 6
    assert len(fresh) == 20 and all("--seed 1 " in c and "--total-timesteps 1000000 " in c for c in fresh)
    assert {c.split("segment=")[1].split()[0] for c in fresh} == {str(k) for k in range(10)}
    ant = ["--envs", "SlipperyAnt-v0", "--budget", "20e6", "--change-every", "2e6", "--num-seeds", "1"]
    code, out = run([sys.executable, str(EXPERIMENTS / "continual.py"), "--dry-run", *ant, "--only", "avg", "avg-cbp"],
                    tmp_path)
    commands = [ln for ln in out.splitlines() if "OMP_NUM_THREADS=1" in ln]
    assert code == 0 and len(commands) == 2 and all("change_every=2000000" in c for c in commands), out
    code, out = run([sys.executable, str(EXPERIMENTS / "continual.py"), "--dry-run", "--only", "nope"], tmp_path)
    assert code == 2 and "continual.py: error: --only: no experiment named nope" in out
    code, out = run([sys.executable, str(EXPERIMENTS / "intentional.py"), "--fidelity", "--dry-run"], tmp_path)
    commands = [ln for ln in out.splitlines() if "OMP_NUM_THREADS=1" in ln]
    runs = sorted(c.split("--run-name ")[1].split()[0] for c in commands)
    mujoco = [f"{env}__intentional_ac-notime__{s}" for env in ("Hopper-v4", "HalfCheetah-v4") for s in (1, 2, 3)]
    assert code == 0 and runs == sorted(mujoco + [f"MinAtar-Breakout-v1__intentional_q__{s}" for s in (1, 2)])
    assert all("--optimizer intentional" in c and "--total-timesteps 1000000 " in c for c in commands)
