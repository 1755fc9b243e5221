"""UR5VisualReacher-v0: the simulated task (the arm's camera, the screen's target, the image reward) and the real path
against stand-ins: ur_rtde's interfaces (test_robots_ur5.py's) and capture sources that deliver frames, and one that
stalls. A stalled camera stops the arm exactly as a lost link does: a one-line RobotError, exit status 4 from a script."""
import time

import cv2
import gymnasium as gym
import numpy as np
import pytest

import robots
from robots import ur5, ur5_visual
from robots_helpers import step_through_ctrl_c
from test_robots_ur5 import HOST, StandInUR5, arm  # noqa: F401 (the fixture)


def disc_frame(row, col, size=(360, 640)):
    """A camera frame (BGR, as OpenCV gives them) of a white screen with a red disc."""
    frame = np.full((*size, 3), 240, np.uint8)
    cv2.circle(frame, (col, row), 20, (0, 0, 255), -1)
    return frame


class Capture:
    """Stands in for cv2.VideoCapture: a frame every `period` seconds, `frames` of them (then it stalls: read() blocks
    as a hung USB camera's does)."""

    def __init__(self, frames=None, period=1 / 30, frame=None):
        self.frames, self.period, self.frame = frames, period, disc_frame(180, 320) if frame is None else frame
        self.delivered, self.released = 0, False

    def isOpened(self):
        return True

    def read(self):
        if self.frames is not None and self.delivered >= self.frames:
            time.sleep(0.05)  # stalled
            return False, None
        time.sleep(self.period)
        self.delivered += 1
        return True, self.frame

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
    capture, screen = Capture(), Screen()
    env = gym.make("UR5VisualReacher-v0", host=HOST, camera=capture, screen=screen)
    obs, _ = env.reset(seed=0)
    assert len(screen.shown) == 1 and all(0 <= v <= 1 for v in screen.shown[0])  # the target, on the screen
    for _ in range(5):
        obs, reward, *_ = env.step(np.array([0.1, -0.1]))
    assert obs["image"].shape == (84, 84, 3)
    assert reward == ur5_visual.centred_reward(obs["image"]) > 2.5  # the stand-in camera sees the disc centred
    seen = ur5_visual.red_mask(obs["image"])
    assert seen.any() and np.array_equal(obs["image"][42, 42], [255, 0, 0])  # RGB, not OpenCV's BGR
    assert capture.delivered >= 5
    env.close()
    assert capture.released


def test_a_stalled_camera_stops_the_arm_like_a_lost_link(arm):  # noqa: F811
    env = gym.make("UR5VisualReacher-v0", host=HOST, camera=Capture(frames=25), screen=Screen())
    env.reset(seed=0)
    with pytest.raises(robots.RobotError, match=r"camera .*: no new frame for \d+ ms") as error:
        for _ in range(100):
            env.step(np.array([0.2, 0.0]))
    assert "\n" not in str(error.value)
    names = arm.names()
    assert "speedStop" in names[names.index("speedJ"):]  # the arm was stopped
    time.sleep(0.1)
    arm.call("poll", control=False)
    assert np.abs(arm.qd).max() < 1e-9
    env.close()


def test_a_camera_that_never_delivers_is_refused_at_the_start(arm, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ur5_visual, "FIRST_FRAME", 0.3)
    with pytest.raises(robots.RobotError, match="no frame within"):
        gym.make("UR5VisualReacher-v0", host=HOST, camera=Capture(frames=0), screen=Screen())


def test_ctrl_c_inside_a_step_stops_the_arm(arm):  # noqa: F811
    env = gym.make("UR5VisualReacher-v0", host=HOST, camera=Capture(), screen=Screen())
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
