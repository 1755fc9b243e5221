"""Seed sweeps: run an algorithm script over environments x seeds, N runs at a time, one torch thread each.

    python scripts/sweep.py avg --envs Hopper-v4 Walker2d-v4 --seeds 1-5 --total-timesteps 1000000 --compile on

Options this script does not know pass through to the algorithm script (or put them after `--`). Runs log to
./runs/ENV__EXP__SEED/ (TensorBoard events, args.json, summary.json) with the run's output in stdout.log there.
Re-running the same command skips finished runs, resumes interrupted ones that have a checkpoint and restarts the
rest, so a sweep that was stopped, crashed or partly failed is finished by running it again.

This file is also the library that scripts/slurm.py and the recipes in scripts/experiments/ build on.
"""
import argparse
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from incremental_utils.checkpoints import read_json  # noqa: E402
from incremental_utils.errors import EXIT_CODES  # noqa: E402 (what a script's exit status means)
from incremental_utils.project import algorithm_scripts  # noqa: E402 (the one list of scripts)

SCRIPTS = algorithm_scripts()

RUNS = Path("runs")  # the algorithm scripts write to ./runs, so everything here is relative to the working directory
DISCARDED = RUNS / ".discarded"  # hidden: plot.py skips it, and a restarted run's old events must not count twice
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SET_BY_SWEEP = ("--env", "--seed", "--run-name", "--exp-name", "--total-timesteps", "--resume")


class SweepError(Exception):
    """Bad input or an unusable setup, reported in one line with exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a SweepError: one line, not the usage text and an error."""

    def error(self, message):
        raise SweepError(message)


# ------------------------------------------------------------------------------------------ what to run
@dataclass(frozen=True)
class Job:
    """One run: an algorithm script on one environment and seed, under an experiment name."""
    algo: str
    env: str
    seed: int
    exp_name: str
    total_timesteps: int | None = None
    extra: tuple = ()

    @property
    def run_name(self):
        # gymnasium ids such as dm_control/walker-walk-v0 would otherwise nest directories
        return f"{self.env.replace('/', '-')}__{self.exp_name}__{self.seed}"

    @property
    def run_dir(self):
        return RUNS / self.run_name

    @property
    def script(self):
        return ROOT / f"{self.algo}.py"

    def args(self):
        budget = ["--total-timesteps", str(self.total_timesteps)] if self.total_timesteps else []
        return ["--env", self.env, "--seed", str(self.seed), "--exp-name", self.exp_name,
                "--run-name", self.run_name, *budget, *self.extra]

    def to_dict(self):
        return {"algo": self.algo, "env": self.env, "seed": self.seed, "exp_name": self.exp_name,
                "total_timesteps": self.total_timesteps, "extra": list(self.extra)}

    @classmethod
    def from_dict(cls, d):
        return cls(d["algo"], d["env"], int(d["seed"]), d["exp_name"], d["total_timesteps"], tuple(d["extra"]))


def parse_seeds(specs):
    """'1-5', '1,3,7' or several such words: the seeds in the order given, without repeats."""
    seeds = []
    for word in specs:
        for part in filter(None, word.split(",")):
            first, _, last = part.partition("-")
            try:
                first, last = int(first), int(last or first)
            except ValueError:
                raise SweepError(f"bad seed spec {part!r}: use numbers, ranges like 1-5, or lists like 1,3,7") from None
            if first < 0 or last < first:
                raise SweepError(f"bad seed range {part!r}: seeds are non-negative and ranges go upwards")
            seeds += [s for s in range(first, last + 1) if s not in seeds]
    if not seeds:
        raise SweepError("no seeds given")
    return seeds


def parse_envs(words):
    envs = [e for w in words for e in w.split(",") if e]
    if not envs:
        raise SweepError("no environments given")
    return list(dict.fromkeys(envs))


