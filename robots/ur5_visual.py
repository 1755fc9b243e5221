"""UR5VisualReacher-v0: the UR5 reacher whose target is seen, not told (after ReLoD's UR5-VisualReacher, Wang, Vasan and
Mahmood, ICRA 2023, on this project's two-joint reacher). A camera carried by the arm looks at a screen 0.3 m in front of
the flange's working plane; the screen shows a red disc at a random place each episode; the reward is ReLoD's dense one,
computed from the image alone: the red pixels, each weighted by its closeness to the image's centre ((1 - its distance
/ half the diagonal)^2: 1 at the centre, 0 at a corner), summed, times 800 / (width x height), clipped to [0, 4]. Centring the disc means bringing the flange in
front of it. 150 cycles of 40 ms (6 s) per episode, truncated.

    gym.make("UR5VisualReacher-v0")                                    # simulated: MuJoCo renders the arm's camera
    gym.make("UR5VisualReacher-v0", host="192.168.1.10", camera="0")   # the real arm and an OpenCV camera on it

Observation: {"image": the camera's RGB frame (84 x 84 by default), "proprio": shoulder-lift and elbow angles, their
velocities / 0.3, the previous command / 0.3} (no target). Actions, safety layer, stops, cycle and reset are
UR5Reacher-v0's (robots/ur5.py). The real camera is read by a thread of its own, every frame timestamped: no new frame
for STALE seconds when the agent needs one (a stalled or unplugged camera, or a frozen one that repeats its last frame
bit for bit), a capture that raises, or frames that are not colour images stop the arm and raise RobotError, exactly
as a lost link does; the real screen is a full-screen window drawn with matplotlib (robots/README.md has the
set-up)."""
import math
import threading
import time

import gymnasium as gym
import numpy as np

from robots import RobotError
from robots import ur5

STALE = 0.2  # s: five cycles without a new frame stop the arm (a camera at 25-30 fps gives one every 33-40 ms)
MIN_SIDE = 16  # pixels: a smaller frame holds no target worth finding
FIRST_FRAME = 5.0  # s to wait for a camera's first frame
SCREEN_X = 0.41  # m: the screen's plane (the flange moves in x = 0.109)
VIEW = 0.11  # m: a target lies within this of the reference pose's flange (y, z), so that it starts in view


def red_mask(image):
    """ReLoD's colour threshold for the target: R >= 120, G <= 50, B <= 50."""
    return (image[..., 0] >= 120) & (image[..., 1] <= 50) & (image[..., 2] <= 50)


def centred_reward(image):
    """800 / (W H) times the sum over red pixels of their closeness to the centre, (1 - distance / half the
    diagonal)^2, clipped to [0, 4]."""
    height, width = image.shape[:2]
    rows, cols = np.nonzero(red_mask(image))
    if len(rows) == 0:
        return 0.0
    distance = np.hypot(rows + 0.5 - height / 2, cols + 0.5 - width / 2) / math.hypot(height / 2, width / 2)
    return float(min(4.0, 800.0 * np.sum((1.0 - distance) ** 2) / (width * height)))


class CameraFeed:
    """The newest frame of an OpenCV capture (a device index, a path or a URL; or any object with read(), isOpened()
    and release(), as cv2.VideoCapture has), read by its own thread and timestamped. latest() raises RobotError, in one
    line that says which, when the camera has failed: its capture raised (the exception is in the message), it froze
    (bit-identical frames for longer than STALE: some USB cameras freeze that way and keep sending the last frame),
    it stalled (no frame for longer than STALE: hung, unplugged), or it sends frames that are not colour images."""

    def __init__(self, source, size):
        import cv2
        self.cv2, self.name, self.size = cv2, str(source), size
        self.capture = source if hasattr(source, "read") else cv2.VideoCapture(int(source) if str(source).isdigit()
                                                                               else source)
        if not self.capture.isOpened():
            raise RobotError(f"camera {self.name}: cannot open it (check the device, and that no other program uses it)")
        # frame: the newest; stamp: when a frame that differs from the one before it came; seen: when any frame came
        self.frame = self.stamp = self.seen = self.failure = None
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._read, name="camera", daemon=True)
        self._thread.start()
        give_up = time.monotonic() + FIRST_FRAME
        while self.frame is None and self.failure is None:
            if time.monotonic() > give_up:
                self.close()
                raise RobotError(f"camera {self.name}: no frame within {FIRST_FRAME:.0f} s")
            time.sleep(0.01)
        if self.failure is not None:
            self.close()
            raise RobotError(f"camera {self.name}: {self.failure}")

    def _read(self):
        try:
            while not self._stop.is_set():
                ok, frame = self.capture.read()
                if not ok:  # the next latest() reports the camera once its last frame is too old
                    time.sleep(0.005)
                    continue
                problem = frame_problem(frame)
                now = time.monotonic()
                with self._lock:
                    if problem is not None:
                        self.failure = problem
                        return
                    if self.frame is None or not np.array_equal(frame, self.frame):
                        self.stamp = now
                    self.frame, self.seen = frame, now
        except Exception as e:  # the capture's own reason, carried into the stop
            with self._lock:
                self.failure = f"the capture raised {type(e).__name__}: {' '.join(str(e).split())[:200]}"

    def latest(self, newer_than=0.0):
        """The newest frame as RGB, size x size; if it was taken before the time `newer_than` (time.monotonic()), the
        first one after it, waiting at most STALE."""
        give_up = time.monotonic() + STALE
        while True:
            with self._lock:
                frame, stamp, seen, failure = self.frame, self.stamp, self.seen, self.failure
            if failure is not None or stamp > newer_than or time.monotonic() > give_up:
                break
            time.sleep(0.002)
        if failure is not None:
            raise RobotError(f"camera {self.name}: {failure}; the arm was stopped")
        now = time.monotonic()
        if now - max(stamp, newer_than) > STALE:
            if now - max(seen, newer_than) <= STALE:
                raise RobotError(f"camera {self.name}: frozen, the same frame for {1000 * (now - stamp):.0f} ms; the "
                                 "arm was stopped")
            raise RobotError(f"camera {self.name}: no new frame for {1000 * (now - max(seen, newer_than)):.0f} ms "
                             "(stalled or disconnected); the arm was stopped")
        frame = self.cv2.cvtColor(frame, self.cv2.COLOR_BGR2RGB)
        return self.cv2.resize(frame, (self.size, self.size), interpolation=self.cv2.INTER_AREA)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=1.0)
        self.capture.release()


