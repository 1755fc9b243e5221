"""UR5VisualReacher-v0: the simulated task (the arm's camera, the screen's target, the image reward) and the real path
against stand-ins: ur_rtde's interfaces (test_robots_ur5.py's) and capture sources that see what the arm's pose shows
them, and ones that stall, freeze, raise or send frames of the wrong kind. A failing camera stops the arm exactly as a
lost link does: a one-line RobotError, exit status 4 from a script."""
import time

import cv2
import gymnasium as gym
import numpy as np
import pytest

import robots
from robots import ur5, ur5_visual
from robots_helpers import step_through_ctrl_c
from test_robots_ur5 import HOST, StandInUR5, arm  # noqa: F401 (the fixture)


def disc_frame(row, col, size=(360, 640), noise=None):
    """A camera frame (BGR, as OpenCV gives them) of a white screen with a red disc, and sensor noise if given a
    generator (a real camera's frames are never bit-identical)."""
    frame = np.full((*size, 3), 240, np.uint8)
    cv2.circle(frame, (col, row), 20, (0, 0, 255), -1)
    if noise is not None:
        frame = np.clip(frame.astype(np.int16) + noise.integers(-2, 3, frame.shape), 0, 255).astype(np.uint8)
    return frame


PIXELS_PER_RAD = 1500.0  # how far the disc moves in the stand-in camera's view per radian of a moving joint


class Capture:
    """Stands in for cv2.VideoCapture on the arm's flange: a frame every `period` seconds showing the disc where the
    arm's pose puts it (centred at the reference pose; moving the shoulder moves it across, the elbow up and down),
    with sensor noise. After `frames` frames it stalls (read() blocks as a hung USB camera's does) or, with `fail`,
    raises it; after `frozen` frames it repeats the last frame bit for bit. `frame` replaces the picture outright."""

    def __init__(self, arm=None, frames=None, period=1 / 30, frame=None, frozen=None, fail=None):
        self.arm, self.frames, self.period, self.fixed, self.frozen, self.fail = arm, frames, period, frame, frozen, fail
        self.delivered, self.released, self.noise, self.last = 0, False, np.random.default_rng(0), None

    def isOpened(self):
        return True

    def view(self):
        if self.fixed is not None:
            return self.fixed
        offset = np.zeros(2) if self.arm is None else (self.arm.q[1:3] - ur5.REFERENCE_POSE[1:3]) * PIXELS_PER_RAD
        return disc_frame(int(180 + offset[1]), int(320 + offset[0]), noise=self.noise)

    def read(self):
        if self.frames is not None and self.delivered >= self.frames:
            if self.fail is not None:
                raise self.fail
            time.sleep(0.05)  # stalled
            return False, None
        time.sleep(self.period)
        self.delivered += 1
        if self.frozen is None or self.last is None or self.delivered <= self.frozen:
            self.last = self.view()
        return True, self.last

    def release(self):
        self.released = True


class Screen:
    def __init__(self):
        self.shown = []

    def show(self, where):
        self.shown.append(tuple(where))

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------- simulated
def test_the_simulated_arm_sees_its_target_and_is_rewarded_for_centring_it():
    env = gym.make("UR5VisualReacher-v0")
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (84, 84, 3) and obs["image"].dtype == np.uint8 and obs["proprio"].shape == (6,)
    assert ur5_visual.red_mask(obs["image"]).sum() > 10  # the target starts in view
    u = env.unwrapped
    u._arm.show_screen_target([ur5_visual.SCREEN_X, *u._flange[1:]])  # right in front of the flange
    centred = u._arm.view("flange_camera", 84)
    rows, cols = np.nonzero(ur5_visual.red_mask(centred))
    assert abs(rows.mean() - 41.5) < 1 and abs(cols.mean() - 41.5) < 1
    assert ur5_visual.centred_reward(centred) == pytest.approx(4.0)
    u._arm.show_screen_target([ur5_visual.SCREEN_X, u._flange[1] + 0.3, u._flange[2]])  # out of view
    assert ur5_visual.centred_reward(u._arm.view("flange_camera", 84)) == 0.0
    env.close()