def parse_steps(text):
    """A positive step count; 1e6 and 1_000_000 are accepted, since budgets are usually written that way."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of steps: {text!r}") from None
    if value != int(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"the number of steps must be a positive integer, got {text!r}")
    return int(value)


def check_extra(extra):
    for word in extra:
        flag = word.split("=", 1)[0]
        if flag in SET_BY_SWEEP:
            raise SweepError(f"{flag} is set by the sweep for each run; use the sweep's own options "
                             "(--envs, --seeds, --exp-name, --total-timesteps)")
    return tuple(extra)


def make_jobs(variants, envs, seeds, total_timesteps):
    """variants: (exp_name, algo, extra args) triples, or with a fourth element {"seeds": N, "budget": STEPS,
    "envs": [...]} when a variant runs only the first N of the seeds, its own budget, or only on some of the
    environments. Seeds vary slowest, so that the first runs cover every variant and environment with a few seeds: a
    sweep cut short still gives a comparison."""
    seeds, jobs = list(seeds), []
    for i, seed in enumerate(seeds):
        for env in envs:
            for exp_name, algo, extra, *own in variants:
                own = own[0] if own else {}
                if i < own.get("seeds", len(seeds)) and env in own.get("envs", (env,)):
                    jobs.append(Job(algo, env, seed, exp_name, own.get("budget", total_timesteps), tuple(extra)))
    names = [job.run_name for job in jobs]
    if len(set(names)) != len(names):
        raise SweepError("two variants share an experiment name; each needs its own")
    return jobs


# ----------------------------------------------------------------------------------------- run states
def is_finished(run_dir):
    summary = read_json(Path(run_dir) / "summary.json")
    return isinstance(summary, dict) and summary.get("finished") is True


def has_checkpoint(run_dir):
    return any((Path(run_dir) / "checkpoints").glob("step_*.pt"))


def plan(job):
    """What a (re-)run does with this job: ('skip' | 'resume' | 'start' | 'restart' | 'conflict', detail)."""
    run_dir = job.run_dir
    if not run_dir.exists() or not any(p.name != ".sweep.lock" for p in run_dir.iterdir()):
        return "start", ""
    recorded = read_json(run_dir / "sweep.json")
    wanted = {"algo": job.algo, "args": job.args()}
    if recorded is not None and recorded != wanted:
        return "conflict", (f"{run_dir} was made by a different command ({describe_difference(recorded, wanted)}); "
                            "use another --exp-name, or move that directory away")
    if recorded is None and (run_dir / "args.json").exists():
        args = read_json(run_dir / "args.json") or {}
        if job.total_timesteps and args.get("total_timesteps") not in (None, job.total_timesteps):
            return "conflict", (f"{run_dir} has total_timesteps={args.get('total_timesteps')}, not "
                                f"{job.total_timesteps}; use another --exp-name, or move that directory away")
    if is_finished(run_dir):
        return "skip", "already finished"
    if has_checkpoint(run_dir):
        return "resume", "from its last checkpoint"
    return "restart", "no checkpoint to resume from"


def describe_difference(old, new):
    if old.get("algo") != new["algo"]:
        return f"{old.get('algo')}.py, not {new['algo']}.py"
    return f"was: {shlex.join(old.get('args', []))}"


def command(job, action, python=sys.executable):
    args = ["--resume", str(job.run_dir)] if action == "resume" else job.args()
    return [python, str(job.script), *args]


def explain_exit(code, log_path):
    """Why a run failed, in one line: the exit status's meaning and the run's last error line."""
    if code < 0:
        meaning = f"killed by {signal.Signals(-code).name}" + (" (out of memory?)" if -code == 9 else "")
    else:
        meaning = EXIT_CODES.get(code, "failed").split(" (")[0]
    line = last_error_line(log_path)
    return f"exit {code}, {meaning}" + (f": {line}" if line else "")


def last_error_line(log_path, keywords=("error", "unrecognized", "non-finite", "stopped", "killed")):
    """The line that says what went wrong. The scripts print a one-line reason last (flags.parse folds tyro's boxes
    into one), and a traceback ends with the exception, so prefer the last line that names an error."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    lines = [ln.strip(" \t│╭╮╰╯─|") for ln in lines]
    lines = [ln for ln in lines if ln and not ln.startswith("=== ")]
    for ln in reversed(lines):
        if any(k in ln.lower() for k in keywords):
            return ln[:300]
    return lines[-1][:300] if lines else ""


# --------------------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    job: Job
    status: str  # finished | skipped | failed | interrupted | busy | not started
    detail: str = ""
    seconds: float = 0.0
    code: int | None = None


