"""Learning from pixels: the image observation pipeline (incremental_utils/image_envs.py) against hand-written loops, the
encoder copies of avg.py and stream_ac.py against sizes worked out by hand and a numpy spatial softmax, pixel scaling,
the compiled update against the eager one on images, and the one-line refusals."""
import importlib
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

import tasks  # noqa: F401 (registers VisualDotReacher-v0)
from helpers import assert_states_close, run_script, scalars
from incremental_utils import image_envs, observations
from incremental_utils.encoders import PixelEncoder
from incremental_utils.compiling import CompiledUpdate, compile_update
from incremental_utils.environments import make_env
from incremental_utils.errors import RunError
from incremental_utils.flags import check_pixel_args

PIXEL_SCRIPTS = ["avg", "stream_ac"]


def pixel_args(module="avg", env="VisualDotReacher-v0", **fields):
    """A pixel script's Args, its camera flags checked and resolved as the script's check_args() does."""
    args = importlib.import_module(module).Args(env=env, **fields)
    check_pixel_args(args)
    return args


def images_of(name):
    return ("frames", "camera") if name == "stream_ac" else ("camera",)


def pixel_env(env="VisualDotReacher-v0", **fields):
    """The environment as avg.py sees it with these flags."""
    return make_env(pixel_args(env=env, **fields), "avg", images=("camera",))


# ------------------------------------------------------------------------------------------------ the pipeline
def test_frame_stack_and_action_repeat_match_a_hand_written_loop():
    """Two copies of VisualDotReacher with the same seed: one through the wrappers (3 frames, each action twice), one
    stepped by hand; the stacked image is the last three agent-step frames, channels first, oldest first; the reward
    is the sum over the repeats."""
    args = pixel_args(frame_stack=3, action_repeat=2)
    env = make_env(args, "avg", images=("camera",))
    assert env.observation_space["image"].shape == (9, 84, 84) and env.observation_space["proprio"].shape == (4,)
    raw = gym.make("VisualDotReacher-v0")
    obs, _ = env.reset(seed=3)
    first, _ = raw.reset(seed=3)
    frames = [first["image"]] * 3
    np.testing.assert_array_equal(obs["image"], np.concatenate([np.moveaxis(f, -1, 0) for f in frames]))
    rng = np.random.default_rng(0)
    for _ in range(7):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        obs, reward, *_ = env.step(action)
        expected = 0.0
        for _ in range(2):
            seen, r, *_ = raw.step(action)
            expected += r
        frames = frames[1:] + [seen["image"]]
        np.testing.assert_array_equal(obs["image"], np.concatenate([np.moveaxis(f, -1, 0) for f in frames]))
        np.testing.assert_allclose(obs["proprio"], seen["proprio"])
        assert reward == pytest.approx(expected)


def test_action_repeat_stops_at_the_episode_end():
    inner, alone = gym.make("VisualDotReacher-v0"), gym.make("VisualDotReacher-v0")
    env = image_envs.ActionRepeat(inner, 8)  # 100-step episodes: 12 repeats of 8, then 4
    env.reset(seed=0)
    alone.reset(seed=0)
    steps, truncated, rewards = 0, False, []
    while not truncated:
        _, reward, _, truncated, _ = env.step(np.full(2, 0.3, np.float32))
        steps, rewards = steps + 1, rewards + [reward]
    assert steps == 13 and inner._elapsed_steps == 100  # the inner episode was not run past its end
    each = [alone.step(np.full(2, 0.3, np.float32))[1] for _ in range(100)]  # the same episode, step by step
    expected = [sum(each[i:i + 8]) for i in range(0, 100, 8)]
    np.testing.assert_allclose(rewards, expected)  # each repeat's rewards summed, the last over its 4 steps


