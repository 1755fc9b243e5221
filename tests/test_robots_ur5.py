"""UR5Reacher-v0: the kinematics, the simulated arm (speedj motion, reward, reachable targets, the safety layer) and
the real-arm backend's logic against a stand-in for ur_rtde's two interfaces (no arm or URSim here)."""
import math
import signal
import sys
import threading
import time
import types

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import robots
from robots import ur5
from robots.simulation import ASSETS

HOST = "192.168.1.10"


# ---------------------------------------------------------------------------------------------- kinematics
def test_forward_kinematics_matches_the_mujoco_model():
    """The closed form and the XML are written independently from the same DH table: they must agree."""
    model = mujoco.MjModel.from_xml_path(str(ASSETS / "ur5.xml"))
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    for q in rng.uniform(-2 * np.pi, 2 * np.pi, (50, 6)):
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        assert np.allclose(ur5.forward_kinematics(q), data.site_xpos[model.site("flange").id], atol=1e-7)


def test_forward_kinematics_of_the_zero_pose_is_the_stretched_arm():
    # At zero every link lies along the base's -x axis: x = a2 + a3, y = -(d4 + d6), z = d1 - d5.
    assert np.allclose(ur5.forward_kinematics(np.zeros(6)), [-0.425 - 0.39225, -0.10915 - 0.0823, 0.089159 - 0.09465])


def test_jacobian_matches_finite_differences():
    rng = np.random.default_rng(1)
    for q in rng.uniform(-3, 3, (20, 6)):
        numeric = np.empty((3, 2))
        for column, joint in enumerate((1, 2)):
            step = np.zeros(6)
            step[joint] = 1e-6
            numeric[:, column] = (ur5.forward_kinematics(q + step) - ur5.forward_kinematics(q - step)) / 2e-6
        assert np.allclose(ur5.moving_jacobian(q), numeric, atol=1e-6)


# ------------------------------------------------------------------------------------------ simulated task
def rollout(env, policy, steps):
    """Runs `policy(obs)` for `steps` steps (no resets); returns observations, rewards, infos."""
    obs_list, rewards, infos = [], [], []
    obs = env.unwrapped._observe()
    for _ in range(steps):
        obs, reward, _, _, info = env.unwrapped.step(policy(obs))
        obs_list.append(obs)
        rewards.append(reward)
        infos.append(info)
    return np.array(obs_list), np.array(rewards), infos


def test_reset_starts_at_the_reference_pose_at_rest():
    env = gym.make("UR5Reacher-v0")
    obs, _ = env.reset(seed=0)
    assert np.allclose(obs[:2], ur5.REFERENCE_POSE[1:3]) and np.allclose(obs[2:4], 0) and np.allclose(obs[6:], 0)
    flange = ur5.forward_kinematics(ur5.REFERENCE_POSE)
    assert np.allclose(obs[4:6], flange[1:] - env.unwrapped._target[1:], atol=1e-6)


def test_velocity_follows_speedj_acceleration_limit():
    env = gym.make("UR5Reacher-v0")
    env.reset(seed=0)
    obs, _, _ = rollout(env, lambda o: np.array([0.3, -0.3]), 8)
    speed = obs[:, 2:4] * ur5.SPEED_MAX
    # From rest at 1.4 rad/s^2: 0.056 rad/s per 40 ms cycle until 0.3 rad/s (after 0.214 s), then hold.
    expected = np.minimum(0.3, 1.4 * 0.04 * np.arange(1, 9))
    assert np.allclose(speed[:, 0], expected, atol=0.01) and np.allclose(speed[:, 1], -expected, atol=0.01)
    # Both joints reach the new speed together when only one has far to go (speedj scales to the leading axis).
    obs, _, _ = rollout(env, lambda o: np.array([0.3, 0.0]), 3)
    speed = obs[:, 2:4] * ur5.SPEED_MAX
    assert speed[0, 0] == pytest.approx(0.3, abs=0.01) and speed[0, 1] == pytest.approx(-0.3 + 0.056, abs=0.01)
    assert speed[-1, 1] == pytest.approx(-0.3 + 3 * 0.056, abs=0.01)


