"""Create2Mover-v0: the simulated robot, and the real serial backend against the Open Interface emulator on a
pseudo-terminal (the driver opens the device path and exchanges real bytes with it)."""
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import gymnasium as gym
import numpy as np
import pytest

import robots
from robots import create2
from robots import open_interface as oi
from robots.create2_emulator import LIGHT_BUMP_BEARINGS, Create2Emulator
from robots_helpers import step_through_ctrl_c, wait_for

CYCLE = 0.045  # three stream frames; keeps the serial tests short


def signals_at(gap):
    """The light-bump signals the emulator reports with the wall `gap` m ahead."""
    return create2.light_bump_signal([gap / math.cos(b) for b in LIGHT_BUMP_BEARINGS])


# ------------------------------------------------------------------------------------------- simulation
def facing_east(x=-0.6):
    env = gym.make("Create2Mover-v0")
    env.reset(seed=0)
    env.unwrapped._robot.place(x, 0.0, 0.0)
    return env


def test_sim_driving_straight_earns_the_distance_and_bumps_into_the_wall():
    env = facing_east()
    rewards, centre_signal = [], []
    for _ in range(200):
        obs, reward, terminated, truncated, info = env.step(np.array([150.0, 150.0]))
        rewards.append(reward)
        centre_signal.append(obs[2] + obs[3])
        if terminated:
            break
    assert terminated and info["bump"] and not info["cliff"] and not info["wheel_drop"]
    assert not env.unwrapped._robot.data.ctrl.any()  # wheels stopped
    # 150 mm/s for 150 ms: 22.5 mm, 0.15 per mm. From x = -0.6 the bumper meets the wall at x = 0.826.
    assert np.allclose(rewards[2:-1], 0.15 * 22.5, rtol=0.02)
    assert sum(rewards) == pytest.approx(0.15 * 1000 * (0.826 + 0.6), rel=0.03)
    assert np.all(np.diff(centre_signal[-12:]) > 0) and centre_signal[-1] > 1.0  # the wall looms
    assert centre_signal[0] < 0.01


def test_sim_turning_in_place_earns_nothing():
    env = facing_east(0.0)
    for _ in range(10):
        _, reward, terminated, _, _ = env.step(np.array([-100.0, 100.0]))
        assert abs(reward) < 0.05 and not terminated
    heading = env.unwrapped._robot.data.qpos[2]
    assert heading == pytest.approx(10 * 0.15 * 0.2 / 0.235, rel=0.03)


def test_sim_reset_after_a_bump_backs_away_and_turns():
    env = facing_east(0.7)
    while not env.step(np.array([100.0, 100.0]))[2]:
        pass
    x_bump = env.unwrapped._robot.data.qpos[0]
    env.reset()
    x, _, heading = env.unwrapped._robot.data.qpos
    assert x == pytest.approx(x_bump - 0.1, abs=0.01) and abs(heading) > 1e-3
    assert not env.step(np.zeros(2))[2]


def test_sim_a_wall_touched_by_the_back_is_not_a_bump():
    env = facing_east(-0.8)  # the back is 2.6 cm from the west wall
    for _ in range(10):
        _, _, terminated, _, _ = env.step(np.array([-100.0, -100.0]))
        assert not terminated
    assert env.unwrapped._robot.data.qpos[0] == pytest.approx(-1.0 + 0.174, abs=0.005)  # pressed against it


# ------------------------------------------------------------------------------ serial driver and emulator
@pytest.fixture
def emulator():
    with Create2Emulator(wall_distance=2.0) as robot:
        yield robot


def serial_env(emulator, **kwargs):
    return gym.make("Create2Mover-v0", port=emulator.path, cycle_time=CYCLE, **kwargs)


