"""Evaluate a trained agent: run its policy for some episodes without learning, on its environment or another with
the same spaces, simulated or real, and print the mean return with a 95% interval.

    python scripts/evaluate.py runs/Hopper-v4__avg__1                    # a run directory (its .model, else its
    python scripts/evaluate.py runs/Hopper-v4__avg__1/avg.model          #   newest checkpoint), a .model file
    python scripts/evaluate.py runs/X/checkpoints/step_000000500000.pt   #   or a checkpoint, of any script
    python scripts/evaluate.py runs/UR5__avg__1 --robot-host 192.168.1.10 --episodes 5   # on the real arm

The policy acts deterministically by default (tanh of the mean for the squashed-Gaussian scripts, the clipped mean
for Stream AC, the actor's action for TD3), with the observation statistics frozen as saved. --stochastic samples
instead. Episode i starts from env.reset(seed=SEED + i). Robots run with the same safety layers and stops as in
training; Ctrl-C stops the robot and exits with 130. Bad input is one line and exit status 2.
"""
import argparse
import dataclasses
import importlib
import json
import math
import sys
from pathlib import Path

import gymnasium as gym
import torch

from plot import mean_ci  # scripts/plot.py

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import robots  # noqa: E402
from incremental_utils.checkpoints import check_spaces, load_policy, load_policy_source  # noqa: E402
from incremental_utils.environments import make_env  # noqa: E402
from incremental_utils.errors import RunError  # noqa: E402
from incremental_utils.flags import PixelArgs, check_pixel_args  # noqa: E402
from incremental_utils.evaluation import run_episodes  # noqa: E402


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage text and an error
        print(f"evaluate.py: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse(argv):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run directory, a .model file or a checkpoint of any algorithm script")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to run (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="episode i starts from reset(seed=SEED + i) (default: 0)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", dest="deterministic", action="store_true", default=True,
                      help="act with the policy's deterministic action (default)")
    mode.add_argument("--stochastic", dest="deterministic", action="store_false",
                      help="sample actions from the policy")
    parser.add_argument("--env", help="another environment id with the same observation and action spaces")
    parser.add_argument("--robot-host", help="UR5Reacher: IP of the real arm")
    parser.add_argument("--robot-port", help="Create2Mover: serial device of the real robot")
    parser.add_argument("--realtime", action="store_true", help="simulated robots: pace steps to the real cycle")
    parser.add_argument("--camera", help="UR5VisualReacher: the real camera (an OpenCV device, e.g. 0 or /dev/video0)")
    parser.add_argument("--capture-video", action="store_true", help="record the episodes to videos/evaluate_*")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if args.episodes <= 0:
        parser.error(f"--episodes must be positive, got {args.episodes}")
    if not 0 <= args.seed <= 2**32 - args.episodes:  # episode i resets with SEED + i, and reset() takes 32-bit seeds
        parser.error(f"--seed must be between 0 and 2**32 - {args.episodes} (the number of episodes), got {args.seed}")
    return args


def evaluate(opts):
    source = load_policy_source(opts.path)
    module = importlib.import_module(source["algo"])
    saved = module.Args(**source["args"])
    args = dataclasses.replace(saved, env=opts.env or saved.env, robot_host=opts.robot_host,
                               robot_port=opts.robot_port, realtime=opts.realtime, capture_video=opts.capture_video,
                               run_name=f"evaluate_{Path(opts.path).resolve().name}",
                               **({"camera": opts.camera} if isinstance(saved, PixelArgs) else {}))
    if opts.camera and not isinstance(saved, PixelArgs):
        raise RunError(f"--camera: {source['algo']}.py does not learn from images")
    if isinstance(args, PixelArgs):
        check_pixel_args(args)  # a saved run's flags, as its training resolved them
    env = make_env(args, source["algo"], action_spaces=(gym.spaces.Box, gym.spaces.Discrete),
                   finite_action_bounds=False, images=("frames", "camera") if isinstance(args, PixelArgs) else
                   ("frames",))  # check_spaces holds it to the saved ones
    try:
        check_spaces(env, source, opts.path)
        learner = module.make_learner(env, args)
        load_policy(learner, module.policy_parts(learner), source)
        generator = None if opts.deterministic else torch.Generator().manual_seed(opts.seed)
        returns, lengths = run_episodes(env, learner.evaluation_action, opts.episodes, opts.seed, generator)
    finally:
        env.close()  # stops a real robot
    mean, half_width = mean_ci(returns)
    return {"path": str(opts.path), "algo": source["algo"], "env": args.env, "episodes": opts.episodes,
            "deterministic": opts.deterministic, "seed": opts.seed, "mean_return": mean,
            "ci95": [mean - half_width, mean + half_width] if not math.isnan(half_width) else None,
            "returns": returns, "lengths": lengths}


def main(argv=None):
    opts = parse(argv)
    try:
        result = evaluate(opts)
    except RunError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    except robots.RobotError as e:
        print(f"evaluate.py: robot error: {e}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("evaluate.py: stopped by SIGINT (the robot, if any, was stopped)", file=sys.stderr)
        return 130
    if opts.json:
        print(json.dumps(result))
        return 0
    ci = result["ci95"]
    interval = f", 95% CI [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
    mode = "deterministic" if opts.deterministic else "stochastic"
    print(f"{result['algo']}.py policy from {opts.path} on {result['env']}, {opts.episodes} episodes ({mode}, "
          f"seeds {opts.seed}-{opts.seed + opts.episodes - 1})")
    print(f"mean return {result['mean_return']:.1f}{interval}")
    print("returns: " + " ".join(f"{r:.1f}" for r in result["returns"]))
    print("lengths: " + " ".join(str(n) for n in result["lengths"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
