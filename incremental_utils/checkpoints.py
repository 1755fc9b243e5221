"""Files a run leaves behind and reads back: atomic checkpoints of the complete learner state, saved policies (.model
files, and the policy parts of a checkpoint) for --init-from and scripts/evaluate.py, and the provenance (versions and
git commit) written with them."""
import json
import os
import platform
import subprocess
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from .errors import RunError

ROOT = Path(__file__).resolve().parent.parent  # the checkout whose commit made_with() records
CHECKPOINT_KEYS = {"algo", "args", "obs_dim", "act_dim", "global_step", "episodes", "learner", "rng", "wandb_id"}
MODEL_FORMAT = "incremental-rl model 1"


def save_atomic(obj, path):
    """torch.save to a temporary file, fsync, rename: a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_file(path, what=""):
    """torch.load of a file this project wrote (it holds Python objects: arguments, spaces), or a one-line error."""
    if not path.is_file():
        raise RunError(f"{what}{path} does not exist")
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:
        raise RunError(f"{what}{path} is unreadable or corrupt ({type(e).__name__})") from None


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def load_checkpoint(path, algo):
    """The newest checkpoint in a run directory (or the file `path`), checked to be a complete `algo` checkpoint."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        candidates = sorted(folder.glob("step_*.pt"))
        if not candidates:
            raise RunError(f"no checkpoint found in {path}")
        path = candidates[-1]
    checkpoint = load_file(path, "checkpoint ")
    if not isinstance(checkpoint, dict) or "algo" not in checkpoint:
        raise RunError(f"{path} is not a checkpoint of this project")
    if checkpoint["algo"] != algo:
        raise RunError(f"{path} is a {checkpoint['algo']}.py checkpoint, not a {algo}.py one")
    missing = CHECKPOINT_KEYS - set(checkpoint)
    if missing:
        raise RunError(f"checkpoint {path} is incomplete (no {', '.join(sorted(missing))})")
    return checkpoint, path


# ---------------------------------------------------------------------------------------------- saved policies
def save_model(path, algo, args, parts, env, global_step):
    """A .model file: the policy's parts ({name: state_dict}) with what rebuilding them needs (the script, its
    arguments, the spaces) and how they were made."""
    obs_dim, act_dim = space_sizes(env)
    save_atomic({"format": MODEL_FORMAT, "algo": algo, "args": args, **parts, "parts": sorted(parts),
                 "obs_dim": obs_dim, "act_dim": act_dim, "observation_space": env.observation_space,
                 "action_space": env.action_space, "global_step": global_step, "made_with": made_with()}, path)


def load_policy_source(path, algo=None):
    """What rebuilding a policy needs, from a run directory (its .model if it has one, else its newest checkpoint), a
    .model file or a checkpoint: {"algo", "args", "obs_dim", "act_dim", "spaces" (None for a checkpoint), "model"
    ({part: state_dict}, None for a checkpoint), "learner" (a checkpoint's whole learner state, else None), "path",
    "global_step"}. With `algo`, a file of another script is refused."""
    path = Path(path)
    if path.is_dir():
        models = sorted(path.glob("*.model"))
        if models:
            path = models[0]
        elif not any((path / "checkpoints").glob("step_*.pt")) and not any(path.glob("step_*.pt")):
            finished = (read_json(path / "summary.json") or {}).get("finished")
            raise RunError(f"{path} holds no saved policy: the run {'finished' if finished else 'stopped'} without "
                           "--save-model and kept no checkpoint; train with --save-model (or --checkpoint-every N) "
                           "to evaluate or warm-start from it")
        else:
            saved = read_json(path / "args.json")
            path = load_checkpoint(path, algo or (saved or {}).get("algo", "?"))[1]
    saved = load_file(path)
    is_model = isinstance(saved, dict) and saved.get("format") == MODEL_FORMAT
    if not is_model and not (isinstance(saved, dict) and CHECKPOINT_KEYS <= set(saved)):
        raise RunError(f"{path} is not a model, checkpoint or run directory of this project")
    if algo and saved["algo"] != algo:
        raise RunError(f"{path} was saved by {saved['algo']}.py, not {algo}.py")
    model = None
    if is_model:  # files from before "parts" was recorded hold these names
        names = saved.get("parts") or [n for n in ("actor", "critic", "q_net", "obs_stats") if n in saved]
        model = {name: saved[name] for name in names}
    return {"algo": saved["algo"], "args": saved["args"], "obs_dim": saved["obs_dim"], "act_dim": saved["act_dim"],
            "spaces": (saved["observation_space"], saved["action_space"]) if is_model else None, "model": model,
            "learner": None if is_model else saved["learner"], "path": str(path), "global_step": saved["global_step"]}