def test_reward_is_senseact_distance_penalty_plus_precision_bonus():
    env = gym.make("UR5Reacher-v0")
    env.reset(seed=4)
    obs, rewards, infos = rollout(env, lambda o: np.array([0.1, -0.2]), 20)
    for o, r, info in zip(obs, rewards, infos):
        d = math.hypot(o[4], o[5])
        assert info["distance"] == pytest.approx(d, abs=1e-6)
        assert r == pytest.approx((-d + math.exp(-d * d / 0.01)) * 0.04 / 0.008, abs=1e-5)
    assert max(rewards) < 5 + 1e-9  # at the target: +1 per 8 ms


def reach(obs, env):
    """A Jacobian controller that heads straight for the target: a proof that targets are reachable in time."""
    jac = ur5.moving_jacobian(env.unwrapped._q)[1:]
    return np.clip(np.linalg.solve(jac, -obs[4:6]) * 4, -0.3, 0.3)


def test_every_target_is_inside_the_box_and_reachable_within_the_episode():
    env = gym.make("UR5Reacher-v0")
    final, returns = [], []
    for episode in range(15):
        obs, _ = env.reset(seed=episode)
        target = env.unwrapped._target
        assert np.all(target >= ur5.BOX_LOW + ur5.BOX_MARGIN) and np.all(target <= ur5.BOX_HIGH - ur5.BOX_MARGIN)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, info = env.step(reach(obs, env))
            total += reward
            done = terminated or truncated
        final.append(info["distance"])
        returns.append(total)
    assert np.median(final) < 0.005 and max(final) < 0.05
    assert min(returns) > 0  # whereas random actions score -43 on average (robots/README.md)


@pytest.mark.parametrize("action", [(0.3, 0.3), (0.3, -0.3), (-0.3, 0.3), (-0.3, -0.3), (0.3, 0.0), (0.0, -0.3)])
def test_safety_layer_keeps_a_pushing_arm_inside_box_and_joint_limits(action):
    env = gym.make("UR5Reacher-v0")
    env.reset(seed=0)
    obs, _, infos = rollout(env, lambda o: np.array(action), 150)  # 6 s of pushing one way
    q = np.tile(ur5.REFERENCE_POSE, (len(obs), 1))
    q[:, 1:3] = obs[:, :2]
    flange = ur5.forward_kinematics(q)
    assert np.all(flange >= ur5.BOX_LOW - 1e-3) and np.all(flange <= ur5.BOX_HIGH + 1e-3)
    assert np.all(obs[:, :2] >= ur5.JOINT_LOW - 1e-3) and np.all(obs[:, :2] <= ur5.JOINT_HIGH + 1e-3)
    assert any(info["safety_override"] for info in infos)  # it did reach a limit and was held there
    # Held there: at rest, or sliding slowly along a boundary where the push has a component along it.
    assert np.abs(obs[-20:, 2:4]).max() * ur5.SPEED_MAX < 0.05


def test_safety_layer_leaves_safe_commands_alone_and_brings_an_outside_arm_back():
    env = gym.make("UR5Reacher-v0")
    env.reset(seed=0)
    _, _, infos = rollout(env, lambda o: np.array([0.05, -0.05]), 5)
    assert not any(info["safety_override"] for info in infos)
    assert np.allclose(env.unwrapped._command[1:3], [0.05, -0.05])
    # Put the arm outside the box (pushed by hand, say): whatever the agent asks, it is brought back inside.
    q = ur5.REFERENCE_POSE.copy()
    q[1:3] = -2.6, 0.45  # y about 0.52 m, beyond the box's 0.4
    env.unwrapped._arm.home(q)
    obs, _, infos = rollout(env, lambda o: np.array([-0.3, -0.3]), 60)  # the agent asks for more
    assert all(info["safety_override"] for info in infos)
    q = np.tile(ur5.REFERENCE_POSE, (len(obs), 1))
    q[:, 1:3] = obs[:, :2]
    y = ur5.forward_kinematics(q)[:, 1]
    assert y[0] > ur5.BOX_HIGH[1] and np.all(np.diff(y[:20]) < 0)
    assert y[-1] < ur5.BOX_HIGH[1]


