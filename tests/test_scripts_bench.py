"""scripts/bench.py reports only what it measured as asked: a run whose update fell back to eager is refused as a
compiled measurement (the fallback made for real, with no working C++ compiler), and a run that fails is an error,
not a row. The timing helper against hand-made step counters."""
import json
import signal

import pytest

from helpers import script_module, start_script

bench = script_module("bench")

NO_COMPILER = {"CXX": "/bin/false"}  # Inductor finds no working C++ compiler: compiling fails as it would without one


def test_a_run_that_fell_back_to_eager_is_refused_as_a_compiled_measurement(tmp_path):
    env = dict(NO_COMPILER, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"))
    proc = start_script("avg.py", "--env", "faulty_envs:Point-v0", "--total-timesteps", 10_000, "--compile", "auto",
                        "--run-name", "fell_back", cwd=tmp_path, **env)
    for line in proc.stdout:  # the compile has failed and the run goes on uncompiled: enough seen, stop it
        if line.startswith("update:"):
            assert line.startswith("update: eager (--compile auto: compiling failed"), line
            proc.send_signal(signal.SIGINT)
            break
    _, stderr = proc.communicate(timeout=120)
    assert "warning: the update runs eager, 4-8 times slower: compiling failed" in stderr
    run_dir = tmp_path / "runs" / "fell_back"
    update = json.loads((run_dir / "args.json").read_text())["update"]
    assert update["compiled"] is False and "InvalidCxxCompiler" in update["why"]
    with pytest.raises(bench.BenchError, match="the update ran eager .*compiling failed"):
        bench.check_compiled(run_dir, "on")
    assert bench.check_compiled(run_dir, "off") == update  # as an eager measurement it is what it says


def test_a_compiled_measurement_that_cannot_compile_is_an_error_not_a_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    code = bench.main(["--algos", "avg", "--modes", "on", "--steps", "2000", "--warmup", "1000", "--cpu", "-1"])
    out = capsys.readouterr()
    assert code == 1 and "| avg.py |" not in out.out
    assert "compiling the update failed" in out.err


def test_throughput_times_the_step_counters_after_the_warm_up():
    lines = [(0.0, "global_step=100, ..."), (1.0, "global_step=1000, ..."), (2.0, "E: 3| T: 3000"),
             (3.0, "global_step=5000, ...")]
    assert bench.throughput(lines, r"global_step=(\d+)", warmup=500) == pytest.approx(2000.0)  # 1000 -> 5000 in 2 s
    with pytest.raises(bench.BenchError, match="too few step counters"):
        bench.throughput(lines, r"global_step=(\d+)", warmup=4000)


def test_the_replay_buffer_for_scale_counts_stacked_uint8_images_and_float32_vectors():
    """Per transition (s, a, r, s', terminated): Hopper's 11 + 11 + 3 + 2 float32s; VisualDotReacher-v0's two stacks of
    3 RGB 84x84 frames in bytes, its 4 proprioceptive floats twice, the 2-d action and two scalars."""
    assert bench.transition_bytes("Hopper-v4", []) == 4 * (11 + 11 + 3 + 2)
    assert bench.transition_bytes("VisualDotReacher-v0", []) == 2 * (3 * 3 * 84 * 84) + 4 * (4 + 4 + 2 + 2)
    assert bench.transition_bytes("VisualDotReacher-v0", ["--frame-stack", "1"]) == 2 * 3 * 84 * 84 + 4 * 12
    assert bench.transition_bytes("Pendulum-v1", ["--pixels", "--image-size", "64"]) == \
        2 * (3 * 3 * 64 * 64) + 4 * (3 + 3 + 1 + 2)