def load_policy(learner, parts, source):
    """Loads the saved policy into `parts` ({name: module of the learner}, as the script names them): from a .model by
    those names, from a checkpoint by where each module sits in the learner's state."""
    prefixes = {id(module): name for name, module in learner.named_modules()}
    for name, module in parts.items():
        if source["model"] is not None:
            if name not in source["model"]:
                raise RunError(f"{source['path']} holds no {name} (it has {', '.join(source['model'])})")
            state = source["model"][name]
        else:
            prefix = prefixes[id(module)] + "."
            state = {k[len(prefix):]: v for k, v in source["learner"].items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
            raise RunError(f"the {name} saved in {source['path']} does not fit this run's ({reason}); use the saved "
                           "run's network settings (--hidden-size, --feature-norm, ...)") from None


def space_sizes(env):
    """(observation size, action size or number of actions): what a checkpoint records of the spaces."""
    obs, action = env.observation_space, env.action_space
    obs_dim = obs.shape[0] if isinstance(obs, gym.spaces.Box) else {k: tuple(v.shape) for k, v in obs.spaces.items()}
    return obs_dim, (action.shape[0] if action.shape else int(action.n))


def check_spaces(env, source, path):
    """Refuses, in one line, an environment whose spaces differ from those the saved policy was trained on (a model
    keeps the spaces; a checkpoint only their sizes)."""
    obs_dim, act_dim = space_sizes(env)
    if source["spaces"] is not None:
        saved_obs, saved_action = source["spaces"][0], source["spaces"][1]
        same = same_observation_space(saved_obs, env.observation_space) and \
            (obs_dim, act_dim) == (source["obs_dim"], source["act_dim"])
        if same and isinstance(env.action_space, gym.spaces.Box):
            same = (np.allclose(saved_action.low, env.action_space.low)
                    and np.allclose(saved_action.high, env.action_space.high))
        saved_obs = describe_space(saved_obs)
    else:
        saved_obs, saved_action = (source["obs_dim"],), f"of size {source['act_dim']}"
        same = (obs_dim, act_dim) == (source["obs_dim"], source["act_dim"])
    if not same:
        raise RunError(f"{path} was trained with observations {saved_obs} and actions {saved_action}; "
                       f"{env.spec.id if env.spec else 'this environment'} has {describe_space(env.observation_space)} "
                       f"and {env.action_space}")


def same_observation_space(a, b):
    if isinstance(a, gym.spaces.Dict) or isinstance(b, gym.spaces.Dict):
        return isinstance(a, gym.spaces.Dict) and isinstance(b, gym.spaces.Dict) and list(a.spaces) == \
            list(b.spaces) and all(same_observation_space(a[k], b[k]) for k in a.spaces)
    return a.shape == b.shape


def describe_space(space):
    if isinstance(space, gym.spaces.Dict):
        return "{" + ", ".join(f"{k}: {describe_space(v)}" for k, v in space.spaces.items()) + "}"
    return f"of shape {space.shape}"


# ------------------------------------------------------------------------------------------------- provenance
def made_with():
    """The versions and the checkout that made a run, for args.json. (MuJoCo's from the package metadata: importing
    it here would fix its OpenGL backend before make_env chooses one for rendering.)"""
    from importlib.metadata import version

    versions = {"python": platform.python_version(), "torch": torch.__version__, "gymnasium": gym.__version__,
                "mujoco": version("mujoco"), "numpy": np.__version__}
    try:
        def git(*cmd):
            return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        versions["git_commit"] = git("rev-parse", "HEAD")
        versions["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # not a checkout (an installed copy), or no git
        versions["git_commit"] = versions["git_dirty"] = None
    return versions