def frame_problem(frame):
    """Why a captured frame is not a colour image the task can use (8-bit, height x width x 3, at least MIN_SIDE a
    side), in words, or None."""
    shape, dtype = getattr(frame, "shape", None), getattr(frame, "dtype", None)
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or shape[2] != 3 or dtype != np.uint8 or \
            min(shape[:2]) < MIN_SIDE:
        return (f"its frames must be colour images of 8-bit pixels, height x width x 3, at least {MIN_SIDE} pixels a "
                f"side; it sent {type(frame).__name__} of shape {shape} and dtype {dtype}")
    return None


class TargetScreen:
    """The real task's screen: a full-screen matplotlib window with the red disc on white, placed at a random spot
    each episode (the camera must see it: put the screen 0.3 m in front of the flange's plane, facing the arm)."""

    def __init__(self):
        import matplotlib.pyplot as plt
        self.plt = plt
        plt.ion()
        self.figure = plt.figure(facecolor="white")
        self.axes = self.figure.add_axes([0, 0, 1, 1], xlim=(0, 1), ylim=(0, 1))
        self.axes.axis("off")
        self.disc = plt.Circle((0.5, 0.5), 0.03, color="red")
        self.axes.add_patch(self.disc)
        try:
            plt.get_current_fig_manager().full_screen_toggle()
        except Exception:  # a backend without full screen: the window as it is
            pass

    def show(self, where):
        """where: (x, y) in [0, 1]^2 of the screen."""
        self.disc.set_center(tuple(where))
        self.figure.canvas.draw()
        self.figure.canvas.flush_events()

    def close(self):
        self.plt.close(self.figure)


class UR5VisualReacher(ur5.UR5Reacher):
    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1 / ur5.CYCLE)}

    def __init__(self, host=None, realtime=False, render_mode=None, camera=None, size=84, screen=None):
        if camera is not None and host is None:
            raise RobotError("--camera is the real arm's camera (give --robot-host too); the simulated arm has its own")
        if host is not None and camera is None:
            raise RobotError("UR5VisualReacher-v0 on the real arm needs its camera: --camera DEVICE")
        super().__init__(host, realtime, render_mode)
        self.size = size
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
            "proprio": gym.spaces.Box(-self.observation_space.high[[0, 1, 2, 3, 6, 7]],
                                      self.observation_space.high[[0, 1, 2, 3, 6, 7]], dtype=np.float32)})
        self._camera = self._screen = self._image = None
        self._shown_at = 0.0
        try:
            if camera is not None:
                self._camera = CameraFeed(camera, size)
                self._screen = screen if screen is not None else TargetScreen()
        except BaseException:
            self.close()
            raise

    def _frame(self):
        if self._camera is not None:
            return self._camera.latest(newer_than=self._shown_at)
        return self._arm.view("flange_camera", self.size)

    def _observe(self):
        state = super()._observe()
        self._image = self._frame()
        return {"image": self._image, "proprio": state[[0, 1, 2, 3, 6, 7]]}

    def _sample_target(self):
        """A reachable flange position (UR5Reacher's rule) within VIEW of the reference pose's, in the flange's plane;
        shown on the screen (the simulated one, or the real one, whose face spans y in [-0.3, 0.4] and z in [0.45, 1.05]
        of the base frame, left to right from the camera's side)."""
        centre = ur5.forward_kinematics(ur5.REFERENCE_POSE)
        while True:
            target = super()._sample_target()
            if np.abs(target[1:] - centre[1:]).max() <= VIEW:
                break
        if self._arm.simulated:
            self._arm.show_target([0.0, 0.0, -1.0])  # UR5Reacher's sphere, out of sight
            self._arm.show_screen_target([SCREEN_X, *target[1:]])
        else:
            self._screen.show(((0.4 - target[1]) / 0.7, (target[2] - 0.45) / 0.6))
            self._shown_at = time.monotonic()  # the next observation waits for a frame taken after this
        return target

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        try:
            reward = centred_reward(self._image)
        except BaseException:
            self._arm.stop()
            raise
        return obs, reward, terminated, truncated, info

    def close(self):
        for part in (self._camera, self._screen):
            if part is not None:
                part.close()
        self._camera = self._screen = None
        super().close()
