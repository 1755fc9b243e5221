"""The same seed sweeps as scripts/sweep.py, on a Slurm cluster: one job array, one task per run.

    python scripts/slurm.py submit avg --envs Hopper-v4 Walker2d-v4 --seeds 1-30 --total-timesteps 10000000 \\
        --time 2-00:00:00 --mem 4G --compile on
    python scripts/slurm.py status sweeps/NAME          # finished / queued / failed tasks, and why
    python scripts/slurm.py resubmit sweeps/NAME        # only the failed tasks, e.g. --array=3,7

submit writes sweeps/NAME/ in the working directory: manifest.json (array index -> run), job.sh (the batch script,
one CPU and one torch thread per task), logs/JOBID_INDEX.out (Slurm's log of each task) and status/INDEX.json
(each task's exit status and reason). Runs log to ./runs exactly as with sweep.py, with each run's own output in
runs/RUN/stdout.log; a task whose run already finished does nothing, one with a checkpoint resumes, so a local
sweep.py with the same arguments and a Slurm array can finish each other's work. The working directory must be
on a file system the compute nodes share.
"""
import getpass
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402

SWEEPS = Path("sweeps")
NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def compress(indices):
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8', the form sbatch --array takes."""
    parts, indices = [], sorted(set(indices))
    i = 0
    while i < len(indices):
        j = i
        while j + 1 < len(indices) and indices[j + 1] == indices[j] + 1:
            j += 1
        parts.append(str(indices[i]) if i == j else f"{indices[i]}-{indices[j]}")
        i = j + 1
    return ",".join(parts)


def slurm_command(cmd, what):
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise sweep.SweepError(f"{cmd[0]} not found: is this a Slurm login node?") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise sweep.SweepError(f"{what} failed: {lines[-1] if lines else f'{cmd[0]} exited {result.returncode}'}")
    return result.stdout


# ---------------------------------------------------------------------------------------------- a sweep on disk
def job_script(name, sweep_dir, python, sbatch_lines):
    directives = [f"--job-name={name}", "--ntasks=1", "--cpus-per-task=1",
                  f"--output={sweep_dir / 'logs' / '%A_%a.out'}", f"--chdir={Path.cwd()}", *sbatch_lines]
    threads = " ".join(f"{k}={v}" for k, v in sweep.CHILD_ENV.items())
    return "\n".join([
        "#!/bin/bash",
        f"# Slurm array of the seed sweep {name}; written by scripts/slurm.py submit, run with --array=INDICES.",
        *[f"#SBATCH {shlex.quote(d)}" for d in directives],
        f"export {threads}",
        f"exec {shlex.quote(python)} {shlex.quote(str(Path(__file__).resolve()))} run-task "
        f"{shlex.quote(str(sweep_dir))} \"$SLURM_ARRAY_TASK_ID\"",
        ""])


def sbatch_lines(args):
    lines = [f"--{opt}={value}" for opt, value in (("time", args.time), ("mem", args.mem),
                                                  ("partition", args.partition), ("account", args.account)) if value]
    for extra in args.sbatch_arg or []:
        if not extra.startswith("--"):
            raise sweep.SweepError(f"--sbatch-arg takes long sbatch options such as --qos=normal, got {extra!r}")
        lines.append(extra)
    return lines


def load(sweep_dir):
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "manifest.json").is_file() and (SWEEPS / sweep_dir).is_dir():
        sweep_dir = SWEEPS / sweep_dir  # a bare name
    manifest = sweep.read_json(sweep_dir / "manifest.json")
    if not isinstance(manifest, dict) or "jobs" not in manifest:
        raise sweep.SweepError(f"{sweep_dir} is not a sweep written by slurm.py submit (no readable manifest.json)")
    return sweep_dir.resolve(), manifest


def save_manifest(sweep_dir, manifest):
    tmp = sweep_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, sweep_dir / "manifest.json")