def test_the_dmc_pixel_benchmarks_action_repeat_is_the_default_with_pixels_only():
    """Resolved once, with the flags (so args.json records it), not when the environment is made."""
    def repeat(**fields):
        return pixel_args(env="dm_control/reacher-easy-v0", **fields).action_repeat
    assert repeat(pixels=True) == 4 and repeat() == 1 and repeat(pixels=True, action_repeat=1) == 1
    assert pixel_args(env="dm_control/finger-spin-v0", pixels=True).action_repeat == 2
    assert pixel_args(env="dm_control/cartpole-swingup-v0", pixels=True).action_repeat == 8


def test_a_dict_image_with_vectors_is_split_and_no_proprio_drops_the_vectors():
    env = pixel_env(proprio=False, frame_stack=1)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (3, 84, 84) and obs["image"].dtype == np.uint8 and obs["proprio"].shape == (0,)


@pytest.mark.parametrize("env_id, flags, message", [
    ("faulty_envs:FloatImage-v0", {}, "the image must be uint8 of shape (height, width, channels), got float32"),
    ("faulty_envs:FlatImage-v0", {}, "must be uint8 of shape (height, width, channels), got uint8 of shape (10, 10)"),
    ("faulty_envs:TwoImage-v0", {}, "must have exactly one image in its observation, has 2"),
    ("faulty_envs:ImageObservation-v0", {}, "image is 10x10 (height x width): the encoder needs at least 15 pixels"),
    ("faulty_envs:Point-v0", {"frame_stack": 4}, "--frame-stack and --no-proprio are for image observations"),
    ("faulty_envs:Point-v0", {"pixels": True}, "--pixels: faulty_envs:Point-v0 cannot render"),
    ("VisualDotReacher-v0", {"pixels": True}, "has a camera image already; run it without --pixels"),
    ("Hopper-v4", {"pixels": True, "render_camera": "nope"}, "--render-camera nope: Hopper-v4 has no such camera; "
                                                             "it has 1: ['track']"),
    ("Hopper-v4", {"pixels": True, "render_camera": "1"}, "--render-camera 1: Hopper-v4 has no such camera"),
    ("VisualDotReacher-v0", {"fast_render": True}, "--render-camera and --fast-render choose how --pixels renders"),
    ("Hopper-v4", {"render_camera": "track"}, "--render-camera and --fast-render choose how --pixels renders"),
    ("faulty_envs:Point-v0", {"pixels": True, "fast_render": True}, "--fast-render applies to gymnasium's MuJoCo and "
                                                                    "DeepMind Control tasks; faulty_envs:Point-v0"),
    ("dm_control/reacher-easy-v0", {"pixels": True, "render_camera": "nope"},
     "cannot render (Error: Object of type 'camera' with name 'nope' does not exist."),
    ("VisualDotReacher-v0", {"frame_stack": 0}, "--frame-stack must be at least 1, got 0"),
    ("VisualDotReacher-v0", {"action_repeat": 0}, "--action-repeat must be at least 1, got 0"),
])
def test_images_a_pixel_learner_cannot_use_are_refused_in_one_line(env_id, flags, message):
    with pytest.raises(RunError, match=re.escape(message)):
        pixel_env(env_id, **flags)


