"""Create2Mover-v0: SenseAct's Create-Mover on an iRobot Create 2, simulated in MuJoCo or on the robot (the task:
robots/README.md).

The robot drives its two wheels and is rewarded for moving forward; a bump, a wheel drop or a cliff stops the wheels
and ends the episode, and the next reset backs away from the obstacle and turns a random angle. It sees its six
light-bump IR sensors, so it can learn to turn before it hits a wall.

    gym.make("Create2Mover-v0")                         # simulated robot in a 2 m x 2 m walled arena
    gym.make("Create2Mover-v0", realtime=True)          # simulated, paced to the real cycle
    gym.make("Create2Mover-v0", port="/dev/ttyUSB0")    # the real robot over its serial cable (Open Interface)
    gym.make("Create2Mover-v0", cycle_time=0.045)       # any backend: a shorter cycle (default 0.15 s)
"""
import atexit
import math
import select
import threading
import time

import gymnasium as gym
import numpy as np

from robots import RobotError
from robots import open_interface as oi
from robots.realtime import CycleClock, Watchdog, one_line
from robots.simulation import MujocoSim

DEFAULT_CYCLE = 0.15  # s, SenseAct's Create-Mover cycle; 600 cycles make its 90 s episode
SPEED_MAX = 150.0  # mm/s per wheel, bound of the actions
WHEEL_BASE = 0.235  # m
REWARD_PER_MM = 0.15
STALL_CYCLES = 2  # the watchdog stops wheels left turning this many cycles after a step with no new command
MIN_SILENCE_LIMIT = 0.1  # s; with short cycles, still allow for USB latency before calling the link dead
BACK_AWAY_SPEED, BACK_AWAY_TIME = 100.0, 1.0  # reset after an obstacle: 10 cm straight back
TURN_SPEED = SPEED_MAX  # mm/s of each wheel when the reset turns in place: pi takes 2.5 s

# Packets streamed from the real robot, in this order: bumps and wheel drops, the four cliff sensors, distance,
# OI mode, the six light-bump signals.
STREAM_PACKETS = (oi.BUMPS_AND_WHEEL_DROPS, oi.CLIFF_LEFT, oi.CLIFF_FRONT_LEFT, oi.CLIFF_FRONT_RIGHT, oi.CLIFF_RIGHT,
                  oi.DISTANCE, oi.OI_MODE, *oi.LIGHT_BUMP_SIGNALS)

# Episode-ending events, as bits: the Open Interface's bump and wheel-drop bits, then ours.
BUMP = oi.BUMP_RIGHT | oi.BUMP_LEFT
WHEEL_DROP = oi.WHEEL_DROP_RIGHT | oi.WHEEL_DROP_LEFT
CLIFF = 16
SAFE_MODE_LOST = 32  # the robot left Safe mode by itself (its own cliff, wheel-drop or charger protection)

# Light-bump model: reflected IR falls with the square of the distance; 4095 (the sensor's top) within 2 cm.
IR_FULL_SCALE, IR_SATURATION_DISTANCE = 4095, 0.02


def light_bump_signal(distance):
    """Light-bump readings (0..4095) for obstacles at `distance` m along each sensor's axis (negative: none)."""
    distance = np.asarray(distance, dtype=np.float64)
    near = np.square(IR_SATURATION_DISTANCE / np.maximum(distance, 1e-6))
    return np.where(distance < 0, 0.0, np.rint(np.minimum(IR_FULL_SCALE, IR_FULL_SCALE * near)))


def wheel_speeds_to_motion(left, right):
    """Forward speed (m/s) and turn rate (rad/s) of a differential drive with wheel speeds in mm/s."""
    return (left + right) / 2000.0, (right - left) / 1000.0 / WHEEL_BASE