def test_the_image_reward_weights_red_pixels_by_closeness_to_the_centre():
    image = np.full((10, 10, 3), 255, np.uint8)
    image[4:6, 4:6] = (255, 0, 0)  # four pixels around the centre, each at 1/sqrt(2) px of it
    closeness = (1 - np.hypot(0.5, 0.5) / np.hypot(5, 5)) ** 2
    assert ur5_visual.centred_reward(image) == pytest.approx(min(4.0, 800 * 4 * closeness / 100))
    image[:] = 255
    image[0, 0] = (200, 40, 40)  # one corner pixel: the threshold takes it, its weight is nearly 0
    assert 0 < ur5_visual.centred_reward(image) < 0.1
    assert ur5_visual.centred_reward(np.full((10, 10, 3), 255, np.uint8)) == 0.0


def test_a_target_is_reachable_and_starts_in_view():
    env = gym.make("UR5VisualReacher-v0").unwrapped
    env.reset(seed=1)
    centre = ur5.forward_kinematics(ur5.REFERENCE_POSE)
    for _ in range(30):
        target = env._sample_target()
        assert np.abs(target[1:] - centre[1:]).max() <= ur5_visual.VIEW
        assert np.all(target >= ur5.BOX_LOW + ur5.BOX_MARGIN) and np.all(target <= ur5.BOX_HIGH - ur5.BOX_MARGIN)
    env.close()


@pytest.mark.parametrize("kwargs, words", [({"camera": "0"}, "--camera is the real arm's camera"),
                                           ({"host": HOST}, "needs its camera: --camera DEVICE")])
def test_a_camera_without_the_real_arm_or_the_real_arm_without_one_is_refused(arm, kwargs, words):  # noqa: F811
    with pytest.raises(robots.RobotError, match=words):
        gym.make("UR5VisualReacher-v0", **kwargs)


# ------------------------------------------------------------------------------------------------ the real path
def test_frames_flow_from_the_camera_to_the_observation_and_reward(arm):  # noqa: F811
    capture, screen = Capture(arm), Screen()
    env = gym.make("UR5VisualReacher-v0", host=HOST, camera=capture, screen=screen)
    obs, _ = env.reset(seed=0)
    assert len(screen.shown) == 1 and all(0 <= v <= 1 for v in screen.shown[0])  # the target, on the screen
    obs, reward, *_ = env.step(np.zeros(2))
    assert obs["image"].shape == (84, 84, 3)
    assert reward == ur5_visual.centred_reward(obs["image"]) > 2.5  # at the reference pose the disc is centred
    assert np.array_equal(obs["image"][42, 42], [255, 0, 0]) or np.abs(obs["image"][42, 42].astype(int) -
                                                                         [255, 0, 0]).max() <= 3  # RGB, not BGR
    for _ in range(10):  # the shoulder turns: the disc slides off the centre of the view, and the reward falls
        obs, moved, *_ = env.step(np.array([0.3, 0.0]))
    rows, cols = np.nonzero(ur5_visual.red_mask(obs["image"]))
    assert cols.mean() > 45 and moved < reward - 0.5
    assert capture.delivered >= 11
    env.close()
    assert capture.released


def stop_after_last_command(arm):  # noqa: F811
    """The time of the arm's speedStop that followed its last speedJ (None if it was not stopped after it)."""
    calls = list(zip(arm.names(), arm.times))
    last_command = max(i for i, (name, _) in enumerate(calls) if name == "speedJ")
    return next((t for name, t in calls[last_command:] if name == "speedStop"), None)