class Launch:
    """A started run: its process and its log. Holds a lock on the run directory while the run lives, so that a
    second sweep over the same runs (say, a local one beside a Slurm array) leaves it alone."""

    def __init__(self, job, python=sys.executable):
        self.job, self.started = job, time.time()
        run_dir = job.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = open(run_dir / ".sweep.lock", "w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock.close()
            raise RunBusy(f"another sweep is running {run_dir}") from None
        try:
            self.action, self.detail = plan(job)  # again, now that no one else can change the directory
            if self.action == "restart" and any(run_dir.glob("events.out.tfevents.*")):
                # The old events would count twice in TensorBoard and plot.py; keep them, out of the way.
                DISCARDED.mkdir(parents=True, exist_ok=True)
                n = 1 + sum(1 for _ in DISCARDED.glob(f"{job.run_name}.*"))
                aside = DISCARDED / f"{job.run_name}.{n}"
                aside.mkdir()
                for entry in run_dir.iterdir():
                    if entry.name != ".sweep.lock":
                        os.replace(entry, aside / entry.name)
                self.detail = f"the previous attempt had no checkpoint; it is kept in {aside}"
            if self.action in ("skip", "conflict"):
                return
            if self.action != "resume":
                (run_dir / "sweep.json").write_text(json.dumps({"algo": job.algo, "args": job.args()}))
            self.log_path = run_dir / "stdout.log"
            cmd = command(job, self.action, python)
            with open(self.log_path, "a") as log:
                log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {self.action}: {shlex.join(cmd)}\n")
                log.flush()
                # A new session: the sweep decides which signal reaches its runs, and when.
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env={**os.environ, **CHILD_ENV}, start_new_session=True)
        except BaseException:
            self.lock.close()
            raise

    def outcome(self):
        code, seconds = self.proc.returncode, time.time() - self.started
        self.lock.close()
        if code == 0 and is_finished(self.job.run_dir):
            summary = read_json(self.job.run_dir / "summary.json")
            ret = summary.get("mean_return_last10")
            detail = f"mean return of the last 10 episodes {ret:.1f}" if isinstance(ret, (int, float)) else ""
            return Outcome(self.job, "finished", detail, seconds, code)
        if code == 0:
            return Outcome(self.job, "failed", "exit 0 but no summary.json with finished: true", seconds, code)
        status = "interrupted" if code in (130, 143, -2, -15) else "failed"
        return Outcome(self.job, status, explain_exit(code, self.log_path), seconds, code)


class RunBusy(Exception):
    pass


def start(job, python=sys.executable):
    """Starts the job if it needs running. Returns a Launch, or an Outcome when there is nothing to start."""
    action, detail = plan(job)
    if action == "skip":
        return Outcome(job, "skipped", detail)
    if action == "conflict":
        return Outcome(job, "failed", detail)
    if not job.script.exists():
        return Outcome(job, "failed", f"{job.script.name} does not exist in {ROOT} (yet)")
    try:
        launch = Launch(job, python)
    except RunBusy as e:
        return Outcome(job, "busy", str(e))
    except OSError as e:
        return Outcome(job, "failed", f"cannot start {job.run_name}: {e}")
    if launch.action == "skip":
        launch.lock.close()
        return Outcome(job, "skipped", launch.detail)
    if launch.action == "conflict":
        launch.lock.close()
        return Outcome(job, "failed", launch.detail)
    return launch