@pytest.mark.parametrize("script, flags, message", [
    ("iac.py", [], "iac.py learns from vector observations; VisualDotReacher-v0 has images"),
    ("td3_incremental.py", [], "td3_incremental.py learns from vector observations"),
    ("avg.py", ["--frame-stack", "0"], "avg.py: error: --frame-stack must be at least 1, got 0"),
    ("stream_ac.py", ["--image-size", "8"], "stream_ac.py: error: --image-size must be at least 15 (the encoder's"),
    ("stream_ac.py", ["--env", "faulty_envs:TwoImage-v0"], "must have exactly one image in its observation, has 2"),
])
def test_bad_pixel_input_on_the_command_line_is_one_line_and_exit_2(tmp_path, script, flags, message):
    out = run_script(script, "--env", "VisualDotReacher-v0", *flags, "--total-timesteps", 10, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


# ------------------------------------------------------------------------------------------------ the encoder
@pytest.mark.parametrize("shape, pad, maps", [((9, 84, 84), 0, 9), ((9, 84, 84), 2, 9), ((3, 64, 48), 0, (7, 5))])
def test_encoder_sizes_worked_out_by_hand(shape, pad, maps):
    """3x3 convolutions of stride 2 without padding: n -> (n - 3) // 2 + 1, three times: 84 -> 41 -> 20 -> 9, the
    80 of a 2-pixel crop -> 39 -> 19 -> 9, 64 -> 31 -> 15 -> 7, 48 -> 23 -> 11 -> 5. 64 channels, 2 coordinates each."""
    encoder = PixelEncoder(shape, pad)
    h, w = (maps, maps) if isinstance(maps, int) else maps
    assert encoder.convs(torch.zeros(1, shape[0], shape[1] - 2 * pad, shape[2] - 2 * pad)).shape == (1, 64, h, w)
    channels = encoder.convs(torch.zeros(1, shape[0], shape[1] - 2 * pad, shape[2] - 2 * pad)).shape[1]
    assert encoder(torch.zeros(shape, dtype=torch.uint8)).shape == (2 * channels,) == (128,)  # x and y per channel
    assert encoder.features == 2 * channels  # what the trunk is sized by
    assert encoder(torch.zeros((5, *shape), dtype=torch.uint8)).shape == (5, 2 * channels)


class Fixed(torch.nn.Module):
    """Stands in for the convolutions: returns given maps, and keeps what it was given."""

    def __init__(self, maps):
        super().__init__()
        self.maps, self.seen = maps, None

    def forward(self, x):
        self.seen = x
        return self.maps


def test_spatial_softmax_and_pixel_scaling_against_numpy():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(1, 64, 9, 7)) * 3
    encoder = PixelEncoder((3, 84, 64))
    encoder.convs = Fixed(torch.tensor(maps, dtype=torch.float32))
    image = torch.tensor(rng.integers(0, 256, (3, 84, 64)), dtype=torch.uint8)
    out = encoder(image).numpy()
    np.testing.assert_allclose(encoder.convs.seen[0].numpy(), image.numpy() / 255.0, rtol=1e-6)  # scaled to [0, 1]
    flat = maps.reshape(64, -1)
    softmax = np.exp(flat - flat.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    ys, xs = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 7), indexing="ij")
    expected = np.stack([softmax @ xs.ravel(), softmax @ ys.ravel()], -1).ravel()  # x0, y0, x1, y1, ...
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_random_shift_crops_where_told_and_the_centre_otherwise():
    encoder = PixelEncoder((1, 20, 20), pad=2)
    encoder.convs = Fixed(torch.zeros(1, 64, 1, 1))
    image = torch.arange(400, dtype=torch.uint8).reshape(1, 20, 20)
    encoder(image, torch.tensor([0, 4]))
    np.testing.assert_array_equal(encoder.convs.seen[0, 0].numpy() * 255, image[0, 0:16, 4:20].numpy())
    encoder(image)
    np.testing.assert_array_equal(encoder.convs.seen[0, 0].numpy() * 255, image[0, 2:18, 2:18].numpy())


# ------------------------------------------------------------------------------------------------ the learners
def make_pixel_learner(name, seed=0, **fields):
    module = importlib.import_module(name)
    args = pixel_args(name, hidden_size=32, **fields)
    if name == "avg":
        module.resolve_hyperparams(args)
    torch.manual_seed(seed)
    env = make_env(args, name, images=images_of(name))
    return module, module.make_learner(env, args), env