def test_realtime_simulation_does_not_pause_for_a_slow_agent_and_stops_a_stalled_one():
    env = gym.make("UR5Reacher-v0", realtime=True)
    env.reset(seed=0)
    obs, _, _ = rollout(env, lambda o: np.array([-0.3, 0.0]), 6)  # up to speed
    start = obs[-1, 0]
    time.sleep(0.08)  # the agent takes 2 cycles: the arm goes on for them
    obs, *_ = env.step(np.array([-0.3, 0.0]))
    moved = start - obs[0]
    assert 0.3 * 0.12 * 0.85 < moved < 0.3 * 0.12 * 1.25
    time.sleep(0.5)  # stalled for 12 cycles: the watchdog stops the arm after 2
    start = obs[0]
    obs, *_ = env.step(np.array([-0.3, 0.0]))
    assert start - obs[0] < 0.3 * (0.12 + 0.2)  # not 0.3 * 0.54
    env.close()


# ------------------------------------------------------------------- the real-arm backend with a stand-in
class StandInUR5:
    """What ur_rtde's two interfaces show of a UR5: joint state integrated in wall-clock time under speedJ (linear
    ramp at the given acceleration), speedStop and an asynchronous moveJ. Faults like the library: construction
    raises RuntimeError when the host is unreachable; after a lost link the receive side keeps its last values and
    reports isConnected() False, and control calls raise RuntimeError. `tool` offsets the TCP from the flange."""

    def __init__(self, q=ur5.REFERENCE_POSE, tool=(0.0, 0.0, 0.0)):
        self.q, self.qd = np.array(q, dtype=float), np.zeros(6)
        self.target, self.accel, self.move_to, self.move_speed = np.zeros(6), 1.0, None, 0.0
        self.tool = np.array(tool)
        self.reachable, self.link_up, self.protective_stop, self.emergency_stop = True, True, False, False
        self.calls, self.times, self.kicks, self.watchdog_hz = [], [], [], None
        self._time, self._lock = time.monotonic(), threading.Lock()

    def advance(self):
        now = time.monotonic()
        while self._time < now:
            dt = min(0.002, now - self._time)
            if self.move_to is not None:
                gap = self.move_to - self.q
                if np.abs(gap).max() <= self.move_speed * dt:
                    self.q, self.qd, self.move_to = self.move_to.copy(), np.zeros(6), None
                else:
                    self.qd = gap / np.abs(gap).max() * self.move_speed
            else:
                self.qd += np.clip(self.target - self.qd, -self.accel * dt, self.accel * dt)
            self.q += self.qd * dt
            self._time += dt

    def call(self, name, *args, control=True):
        with self._lock:
            self.calls.append((name, args))
            self.times.append(time.monotonic())
            self.advance()
            if control and not self.link_up:
                raise RuntimeError("RTDE control interface is not connected")

    def modules(self):
        arm = self

        class Receive:
            def __init__(self, host):
                arm.connect(host)

            def isConnected(self):
                return arm.link_up

            def isProtectiveStopped(self):
                return arm.protective_stop

            def isEmergencyStopped(self):
                return arm.emergency_stop

            def getActualQ(self):
                arm.call("getActualQ", control=False)
                return arm.q.tolist()

            def getActualQd(self):
                arm.call("getActualQd", control=False)
                return arm.qd.tolist()

            def getActualTCPPose(self):
                arm.call("getActualTCPPose", control=False)
                return [*(ur5.forward_kinematics(arm.q) + arm.tool), 0.0, 0.0, 0.0]

            def disconnect(self):
                arm.call("receive.disconnect", control=False)

        class Control:
            def __init__(self, host):
                arm.connect(host)

            def isConnected(self):
                return arm.link_up

            def setWatchdog(self, min_frequency=10.0):
                arm.call("setWatchdog", min_frequency)
                arm.watchdog_hz = min_frequency
                return True

            def kickWatchdog(self):
                arm.call("kickWatchdog")
                arm.kicks.append(time.monotonic())
                return True

            def speedJ(self, qd, acceleration=0.5, time=0.0):
                arm.call("speedJ", list(qd), acceleration, time)
                if arm.protective_stop:
                    return False
                arm.target, arm.accel, arm.move_to = np.array(qd, dtype=float), acceleration, None
                return True

            def speedStop(self, a=10.0):
                arm.call("speedStop", a)
                arm.target, arm.accel = np.zeros(6), a
                return True

            def moveJ(self, q, speed=1.05, acceleration=1.4, asynchronous=False):
                arm.call("moveJ", list(q), speed, acceleration, asynchronous)
                arm.move_to, arm.move_speed = np.array(q, dtype=float), speed
                return True

            def stopScript(self):
                arm.call("stopScript")

            def disconnect(self):
                arm.call("control.disconnect", control=False)

        return (types.SimpleNamespace(RTDEReceiveInterface=Receive),
                types.SimpleNamespace(RTDEControlInterface=Control))

    def connect(self, host):
        if not self.reachable:
            raise RuntimeError(f"Error: Could not connect to: {host} at 30004, verify the IP")

    def names(self):
        return [name for name, _ in list(self.calls)]

    def speedj_commands(self):
        return np.array([args[0] for name, args in list(self.calls) if name == "speedJ"])


