"""UR5Reacher-v0: SenseAct's UR-Reacher-2 on a UR5 arm, simulated in MuJoCo or on the real arm (the task:
robots/README.md).

Two joints move (shoulder lift and elbow, indices 1 and 2) under joint-velocity control; the others hold a reference
pose that puts the arm's working plane on the base frame's y-z plane. Each episode the arm starts at the reference
pose and must bring its tool flange to a random target in that plane within 4 s (100 cycles of 40 ms).

    gym.make("UR5Reacher-v0")                       # simulated arm (MuJoCo), as fast as the CPU allows
    gym.make("UR5Reacher-v0", realtime=True)        # simulated, paced to the real 40 ms cycle
    gym.make("UR5Reacher-v0", host="192.168.1.10")  # the real arm through ur_rtde (pip install ur-rtde)
"""
import atexit
import math
import threading
import time

import gymnasium as gym
import numpy as np

from robots import RobotError
from robots.realtime import CycleClock, Watchdog, one_line
from robots.simulation import MujocoSim

CYCLE = 0.04  # s
SPEED_MAX = 0.3  # rad/s, bound of the actions
ACCEL = 1.4  # rad/s^2, speedj's acceleration
STOP_DECEL = 10.0  # rad/s^2, speedStop's default
MOVING = slice(1, 3)  # shoulder lift, elbow

# Standard Denavit-Hartenberg parameters of the UR5 (m); alpha is pi/2, 0, 0, pi/2, -pi/2, 0.
D1, A2, A3, D4, D5, D6 = 0.089159, -0.425, -0.39225, 0.10915, 0.09465, 0.0823

# Base pointing the arm's plane along y, elbow up; the flange starts near the middle of the safety box.
REFERENCE_POSE = np.array([math.pi / 2, -2.5, 1.4, -math.pi / 2, -math.pi / 2, 0.0])
JOINT_LOW, JOINT_HIGH = np.array([-2.8, 0.3]), np.array([-1.3, 2.5])  # moving joints; the elbow stays bent
BOX_LOW, BOX_HIGH = np.array([-0.2, -0.3, 0.5]), np.array([0.2, 0.4, 1.0])  # flange, base frame (m)
BOX_MARGIN, JOINT_MARGIN = 0.02, 0.03  # m, rad: the safety layer aims this far inside the limits

# The safety layer looks this far ahead: a command runs for its cycle, then for up to STALL_CYCLES more if the agent
# stalls before the watchdog stops it, and stopping takes SPEED_MAX / ACCEL, covering half the distance it would at
# full speed.
STALL_CYCLES = 2
LOOKAHEAD = (1 + STALL_CYCLES) * CYCLE + SPEED_MAX / (2 * ACCEL)

RESET_SPEED = 0.5  # rad/s of the leading joint when moving back to the reference pose


def flange_position(q0, q1, q2, q3, q4, sin=math.sin, cos=math.cos):
    """Tool flange position (m, base frame) from the first five joint angles, in closed form: joints 1-3 turn about
    parallel axes, so the arm folds in one plane (u along its horizontal, v up, w along the axes). Floats with math's
    sin and cos (the fast path, every step), or arrays with numpy's."""
    q12 = q1 + q2
    q123 = q12 + q3
    s4 = sin(q4)
    u = A2 * cos(q1) + A3 * cos(q12) + D5 * sin(q123) - D6 * s4 * cos(q123)
    v = A2 * sin(q1) + A3 * sin(q12) - D5 * cos(q123) - D6 * s4 * sin(q123)
    w = D4 + D6 * cos(q4)
    return u * cos(q0) + w * sin(q0), u * sin(q0) - w * cos(q0), D1 + v


def forward_kinematics(q):
    """Flange positions, shape (..., 3), for joint angles of shape (..., 6)."""
    q = np.asarray(q, dtype=np.float64)
    return np.stack(flange_position(*np.moveaxis(q[..., :5], -1, 0), sin=np.sin, cos=np.cos), axis=-1)


