"""Learning that never stops: AVG and Stream AC(lambda) on a floor whose friction changes (SlipperyHopper-v0, a new
friction every 1M steps, 10 frictions in 10M steps), each plain, with UPGD (--upgd) and with continual backprop
(--reinit cbp), 3 seeds; and, for seed 1, a fresh learner of each algorithm trained 1M steps on each of that seed's
frictions (--env-kwargs segment=K), the plasticity reference: does the continuing learner do as well on segment K as a
new one would? Every run logs the plasticity/ diagnostics (docs/algorithms.md 10) and checkpoints every 500k steps, so
a stopped sweep resumes. The table scores each run per 1M-step segment; docs/results.md ("Continual learning") reads it.
scripts/plot_continual.py draws the return and the diagnostics with the changes marked, the fresh learners in their
segments, and tabulates each segment's continuing learners beside its fresh one.

    python scripts/experiments/continual.py --jobs 1                   # tens of core-hours
    python scripts/experiments/continual.py --dry-run                  # the exact commands
    python scripts/experiments/continual.py --small                    # 60k steps, a change every 20k: try it
    python scripts/experiments/continual.py --envs SlipperyAnt-v0 --budget 20e6 --change-every 2e6 --num-seeds 1 \\
        --only avg stream_ac avg-cbp stream_ac-cbp                     # the loss-of-plasticity protocol on Ant
"""
import sys

import recipe

COMMON = ("--compile", "on", "--checkpoint-every", "500000")
REMEDIES = {"": (), "-upgd": ("--upgd",), "-cbp": ("--reinit", "cbp")}
ALGOS = ("avg", "stream_ac")


def add_args(parser):
    parser.add_argument("--change-every", type=recipe.sweep.parse_steps,
                        help="steps between friction changes (default: the task's, 1M on Hopper, 2M on Ant; --small: "
                             "a third of the budget); the fresh learners train this long")
    parser.add_argument("--only", nargs="+", metavar="EXP", help="run only these experiment names (e.g. avg avg-cbp)")
    parser.add_argument("--no-fresh", action="store_true", help="leave out the fresh learners of each segment")


def variants(args):
    budget = args.budget or (SMALL if args.small else PAPER)["budget"]
    every = args.change_every or (budget // 3 if args.small else 1_000_000)
    schedule = ("--env-kwargs", f"change_every={every}")
    chosen = [(f"{algo}{name}", algo, (*flags, *schedule, *COMMON)) for name, flags in REMEDIES.items()
              for algo in ALGOS]
    if not args.no_fresh:  # one fresh learner per segment of seed 1's schedule, on that segment's friction, held
        chosen += [(f"{algo}-fresh{k}", algo, ("--env-kwargs", f"segment={k}", *COMMON), {"seeds": 1, "budget": every})
                   for k in range(max(1, budget // every)) for algo in ALGOS]
    if args.only:
        unknown = sorted(set(args.only) - {exp for exp, *_ in chosen})
        if unknown:
            raise recipe.sweep.SweepError(f"--only: no experiment named {', '.join(unknown)}")
        chosen = [v for v in chosen if v[0] in args.only]
    return chosen


PAPER = {"budget": 10_000_000, "num_seeds": 3, "envs": ["SlipperyHopper-v0"]}
SMALL = {"budget": 60_000, "num_seeds": 3, "envs": ["SlipperyHopper-v0"]}

if __name__ == "__main__":
    sys.exit(recipe.main("continual", "Learning that never stops: a floor that changes", variants, add_args=add_args,
                         paper=PAPER, small=SMALL,
                         plot_args=("--segments", "1000000", "--per-seed")))
