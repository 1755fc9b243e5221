"""scripts/slurm.py on a real single-node Slurm cluster that this file starts (munged, slurmctld, slurmd, all under
a temporary directory) and stops again, whatever the test's outcome. Needs root and the Debian packages slurmctld,
slurmd, slurm-client and munge, which .ci/run installs; skipped only where those programs are absent."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("slurm")  # one worker: the module fixture is built once

ROOT = Path(__file__).resolve().parent.parent
SLURM = [sys.executable, str(ROOT / "scripts" / "slurm.py")]
PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def find(program):
    return shutil.which(program) or next((f"{d}/{program}" for d in ("/usr/sbin", "/sbin")
                                          if os.access(f"{d}/{program}", os.X_OK)), None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [p for p in PROGRAMS if find(p) is None]
    if missing:
        pytest.skip(f"Slurm/munge programs not installed ({', '.join(missing)}); .ci/run installs them")
    base = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (base / sub).mkdir(mode=0o700)
    key = base / "munge" / "munge.key"
    subprocess.run([find("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
    key.chmod(0o600)
    host, user = socket.gethostname().split(".")[0], subprocess.run(["id", "-un"], capture_output=True,
                                                                     text=True).stdout.strip()
    conf = base / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=pytest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmUser={user}", f"SlurmdUser={user}",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={base / 'munge' / 'socket'}",
        f"StateSaveLocation={base / 'state'}", f"SlurmdSpoolDir={base / 'spool'}",
        f"SlurmctldPidFile={base / 'slurmctld.pid'}", f"SlurmdPidFile={base / 'slurmd.pid'}",
        f"SlurmctldLogFile={base / 'slurmctld.log'}", f"SlurmdLogFile={base / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "MailProg=/bin/true",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []

    def launch(name, *args):
        log = open(base / f"{name}.out", "w")
        daemons.append((name, subprocess.Popen([find(name), *args], stdout=log, stderr=subprocess.STDOUT, env=env)))
        log.close()

    try:
        launch("munged", "--foreground", "--force", f"--socket={base / 'munge' / 'socket'}", f"--key-file={key}",
               f"--log-file={base / 'munge' / 'log'}", f"--pid-file={base / 'munge' / 'pid'}",
               f"--seed-file={base / 'munge' / 'seed'}")
        for _ in range(50):
            if (base / "munge" / "socket").exists():
                break
            time.sleep(0.1)
        launch("slurmctld", "-D", "-c", "-f", str(conf))
        launch("slurmd", "-D", "-f", str(conf), "-N", host)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run([find("sinfo"), "--noheader", "--format=%T"], capture_output=True, text=True,
                                   env=env).stdout.strip()
            if state == "idle":
                break
            for name, proc in daemons:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}: {(base / f'{name}.out').read_text()[-2000:]}")
            time.sleep(0.3)
        else:
            raise RuntimeError(f"the node never became idle (sinfo: {state!r}); see {base}")
        yield env
    finally:
        # Jobs first, so that no slurmstepd outlives its slurmd; then the daemons, newest first.
        if any(name == "slurmd" for name, _ in daemons):
            subprocess.run([find("scancel"), "--user", user], env=env, capture_output=True)
            deadline = time.time() + 30
            while time.time() < deadline and subprocess.run([find("squeue"), "--noheader"], env=env,
                                                            capture_output=True, text=True).stdout.strip():
                time.sleep(0.5)
        for name, proc in reversed(daemons):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def slurm(args, cwd, env, timeout=240):
    result = subprocess.run([*SLURM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def test_array_runs_two_tiny_runs_then_resubmits_only_the_failed_task(cluster, tmp_path):
    tiny = ["--total-timesteps", "300", "--compile", "off", "--log-every", "100"]
    code, out = slurm(["submit", "avg", "--envs", "Pendulum-v1", "--seeds", "1-2", "--name", "tiny", "--wait", *tiny],
                      tmp_path, cluster)
    assert code == 0, out
    assert "2 task(s): 2 finished" in out, out
    for seed in (1, 2):
        run = tmp_path / "runs" / f"Pendulum-v1__avg__{seed}"
        assert json.loads((run / "summary.json").read_text())["global_step"] == 300
        assert list(run.glob("events.out.tfevents.*"))
        assert "done: 300 steps" in (run / "stdout.log").read_text()
    sweep_dir = tmp_path / "sweeps" / "tiny"
    logs = sorted((sweep_dir / "logs").glob("*.out"))
    assert [p.name.split("_")[1] for p in logs] == ["0.out", "1.out"]
    for index, log in enumerate(logs):
        text = log.read_text()
        assert f"Pendulum-v1__avg__{index + 1}" in text
        assert "cpus per task 1, OMP_NUM_THREADS=1, MKL_NUM_THREADS=1" in text, text
        assert json.loads((sweep_dir / "status" / f"{index}.json").read_text())["exit_code"] == 0

    # One good run (already finished, so its task only checks) and one that fails with bad input.
    code, out = slurm(["submit", "avg", "--envs", "Pendulum-v1,NoSuchEnv-v0", "--seeds", "1", "--name", "mixed",
                       "--wait", *tiny], tmp_path, cluster)
    assert code == 1, out
    assert "1 finished, 1 failed" in out and "NoSuchEnv-v0__avg__1" in out and "exit 2, bad input" in out, out
    code, out = slurm(["status", "sweeps/mixed"], tmp_path, cluster)
    assert code == 1 and "--array=1)" in out, out
    first = json.loads((tmp_path / "sweeps" / "mixed" / "status" / "1.json").read_text())

    code, out = slurm(["resubmit", "sweeps/mixed", "--wait"], tmp_path, cluster)
    assert code == 1 and "array 1 (1 task(s))" in out, out
    manifest = json.loads((tmp_path / "sweeps" / "mixed" / "manifest.json").read_text())
    assert [s["array"] for s in manifest["submissions"]] == ["0-1", "1"]
    again = json.loads((tmp_path / "sweeps" / "mixed" / "status" / "1.json").read_text())
    assert again["slurm_id"] != first["slurm_id"] and again["exit_code"] == 2
    assert len(list((tmp_path / "sweeps" / "mixed" / "logs").glob("*_0.out"))) == 1  # task 0 was not resubmitted


def test_bad_input_is_one_line(tmp_path):
    code, out = slurm(["status", "nowhere"], tmp_path, os.environ)
    assert code == 2 and out.strip().splitlines() == [
        "slurm.py: error: nowhere is not a sweep written by slurm.py submit (no readable manifest.json)"]
    code, out = slurm(["submit", "avg", "--envs", "Hopper-v4", "--seeds", "1", "--name", "a b"], tmp_path, os.environ)
    assert code == 2 and len(out.strip().splitlines()) == 1 and "sweep name" in out, out
