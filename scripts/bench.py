"""Speed and memory of every algorithm script, measured the way they run: as a subprocess on one core.

    python scripts/bench.py                      # all scripts, compiled and eager (Hopper-v4; stream_q.py on MinAtar)
    python scripts/bench.py --algos avg --steps 60000 --modes on
    python scripts/bench.py --algos stream_q --modes on --reference ~/src/streaming-drl --reference-steps 300000

For each script and compile mode it runs `<algo>.py --env ENV` for --steps steps, pinned to one CPU, and reads
back what the script logged (TensorBoard): environment steps per second and update latency (median and 99th
percentile, in microseconds) over the log windows after the first --warmup steps; the peak resident memory of the
run (the largest of the script and the processes it started, as `/usr/bin/time -v` reports it); and the size of the
learner's state (parameters, optimiser moments, normaliser and scaler statistics, traces; the replay buffer of
sac/td3 in its own column) from a checkpoint it writes. A compiled row is refused, not printed, when the run's
args.json says its update fell back to eager.

--reference DIR times the authors' released scripts from a checkout of theirs (gauthamvasan/avg: avg.py;
mohmdelsayed/streaming-drl: stream_q_minatar.py, stream_ac_continuous.py; sharifnassab/Intentional_RL:
intentional_ac.py, intentional_q_minatar.py, beside ours with --optimizer intentional) beside ours in the same
invocation, on the same CPU and environment, for --reference-steps steps each, and prints the ratio. Both are timed the
same way: wall clock between the step counters each prints after the warm-up (ours: the console line; theirs: their
episode lines).
Their code is run from DIR as it is, through a launcher that sets one torch thread, registers MinAtar's ids and lets
gymnasium 1.x's episode statistics be indexed as the 0.29 ones were; nothing of theirs is copied here.
Prints Markdown tables. Not a test: timings depend on the machine and on what else runs on it.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from plot import read_scalars  # scripts/plot.py

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from incremental_utils.project import algorithm_scripts  # noqa: E402

SCRIPTS = algorithm_scripts()
DEFAULT_ENVS = {"stream_q": "MinAtar/Breakout-v1"}  # scripts for discrete actions; the others run Hopper-v4
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}


class BenchError(Exception):
    """A measurement that cannot be reported as asked (a failed run, a compiled run that fell back to eager)."""


def tensor_bytes(tree):
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return 0


def run_pinned(cmd, cpu, cwd, on_line=None):
    """Runs cmd pinned to `cpu` (unless negative); returns (exit status, stdout lines with arrival times, stderr, peak
    RSS in MB of the process and its children)."""
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu >= 0 else None
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(os.environ, **CHILD_ENV), stdout=subprocess.PIPE, stderr=err,
                                text=True, preexec_fn=pin)
        lines = [(time.perf_counter(), line) for line in proc.stdout]
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), lines, err.read(), usage.ru_maxrss / 1024


def throughput(lines, pattern, warmup):
    """Steps per second between the first step counter past `warmup` and the last one, from their arrival times."""
    points = [(t, int(m.group(1))) for t, line in lines if (m := re.search(pattern, line))]
    points = [(t, step) for t, step in points if step > warmup]
    if len(points) < 2 or points[-1][1] == points[0][1]:
        raise BenchError(f"too few step counters after step {warmup} to time the run (raise the steps)")
    (t0, s0), (t1, s1) = points[0], points[-1]
    return (s1 - s0) / (t1 - t0)


def check_compiled(run_dir, mode):
    """A compiled measurement is one whose update was compiled: anything else is refused, with the run's reason."""
    update = (json.loads((Path(run_dir) / "args.json").read_text()).get("update") or {})
    if mode == "on" and not update.get("compiled"):
        raise BenchError(f"{run_dir}: the update ran eager ({update.get('why', 'no reason recorded')}), so its "
                         "timings are not a compiled measurement")
    return update