def run_local(jobs, n_jobs, python=sys.executable, out=sys.stdout):
    """Runs the jobs, n_jobs at a time, and returns their outcomes. SIGINT/SIGTERM go on to the running scripts
    (which checkpoint and exit) and stop new starts; the sweep then reports as usual."""
    pending, running, outcomes, stop = list(jobs), [], [], []

    def on_signal(signum, frame):
        stop.append(signum)
        for launch in running:
            if launch.proc.poll() is None:
                launch.proc.send_signal(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    total, done = len(jobs), 0

    def report(o):
        nonlocal done
        done += 1
        took = f" in {format_seconds(o.seconds)}" if o.seconds else ""
        print(f"[{done}/{total}] {o.status} {o.job.run_name}{took}" + (f": {o.detail}" if o.detail else ""),
              file=out, flush=True)
        outcomes.append(o)

    try:
        while pending or running:
            while pending and len(running) < n_jobs and not stop:
                job = pending.pop(0)
                result = start(job, python)
                if isinstance(result, Outcome):
                    report(result)
                else:
                    note = f" ({result.detail})" if result.detail else ""
                    print(f"  {result.action} {job.run_name}{note}, log {result.log_path}", file=out, flush=True)
                    running.append(result)
                    if stop:  # the signal came while this one was starting
                        result.proc.send_signal(stop[0])
            if stop and pending:
                for job in pending:
                    report(Outcome(job, "not started", "the sweep was stopped"))
                pending = []
            for launch in [r for r in running if r.proc.poll() is not None]:
                running.remove(launch)
                report(launch.outcome())
            if running:
                time.sleep(0.2)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return outcomes, (stop[0] if stop else None)


def format_seconds(s):
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def print_summary(outcomes, out=sys.stdout):
    counts = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    print(f"\nsweep summary: {len(outcomes)} run(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=out)
    bad = [o for o in outcomes if o.status in ("failed", "interrupted", "busy", "not started")]
    for o in bad:
        print(f"  {o.status}: {o.job.run_name}: {o.detail}", file=out)
    if bad:
        print("re-running the same command skips the finished runs and retries these.", file=out)
    out.flush()
    return bad


def exit_status(outcomes, stopped_by):
    if stopped_by is not None:
        return 128 + stopped_by
    return 1 if any(o.status in ("failed", "interrupted", "busy", "not started") for o in outcomes) else 0


def dry_run(jobs, python=sys.executable, out=sys.stdout):
    """Prints what a real run would do, and the exact commands, without running anything."""
    env = " ".join(f"{k}={v}" for k, v in CHILD_ENV.items() if k != "PYTHONUNBUFFERED")
    try:
        for job in jobs:
            action, detail = plan(job)
            if action in ("skip", "conflict"):
                print(f"# {action} {job.run_name}: {detail}", file=out)
            else:
                missing = "" if job.script.exists() else f"  # {job.script.name} does not exist yet"
                print(f"{env} {shlex.join(command(job, action, python))} >> {job.run_dir}/stdout.log 2>&1{missing}",
                      file=out)
        out.flush()
    except BrokenPipeError:  # piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())


# ------------------------------------------------------------------------------------------------- CLI
def add_sweep_args(parser):
    """The options that define a sweep; scripts/slurm.py submit takes the same ones."""
    parser.add_argument("algo", choices=SCRIPTS, help="the algorithm script to run")
    parser.add_argument("--envs", nargs="+", required=True, metavar="ENV", help="environment ids (space or comma separated)")
    parser.add_argument("--seeds", nargs="+", required=True, metavar="SPEC", help="seeds: 1-5, 1,3,7 or 1 2 3")
    parser.add_argument("--total-timesteps", type=parse_steps, help="steps per run (default: the script's, 10M)")
    parser.add_argument("--exp-name", help="experiment name, the grouping key of plot.py (default: the algorithm)")


def parse_known_with_passthrough(parser, argv):
    """parser's own options, and the rest (unknown options, and everything after `--`) checked for passing
    through to the algorithm script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tail = []
    if "--" in argv:
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    args, unknown = parser.parse_known_args(argv)
    return args, check_extra(unknown + tail)


def parse_sweep_cli(parser, argv):
    """argparse for the sweep's own options; anything it does not know passes through to the algorithm script."""
    args, extra = parse_known_with_passthrough(parser, argv)
    args.extra = extra
    args.seeds = parse_seeds(args.seeds)
    args.envs = parse_envs(args.envs)
    args.exp_name = args.exp_name or args.algo
    if "__" in args.exp_name or "/" in args.exp_name:
        raise SweepError(f"--exp-name {args.exp_name!r} may not contain '__' or '/': run names are ENV__EXP__SEED")
    return args


def default_jobs():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                            epilog="Options not listed here pass through to the algorithm script.")
    add_sweep_args(parser)
    parser.add_argument("--jobs", "-j", type=int, default=default_jobs(),
                        help="runs at a time (default: the number of cores, here %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, and the commands")
    try:
        args = parse_sweep_cli(parser, argv)
        if args.jobs < 1:
            raise SweepError(f"--jobs must be at least 1, got {args.jobs}")
        jobs = make_jobs([(args.exp_name, args.algo, args.extra)], args.envs, args.seeds, args.total_timesteps)
        if args.dry_run:
            dry_run(jobs)
            return 0
        if not jobs[0].script.exists():
            raise SweepError(f"{jobs[0].script.name} does not exist in {ROOT} (yet)")
    except SweepError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2
    outcomes, stopped_by = run_local(jobs, args.jobs)
    print_summary(outcomes)
    return exit_status(outcomes, stopped_by)


if __name__ == "__main__":
    sys.exit(main())
