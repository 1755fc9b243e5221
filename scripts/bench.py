"""Speed and memory of every algorithm script, measured the way they run: as a subprocess on one core.

    python scripts/bench.py                      # all scripts, compiled and eager (Hopper-v4; stream_q.py on MinAtar)
    python scripts/bench.py --algos avg --steps 60000 --modes on

For each script and compile mode it runs `<algo>.py --env ENV` for --steps steps, pinned to one CPU, and reads
back what the script logged (TensorBoard): environment steps per second and update latency (median and 99th
percentile, in microseconds) over the log windows after the first --warmup steps; its peak resident memory;
and the size of the learner's state (parameters, optimiser moments, normaliser and scaler statistics, traces;
the replay buffer of sac/td3 in its own column) from a checkpoint it writes. The replay buffer of batch SAC at 1M
transitions is shown beside it for scale.
Prints a Markdown table. Not a test: timings depend on the machine and on what else runs on it.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from plot import read_scalars  # scripts/plot.py

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from run_tools import SCRIPTS  # noqa: E402

DEFAULT_ENVS = {"stream_q": "MinAtar/Breakout-v1"}  # scripts for discrete actions; the others run Hopper-v4


def tensor_bytes(tree):
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return 0


def run_one(algo, mode, args, workdir):
    run_name = f"bench_{algo}_{mode}"
    steps, warmup = (args.steps, args.warmup) if mode == "on" else (args.eager_steps, args.eager_warmup)
    env_id = args.env or DEFAULT_ENVS.get(algo, "Hopper-v4")
    cmd = [sys.executable, str(REPO / f"{algo}.py"), "--env", env_id, "--total-timesteps", str(steps),
           "--seed", "1", "--log-every", str(args.log_every), "--compile", mode, "--run-name", run_name,
           "--checkpoint-every", str(steps // 2)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    pin = (lambda: os.sched_setaffinity(0, {args.cpu})) if args.cpu >= 0 else None
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pin)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    run_dir = Path(workdir) / "runs" / run_name

    def after(tag):  # the values logged after the warm-up
        steps, values = read_scalars(run_dir, tag)
        return values[steps > warmup]

    compile_s = read_scalars(run_dir, "charts/compile_seconds")[1]
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    checkpoint = torch.load(checkpoints[-1], weights_only=False)
    learner = checkpoint["learner"]
    replay = {k: v for k, v in learner.items() if k.startswith("replay.")}  # sac/td3's buffer is learner state
    return {"env": env_id, "sps": float(np.median(after("charts/SPS"))),
            "p50": float(np.median(after("charts/update_us_p50"))),
            "p99": float(np.median(after("charts/update_us_p99"))),
            "rss_mb": usage.ru_maxrss / 1024,
            "state_kb": (tensor_bytes(learner) - tensor_bytes(replay)) / 1024,
            "buffer_kb": tensor_bytes(replay) / 1024,
            "compile_s": float(compile_s[0]) if len(compile_s) else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=list(SCRIPTS), choices=SCRIPTS)
    parser.add_argument("--modes", nargs="+", default=["on", "off"], choices=["on", "off"],
                        help="compile modes to measure (on: compiled update, off: eager)")
    parser.add_argument("--env", help="environment for every script (default: Hopper-v4; MinAtar/Breakout-v1 for "
                        "stream_q.py)")
    parser.add_argument("--steps", type=int, default=40_000, help="environment steps per compiled measurement")
    parser.add_argument("--warmup", type=int, default=10_000, help="steps left out of the compiled timings")
    parser.add_argument("--eager-steps", type=int, default=10_000, help="environment steps per eager measurement")
    parser.add_argument("--eager-warmup", type=int, default=4_000, help="steps left out of the eager timings")
    parser.add_argument("--log-every", type=int, default=1_000)
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                        help="CPU to pin each run to (-1: no pinning)")
    args = parser.parse_args()
    if args.warmup >= args.steps or args.eager_warmup >= args.eager_steps:
        parser.error("the warm-up must be shorter than the measurement")
    import gymnasium as gym

    probe = gym.make(args.env or "Hopper-v4")
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    # batch SAC stores (s, a, r, s', terminated) as float32: 2 obs + action + 2 scalars per transition
    sac_buffer_mb = 1_000_000 * (2 * obs_dim + act_dim + 2) * 4 / 2 ** 20
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for algo in args.algos:
            if not (REPO / f"{algo}.py").exists():
                print(f"skipping {algo}: {algo}.py does not exist", file=sys.stderr)
                continue
            for mode in args.modes:
                print(f"measuring {algo} (compile {mode}) ...", file=sys.stderr, flush=True)
                rows.append((algo, mode, run_one(algo, mode, args, workdir)))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"\ncompiled: {args.steps} steps per run, timings after step {args.warmup}; eager: "
          f"{args.eager_steps} steps, after step {args.eager_warmup}; {cpu}, "
          f"{os.cpu_count()} cores, pinned to CPU {args.cpu}, torch {torch.__version__} (1 thread), "
          f"{datetime.date.today()}\n")
    print("| script | environment | update | env steps/s | update p50 (us) | update p99 (us) | peak RSS (MB) "
          "| learner state (KB) | replay buffer (KB) | compile (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for algo, mode, r in rows:
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        print(f"| {algo}.py | {r['env']} | {'compiled' if mode == 'on' else 'eager'} | {r['sps']:.0f} | "
              f"{r['p50']:.0f} | "
              f"{r['p99']:.0f} | {r['rss_mb']:.0f} | {r['state_kb']:.0f} | {r['buffer_kb']:.0f} | {compile_s} |")
    print(f"\nFor scale: batch SAC's replay buffer at 1M transitions of {args.env or 'Hopper-v4'} holds "
          f"{sac_buffer_mb:.0f} MB "
          f"(float32 observations; 160x90x3 stacked images would need tens of GB).")


if __name__ == "__main__":
    main()