def test_serial_episodes_drive_to_the_wall_and_back_away(emulator):
    emulator.wall_gap = 300.0
    env = serial_env(emulator)
    opcodes = [opcode for _, opcode, _ in emulator.log]
    assert opcodes[:3] == [oi.START, oi.STREAM, oi.SAFE] and emulator.mode == oi.MODE_SAFE
    assert tuple(emulator.log[1][2][1:]) == create2.STREAM_PACKETS
    obs, _ = env.reset(seed=0)
    assert np.allclose(obs[:6] * 4095, signals_at(0.3), atol=0.01) and signals_at(0.3).min() > 0
    for episode in range(2):
        start, rewards, centre = emulator.odometer, [], []
        while True:
            obs, reward, terminated, truncated, info = env.step(np.array([150.0, 150.0]))
            rewards.append(reward)
            centre.append(obs[2])
            if terminated or truncated:
                break
        assert terminated and info["bump"] and not truncated
        assert wait_for(lambda: (emulator.left, emulator.right) == (0, 0))
        travelled = emulator.odometer - start
        assert travelled == pytest.approx(300.0 if episode == 0 else 100.0, abs=3)
        assert sum(rewards) == pytest.approx(0.15 * travelled, abs=0.15 * 2)  # distance packets are whole mm
        assert np.all(np.diff(centre) >= 0) and centre[-1] == 1.0
        before = emulator.odometer
        obs, _ = env.reset()
        assert emulator.odometer - before == pytest.approx(-100.0, abs=8)  # backed away 10 cm
        turns = [(l, r) for l, r in emulator.drive_commands()[-3:] if l == -r != 0]
        assert turns and emulator.drive_commands()[-1] == (0, 0) and np.array_equal(obs[6:], [0, 0])
    env.close()
    assert wait_for(lambda: emulator.mode == oi.MODE_OFF and not emulator.streaming)  # Stop (173) after 0 0


def test_serial_corrupted_frames_and_line_noise_are_skipped(emulator):
    env = serial_env(emulator)
    env.reset(seed=0)
    parser = env.unwrapped._robot._parser
    start, total = emulator.odometer, 0.0
    for step in range(30):
        if step in (5, 12):
            emulator.corrupt_next_frame()
        if step == 20:
            emulator.send_raw(bytes([19, 19, 2, 19, 32, 7, 0, 99, 19]))  # false starts, half a frame
        obs, reward, terminated, _, _ = env.step(np.array([100.0, 100.0]))
        total += reward
        assert not terminated
    assert parser.bad_frames >= 3
    travelled = emulator.odometer - start
    assert total / 0.15 == pytest.approx(travelled, abs=2 * 1.5 + 2)  # only the two corrupted frames' mm lost
    assert np.allclose(obs[:6] * 4095, signals_at(emulator.wall_gap / 1000), atol=1)  # in step with the robot
    env.close()


def test_serial_bump_stops_the_wheels_at_once_and_ends_the_episode(emulator):
    env = serial_env(emulator)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.array([120.0, 80.0]))
    assert (emulator.left, emulator.right) == (120, 80)
    threading.Timer(0.02, setattr, (emulator, "bump", True)).start()  # during the next step
    bumped_at = time.monotonic() + 0.02
    _, _, terminated, _, info = env.step(np.array([120.0, 80.0]))
    if not terminated:  # the bump came at the very end of that cycle
        _, _, terminated, _, info = env.step(np.array([120.0, 80.0]))
    assert terminated and info["bump"]
    stops = [t for t, opcode, args in emulator.log if opcode == oi.DRIVE_DIRECT and args == bytes(4)]
    assert stops and stops[0] - bumped_at < 0.06  # within a few 15 ms frames, not at the end of the cycle
    assert (emulator.left, emulator.right) == (0, 0)
    env.close()


