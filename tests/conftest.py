"""Before any test module imports MuJoCo: headless, it renders through EGL (MuJoCo picks its OpenGL at import).
The checks marked `long` are started first, so that pytest-xdist's workers take one each at the start and end
together, instead of one worker finishing a two-minute check alone at the end."""
import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: the rest keep their order