def moving_jacobian(q):
    """d(flange position)/d(q1, q2), shape (3, 2), for one joint vector."""
    s0, c0 = math.sin(q[0]), math.cos(q[0])
    q12, q123 = q[1] + q[2], q[1] + q[2] + q[3]
    s4 = math.sin(q[4])
    wrist_u = D5 * math.cos(q123) + D6 * s4 * math.sin(q123)
    wrist_v = D5 * math.sin(q123) - D6 * s4 * math.cos(q123)
    du2, dv2 = -A3 * math.sin(q12) + wrist_u, A3 * math.cos(q12) + wrist_v
    du1, dv1 = du2 - A2 * math.sin(q[1]), dv2 + A2 * math.cos(q[1])
    return np.array([[du1 * c0, du2 * c0], [du1 * s0, du2 * s0], [dv1, dv2]])


INNER_LOW, INNER_HIGH = tuple(BOX_LOW + BOX_MARGIN), tuple(BOX_HIGH - BOX_MARGIN)
JOINT_INNER_LOW, JOINT_INNER_HIGH = tuple(JOINT_LOW + JOINT_MARGIN), tuple(JOINT_HIGH - JOINT_MARGIN)


def safe_velocity(q, flange, action):
    """The safety layer. Returns the velocity for the moving joints (a list of 2) that keeps the arm inside its joint
    limits and the flange inside the safety box, and whether the clipped `action` had to be changed.

    The arm's position LOOKAHEAD seconds on is predicted; where it would leave the limits, the command is replaced by
    one that heads for the nearest point inside them (margins included). So motion along a boundary goes on, motion
    through it stops, and an arm found outside (pushed, or overshooting) is brought back in. Plain floats: this runs
    every step, and numpy's per-call overhead on 2- and 3-vectors would cost more than the arithmetic."""
    q0, q1, q2, q3, q4 = q[0], q[1], q[2], q[3], q[4]
    qd = [min(max(float(a), -SPEED_MAX), SPEED_MAX) for a in action]
    now = flange_position(q0, q1, q2, q3, q4)
    then = flange_position(q0, q1 + qd[0] * LOOKAHEAD, q2 + qd[1] * LOOKAHEAD, q3, q4)
    # The measured flange (real arm: the TCP) plus the predicted displacement.
    predicted = [f + b - a for f, a, b in zip(flange, now, then)]
    aim = [min(max(p, low), high) for p, low, high in zip(predicted, INNER_LOW, INNER_HIGH)]
    changed = aim != predicted
    if changed:
        jac = moving_jacobian(q)
        # Damped least squares: well-behaved near the stretched-arm singularity.
        step = jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(3), np.subtract(aim, flange))
        qd = (step / LOOKAHEAD).tolist()
    joints = [q1 + qd[0] * LOOKAHEAD, q2 + qd[1] * LOOKAHEAD]
    inside = [min(max(j, low), high) for j, low, high in zip(joints, JOINT_INNER_LOW, JOINT_INNER_HIGH)]
    if inside != joints:
        qd, changed = [(inside[0] - q1) / LOOKAHEAD, (inside[1] - q2) / LOOKAHEAD], True
    fastest = max(abs(qd[0]), abs(qd[1]))
    if fastest > SPEED_MAX:  # scale, not clip: keeps the direction of the motion
        qd = [v * SPEED_MAX / fastest for v in qd]
    return qd, changed


def reset_duration(q_from, q_to):
    """How long moveJ at RESET_SPEED and ACCEL takes (trapezoidal profile of the leading joint)."""
    distance = float(np.abs(np.asarray(q_to) - np.asarray(q_from)).max())
    if distance < RESET_SPEED ** 2 / ACCEL:
        return 2 * math.sqrt(distance / ACCEL)
    return distance / RESET_SPEED + RESET_SPEED / ACCEL


