"""A stand-in iRobot Create 2 that speaks the Open Interface on a pseudo-terminal, to try the serial driver (and a
training setup) without the robot:

    python -m robots.create2_emulator              # prints a device path such as /dev/pts/5, then serves it
    python avg.py --env Create2Mover-v0 --robot-port /dev/pts/5

It answers mode commands (Start, Safe, Full, Stop), streams sensor frames every 15 ms after Stream (148), answers
Sensors (142) and Query List (149), and drives along a straight corridor towards a wall: Drive Direct sets the
wheels, the wheel travel integrates into the distance and encoder packets, the light-bump signals rise as the wall
nears, and the bumper closes at the wall. Like the real robot in Safe mode it stops and drops to Passive mode on a
wheel drop, or on a cliff while driving forward. Tests inject faults through its attributes and methods.
"""
import argparse
import math
import os
import pty
import select
import struct
import threading
import time
import tty

from robots import open_interface as oi
from robots.create2 import WHEEL_BASE, light_bump_signal

MM_PER_COUNT = math.pi * 72.0 / 508.8  # wheel diameter 72 mm, 508.8 encoder counts per turn
# Angle of each light-bump sensor's axis from straight ahead (rad), packets 46-51: they see a wall ahead this much
# further away than the bumper does.
LIGHT_BUMP_BEARINGS = [math.radians(a) for a in (65, 35, 10, -10, -35, -65)]


