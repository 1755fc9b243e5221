"""What the two simulated backends share: a MuJoCo model from robots/assets and its offscreen rendering."""
from pathlib import Path

ASSETS = Path(__file__).with_name("assets")


class MujocoSim:
    """Loads assets/`filename`; renders from the model's camera `camera` at `height` x `width` pixels on demand.
    MuJoCo is imported here, not at package import, so that the real backends never need it."""
    simulated = True

    def __init__(self, filename, camera, height, width):
        import mujoco
        self.mj = mujoco
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / filename))
        self.data = mujoco.MjData(self.model)
        self.substep = self.model.opt.timestep
        self._camera, self._size, self._renderer = camera, (height, width), None

    def render(self):
        if self._renderer is None:
            self._renderer = self.mj.Renderer(self.model, *self._size)
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