class SimArm(MujocoSim):
    """The UR5 in MuJoCo (assets/ur5.xml). Reproduces speedj's motion profile: all joints reach the new velocity
    together, the leading one accelerating at ACCEL, then hold it."""

    def __init__(self):
        super().__init__("ur5.xml", camera="side", height=480, width=640)
        self._flange = self.model.site("flange").id
        self._target_mocap = self.model.body("target").mocapid[0]
        self._velocity, self._accel = np.zeros(6), ACCEL

    def home(self, q):
        d = self.data
        d.qpos[:], d.qvel[:], d.act[:], d.ctrl[:] = q, 0.0, 0.0, 0.0
        self._velocity[:] = 0.0
        self.mj.mj_forward(self.model, d)

    def command(self, qd):
        self._velocity[:], self._accel = qd, ACCEL

    def stop(self):
        self._velocity[:], self._accel = 0.0, STOP_DECEL

    def run(self, seconds):
        n = round(seconds / self.substep)
        if n <= 0:
            return
        d = self.data
        change = self._velocity - d.act
        ramp = np.abs(change).max() / self._accel
        if ramp > 0:
            ramp_steps = min(n, math.ceil(ramp / self.substep - 1e-9))
            d.ctrl[:] = change / max(ramp, ramp_steps * self.substep)
            self.mj.mj_step(self.model, d, ramp_steps)
            d.ctrl[:] = 0.0
            n -= ramp_steps
            if n == 0 and ramp_steps * self.substep < ramp:
                return
            d.act[:] = self._velocity  # the ramp is over: remove rounding drift
        if n:
            self.mj.mj_step(self.model, d, n)

    def read(self):
        self.mj.mj_kinematics(self.model, self.data)
        return self.data.qpos, self.data.qvel, self.data.site_xpos[self._flange]

    def show_target(self, position):
        self.data.mocap_pos[self._target_mocap] = position

    def show_screen_target(self, position):
        """UR5VisualReacher-v0's red disc on the screen."""
        self.data.mocap_pos[self.model.body("screen_target").mocapid[0]] = position

    def view(self, camera, size):
        """An RGB frame of `camera`, size x size (UR5VisualReacher-v0's camera on the arm)."""
        if getattr(self, "_views", None) is None:
            self._views = {}
        if size not in self._views:
            self._views[size] = self.mj.Renderer(self.model, size, size)
        self.mj.mj_forward(self.model, self.data)
        self._views[size].update_scene(self.data, camera=camera)
        return self._views[size].render()

    def close(self):
        for renderer in (getattr(self, "_views", None) or {}).values():
            renderer.close()
        self._views = None
        super().close()


