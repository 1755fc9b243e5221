"""The list of algorithm scripts, kept in one place: pyproject.toml's py-modules, which is also what `pip install`
installs. scripts/ (sweep, Slurm, bench) and the tests read it from here."""
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def algorithm_scripts():
    """The algorithm scripts' names (avg, iac, ...), in pyproject.toml's order."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(PYPROJECT, "rb") as f:
        return tuple(tomllib.load(f)["tool"]["setuptools"]["py-modules"])