class SimCreate(MujocoSim):
    """The Create 2 in MuJoCo (assets/create2.xml). Bumps come from contacts between the robot and a wall on the
    front half of the robot (the real bumper does not cover the back); there are no cliffs or wheel drops."""
    ARENA_HALF_SIZE = 1.0  # m, inner faces of the walls

    MAX_SUBSTEP = 0.01  # s; a whole number of physics steps makes one cycle

    def __init__(self, cycle):
        super().__init__("create2.xml", camera="top", height=480, width=480)
        self.substep = self.model.opt.timestep = cycle / math.ceil(cycle / self.MAX_SUBSTEP - 1e-9)
        self._shell = self.model.geom("shell").id
        self._forward, self._turn = self.model.actuator("forward").id, self.model.actuator("turn").id
        first = self.model.sensor("light_bump_left").adr[0]
        self._ranges = slice(first, first + 6)
        self._distance, self._events = 0.0, 0

    def place(self, x, y, heading):
        d = self.data
        d.qpos[:], d.qvel[:], d.ctrl[:] = (x, y, heading), 0.0, 0.0
        self.mj.mj_forward(self.model, d)

    def command(self, wheels):
        forward, turn = wheel_speeds_to_motion(wheels[0], wheels[1])
        self.data.ctrl[self._forward], self.data.ctrl[self._turn] = forward, turn

    def stop(self):
        self.data.ctrl[:] = 0.0

    def run(self, seconds):
        n = round(seconds / self.substep)
        if n <= 0:
            return
        qpos = self.data.qpos
        x, y, heading = qpos[0], qpos[1], qpos[2]
        self.mj.mj_step(self.model, self.data, n)
        # Forward distance as the wheels' odometry counts it: the displacement along the mean heading of the run.
        mean_heading = (heading + qpos[2]) / 2
        self._distance += 1000.0 * ((qpos[0] - x) * math.cos(mean_heading) + (qpos[1] - y) * math.sin(mean_heading))
        self._events |= self._bumps()

    def _bumps(self):
        d, bits = self.data, 0
        for i in range(d.ncon):
            contact = d.contact[i]
            if self._shell not in (contact.geom1, contact.geom2):
                continue
            # Bearing of the contact point from the robot's heading: left side positive.
            bearing = math.atan2(contact.pos[1] - d.qpos[1], contact.pos[0] - d.qpos[0]) - d.qpos[2]
            bearing = (bearing + math.pi) % (2 * math.pi) - math.pi
            if abs(bearing) < math.pi / 2:  # the bumper; within 10 degrees of its middle both switches close
                bits |= (oi.BUMP_LEFT if bearing > -0.175 else 0) | (oi.BUMP_RIGHT if bearing < 0.175 else 0)
        return bits

    def take(self):
        """What the sensors saw since the last take: light-bump signals now, distance (mm), events (bits)."""
        light = light_bump_signal(self.data.sensordata[self._ranges])
        distance, events = self._distance, self._events
        self._distance, self._events = 0.0, 0
        return light, distance, events

    def prepare(self):
        pass