def run_ours(algo, mode, args, workdir, steps, warmup, env_id, tag="", variant=""):
    run_name = f"bench_{algo}_{mode}{tag}"
    cmd = [sys.executable, str(REPO / f"{algo}.py"), "--env", env_id, "--total-timesteps", str(steps),
           "--seed", "1", "--log-every", str(args.log_every), "--compile", mode, "--run-name", run_name,
           "--checkpoint-every", str(steps // 2), *shlex.split(args.script_args), *shlex.split(variant)]
    code, lines, stderr, rss = run_pinned(cmd, args.cpu, workdir)
    if code != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({code}): {stderr.strip().splitlines()[-1:]}")
    run_dir = Path(workdir) / "runs" / run_name
    update = check_compiled(run_dir, mode)
    return run_dir, lines, rss, update


def measure(algo, mode, args, workdir, variant="", tag=""):
    steps, warmup = (args.steps, args.warmup) if mode == "on" else (args.eager_steps, args.eager_warmup)
    env_id = args.env or DEFAULT_ENVS.get(algo, "Hopper-v4")
    run_dir, _, rss, update = run_ours(algo, mode, args, workdir, steps, warmup, env_id, tag, variant)

    def after(tag):  # the values logged after the warm-up
        logged_steps, values = read_scalars(run_dir, tag)
        return values[logged_steps > warmup]

    learner = torch.load(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)["learner"]
    replay = {k: v for k, v in learner.items() if k.startswith("replay.")}  # sac/td3's buffer is learner state
    return {"env": env_id, "sps": float(np.median(after("charts/SPS"))),
            "p50": float(np.median(after("charts/update_us_p50"))),
            "p99": float(np.median(after("charts/update_us_p99"))), "rss_mb": rss,
            "state_kb": (tensor_bytes(learner) - tensor_bytes(replay)) / 1024, "buffer_kb": tensor_bytes(replay) / 1024,
            "compile_s": update.get("seconds")}


# ------------------------------------------------------------------------------------------------ references
LAUNCHER = """
import os, runpy, sys
import numpy as np
import torch
torch.set_num_threads(1)
import gymnasium as gym
if any("MinAtar/" in a for a in sys.argv):
    import minatar.gym
    minatar.gym.register_envs()


class EpisodeStatistics(gym.wrappers.RecordEpisodeStatistics):
    # gymnasium 1.x gives scalars where 0.29, which the released scripts were written for, gave 1-element arrays
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if "episode" in info:
            info["episode"] = {k: np.atleast_1d(v) for k, v in info["episode"].items()}
        return obs, reward, terminated, truncated, info


gym.wrappers.RecordEpisodeStatistics = EpisodeStatistics
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
"""

# theirs: file -> (our script, how to say the env and the budget, their other flags, their step counter, the default
# env, our flags that make the same algorithm)
STREAM_FLAGS = lambda env, n: ["--env_name", env, "--total_steps", str(n)]  # noqa: E731
REFERENCES = {
    "avg.py": ("avg", lambda env, n: ["--env", env, "--N", str(n)], ["--actor_lr", "1.1e-5", "--critic_lr", "7.7e-5",
               "--alpha_lr", "0.3", "--results_dir", "results"], r"\| T: (\d+)", "Hopper-v4", ""),
    "stream_q_minatar.py": ("stream_q", STREAM_FLAGS, ["--debug"], r"Time Step (\d+)", "MinAtar/Breakout-v1", ""),
    "stream_ac_continuous.py": ("stream_ac", STREAM_FLAGS, ["--debug"], r"Time Step (\d+)", "Hopper-v4", ""),
    "intentional_ac.py": ("stream_ac", STREAM_FLAGS, ["--debug"], r"Time Step (\d+)", "Hopper-v4",
                          "--optimizer intentional"),
    "intentional_q_minatar.py": ("stream_q", STREAM_FLAGS, ["--debug"], r"Time Step (\d+)", "MinAtar/Breakout-v1",
                                 "--optimizer intentional"),
}


def find_references(folders):
    found = []
    for folder in folders:
        folder = Path(folder).expanduser().resolve()
        hits = [name for name in REFERENCES if (folder / name).is_file()]
        if not hits:
            raise BenchError(f"{folder} holds none of the released scripts bench.py knows ({', '.join(REFERENCES)})")
        found += [(name, folder) for name in hits]
    return found


def measure_reference(script, folder, args, workdir):
    """Theirs and ours, one after the other on the same CPU, timed the same way."""
    algo, budget, flags, pattern, env_id, our_flags = REFERENCES[script]
    env_id = args.env or env_id
    steps, warmup = args.reference_steps, args.reference_steps // 5
    launcher = Path(workdir) / "reference_launcher.py"
    launcher.write_text(LAUNCHER)
    cmd = [sys.executable, str(launcher), str(folder / script), *budget(env_id, steps), *flags]
    code, lines, stderr, theirs_rss = run_pinned(cmd, args.cpu, workdir)
    if code != 0:
        raise BenchError(f"{folder / script} failed ({code}): {stderr.strip().splitlines()[-1:]}")
    theirs = throughput(lines, pattern, warmup)
    _, our_lines, our_rss, _ = run_ours(algo, "on", args, workdir, steps, warmup, env_id, f"_vs_{script[:-3]}",
                                        our_flags)
    ours = throughput(our_lines, r"global_step=(\d+)", warmup)
    return {"algo": f"{algo}.py {our_flags}".strip(), "env": env_id, "script": f"{folder.name}/{script}",
            "steps": steps, "theirs_sps": theirs,
            "ours_sps": ours, "theirs_rss": theirs_rss, "ours_rss": our_rss}


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=list(SCRIPTS), choices=SCRIPTS,
                        help="scripts to measure (and whose released counterparts --reference times)")
    parser.add_argument("--modes", nargs="*", default=["on", "off"], choices=["on", "off"],
                        help="compile modes to measure (on: compiled update, off: eager); none: only --reference")
    parser.add_argument("--env", help="environment for every script (default: Hopper-v4; MinAtar/Breakout-v1 for "
                        "stream_q.py)")
    parser.add_argument("--steps", type=int, default=40_000, help="environment steps per compiled measurement")
    parser.add_argument("--warmup", type=int, default=10_000, help="steps left out of the compiled timings")
    parser.add_argument("--eager-steps", type=int, default=10_000, help="environment steps per eager measurement")
    parser.add_argument("--eager-warmup", type=int, default=4_000, help="steps left out of the eager timings")
    parser.add_argument("--log-every", type=int, default=1_000)
    parser.add_argument("--script-args", default="", metavar="FLAGS",
                        help="more flags for each of our runs, one string after '=' "
                             "(e.g. --script-args='--no-shared-encoder')")
    parser.add_argument("--variants", nargs="+", default=[], metavar="NAME=FLAGS",
                        help="measure each script once per variant, its FLAGS added (e.g. plain='--plasticity-every 0' "
                             "diagnostics=''), side by side")
    parser.add_argument("--repeats", type=int, default=1, help="measurements of each row, in turns (medians shown)")
    parser.add_argument("--reference", nargs="+", default=[], metavar="DIR",
                        help="checkouts of the authors' released code to time beside ours")
    parser.add_argument("--reference-steps", type=int, default=100_000,
                        help="steps per reference measurement (theirs and ours); the first fifth is warm-up")
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                        help="CPU to pin each run to (-1: no pinning)")
    args = parser.parse_args(argv)
    if args.warmup >= args.steps or args.eager_warmup >= args.eager_steps:
        parser.error("the warm-up must be shorter than the measurement")
    if any("=" not in v for v in args.variants) or args.repeats < 1:
        parser.error("--variants takes NAME=FLAGS items, and --repeats must be at least 1")
    args.variants = [tuple(v.split("=", 1)) for v in args.variants] or [("", "")]
    rows, references = [], []
    try:
        pairs = [(name, folder) for name, folder in find_references(args.reference)
                 if REFERENCES[name][0] in args.algos]
        with tempfile.TemporaryDirectory() as workdir:
            for algo in args.algos:
                for mode in args.modes:
                    # Variants side by side, and with --repeats in turns, so that they share the machine's moods
                    measured = {name: [] for name, _ in args.variants}
                    for repeat in range(args.repeats):
                        for i, (name, flags) in enumerate(args.variants):
                            print(f"measuring {algo} (compile {mode}{', ' + name if name else ''}, run {repeat + 1}) "
                                  "...", file=sys.stderr, flush=True)
                            measured[name].append(measure(algo, mode, args, workdir, flags, f"_{i}_{repeat}"))
                    for name, runs in measured.items():
                        best = {k: (float(np.median([r[k] for r in runs])) if isinstance(runs[0][k], float)
                                    else runs[0][k]) for k in runs[0]}
                        rows.append((algo, mode, {**best, "variant": name, "runs": len(runs)}))
            for name, folder in pairs:
                print(f"measuring {folder / name} beside {REFERENCES[name][0]}.py ...", file=sys.stderr, flush=True)
                references.append(measure_reference(name, folder, args, workdir))
    except BenchError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 1
    print_tables(args, rows, references)
    return 0


