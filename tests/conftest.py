"""Before any test module imports MuJoCo: headless, it renders through EGL (MuJoCo picks its OpenGL at import)."""
import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