def pixel_stream(module, learner, env, n, generator):
    """n updates on VisualDotReacher with random actions (the learner's own actions are not needed to compare)."""
    rng = np.random.default_rng(5)
    raw, _ = env.reset(seed=1)
    raw_obs = observations.as_observation(raw, learner.pad, generator)  # the first S, seen by neither learner's statistics
    obs = learner.normalize(raw_obs, learn=False) if module.__name__ == "avg" else \
        learner.observe(raw_obs, torch.tensor(-0.5), learn=False)
    act_dim = 2
    now = learner.acting(obs, torch.zeros(act_dim))
    transitions = []
    for i in range(n):  # random pixels: VisualDotReacher's mostly flat frames give gradients near rounding noise,
        raw, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))  # which Adam's
        raw = {**raw, "image": rng.integers(0, 256, raw["image"].shape, dtype=np.uint8)}  # first steps magnify
        transitions.append((raw, reward, i % 29 == 28))
    return now, transitions


SLOW = {"actor_lr": 1e-4, "critic_lr": 1e-4}  # small steps: over 60 updates rounding differences stay rounding


@pytest.mark.parametrize("name, fields", [
    ("avg", SLOW), ("stream_ac", {}),
    pytest.param("avg", {**SLOW, "shared_encoder": False, "augment": "shift"}, marks=pytest.mark.slow),
    pytest.param("stream_ac", {"augment": "shift"}, marks=pytest.mark.slow)])
def test_compiled_update_matches_eager_on_images(name, fields):
    """60 updates on a fixed stream of images; the whole state agrees to float32 rounding. Some gradients of a conv
    encoder before a spatial softmax are near zero (a constant per channel cancels in the softmax), and Adam's first
    steps would turn their rounding into full-size steps of either sign: AVG's Adam runs with eps 1e-3 here, which
    keeps every step proportional to its gradient (the compiled code is the same, eps is one of its constants)."""
    module, eager, env = make_pixel_learner(name, **fields)
    _, compiled, _ = make_pixel_learner(name, **fields)
    for opt in [m for learner in (eager, compiled) for m in learner.modules() if hasattr(m, "eps")]:
        opt.eps = 1e-3
    now, transitions = pixel_stream(module, eager, env, 60, torch.Generator().manual_seed(0))

    def inputs(now, raw, reward, end, generator):
        if name == "avg":
            return module.step_inputs(now, raw, reward, end, generator, eager.pad)
        return module.step_inputs(now, raw, reward, end, torch.randn(2, generator=generator), generator, eager.pad)

    step = compile_update(compiled, inputs(now, transitions[0][0], 0.0, False, torch.Generator()))
    assert isinstance(step, CompiledUpdate)
    actions = []
    for learner, fn in ((eager, eager), (compiled, step)):
        g, state, taken = torch.Generator().manual_seed(7), now, []
        for raw, reward, end in transitions:
            state = fn(inputs(state, raw, reward, end, g))
            taken.append(state.action)
        actions.append(torch.stack(taken))
    torch.testing.assert_close(actions[1], actions[0], rtol=1e-3, atol=1e-4)
    assert_states_close(eager, compiled)
    assert not torch.equal(eager.critic.encoder.convs[0].weight,
                           make_pixel_learner(name, **fields)[1].critic.encoder.convs[0].weight)  # the encoder learned