def submit_array(sweep_dir, manifest, indices, max_running=None):
    spec = compress(indices) + (f"%{max_running}" if max_running else "")
    out = slurm_command(["sbatch", "--parsable", f"--array={spec}", str(sweep_dir / "job.sh")], "sbatch")
    job_id = out.strip().split(";")[0]
    manifest["submissions"].append({"job_id": job_id, "array": spec, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    save_manifest(sweep_dir, manifest)
    print(f"submitted job {job_id}, array {spec} ({len(indices)} task(s)); follow it with: "
          f"python {display(__file__)} status {display(sweep_dir)}")
    return job_id


def display(path):
    """A path as short as it can be written from the working directory, for commands printed to copy."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def submit(jobs, name, lines, wait=False, dry_run=False, max_running=None, python=sys.executable):
    """Writes sweeps/NAME and submits one array task per job. Returns the exit status for the CLI."""
    if not NAME_OK.fullmatch(name):
        raise sweep.SweepError(f"sweep name {name!r}: use letters, digits and . _ + - only")
    sweep_dir = (SWEEPS / name).resolve()
    script = job_script(name, sweep_dir, python, lines)
    if dry_run:
        print(f"# would write {display(sweep_dir)}/job.sh and submit it with --array={compress(range(len(jobs)))}:")
        print(script)
        for i, job in enumerate(jobs):
            print(f"# task {i}: {shlex.join(sweep.command(job, sweep.plan(job)[0], python))}")
        return 0
    missing = sorted({job.script.name for job in jobs if not job.script.exists()})
    if missing:
        raise sweep.SweepError(f"{', '.join(missing)} not in {sweep.ROOT} (yet)")
    if sweep_dir.exists():
        raise sweep.SweepError(f"{display(sweep_dir)} exists: follow it with status/resubmit, or pick another --name")
    for sub in ("logs", "status"):
        (sweep_dir / sub).mkdir(parents=True)
    (sweep_dir / "job.sh").write_text(script)
    manifest = {"name": name, "cwd": str(Path.cwd()), "python": python, "jobs": [j.to_dict() for j in jobs],
                "submissions": []}
    save_manifest(sweep_dir, manifest)
    try:
        job_id = submit_array(sweep_dir, manifest, range(len(jobs)), max_running)
    except sweep.SweepError:
        shutil.rmtree(sweep_dir)  # nothing was submitted: let the same command be tried again
        raise
    return wait_and_report(sweep_dir, job_id) if wait else 0


# ------------------------------------------------------------------------------------------------ the task side
def run_task(sweep_dir, index):
    """One array task: the run at this index, through the same skip/resume/restart rules as sweep.py."""
    sweep_dir, manifest = load(sweep_dir)
    os.chdir(manifest["cwd"])
    try:
        job = sweep.Job.from_dict(manifest["jobs"][int(index)])
    except (ValueError, IndexError):
        raise sweep.SweepError(f"task index {index!r} is not in {sweep_dir}/manifest.json") from None
    slurm_id = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', index)}"
    print(f"task {index} (slurm {slurm_id} on {socket.gethostname()}): {job.run_name}; "
          f"cpus per task {os.environ.get('SLURM_CPUS_PER_TASK', '?')}, "
          + ", ".join(f"{k}={os.environ.get(k)}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")), flush=True)
    # Slurm signals every process of the task at scancel or the time limit, the run included; passing the signal
    # on as well would make it a second one, which the scripts take as "die now" and so lose the checkpoint.
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: None)
    result = sweep.start(job, python=manifest["python"])
    if isinstance(result, sweep.Outcome):
        outcome = result
    else:
        print(f"{result.action}: {shlex.join(sweep.command(job, result.action, manifest['python']))}\n"
              f"log: {result.log_path}", flush=True)
        result.proc.wait()
        outcome = result.outcome()
    code = outcome.code if outcome.code is not None else (0 if outcome.status == "skipped" else 1)
    status = {"index": int(index), "run": job.run_name, "status": outcome.status, "exit_code": code,
              "detail": outcome.detail, "slurm_id": slurm_id, "host": socket.gethostname(),
              "seconds": round(outcome.seconds, 1), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = sweep_dir / "status" / f".{index}.json.tmp"
    tmp.write_text(json.dumps(status))
    os.replace(tmp, sweep_dir / "status" / f"{index}.json")
    print(f"{outcome.status}" + (f": {outcome.detail}" if outcome.detail else ""), flush=True)
    return code if code >= 0 else 128 - code


# -------------------------------------------------------------------------------------------- status, resubmit
def queued(manifest):
    """Array index -> Slurm state (PENDING, RUNNING, ...) of this sweep's tasks still in the queue."""
    out = slurm_command(["squeue", "--noheader", "--array", "--user", getpass.getuser(), "--name", manifest["name"],
                         "--format=%K %T"], "squeue")
    states = {}
    for line in out.splitlines():
        index, _, state = line.strip().partition(" ")
        if index.isdigit():
            states[int(index)] = state
    return states


def task_states(sweep_dir, manifest):
    """(index, job, state, detail) for every task; state: finished, failed, or the Slurm queue state."""
    in_queue = queued(manifest)
    rows = []
    for i, d in enumerate(manifest["jobs"]):
        job = sweep.Job.from_dict(d)
        if sweep.is_finished(job.run_dir):
            rows.append((i, job, "finished", ""))
        elif i in in_queue:
            rows.append((i, job, in_queue[i].lower(), ""))
        else:
            status = sweep.read_json(sweep_dir / "status" / f"{i}.json")
            logs = sorted((sweep_dir / "logs").glob(f"*_{i}.out"), key=lambda p: p.stat().st_mtime)
            where = f" (log {display(logs[-1])})" if logs else ""
            if status:
                rows.append((i, job, "failed", f"{status['detail'] or status['status']}{where}"))
            else:
                rows.append((i, job, "failed", "no exit status: never ran, or killed by Slurm (time or memory "
                                                f"limit?){where}"))
    return rows


def print_status(sweep_dir, manifest, show_all=False):
    rows = task_states(sweep_dir, manifest)
    counts = {}
    for _, _, state, _ in rows:
        counts[state] = counts.get(state, 0) + 1
    print(f"sweep {manifest['name']}: {len(rows)} task(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for i, job, state, detail in rows:
        if show_all or state != "finished":
            print(f"  {i:4d} {state:10s} {job.run_name}" + (f": {detail}" if detail else ""))
    failed = [i for i, _, state, _ in rows if state == "failed"]
    if failed:
        print(f"resubmit the failed tasks (--array={compress(failed)}) with: "
              f"python {display(__file__)} resubmit {display(sweep_dir)}")
    return 1 if failed else 0


def wait_for(job_id, poll=2.0):
    while True:
        result = subprocess.run(["squeue", "--noheader", "--array", "--jobs", job_id, "--format=%T"],
                                capture_output=True, text=True)
        if result.returncode != 0 and "invalid job id" not in result.stderr.lower():
            raise sweep.SweepError(f"squeue failed: {result.stderr.strip()}")
        if result.returncode != 0 or not result.stdout.strip():
            return
        time.sleep(poll)


def wait_and_report(sweep_dir, job_id):
    print(f"waiting for job {job_id}...", flush=True)
    wait_for(job_id)
    return print_status(*load(sweep_dir))


def resubmit(sweep_dir, wait=False, max_running=None, dry_run=False):
    sweep_dir, manifest = load(sweep_dir)
    os.chdir(manifest["cwd"])
    failed = [i for i, _, state, _ in task_states(sweep_dir, manifest) if state == "failed"]
    if not failed:
        print(f"sweep {manifest['name']}: no failed task to resubmit")
        return 0
    if dry_run:
        print(f"sbatch --array={compress(failed)} {sweep_dir / 'job.sh'}")
        return 0
    job_id = submit_array(sweep_dir, manifest, failed, max_running)
    return wait_and_report(sweep_dir, job_id) if wait else 0


# ------------------------------------------------------------------------------------------------------- CLI
def add_slurm_args(parser):
    group = parser.add_argument_group("Slurm")
    group.add_argument("--name", help="sweep name: sweeps/NAME and the Slurm job name (default: EXP-DATE-TIME)")
    group.add_argument("--time", help="time limit per task, e.g. 2-00:00:00")
    group.add_argument("--mem", help="memory per task, e.g. 4G")
    group.add_argument("--partition", help="Slurm partition")
    group.add_argument("--account", help="Slurm account")
    group.add_argument("--max-running", type=int, help="at most this many tasks at once (the array's %%N)")
    group.add_argument("--sbatch-arg", action="append", metavar="--OPT=VALUE",
                       help="any other sbatch option, repeatable, e.g. --sbatch-arg=--qos=normal")
    group.add_argument("--wait", action="store_true", help="wait for the array to end, then print its status")
    group.add_argument("--dry-run", action="store_true", help="print the batch script and the tasks; submit nothing")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = sweep.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("submit", help="submit a sweep as a job array", allow_abbrev=False,
                            epilog="Options not listed here pass through to the algorithm script.")
    sweep.add_sweep_args(p)
    add_slurm_args(p)
    p = commands.add_parser("status", help="list the tasks that are not finished, and why")
    p.add_argument("sweep_dir")
    p.add_argument("--all", action="store_true", help="list finished tasks too")
    p = commands.add_parser("resubmit", help="resubmit the failed tasks only")
    p.add_argument("sweep_dir")
    p.add_argument("--max-running", type=int)
    p.add_argument("--wait", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p = commands.add_parser("run-task", help="(used by job.sh) run one task of a sweep")
    p.add_argument("sweep_dir")
    p.add_argument("index")
    try:
        if argv and argv[0] == "submit":
            args = sweep.parse_sweep_cli(parser, argv)
            if args.max_running is not None and args.max_running < 1:
                raise sweep.SweepError("--max-running must be at least 1")
            jobs = sweep.make_jobs([(args.exp_name, args.algo, args.extra)], args.envs, args.seeds,
                                   args.total_timesteps)
            name = args.name or f"{args.exp_name}-{time.strftime('%Y%m%d-%H%M%S')}"
            return submit(jobs, name, sbatch_lines(args), args.wait, args.dry_run, args.max_running)
        args = parser.parse_args(argv)
        if args.command == "status":
            sweep_dir, manifest = load(args.sweep_dir)
            os.chdir(manifest["cwd"])
            return print_status(sweep_dir, manifest, args.all)
        if args.command == "resubmit":
            return resubmit(args.sweep_dir, args.wait, args.max_running, args.dry_run)
        return run_task(args.sweep_dir, args.index)
    except sweep.SweepError as e:
        print(f"slurm.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