class SerialCreate:
    """The real Create 2 over a serial port, Open Interface in Safe mode (the robot's own cliff and wheel-drop
    protection stays on) with the sensor stream on. Faults raise RobotError after stopping the wheels if the robot
    can still be reached: a port that cannot be opened or written, no stream within a second of starting it, and a
    stream gone silent for STALL_CYCLES cycles (at least MIN_SILENCE_LIMIT)."""
    simulated = False

    def __init__(self, port, cycle):
        import serial
        self._serial_errors = (serial.SerialException, OSError)
        self.port = port
        try:
            self._serial = serial.Serial(port, 115200, timeout=0, write_timeout=0.5)
        except (serial.SerialException, OSError, ValueError) as e:
            raise RobotError(f"cannot open the Create 2's serial port {port}: {one_line(e)}") from None
        self._lock = threading.Lock()  # writes come from the watchdog thread too
        self._parser = oi.StreamParser(STREAM_PACKETS)
        self._silence_limit = max(STALL_CYCLES * cycle, MIN_SILENCE_LIMIT)
        self._light, self._distance, self._events = np.zeros(6), 0, 0
        self.mode, self._last_frame, self._pressed, self._urgent, self._moving = None, None, 0, False, False
        self._closed = False
        self._watchdog = Watchdog(STALL_CYCLES * cycle, self.stop, name="create2-watchdog")
        # An uncaught Ctrl-C or exception in the caller's code, with no close(): interpreter exit stops the robot.
        atexit.register(self.close)
        try:
            self._write(bytes([oi.START]))
            time.sleep(0.02)  # the Open Interface wants a moment after a mode change
            self._write(oi.stream(STREAM_PACKETS))
            give_up = time.monotonic() + 1.0
            while self._last_frame is None:
                if time.monotonic() > give_up:
                    raise RobotError(f"no Open Interface data from {port} within 1 s of starting the sensor stream "
                                     "(is the robot switched on, the cable in, nothing else using the port?)")
                self._read(0.02)
            self.prepare()
        except RobotError:
            self.close()
            raise

    def _write(self, data):
        try:
            with self._lock:
                self._serial.write(data)
        except self._serial_errors as e:
            raise RobotError(f"lost the serial link to the Create 2 on {self.port}: {one_line(e)}") from None

    def _read(self, timeout):
        """Waits up to `timeout` s for data and takes in the frames that came."""
        try:
            if select.select([self._serial.fileno()], [], [], timeout)[0]:
                data = self._serial.read(self._serial.in_waiting or 1)
            else:
                data = b""
        except self._serial_errors as e:
            self.stop()
            raise RobotError(f"lost the serial link to the Create 2 on {self.port}: {one_line(e)}") from None
        frames = self._parser.feed(data) if data else ()
        for bumps, *cliffs, distance, mode, l0, l1, l2, l3, l4, l5 in frames:
            events = bumps & (BUMP | WHEEL_DROP) | (CLIFF if any(cliffs) else 0)
            if self.mode == oi.MODE_SAFE and mode != oi.MODE_SAFE:
                events |= SAFE_MODE_LOST
            # Stop at once on a new bump (one still pressed does not stop a robot backing away from it), and on
            # anything else the moment it shows.
            if events & ~BUMP or bumps & BUMP & ~self._pressed:
                self._urgent = True
            self._pressed = bumps & BUMP
            self._events |= events
            self._distance += distance
            self.mode = mode
            self._light[:] = l0, l1, l2, l3, l4, l5
        if frames:
            self._last_frame = time.monotonic()

    def run(self, seconds):
        """Reads the stream for `seconds`, stopping the wheels as soon as a bump, wheel drop or cliff shows."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            self._read(min(max(left, 0.0), oi.FRAME_PERIOD))
            if self._urgent:
                self._urgent = False
                self.stop()
            if time.monotonic() - self._last_frame > self._silence_limit:
                self.stop()
                raise RobotError(f"the Create 2 on {self.port} went silent (no valid sensor data for "
                                 f"{self._silence_limit:.2f} s); wheels stopped. Check the cable and the battery")
            if self._moving:  # the stall clock starts when the step hands control back to the agent
                self._watchdog.arm()
            if left <= 0:
                return

    def prepare(self):
        """Puts the robot (back) in Safe mode: after its own protection tripped, it sits in Passive mode and ignores
        drive commands."""
        self._write(bytes([oi.SAFE]))
        give_up = time.monotonic() + 0.5
        while True:
            self.run(0.03)
            if self.mode == oi.MODE_SAFE:
                return
            if time.monotonic() > give_up:
                raise RobotError(f"the Create 2 on {self.port} does not stay in Safe mode (OI mode {self.mode}): "
                                 "put it on the floor, away from edges and off the charger")

    def command(self, wheels):
        self._write(oi.drive_direct(wheels[0], wheels[1]))
        self._moving = bool(wheels[0] or wheels[1])
        if self._moving:
            self._watchdog.arm()
        else:
            self._watchdog.disarm()

    def stop(self):
        """Drive Direct 0 0, best effort: never raises (it runs on the way out of faults and from the watchdog)."""
        try:
            with self._lock:
                self._serial.write(oi.drive_direct(0, 0))
        except self._serial_errors:
            pass
        self._moving = False
        self._watchdog.disarm()

    def take(self):
        light, distance, events = self._light.copy(), self._distance, self._events
        self._distance, self._events = 0, 0
        return light, distance, events

    def close(self):
        if self._closed:
            return
        self._closed = True
        self.stop()
        try:
            with self._lock:  # stop the stream, then the Open Interface itself (the robot ignores commands after)
                self._serial.write(oi.pause_stream() + bytes([oi.STOP]))
                self._serial.flush()
        except self._serial_errors:
            pass
        self._watchdog.close()
        atexit.unregister(self.close)
        self._serial.close()


class Create2Mover(gym.Env):
    """Observation (8): the six light-bump signals / 4095 (left to right), the previous wheel command / 150.
    Action (2): left and right wheel speeds in [-150, 150] mm/s (Drive Direct). Reward per cycle: 0.15 * forward
    distance travelled (mm) since the previous observation. Terminates on a bump, wheel drop or cliff (wheels
    stopped); 600 cycles (90 s at the default 150 ms cycle) truncate. info: overruns, distance_mm, bump, wheel_drop,
    cliff.

    reset(seed=...) of the simulation starts a new world (random pose in the arena); otherwise reset, as on the real
    robot, backs away after an episode that ended on an obstacle and turns in place by a random angle."""
    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1 / DEFAULT_CYCLE)}

    def __init__(self, port=None, realtime=False, cycle_time=DEFAULT_CYCLE, render_mode=None):
        if render_mode not in (None, "rgb_array"):
            raise RobotError(f"Create2Mover-v0 renders only 'rgb_array', not {render_mode!r}")
        if port is not None and render_mode is not None:
            raise RobotError("rendering is for the simulated Create 2 only")
        if isinstance(cycle_time, bool) or not isinstance(cycle_time, (int, float)) or not math.isfinite(cycle_time):
            raise RobotError(f"cycle_time must be a number of seconds, got {cycle_time!r}")
        if cycle_time <= 0 or (port and cycle_time < oi.FRAME_PERIOD):
            raise RobotError(f"cycle_time {cycle_time} s is too short: it must be positive, and on the real robot "
                             f"at least {oi.FRAME_PERIOD} s, the period of its sensor stream")
        self.render_mode = render_mode
        self._robot = SerialCreate(port, cycle_time) if port else SimCreate(cycle_time)
        self._clock = CycleClock(cycle_time, paced=bool(realtime) or not self._robot.simulated,
                                 stall_cycles=STALL_CYCLES)
        self.metadata = {**self.metadata, "render_fps": round(1 / cycle_time)}
        self.action_space = gym.spaces.Box(-SPEED_MAX, SPEED_MAX, (2,), np.float32)
        self.observation_space = gym.spaces.Box(np.array([0] * 6 + [-1, -1], np.float32),
                                                np.ones(8, np.float32), dtype=np.float32)
        self._wheels = np.zeros(2)
        self._last_events, self._started = 0, False

    def _observe(self, light):
        obs = np.empty(8, np.float32)
        obs[:6] = light / IR_FULL_SCALE
        obs[6:] = self._wheels / SPEED_MAX
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        robot, rng = self._robot, self.np_random
        try:
            robot.stop()
            if robot.simulated and (seed is not None or not self._started):
                clear = SimCreate.ARENA_HALF_SIZE - 0.35
                robot.place(*rng.uniform(-clear, clear, 2), rng.uniform(-math.pi, math.pi))
            else:
                robot.prepare()  # after its own cliff or wheel-drop protection tripped, the robot is in Passive mode
                if self._last_events:
                    self._clock.hold(robot, (-BACK_AWAY_SPEED, -BACK_AWAY_SPEED), BACK_AWAY_TIME)
                angle = rng.uniform(-math.pi, math.pi)
                turn = math.copysign(TURN_SPEED, angle)
                _, rate = wheel_speeds_to_motion(-turn, turn)
                self._clock.hold(robot, (-turn, turn), abs(angle / rate))
                robot.stop()
                robot.run(0.05)  # let the wheels come to rest before the episode's first observation
                _, _, events = robot.take()
                if events & (WHEEL_DROP | CLIFF | SAFE_MODE_LOST):
                    raise RobotError("wheel drop or cliff while resetting: put the robot back on the floor, away "
                                     "from edges")
            self._wheels[:] = 0.0
            light, _, _ = robot.take()
        except BaseException:
            robot.stop()
            raise
        self._last_events, self._started = 0, True
        self._clock.restart()
        return self._observe(light), {"overruns": self._clock.overruns}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,) or not np.isfinite(action).all():
            self._robot.stop()
            raise RobotError(f"Create2Mover-v0 needs 2 finite wheel speeds (mm/s), got {action!r}")
        if not self._started:
            raise RobotError("call reset() before step()")
        np.maximum(np.minimum(action, SPEED_MAX, out=self._wheels), -SPEED_MAX, out=self._wheels)
        try:
            self._clock.cycle(self._robot, self._wheels)
            light, distance, events = self._robot.take()
            if events:
                self._robot.stop()
        except BaseException:  # Ctrl-C during the wait included: never leave the wheels turning
            self._robot.stop()
            raise
        self._last_events = events
        info = {"overruns": self._clock.overruns, "distance_mm": float(distance), "bump": bool(events & BUMP),
                "wheel_drop": bool(events & WHEEL_DROP), "cliff": bool(events & (CLIFF | SAFE_MODE_LOST))}
        return self._observe(light), REWARD_PER_MM * float(distance), bool(events), False, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self._robot.render()
        return None

    def close(self):
        if self._robot is not None:
            self._robot.stop()
            self._robot.close()
            self._robot = None
