"""Fixed-cycle timing, stall protection and fault helpers, shared by the UR5 and Create 2 environments.

A backend is any object with `simulated` (bool), `command(x)` (start executing a command), `run(seconds)` (let the
robot execute it for that long: integrate the physics, sleep, or read the sensor stream) and `stop()` (best effort,
never raises). The environments in ur5.py and create2.py drive their backends through `CycleClock.cycle`.
"""
import threading
import time


class CycleClock:
    """Keeps step() on a fixed cycle: the observation is read on a cycle boundary, the agent computes, step() sends
    the action, waits for the next boundary and reads again. A caller that comes back after the next boundary has
    already passed has overrun the cycle: the overrun is counted and the cycle restarts from the moment the late
    action is sent, so that every action is executed for at least one full cycle.

    Unpaced (a simulation stepped as fast as the CPU allows), the world waits for the agent: every step simulates
    exactly one cycle and nothing can overrun."""

    def __init__(self, period, paced, stall_cycles=2):
        self.period, self.paced = period, paced
        self.stall_timeout = stall_cycles * period  # how long a robot may be left moving with no new command
        self.overruns = 0
        self._boundary = time.monotonic()

    def restart(self):
        """The observation was just read outside step() (by reset): a new cycle starts now."""
        self._boundary = time.monotonic()

    def cycle(self, backend, command):
        """One step's timing: the robot goes on executing the previous command while the agent computes (simulated
        here when the simulation is paced, as the real robot would, watchdog stop included), then `command` runs
        until the cycle boundary."""
        if not self.paced:
            backend.command(command)
            backend.run(self.period)
            return
        now = time.monotonic()
        held = now - self._boundary
        self._boundary += self.period
        if now > self._boundary:
            self.overruns += 1
            self._boundary = now + self.period
        if backend.simulated and held > 0:  # real robots do this by themselves
            if held > self.stall_timeout:
                backend.run(self.stall_timeout)
                backend.stop()
                held -= self.stall_timeout
            backend.run(held)
        backend.command(command)
        backend.run(max(0.0, self._boundary - time.monotonic()))
        delay = self._boundary - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def hold(self, backend, command, seconds):
        """Executes `command` for `seconds` outside the step cycle (a reset motion); in real time when paced."""
        end = time.monotonic() + seconds
        backend.command(command)
        backend.run(seconds)
        delay = end - time.monotonic()
        if self.paced and delay > 0:
            time.sleep(delay)


class Watchdog:
    """Stops a real robot that has been left moving with no new command for `timeout` seconds: the agent stalled (a
    long update, a checkpoint, a debugger breakpoint), and the robot would otherwise go on at its last velocity.
    `arm()` after each moving command, `disarm()` once stopped. Optionally calls `keepalive()` every
    `keepalive_period` seconds for as long as the process lives (the UR5 uses it to feed the controller's own
    watchdog, which stops the arm when this process dies or hangs)."""

    def __init__(self, timeout, on_stall, keepalive=None, keepalive_period=0.1, name="robot-watchdog"):
        self.timeout, self.fired = timeout, 0
        self._on_stall, self._keepalive, self._keepalive_period = on_stall, keepalive, keepalive_period
        self._deadline, self._closed = None, False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def arm(self):
        with self._wake:
            self._deadline = time.monotonic() + self.timeout
            self._wake.notify()

    def disarm(self):
        with self._wake:
            self._deadline = None

    def close(self):
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self):
        next_keepalive = time.monotonic()
        while True:
            with self._wake:
                if self._closed:
                    return
                now = time.monotonic()
                stalled = self._deadline is not None and now >= self._deadline
                if stalled:
                    self._deadline = None
                    self.fired += 1
                else:
                    waits = [self._deadline - now] if self._deadline is not None else []
                    if self._keepalive is not None:
                        waits.append(next_keepalive - now)
                    if not waits or min(waits) > 0:
                        self._wake.wait(min(waits) if waits else None)
                        continue
            # Outside the condition's lock: these take the backend's lock, and arm() must never wait for them.
            if stalled:
                self._on_stall()
            if self._keepalive is not None and time.monotonic() >= next_keepalive:
                next_keepalive = time.monotonic() + self._keepalive_period
                self._keepalive()


def one_line(error):
    """An exception's message on one line, for RobotError messages."""
    return " ".join(str(error).split()) or type(error).__name__