class Create2Emulator:
    """Serves the Open Interface on `path` from a background thread until close(). `wall_distance`: metres from the
    bumper to the wall ahead at the start. Fault injection: `silent` (stop sending, keep listening),
    `corrupt_next_frame()`, `send_raw(bytes)`, and the sensor flags `bump`, `wheel_drop`, `cliff` (held until
    cleared). `log` records every command received as (time, opcode, argument bytes)."""

    def __init__(self, wall_distance=1.0, period=oi.FRAME_PERIOD):
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # a plain byte pipe, like a USB serial adapter: no echo, no line editing
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.period = period
        self.mode, self.packets, self.streaming = oi.MODE_OFF, (), False
        self.left = self.right = 0  # mm/s, as last commanded and accepted
        self.wall_gap = wall_distance * 1000.0  # mm from the bumper to the wall
        self.odometer = 0.0  # mm, signed travel of the robot's centre
        self.bump = self.wheel_drop = self.cliff = self.silent = False
        self.log, self.frames_sent, self.frames_dropped = [], 0, 0
        self._distance_carry = self._angle_carry = 0.0
        self._encoders = [0.0, 0.0]
        self._corrupt = False
        self._commands = bytearray()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="create2-emulator", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ fault injection and inspection
    def corrupt_next_frame(self):
        """Flips a bit in the next stream frame, so that its checksum fails."""
        self._corrupt = True

    def send_raw(self, data):
        """Writes bytes on the line now, between frames (noise, a half frame)."""
        with self._lock:
            self._write(bytes(data))

    def drive_commands(self):
        """(left, right) of every Drive Direct received, oldest first."""
        return [struct.unpack(">hh", args)[::-1] for _, opcode, args in list(self.log) if opcode == oi.DRIVE_DIRECT]

    def close(self):
        self._closed = True
        self._thread.join()
        os.close(self._master)
        os.close(self._slave)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ the robot
    def _serve(self):
        next_frame = time.monotonic() + self.period
        while not self._closed:
            ready = select.select([self._master], [], [], max(0.0, min(next_frame - time.monotonic(), 0.05)))[0]
            if ready:
                try:
                    self._commands += os.read(self._master, 4096)
                except (BlockingIOError, OSError):
                    pass
                self._execute()
            now = time.monotonic()
            if now >= next_frame:
                with self._lock:
                    self._move(self.period)
                    if self.streaming and not self.silent:
                        self._send_frame()
                next_frame = next_frame + self.period if now - next_frame < self.period else now + self.period

    def _execute(self):
        buffer = self._commands
        while buffer:
            opcode = buffer[0]
            if opcode not in oi.COMMAND_ARGUMENTS:
                del buffer[:1]  # the real robot ignores what it does not know
                continue
            size = oi.COMMAND_ARGUMENTS[opcode]
            if size is None:  # a count byte, then that many packet ids
                if len(buffer) < 2:
                    return
                size = 1 + buffer[1]
            if len(buffer) < 1 + size:
                return
            args = bytes(buffer[1:1 + size])
            del buffer[:1 + size]
            self.log.append((time.monotonic(), opcode, args))
            with self._lock:
                self._obey(opcode, args)

    def _obey(self, opcode, args):
        if opcode == oi.START:
            self.mode = oi.MODE_PASSIVE
        elif self.mode == oi.MODE_OFF:
            return  # after Stop, only Start is heard
        elif opcode == oi.SAFE:
            self.mode = oi.MODE_SAFE
        elif opcode == oi.FULL:
            self.mode = oi.MODE_FULL
        elif opcode == oi.STOP:
            self.mode, self.streaming, self.left, self.right = oi.MODE_OFF, False, 0, 0
        elif opcode == oi.DRIVE_DIRECT:
            if self.mode in (oi.MODE_SAFE, oi.MODE_FULL):  # Passive mode ignores actuator commands
                right, left = struct.unpack(">hh", args)
                self.left, self.right = max(-500, min(500, left)), max(-500, min(500, right))
        elif opcode == oi.STREAM:
            packets = tuple(args[1:])
            if all(p in oi.PACKET_FORMATS for p in packets):
                self.packets, self.streaming = packets, bool(packets)
        elif opcode == oi.PAUSE_RESUME_STREAM:
            self.streaming = bool(args[0]) and bool(self.packets)
        elif opcode in (oi.SENSORS, oi.QUERY_LIST):
            packets = args if opcode == oi.SENSORS else args[1:]
            if all(p in oi.PACKET_FORMATS for p in packets):
                values = self._sensor_values(packets)
                self._write(struct.pack(oi.packet_format(packets), *(values[p] for p in packets)))

    def _move(self, dt):
        if self.mode == oi.MODE_SAFE and (self.wheel_drop or (self.cliff and self.left + self.right > 0)):
            self.mode, self.left, self.right = oi.MODE_PASSIVE, 0, 0  # Safe mode's own protection
        forward = (self.left + self.right) / 2 * dt
        if forward > self.wall_gap:  # the wall stops the robot; its wheels stall
            forward = max(self.wall_gap, 0.0)
        scale = forward / ((self.left + self.right) / 2 * dt) if self.left + self.right else 1.0
        left, right = self.left * dt * scale, self.right * dt * scale
        self.wall_gap -= forward
        self.odometer += forward
        self._distance_carry += forward
        self._angle_carry += math.degrees((right - left) / 1000.0 / WHEEL_BASE)
        self._encoders[0] += left / MM_PER_COUNT
        self._encoders[1] += right / MM_PER_COUNT

    def _sensor_values(self, packets):
        """Packet values now; distance and angle count since they were last reported, as on the robot."""
        values = {}
        if oi.DISTANCE in packets:
            values[oi.DISTANCE] = int(self._distance_carry)
            self._distance_carry -= values[oi.DISTANCE]
        if oi.ANGLE in packets:
            values[oi.ANGLE] = int(self._angle_carry)
            self._angle_carry -= values[oi.ANGLE]
        pressed = self.bump or self.wall_gap <= 0
        values[oi.BUMPS_AND_WHEEL_DROPS] = ((oi.BUMP_LEFT | oi.BUMP_RIGHT) * pressed
                                            + (oi.WHEEL_DROP_LEFT | oi.WHEEL_DROP_RIGHT) * self.wheel_drop)
        for cliff in (oi.CLIFF_LEFT, oi.CLIFF_FRONT_LEFT, oi.CLIFF_FRONT_RIGHT, oi.CLIFF_RIGHT):
            values[cliff] = int(self.cliff)
        values[oi.OI_MODE] = self.mode
        values[oi.LEFT_ENCODER] = int(self._encoders[0]) & 0xFFFF
        values[oi.RIGHT_ENCODER] = int(self._encoders[1]) & 0xFFFF
        gap = max(self.wall_gap, 0.0) / 1000.0
        signals = light_bump_signal([gap / math.cos(b) if gap < 2.0 else -1.0 for b in LIGHT_BUMP_BEARINGS])
        values[oi.LIGHT_BUMPER] = sum(1 << i for i, s in enumerate(signals) if s > 100)
        values.update({p: int(s) for p, s in zip(oi.LIGHT_BUMP_SIGNALS, signals)})
        return values

    def _send_frame(self):
        values = self._sensor_values(self.packets)
        frame = bytearray(oi.encode_frame({p: values[p] for p in self.packets}))
        if self._corrupt:
            frame[len(frame) // 2] ^= 0x10
            self._corrupt = False
        if self._write(bytes(frame)):
            self.frames_sent += 1
        else:
            self.frames_dropped += 1

    def _write(self, data):
        """Non-blocking: when nobody reads the line and its buffer is full, data is lost, as on a serial port."""
        try:
            return os.write(self._master, data) == len(data)
        except (BlockingIOError, OSError):
            return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wall-distance", type=float, default=1.0, help="metres from the bumper to the wall")
    args = parser.parse_args()
    with Create2Emulator(args.wall_distance) as robot:
        print(f"Create 2 emulator on {robot.path} (Ctrl-C to quit)", flush=True)
        shown = None
        try:
            while True:
                state = (robot.mode, robot.left, robot.right, round(robot.wall_gap))
                if state != shown:
                    print(f"mode {state[0]}  wheels {state[1]:+4d} {state[2]:+4d} mm/s  wall in {state[3]} mm",
                          flush=True)
                    shown = state
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