@pytest.mark.parametrize("name", PIXEL_SCRIPTS)
def test_a_shared_encoder_belongs_to_the_critic_and_pixels_are_never_normalised(name):
    _, shared, _ = make_pixel_learner(name)
    _, separate, _ = make_pixel_learner(name, shared_encoder=False)
    assert shared.actor.encoder is None and shared.actor.shared is shared.critic.encoder
    assert not any("encoder" in k for k in shared.actor.state_dict())  # the critic's update moves it, not the actor's
    assert separate.actor.encoder is not None and separate.actor.encoder is not separate.critic.encoder
    assert shared.obs_stats.mean.shape == (4,)  # the proprioception only


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("script", ["avg.py", "stream_ac.py"])
def test_a_pixel_run_resumes_exactly_evaluates_and_warm_starts(tmp_path, script):
    """VisualDotReacher-v0 from images: killed after an episode-boundary checkpoint and resumed, the run ends as the
    same run left alone; --eval-every evaluates; evaluate.py runs its .model; --init-from starts a new run from it."""
    import signal

    from helpers import REPO, kill_after_first_checkpoint, script_env
    common = ["--env", "VisualDotReacher-v0", "--total-timesteps", 400, "--seed", 3, "--compile", "off",
              "--save-model", "--augment", "shift", "--log-every", 100]
    whole = run_script(script, *common, "--run-name", "whole", "--eval-every", 200, "--eval-episodes", 2,
                       cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert [s for s, _ in scalars(tmp_path / "runs" / "whole")["eval/episodic_return"]] == [200, 400]
    assert kill_after_first_checkpoint(script, *common, "--run-name", "cut", "--checkpoint-every", 200,
                                       run_dir=tmp_path / "runs" / "cut", cwd=tmp_path) == -signal.SIGKILL
    resumed = run_script(script, "--resume", tmp_path / "runs" / "cut", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    returns = {name: [v for _, v in scalars(tmp_path / "runs" / name)["charts/episodic_return"]]
               for name in ("whole", "cut")}
    assert len(returns["whole"]) == 4 and returns["cut"] == returns["whole"]
    model = tmp_path / "runs" / "whole" / (script[:-3] + ".model")
    saved = torch.load(model, weights_only=False)
    assert saved["observation_space"]["image"].shape == (9, 84, 84)
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), str(model), "--episodes", "2", "--json"],
                         cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    warm = run_script(script, "--env", "VisualDotReacher-v0", "--total-timesteps", 100, "--compile", "off",
                      "--init-from", model, "--run-name", "warm", cwd=tmp_path)
    assert warm.returncode == 0 and "starting from" in warm.stdout, warm.stderr
    other = run_script(script, "--env", "VisualDotReacher-v0", "--total-timesteps", 100, "--compile", "off",
                       "--init-from", model, "--frame-stack", 2, "--run-name", "other", cwd=tmp_path)
    assert other.returncode == 2 and "was trained with observations" in other.stderr, other.stderr


