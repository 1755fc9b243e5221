"""The paper's claim at the paper's budget, on Hopper-v4: AVG (5 seeds), Stream AC(lambda) (3 seeds), IAC, SAC-1 and
TD3-1 (1 seed each) for 10M steps, every script with its published or default hyperparameters, and batch SAC (1M
buffer, batch 256) for 1M steps as the reference line. Checkpoints every 500k steps (batch SAC, at about 100 steps/s
on one core, every 100k), so a stopped sweep resumes.
The figure and table score each run by its mean return over the last 10k steps (the AVG paper's measure) and over
the last 10% of its steps, and a table gives each run's episodes per million steps (how many, their mean return, the
share above 2500); docs/results.md ("Hopper-v4 at the paper's budget") has the results.

    python scripts/experiments/hopper_10m.py --jobs 1         # one run at a time (hours each on one core)
    python scripts/experiments/hopper_10m.py --dry-run        # the exact commands
    python scripts/experiments/hopper_10m.py --small          # 50k steps (batch SAC 5k), to try the recipe
"""
import sys

import recipe

COMPILE = ("--compile", "on")
COMMON = (*COMPILE, "--checkpoint-every", "500000")
BATCH = ("--buffer-size", "1000000", "--batch-size", "256", "--learning-starts", "5000")


def variants(args):
    batch_budget = (args.budget or (recipe.SMALL if args.small else PAPER)["budget"]) // 10
    return [("avg", "avg", COMMON, {"seeds": 5}),
            ("iac", "iac", (*recipe.PLAIN, *COMMON), {"seeds": 1}),
            ("sac-1", "sac_incremental", (*recipe.INCREMENTAL, *recipe.PLAIN, *COMMON), {"seeds": 1}),
            ("td3-1", "td3_incremental", (*recipe.INCREMENTAL, *recipe.PLAIN, *COMMON), {"seeds": 1}),
            ("stream_ac", "stream_ac", COMMON, {"seeds": 3}),
            ("sac-batch", "sac_incremental", (*BATCH, *recipe.PLAIN, *COMPILE, "--checkpoint-every", "100000"),
             {"seeds": 1, "budget": batch_budget})]


PAPER = {"budget": 10_000_000, "num_seeds": 5, "envs": ["Hopper-v4"]}

if __name__ == "__main__":
    sys.exit(recipe.main("hopper_10m", "Hopper-v4 at the paper's budget", variants, paper=PAPER,
                         small={"budget": 50_000, "num_seeds": 5, "envs": ["Hopper-v4"]},
                         plot_args=("--final-steps", "10000", "--per-seed",
                                    "--segments", "1000000", "--above", "2500", "--reference", "sac-batch")))
