"""Stream-X for discrete actions: Stream Q(lambda), Stream SARSA(lambda) and discrete Stream AC(lambda), as in the
Stream-X paper's MinAtar comparison.

    python scripts/experiments/stream_x_discrete.py                 # paper: 5M steps, 30 seeds, 5 MinAtar games
    python scripts/experiments/stream_x_discrete.py --small         # 100k steps, 3 seeds, CartPole-v1
    python scripts/experiments/stream_x_discrete.py --envs MinAtar/Breakout-v1 MinAtar/SpaceInvaders-v1 --num-seeds 3 \
        --budget 1000000   # docs/results.md
"""
import sys

import recipe

VARIANTS = [("stream_q", "stream_q", ()), ("stream_sarsa", "stream_q", ("--sarsa",)),
            ("stream_ac_discrete", "stream_ac", ())]
PAPER = {"budget": 5_000_000, "num_seeds": 30,
         "envs": [f"MinAtar/{game}-v1" for game in ("Breakout", "Asterix", "Freeway", "Seaquest", "SpaceInvaders")]}
SMALL = {"budget": 100_000, "num_seeds": 3, "envs": ["CartPole-v1"]}

if __name__ == "__main__":
    sys.exit(recipe.main("stream_x_discrete", "Stream-X for discrete actions", VARIANTS, paper=PAPER, small=SMALL))