@pytest.fixture
def arm(monkeypatch):
    stand_in = StandInUR5()
    receive, control = stand_in.modules()
    monkeypatch.setitem(sys.modules, "rtde_receive", receive)
    monkeypatch.setitem(sys.modules, "rtde_control", control)
    return stand_in


def test_real_backend_resets_with_movej_and_commands_with_speedj(arm):
    arm.q[1:3] += (0.2, -0.1)  # the arm is somewhere else at the start
    env = gym.make("UR5Reacher-v0", host=HOST)
    start = time.monotonic()
    obs, _ = env.reset(seed=0)
    move = [args for name, args in arm.calls if name == "moveJ"]
    assert move == [(ur5.REFERENCE_POSE.tolist(), ur5.RESET_SPEED, ur5.ACCEL, True)]
    assert np.allclose(obs[:2], ur5.REFERENCE_POSE[1:3], atol=1e-3)
    assert time.monotonic() - start > 0.2 / ur5.RESET_SPEED * 0.9  # waited for the move
    for action in ([0.1, -0.1], [5.0, -5.0], [-0.2, 0.05]):
        env.step(np.array(action))
    commands = arm.speedj_commands()
    assert np.allclose(commands[:, [0, 3, 4, 5]], 0)  # the fixed joints stay put
    assert np.allclose(commands[0, 1:3], [0.1, -0.1]) and np.allclose(commands[1, 1:3], [0.3, -0.3])
    assert all(args[1] == ur5.ACCEL for name, args in arm.calls if name == "speedJ")
    env.close()
    names = arm.names()
    assert names.index("speedStop", names.index("speedJ")) < names.index("stopScript") < names.index(
        "control.disconnect")


def test_real_backend_keeps_the_tcp_inside_the_box_with_a_tool_mounted(arm):
    arm.tool = np.array([0.0, 0.0, 0.1])  # the TCP is 10 cm above the flange: the box applies to the TCP
    env = gym.make("UR5Reacher-v0", host=HOST)
    env.reset(seed=0)
    tcp, overridden = [], []
    for _ in range(50):  # 2 s of pushing up and back
        _, _, _, _, info = env.step(np.array([0.3, -0.3]))
        tcp.append(ur5.forward_kinematics(arm.q) + arm.tool)
        overridden.append(info["safety_override"])
    tcp = np.array(tcp)
    assert any(overridden) and np.all(tcp <= ur5.BOX_HIGH + 1e-3) and np.all(tcp >= ur5.BOX_LOW - 1e-3)
    env.close()