class RTDEArm:
    """The real UR5 through ur_rtde's RTDEControlInterface and RTDEReceiveInterface. Every fault (lost connection,
    protective or emergency stop, a refused command) stops the arm and raises RobotError. Two watchdogs: ours stops
    the arm when the agent has not sent a command for STALL_CYCLES cycles, and the controller's (ur_rtde setWatchdog),
    fed from our thread, stops it when this process dies or hangs."""
    simulated = False

    def __init__(self, host):
        try:
            import rtde_control
            import rtde_receive
        except ImportError:
            raise RobotError("the real UR5 needs the ur_rtde package: pip install -e '.[robots]' "
                             "(or pip install ur-rtde)") from None
        self.host, self._moving = host, False
        self._lock = threading.Lock()  # ur_rtde's interfaces are used from the watchdog thread too
        self._receive = self._control = None
        try:
            self._receive = rtde_receive.RTDEReceiveInterface(host)
            self._control = rtde_control.RTDEControlInterface(host)
            self._control.setWatchdog(2.0)  # Hz: the controller stops the arm after 0.5 s without a kick
        except RuntimeError as e:
            self._disconnect()
            raise RobotError(f"cannot connect to the UR5 at {host}: {one_line(e)} (check the address and the "
                             "network, and that the arm is on, brakes released, in remote control)") from None
        self._watchdog = Watchdog(STALL_CYCLES * CYCLE, self.stop, keepalive=self._kick, name="ur5-watchdog")
        # An uncaught Ctrl-C or exception in the caller's code, with no close(): interpreter exit stops the robot.
        atexit.register(self.close)
        self._closed = False
        try:
            self.read()  # a protective stop or an emergency stop is reported now, not at the first step
        except RobotError:
            self.close()
            raise

    def _fault(self, message):
        self.stop()
        raise RobotError(f"UR5 at {self.host}: {message}")

    def _kick(self):
        with self._lock:
            try:
                self._control.kickWatchdog()
            except RuntimeError:
                pass  # the next command or read reports the lost link

    def _trouble(self):
        """What keeps the arm from moving, if anything: a lost link, an emergency or a protective stop."""
        with self._lock:
            if not (self._receive.isConnected() and self._control.isConnected()):
                return "lost the connection (RTDE reports disconnected)"
            if self._receive.isEmergencyStopped():
                return "emergency stop pressed; release it and restart the run"
            if self._receive.isProtectiveStopped():
                return "protective stop (collision or safety limit); clear it on the teach pendant and restart"
        return None

    def read(self):
        try:
            trouble = self._trouble()
            with self._lock:
                q, qd, tcp = self._receive.getActualQ(), self._receive.getActualQd(), self._receive.getActualTCPPose()
        except RuntimeError as e:
            self._fault(f"lost the connection ({one_line(e)})")
        if trouble:
            self._fault(trouble)
        return np.array(q), np.array(qd), np.array(tcp[:3])

    def command(self, qd):
        try:
            with self._lock:
                accepted = self._control.speedJ(qd.tolist(), ACCEL, 0.0)
            trouble = None if accepted else self._trouble()
        except RuntimeError as e:
            self._fault(f"lost the connection while sending speedJ ({one_line(e)})")
        if not accepted:
            self._fault(trouble or "the controller refused speedJ (is the control script still running?)")
        self._moving = bool(np.any(qd))
        if self._moving:
            self._watchdog.arm()
        else:
            self._watchdog.disarm()

    def run(self, seconds):
        if seconds > 0:  # the controller executes speedj by itself
            time.sleep(seconds)
        if self._moving:  # the stall clock starts when the step hands control back to the agent
            self._watchdog.arm()

    def home(self, q):
        """moveJ to q, asynchronous so that faults are watched for during the move (about 2 s)."""
        self.stop()
        try:
            with self._lock:
                accepted = self._control.moveJ(q.tolist(), RESET_SPEED, ACCEL, True)
        except RuntimeError as e:
            self._fault(f"lost the connection while sending moveJ ({one_line(e)})")
        if not accepted:
            self._fault("the controller refused moveJ to the reference pose")
        give_up = time.monotonic() + reset_duration(self.read()[0], q) + 5.0
        while True:
            time.sleep(CYCLE)
            actual, speed, _ = self.read()
            if np.abs(actual - q).max() < 1e-3 and np.abs(speed).max() < 1e-3:
                return
            if time.monotonic() > give_up:
                self._fault("did not reach the reference pose in time (blocked, or speed scaling set low?)")

    def stop(self):
        """speedStop, best effort: never raises, as it runs on the way out of faults and from the watchdog."""
        if self._control is None:
            return
        try:
            with self._lock:
                self._control.speedStop(STOP_DECEL)
        except RuntimeError:
            pass
        self._moving = False
        watchdog = getattr(self, "_watchdog", None)
        if watchdog is not None:
            watchdog.disarm()

    def _disconnect(self):
        for interface, calls in ((self._control, ("stopScript", "disconnect")), (self._receive, ("disconnect",))):
            for call in calls if interface is not None else ():
                try:
                    getattr(interface, call)()
                except RuntimeError:
                    pass

    def close(self):
        if self._closed:
            return
        self._closed = True
        self.stop()
        self._watchdog.close()
        atexit.unregister(self.close)
        self._disconnect()


