"""Learning curves of the authors' released scripts, run as they are, for side-by-side plots with ours.

    python scripts/reference_runs.py ~/src/Intentional_RL/intentional_ac.py --envs Hopper-v4 HalfCheetah-v4 \\
        --seeds 1-3 --total-steps 1000000 --exp-name intentional_ac-authors --out docs/data/intentional -- --debug

Runs SCRIPT once per environment x seed, one after the other, through bench.py's launcher (one torch thread,
MinAtar's ids registered, gymnasium 1.x episode statistics indexed as 0.29's were; nothing of theirs is copied here),
and turns the episode lines it prints ("Episodic Return: R, Time Step T") into OUT/ENV__EXP__SEED.csv.gz, the
format `plot.py --export-episodes` writes, so `plot.py` draws them beside our runs. Their scripts keep no
checkpoint: a run that was stopped starts again; a finished one (its CSV written) is skipped, so running the same
command again finishes a sweep. Each run's console output is kept in OUT/logs/. Flags after `--` go to SCRIPT.
"""
import argparse
import gzip
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import LAUNCHER  # scripts/bench.py
from sweep import CHILD_ENV, parse_seeds

EPISODE = re.compile(r"Episodic Return: ([-+0-9.eE]+|nan), Time Step (\d+)")
ENV_FLAGS = ("--env_name", "--seed", "--total_steps")  # how the released Stream-X and Intentional scripts take them


def episodes(log_text):
    """(global step, return, length) of each episode a released script printed; the length is the step difference,
    exact because their step counter runs on through resets."""
    rows, last = [], 0
    for m in EPISODE.finditer(log_text):
        step = int(m.group(2))
        rows.append((step, float(m.group(1)), step - last))
        last = step
    return rows


def write_csv(path, rows, header):
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as f:
        f.write(f"# {header}\nglobal_step,return,length\n")
        f.writelines(f"{s},{r:.6g},{n}\n" for s, r, n in rows)
    os.replace(tmp, path)  # a CSV that exists is a finished run


def source_commit(script):
    out = subprocess.run(["git", "-C", str(script.parent), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", type=Path, help="the released script (e.g. Intentional_RL/intentional_ac.py)")
    parser.add_argument("--envs", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", default=["1"])
    parser.add_argument("--total-steps", type=int, required=True)
    parser.add_argument("--exp-name", required=True, help="the EXP in ENV__EXP__SEED (e.g. intentional_ac-authors)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs and logs/")
    args = parser.parse_args(argv)
    script = args.script.expanduser().resolve()
    if not script.is_file():
        parser.error(f"{script} is not a file")
    seeds = parse_seeds(args.seeds)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    commit = source_commit(script)
    with tempfile.TemporaryDirectory() as workdir:  # their scripts may write files into the working directory
        launcher = Path(workdir) / "reference_launcher.py"
        launcher.write_text(LAUNCHER)
        for env_id in args.envs:
            for seed in seeds:
                name = f"{env_id.replace('/', '-')}__{args.exp_name}__{seed}"
                csv = args.out / f"{name}.csv.gz"
                if csv.exists():
                    print(f"{name}: finished, skipped", flush=True)
                    continue
                log = args.out / "logs" / f"{name}.log"
                cmd = [sys.executable, str(launcher), str(script), *ENV_FLAGS[:1], env_id, "--seed", str(seed),
                       "--total_steps", str(args.total_steps), *extra]
                print(f"{name}: running {' '.join(cmd[2:])}", flush=True)
                with open(log, "w") as out:
                    code = subprocess.run(cmd, cwd=workdir, env=dict(os.environ, **CHILD_ENV), stdout=out,
                                          stderr=subprocess.STDOUT).returncode
                text = log.read_text()
                if code != 0:
                    tail = text.strip().splitlines()[-1:] or ["no output"]
                    print(f"reference_runs.py: error: {name} exited {code}: {tail[0]}", file=sys.stderr)
                    return 1
                write_csv(csv, episodes(text), f"env={env_id} exp_name={args.exp_name} seed={seed} finished=true "
                          f"source={script.parent.name}/{script.name} commit={commit} steps={args.total_steps}")
                print(f"{name}: done, {len(episodes(text))} episodes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
