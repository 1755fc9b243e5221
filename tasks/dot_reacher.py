"""The dot reacher: a point mass under acceleration control in the square [-1, 1]^2 must reach a target and stay on
it, after the authors' dot reacher (gauthamvasan/avg incremental_rl/envs/dot_reacher_env.py: dt 0.2, pos += vel dt +
a dt^2 / 2, vel += a dt, at a wall the velocity reverses at a tenth of its size). Unlike theirs, the target is drawn
anew each episode, uniformly in [-0.7, 0.7]^2, so that the visual variant must find it in the image, and the reward is
dense: minus the distance to the target, every step, for 100 steps (truncated, never terminated).

VisualDotReacher-v0 observes {"image": an RGB picture of the arena, size x size (84 by default), the target a red
disc and the dot a white one on grey, "proprio": the dot's position and velocity}; the target's position is only in
the image. DotReacher-v0 observes the vector (position, velocity, target): the same task from proprioception.
Drawing costs a copy of the background (target included, drawn at reset) and the dot's few pixels: tens of
microseconds a step."""
import math

import gymnasium as gym
import numpy as np

DT, WALL_BOUNCE, TARGET_RANGE = 0.2, 0.1, 0.7
RADIUS = 0.09  # of both discs, in arena units (4 pixels at 84 x 84)
BACKGROUND, TARGET_COLOUR, DOT_COLOUR = (40, 40, 40), (220, 30, 30), (240, 240, 240)


class DotReacher(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1 / DT)}

    def __init__(self, visual=True, size=84, render_mode=None):
        self.visual, self.size, self.render_mode = visual, size, render_mode
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        vector = gym.spaces.Box(-np.inf, np.inf, (4 if visual else 6,), np.float32)
        self.observation_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
                                                  "proprio": vector}) if visual else vector
        self.pixel = 2.0 / size  # arena units per pixel; pixel (i, j) covers row i from the top, column j
        self.centres = -1.0 + (np.arange(size) + 0.5) * self.pixel
        self.background = np.empty((size, size, 3), np.uint8)
        self.pos = self.vel = self.target = None

    def _disc(self, image, centre, colour):
        """Fills the pixels whose centre lies within RADIUS of `centre` (x right, y up), looking only near it."""
        x, y = centre
        c0, c1 = max(0, int((x - RADIUS + 1) / self.pixel)), min(self.size, int((x + RADIUS + 1) / self.pixel) + 1)
        r0, r1 = max(0, int((1 - y - RADIUS) / self.pixel)), min(self.size, int((1 - y + RADIUS) / self.pixel) + 1)
        cols, rows = slice(c0, c1), slice(r0, r1)
        dx, dy = self.centres[cols] - x, -self.centres[rows] - y
        inside = dy[:, None] ** 2 + dx[None, :] ** 2 <= RADIUS ** 2
        image[rows, cols][inside] = colour

    def _image(self):
        image = self.background.copy()
        self._disc(image, self.pos, DOT_COLOUR)
        return image

    def _obs(self):
        if not self.visual:
            return np.array([*self.pos, *self.vel, *self.target], np.float32)
        return {"image": self._image(), "proprio": np.array([*self.pos, *self.vel], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = tuple(self.np_random.uniform(-1, 1, 2).tolist())
        self.vel = (0.0, 0.0)
        self.target = tuple(self.np_random.uniform(-TARGET_RANGE, TARGET_RANGE, 2).tolist())
        self.background[:] = BACKGROUND
        self._disc(self.background, self.target, TARGET_COLOUR)
        return self._obs(), {}

    def step(self, action):
        (x, y), (vx, vy), (tx, ty) = self.pos, self.vel, self.target  # floats: numpy's per-call cost would dominate
        ax, ay = (min(max(float(a), -1.0), 1.0) for a in action)
        x, y = x + vx * DT + 0.5 * ax * DT * DT, y + vy * DT + 0.5 * ay * DT * DT
        vx, vy = vx + ax * DT, vy + ay * DT
        if abs(x) > 1.0:  # the walls
            x, vx = math.copysign(1.0, x), -WALL_BOUNCE * vx
        if abs(y) > 1.0:
            y, vy = math.copysign(1.0, y), -WALL_BOUNCE * vy
        self.pos, self.vel = (x, y), (vx, vy)
        distance = math.hypot(x - tx, y - ty)
        return self._obs(), -distance, False, False, {"distance": distance}

    def render(self):
        return self._image() if self.render_mode == "rgb_array" else None