def test_serial_cliff_ends_the_episode_and_reset_restores_safe_mode(emulator):
    env = serial_env(emulator)
    env.reset(seed=0)
    env.step(np.array([100.0, 100.0]))
    emulator.cliff = True  # the robot's own Safe mode stops it and drops to Passive mode
    terminated = False
    for _ in range(3):
        _, _, terminated, _, info = env.step(np.array([100.0, 100.0]))
        if terminated:
            break
    assert terminated and info["cliff"] and emulator.mode == oi.MODE_PASSIVE
    emulator.cliff = False
    env.reset()
    assert emulator.mode == oi.MODE_SAFE
    env.step(np.array([100.0, 100.0]))
    assert (emulator.left, emulator.right) == (100, 100)
    emulator.wheel_drop = True  # picked up
    _, _, terminated, _, info = env.step(np.array([100.0, 100.0]))
    terminated = terminated or env.step(np.array([100.0, 100.0]))[2]
    assert terminated
    with pytest.raises(robots.RobotError, match="does not stay in Safe mode"):
        env.reset()
    env.close()


def test_serial_silence_stops_the_robot_and_raises_a_clear_error(emulator):
    env = serial_env(emulator)
    env.reset(seed=0)
    env.step(np.array([100.0, 100.0]))
    emulator.silent = True  # stops talking, still listens
    went_silent = time.monotonic()
    with pytest.raises(robots.RobotError, match="went silent") as error:
        for _ in range(20):
            env.step(np.array([100.0, 100.0]))
    assert time.monotonic() - went_silent < create2.MIN_SILENCE_LIMIT + 2 * CYCLE
    assert emulator.path in str(error.value) and "\n" not in str(error.value)
    assert wait_for(lambda: (emulator.left, emulator.right) == (0, 0))
    env.close()


def test_serial_ctrl_c_inside_step_stops_the_wheels(emulator):
    env = serial_env(emulator)
    env.reset(seed=0)
    env.step(np.array([100.0, 100.0]))
    interrupted = step_through_ctrl_c(env, np.array([100.0, 100.0]))
    assert wait_for(lambda: (emulator.left, emulator.right) == (0, 0), timeout=0.5)
    stops = [t for t, opcode, args in emulator.log if opcode == oi.DRIVE_DIRECT and args == bytes(4)]
    assert stops[-1] < interrupted + 0.06  # from step() itself: the watchdog would wait two cycles (90 ms)
    env.close()


def test_serial_watchdog_stops_the_wheels_of_a_stalled_agent(emulator):
    env = serial_env(emulator)
    env.reset(seed=0)
    env.step(np.array([100.0, 100.0]))
    stalled = time.monotonic()
    assert wait_for(lambda: (emulator.left, emulator.right) == (0, 0), timeout=1.0)
    assert time.monotonic() - stalled < create2.STALL_CYCLES * CYCLE + 0.1
    _, _, _, _, info = env.step(np.array([100.0, 100.0]))  # the agent is back
    assert (emulator.left, emulator.right) == (100, 100) and info["overruns"] == 1
    env.close()


def test_exit_without_close_stops_the_robot(emulator, tmp_path):
    """Ctrl-C in the caller's own code, outside step(), and nobody calls close(): interpreter exit stops it."""
    script = tmp_path / "forgetful.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, time
        import gymnasium as gym, numpy as np, robots
        env = gym.make("Create2Mover-v0", port={emulator.path!r}, cycle_time={CYCLE})
        env.reset(seed=0)
        env.step(np.array([80.0, 80.0]))
        print("driving", flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt from here: the script dies with a traceback
        time.sleep(5)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert "driving" in out.stdout and "KeyboardInterrupt" in out.stderr
    assert (80, 80) in emulator.drive_commands() and emulator.drive_commands()[-1] == (0, 0)
    assert wait_for(lambda: emulator.mode == oi.MODE_OFF)


def test_serial_port_problems_are_one_line_errors(tmp_path):
    with pytest.raises(robots.RobotError, match="cannot open the Create 2's serial port /nonexistent/tty"):
        gym.make("Create2Mover-v0", port="/nonexistent/tty")
    import pty
    master, slave = pty.openpty()  # a port with nothing on the other end
    try:
        start = time.monotonic()
        with pytest.raises(robots.RobotError, match="no Open Interface data from .* within 1 s"):
            gym.make("Create2Mover-v0", port=os.ttyname(slave))
        assert time.monotonic() - start < 2
    finally:
        os.close(master)
        os.close(slave)