@pytest.mark.parametrize("capture, words", [
    (lambda arm: Capture(arm, frames=25), r"camera .*: no new frame for \d+ ms \(stalled or disconnected\)"),
    (lambda arm: Capture(arm, frozen=25), r"camera .*: frozen, the same frame for \d+ ms"),
    (lambda arm: Capture(arm, frames=25, fail=OSError("VIDIOC_DQBUF: No such device")),
     r"camera .*: the capture raised OSError: VIDIOC_DQBUF: No such device")])
def test_a_failing_camera_stops_the_arm_like_a_lost_link_and_says_how(arm, capture, words):  # noqa: F811
    """Stalled, frozen (the same frame again and again) or raising: the arm is stopped by the step that finds it, before
    anything closes the environment, and the one-line error says which it was."""
    feed = capture(arm)
    env = gym.make("UR5VisualReacher-v0", host=HOST, camera=feed, screen=Screen())
    env.reset(seed=0)
    working = time.monotonic()
    with pytest.raises(robots.RobotError, match=words) as error:
        for _ in range(100):
            env.step(np.array([0.2, 0.0]))
            working = time.monotonic()  # the last step that found the camera working
    assert "\n" not in str(error.value) and str(error.value).endswith("the arm was stopped")
    stopped = stop_after_last_command(arm)
    assert stopped is not None and stopped > working  # stopped by the failing step, not by close() (not yet called)
    assert 20 <= feed.delivered <= 40  # it failed where the camera did, not before
    time.sleep(0.1)
    arm.call("poll", control=False)
    assert np.abs(arm.qd).max() < 1e-9
    env.close()


@pytest.mark.parametrize("frame, words", [
    (np.full((360, 640), 128, np.uint8), r"shape \(360, 640\) and dtype uint8"),
    (np.zeros((1, 1, 3), np.uint8), r"shape \(1, 1, 3\)"),
    (np.zeros((360, 640, 3), np.float32), r"dtype float32")])
def test_frames_that_are_not_colour_images_are_refused_in_one_line(arm, frame, words):  # noqa: F811
    with pytest.raises(robots.RobotError, match="must be colour images of 8-bit pixels.*" + words) as error:
        gym.make("UR5VisualReacher-v0", host=HOST, camera=Capture(arm, frame=frame), screen=Screen())
    assert "\n" not in str(error.value)


def test_a_camera_that_never_delivers_is_refused_at_the_start(arm, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ur5_visual, "FIRST_FRAME", 0.3)
    with pytest.raises(robots.RobotError, match="no frame within"):
        gym.make("UR5VisualReacher-v0", host=HOST, camera=Capture(frames=0), screen=Screen())


def test_ctrl_c_inside_a_step_stops_the_arm(arm):  # noqa: F811
    env = gym.make("UR5VisualReacher-v0", host=HOST, camera=Capture(arm), screen=Screen())
    env.reset(seed=0)
    env.step(np.array([0.2, 0.0]))
    step_through_ctrl_c(env, np.array([0.2, 0.0]))
    names = arm.names()
    assert "speedStop" in names[len(names) - 1 - names[::-1].index("speedJ"):]
    env.close()


def test_a_script_on_the_real_arm_exits_4_when_its_camera_stalls(arm, tmp_path, monkeypatch):  # noqa: F811
    """avg.py with --robot-host and --camera: a video file stands in for the camera (OpenCV opens both the same way);
    its frames run out, the camera stalls, the run stops the arm, saves its state and exits with status 4."""
    import avg

    video = tmp_path / "camera.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 360))
    for i in range(20):
        writer.write(disc_frame(180, 300 + i))
    writer.release()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ur5_visual, "TargetScreen", Screen)
    args = avg.Args(env="UR5VisualReacher-v0", robot_host=HOST, camera=str(video), total_timesteps=500,
                    compile="off", run_name="stall")
    assert avg.main(args, {"env", "robot_host", "camera", "total_timesteps", "compile", "run_name"}) == 4
    assert "speedStop" in arm.names()
    assert list((tmp_path / "runs" / "stall" / "checkpoints").glob("step_*.pt"))