def test_dm_control_from_its_rendered_camera(tmp_path):
    """reacher-easy with --pixels: 84x84 renders of camera 0, three stacked, beside its 6 proprioceptive values;
    action repeat 4 by default (the pixel benchmarks'), so the 1000-step time limit is 250 agent steps."""
    import json

    out = run_script("avg.py", "--env", "dm_control/reacher-easy-v0", "--pixels", "--total-timesteps", 260,
                     "--compile", "off", "--save-model", "--run-name", "dmc", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "dmc"
    assert json.loads((run / "args.json").read_text())["action_repeat"] == 4
    assert [(s, v) for s, v in scalars(run)["charts/episodic_length"]] == [(250, 250)]
    space = torch.load(run / "avg.model", weights_only=False)["observation_space"]
    assert space["image"].shape == (9, 84, 84) and space["proprio"].shape == (6,)


@pytest.mark.parametrize("env_id, name, index, is_default", [
    ("Hopper-v4", "track", "0", False),  # gymnasium's default is its free camera, set by the task
    ("dm_control/reacher-easy-v0", "fixed", "0", True), ("dm_control/reacher-easy-v0", "hand", "1", False)])
def test_a_camera_chosen_by_name_renders_what_its_index_does(env_id, name, index, is_default):
    frames = []
    for camera in (name, index, None):
        env = pixel_env(env_id, pixels=True, render_camera=camera, frame_stack=1, image_size=32)
        frames.append(env.reset(seed=0)[0]["image"])
        env.close()
    np.testing.assert_array_equal(frames[0], frames[1])
    assert np.array_equal(frames[0], frames[2]) == is_default


@pytest.mark.parametrize("env_id", ["Hopper-v4", "dm_control/reacher-easy-v0"])
def test_fast_render_draws_the_scene_as_if_it_had_no_shadows_or_reflections(env_id):
    """--fast-render turns two render flags off; the same picture, reached another way: the model's lights cast no
    shadows and its materials reflect nothing. Without the flag the picture differs (both tasks have both)."""
    fast = pixel_env(env_id, pixels=True, fast_render=True, frame_stack=1, action_repeat=1)
    plain = pixel_env(env_id, pixels=True, frame_stack=1, action_repeat=1)
    default = plain.reset(seed=0)[0]["image"]
    task = plain.unwrapped
    model = task.model if hasattr(task, "model") else task._env.physics.model  # gymnasium's, dm_control's
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0
    frames = [fast.reset(seed=0)[0]["image"], plain.reset(seed=0)[0]["image"]]
    action = np.full(fast.action_space.shape, 0.5)
    frames += [fast.step(action)[0]["image"], plain.step(action)[0]["image"]]
    fast.close(), plain.close()
    np.testing.assert_array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(frames[2], frames[3])
    assert (frames[0] != default).mean() > 0.05


def test_a_mujoco_env_renders_the_same_frames_beside_another_made_closed_or_dropped():
    """gymnasium's MuJoCo envs share the thread's OpenGL (training and evaluation envs in one process): frames of
    one must not depend on another being made, closed or collected (they came out black)."""
    import gc

    def make():
        return pixel_env("Hopper-v4", pixels=True, frame_stack=1, image_size=32)

    def frames(env):
        return np.stack([env.reset(seed=0)[0]["image"]] + [env.step(np.full(3, 0.3))[0]["image"] for _ in range(3)])

    train = make()
    reference = frames(train)
    assert reference.std() > 10  # a picture, not a blank
    other = make()
    np.testing.assert_array_equal(frames(other), reference)
    np.testing.assert_array_equal(frames(train), reference)
    other.close()
    np.testing.assert_array_equal(frames(train), reference)
    dropped = make()
    frames(dropped)
    del dropped
    gc.collect()
    np.testing.assert_array_equal(frames(train), reference)
    np.testing.assert_array_equal(frames(make()), reference)


# (steps, bound on the best 4k-step window, bound on the last): the bounds from every run made, seeds 1-3 on two
# machines (docs/results.md, "Learning from pixels"). Stream AC(lambda) gets there in 24k steps in every seed (its
# 20k-24k windows: -68, -62, -68), so it proves pixel learning in the default suite; AVG needs longer in some seeds
# (seed 3 is still near random at 24k) and runs with -m slow.
LEARNING_RUNS = {"avg": (40_000, -75, -95), "stream_ac": (24_000, -85, -95)}


@pytest.mark.parametrize("name", [pytest.param("avg", marks=pytest.mark.slow), "stream_ac"])
def test_learns_visual_dot_reacher_from_pixels(name, tmp_path):
    """Compiled, defaults, seed 1. Random actions score -105.3 (400 episodes) and the mean of any 40 of their
    episodes stays between -101 and -109; a learner gets some 4k-step window (40 episodes) well above that and does
    not end back near random. Where the first such window comes differs by seed, and a compiled run's trajectory
    differs by CPU (one AVG seed: -64.5 over 12k-16k steps on one machine, -97.8 on another), so the bounds leave room
    below every run made: AVG's best windows were -48.2 to -23.2 at 40k, its last -70.9 to -23.2; Stream AC(lambda)'s
    best -68 to -62 by 24k."""
    steps, best, last = LEARNING_RUNS[name]
    out = run_script(f"{name}.py", "--env", "VisualDotReacher-v0", "--total-timesteps", steps, "--seed", 1,
                     "--compile", "on", "--run-name", "learn", cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr
    returns = scalars(tmp_path / "runs" / "learn")["charts/episodic_return"]
    windows = [np.mean([value for step, value in returns if start < step <= start + 4000])
               for start in range(0, steps, 4000)]
    assert max(windows) > best, windows
    assert windows[-1] > last, windows