class UR5Reacher(gym.Env):
    """Observation (8): shoulder-lift and elbow angles (rad), their velocities / 0.3, flange minus target in the
    (y, z) plane (m), the previous velocity command / 0.3. Action (2): joint velocities in [-0.3, 0.3] rad/s.
    Reward per cycle: (-d + exp(-d^2 / 0.01)) * 0.04 / 0.008 with d the flange-target distance (m) in that plane.
    Episodes are 100 cycles (4 s, truncated, never terminated). info: overruns (running total of missed cycles),
    distance (m), safety_override (the command was replaced by the safety layer)."""
    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1 / CYCLE)}

    def __init__(self, host=None, realtime=False, render_mode=None):
        if render_mode not in (None, "rgb_array"):
            raise RobotError(f"UR5Reacher-v0 renders only 'rgb_array', not {render_mode!r}")
        if host is not None and render_mode is not None:
            raise RobotError("rendering is for the simulated arm only; the real arm is watched with your own eyes")
        self.render_mode = render_mode
        self._arm = RTDEArm(host) if host else SimArm()
        self._clock = CycleClock(CYCLE, paced=bool(realtime) or not self._arm.simulated, stall_cycles=STALL_CYCLES)
        self.action_space = gym.spaces.Box(-SPEED_MAX, SPEED_MAX, (2,), np.float32)
        # Hard physical bounds: UR joints turn +-2 pi, at most pi rad/s; the arm's reach is below 1 m.
        high = np.array([2 * np.pi, 2 * np.pi, np.pi / SPEED_MAX, np.pi / SPEED_MAX, 2, 2, 1, 1], np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self._command = np.zeros(6)  # all six joints' velocities; the fixed ones stay 0
        self._target = np.zeros(3)
        self._q = self._flange = None

    def _observe(self):
        q, qd, flange = self._arm.read()
        self._q, self._flange = q.tolist(), flange.tolist()
        obs = np.empty(8, np.float32)
        obs[0:2] = q[MOVING]
        obs[2:4] = qd[MOVING] / SPEED_MAX
        obs[4:6] = flange[1:] - self._target[1:]
        obs[6:8] = self._command[MOVING] / SPEED_MAX
        return obs

    def _sample_target(self):
        """A flange position reached from joint angles within the limits, inside the safety box (margin
        included), so that every target is reachable without the safety layer stepping in."""
        while True:
            q = np.tile(REFERENCE_POSE, (64, 1))
            q[:, MOVING] = self.np_random.uniform(JOINT_LOW + JOINT_MARGIN, JOINT_HIGH - JOINT_MARGIN, (64, 2))
            p = forward_kinematics(q)
            inside = np.all((p >= BOX_LOW + BOX_MARGIN) & (p <= BOX_HIGH - BOX_MARGIN), axis=1)
            if inside.any():
                return p[np.argmax(inside)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        try:
            self._arm.stop()
            if self._arm.simulated and self._clock.paced and self._q is not None:
                time.sleep(reset_duration(self._q, REFERENCE_POSE))  # as long as the real arm's moveJ takes
            self._arm.home(REFERENCE_POSE)
            self._target = self._sample_target()
            if self._arm.simulated:
                self._arm.show_target(self._target)
            self._command[:] = 0.0
            obs = self._observe()
        except BaseException:
            self._arm.stop()
            raise
        self._clock.restart()
        return obs, {"overruns": self._clock.overruns}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,) or not np.isfinite(action).all():
            self._arm.stop()
            raise RobotError(f"UR5Reacher-v0 needs 2 finite joint velocities, got {action!r}")
        if self._q is None:
            raise RobotError("call reset() before step()")
        self._command[MOVING], overridden = safe_velocity(self._q, self._flange, action)
        try:
            self._clock.cycle(self._arm, self._command)
            obs = self._observe()
        except BaseException:  # Ctrl-C during the wait included: never leave the arm moving
            self._arm.stop()
            raise
        distance = math.hypot(self._flange[1] - self._target[1], self._flange[2] - self._target[2])
        reward = (-distance + math.exp(-distance * distance / 0.01)) * CYCLE / 0.008
        return obs, reward, False, False, {"overruns": self._clock.overruns, "distance": distance,
                                            "safety_override": overridden}

    def render(self):
        if self.render_mode == "rgb_array":
            return self._arm.render()
        return None

    def close(self):
        if self._arm is not None:
            self._arm.stop()
            self._arm.close()
            self._arm = None
