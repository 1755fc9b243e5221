"""Intentional updates against ObGD, the optimiser being the only difference: Intentional AC against Stream AC(lambda)
on the five MuJoCo tasks, and Intentional Q(lambda) against Stream Q(lambda) on MinAtar, each with the papers'
defaults, 2M steps, 3 seeds. Checkpoints every 500k steps, so a stopped sweep resumes. docs/results.md ("Intentional
updates") has the results, and beside them the authors' own intentional_ac.py and intentional_q_minatar.py run by
scripts/reference_runs.py.

    python scripts/experiments/intentional.py --jobs 1               # 48 runs
    python scripts/experiments/intentional.py --fidelity --jobs 1    # ours beside the authors': Hopper and HalfCheetah
                                                                     # 1M x 3 seeds, Breakout 1M x 2, no time feature
    python scripts/experiments/intentional.py --small                # 50k steps, to try the recipe
"""
import sys

import recipe

COMMON = ("--compile", "on", "--checkpoint-every", "500000")
MINATAR = ["MinAtar/Breakout-v1", "MinAtar/Asterix-v1", "MinAtar/Freeway-v1", "MinAtar/Seaquest-v1",
           "MinAtar/SpaceInvaders-v1"]
# The authors' intentional_ac.py has no time feature; --fidelity leaves ours out so that only the code differs.
NO_TIME = ("--no-time-feature",)


def add_args(parser):
    parser.add_argument("--fidelity", action="store_true",
                        help="only the intentional runs to set beside the authors' (1M steps; Hopper-v4 and "
                             "HalfCheetah-v4 3 seeds, MinAtar/Breakout-v1 2 seeds; no time feature)")


def variants(args):
    if args.fidelity:
        mujoco = {"envs": ["Hopper-v4", "HalfCheetah-v4"], "budget": args.budget or 1_000_000}
        return [("intentional_ac-notime", "stream_ac", ("--optimizer", "intentional", *NO_TIME, *COMMON), mujoco),
                ("intentional_q", "stream_q", ("--optimizer", "intentional", *COMMON),
                 {"envs": ["MinAtar/Breakout-v1"], "seeds": 2, "budget": args.budget or 1_000_000})]
    envs = args.envs or (recipe.SMALL if args.small else PAPER)["envs"]
    mujoco = {"envs": [e for e in envs if not e.startswith("MinAtar/")]}
    minatar = {"envs": [e for e in envs if e.startswith("MinAtar/")]}
    return [("intentional_ac", "stream_ac", ("--optimizer", "intentional", *COMMON), mujoco),
            ("stream_ac", "stream_ac", COMMON, mujoco),
            ("intentional_q", "stream_q", ("--optimizer", "intentional", *COMMON), minatar),
            ("stream_q", "stream_q", COMMON, minatar)]


PAPER = {"budget": 2_000_000, "num_seeds": 3, "envs": [*recipe.PAPER["envs"], *MINATAR]}

if __name__ == "__main__":
    fidelity = "--fidelity" in sys.argv
    sys.exit(recipe.main("intentional", "Intentional updates against ObGD", variants, add_args=add_args,
                         paper={**PAPER, "envs": ["Hopper-v4", "HalfCheetah-v4", "MinAtar/Breakout-v1"]}
                         if fidelity else PAPER))