@pytest.mark.parametrize("fault, words", [("link_up", "lost the connection"),
                                          ("protective_stop", "protective stop"),
                                          ("emergency_stop", "emergency stop")])
def test_faults_stop_the_arm_and_raise_one_line(arm, fault, words):
    env = gym.make("UR5Reacher-v0", host=HOST)
    env.reset(seed=0)
    env.step(np.array([0.2, 0.0]))
    setattr(arm, fault, fault != "link_up")  # the link goes down, a stop comes on
    with pytest.raises(robots.RobotError, match=words) as error:
        env.step(np.array([0.2, 0.0]))
    assert HOST in str(error.value) and "\n" not in str(error.value)
    assert "speedStop" in arm.names()[-8:]  # tried to stop the arm (lost link: the controller's watchdog does)
    env.close()


def test_unreachable_arm_and_missing_library_are_one_line_errors(arm, monkeypatch):
    arm.reachable = False
    with pytest.raises(robots.RobotError, match=f"cannot connect to the UR5 at {HOST}"):
        gym.make("UR5Reacher-v0", host=HOST)
    monkeypatch.setitem(sys.modules, "rtde_control", None)  # import fails as if ur_rtde were not installed
    with pytest.raises(robots.RobotError, match="pip install"):
        gym.make("UR5Reacher-v0", host=HOST)


def test_protective_stop_found_at_connection_is_reported_then(arm):
    arm.protective_stop = True
    with pytest.raises(robots.RobotError, match="protective stop"):
        gym.make("UR5Reacher-v0", host=HOST)
    assert "stopScript" in arm.names()  # and the half-made connection was released


def test_ctrl_c_inside_step_stops_the_arm(arm):
    env = gym.make("UR5Reacher-v0", host=HOST)
    env.reset(seed=0)
    env.step(np.array([0.2, 0.0]))
    timer = threading.Timer(0.01, signal.raise_signal, (signal.SIGINT,))
    timer.start()  # lands during the next step's wait for the cycle boundary
    with pytest.raises(KeyboardInterrupt):
        env.step(np.array([0.2, 0.0]))
    interrupted = time.monotonic()
    timer.join()
    names = arm.names()
    last_speedj = len(names) - 1 - names[::-1].index("speedJ")
    stop = names.index("speedStop", last_speedj)  # raises if there is none
    assert arm.times[stop] < interrupted + 0.005  # by step() itself, not later by the watchdog
    time.sleep(0.3)
    arm.call("poll", control=False)
    assert np.abs(arm.qd).max() < 1e-9
    env.close()


def test_watchdogs_stop_an_arm_left_moving_and_feed_the_controller(arm):
    env = gym.make("UR5Reacher-v0", host=HOST)
    assert arm.watchdog_hz is not None and arm.watchdog_hz <= 10
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.array([-0.3, 0.0]))
    time.sleep(0.4)  # the agent stalls for 10 cycles
    arm.call("poll", control=False)
    assert np.abs(arm.qd).max() < 1e-9  # stopped after 2 cycles
    stops = [i for i, (name, args) in enumerate(arm.calls) if name == "speedStop"]
    assert stops and stops[-1] > max(i for i, (name, _) in enumerate(arm.calls) if name == "speedJ")
    _, _, _, _, info = env.step(np.array([-0.3, 0.0]))  # the agent is back: the arm moves again
    assert info["overruns"] == 1 and arm.target[1] == pytest.approx(-0.3)
    kicks = np.array(arm.kicks)
    assert len(kicks) > 5 and np.diff(kicks).max() < 1 / arm.watchdog_hz
    env.close()
