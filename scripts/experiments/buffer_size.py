"""Figure 1 of the paper: SAC and TD3 as the replay buffer shrinks from 1M to 1, with batch size min(256, buffer)
and everything else as in the batch versions (random actions for the first 5000 steps for SAC, 25000 for TD3, as
in common implementations). PPO, also in that figure, is not part of this repository.

    python scripts/experiments/buffer_size.py                       # paper: 10M steps, 30 seeds, 5 MuJoCo tasks
    python scripts/experiments/buffer_size.py --small --sizes 1 1000 1000000
"""
import sys

import recipe


def add_args(parser):
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 10, 100, 1_000, 10_000, 100_000, 1_000_000],
                        help="buffer sizes (default: %(default)s)")
    parser.add_argument("--algos", nargs="+", choices=["sac", "td3"], default=["sac", "td3"])


def variants(args):
    if min(args.sizes) < 1:
        raise recipe.sweep.SweepError("buffer sizes must be at least 1")
    learning_starts = {"sac": 5000, "td3": 25000}
    return [(f"{algo}-buf{recipe.size_text(size)}", f"{algo}_incremental",
             ("--buffer-size", str(size), "--batch-size", str(min(256, size)),
              "--learning-starts", str(learning_starts[algo])))
            for algo in args.algos for size in dict.fromkeys(args.sizes)]


if __name__ == "__main__":
    sys.exit(recipe.main("buffer_size", "SAC and TD3 against replay buffer size", variants, add_args))