def transition_bytes(env_id, script_args):
    """What batch SAC stores per transition of env_id, (s, a, r, s', terminated): float32 vectors, and images as the
    scripts see them, uint8 and stacked (--frame-stack)."""
    import gymnasium as gym

    import tasks  # noqa: F401  (registers VisualDotReacher-v0 and friends)
    from incremental_utils.flags import PixelArgs

    def flag(name, default):
        return int(script_args[script_args.index(name) + 1]) if name in script_args else default

    space = gym.make(env_id).observation_space
    parts = space.spaces.values() if isinstance(space, gym.spaces.Dict) else [space]
    image = [p for p in parts if p.dtype == np.uint8 and len(p.shape) == 3]
    vector = sum(int(np.prod(p.shape)) for p in parts if p not in image)
    if "--pixels" in script_args:
        image, size = [True], flag("--image-size", PixelArgs.image_size)
        pixels = size * size * 3
    else:
        pixels = sum(int(np.prod(p.shape)) for p in image)
    stacked = pixels * (flag("--frame-stack", PixelArgs.frame_stack) if image else 1)
    return 2 * (stacked + 4 * vector) + 4 * (int(np.prod(gym.make(env_id).action_space.shape)) + 2)


def print_tables(args, rows, references):
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"\ncompiled: {args.steps} steps per run, timings after step {args.warmup}; eager: "
          f"{args.eager_steps} steps, after step {args.eager_warmup}; {cpu}, {os.cpu_count()} cores, pinned to CPU "
          f"{args.cpu}, torch {torch.__version__} (1 thread), {datetime.date.today()}\n")
    if rows:
        named = any(r["variant"] for _, _, r in rows)
        print("| script |" + (" variant |" if named else "") + " environment | update | env steps/s | update p50 (us) "
              "| update p99 (us) | peak RSS (MB) | learner state (KB) | replay buffer (KB) | compile (s) |")
        print("|---|" + ("---|" if named else "") + "---|---|---|---|---|---|---|---|---|")
        for algo, mode, r in rows:
            compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
            variant = f" {r['variant']} |" if named else ""
            print(f"| {algo}.py |{variant} {r['env']} | {'compiled' if mode == 'on' else 'eager'} | {r['sps']:.0f} | "
                  f"{r['p50']:.0f} | {r['p99']:.0f} | {r['rss_mb']:.0f} | {r['state_kb']:.0f} | {r['buffer_kb']:.0f} | "
                  f"{compile_s} |")
        env_id = args.env or "Hopper-v4"
        print(f"\nFor scale: batch SAC's replay buffer at 1M transitions of {env_id} holds "
              f"{transition_bytes(env_id, shlex.split(args.script_args)) * 1_000_000 / 2 ** 20:,.0f} MB.")
    if references:
        print("\n| ours | released script | environment | steps | ours (steps/s) | released (steps/s) | ratio "
              "| ours peak RSS (MB) | released peak RSS (MB) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in references:
            print(f"| {r['algo']} (compiled) | {r['script']} | {r['env']} | {r['steps']} | {r['ours_sps']:.0f} | "
                  f"{r['theirs_sps']:.0f} | {r['ours_sps'] / r['theirs_sps']:.1f}x | {r['ours_rss']:.0f} | "
                  f"{r['theirs_rss']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
