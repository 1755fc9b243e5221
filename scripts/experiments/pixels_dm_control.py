"""DeepMind Control from pixels: AVG and Stream AC(lambda) on dm_control/reacher-easy-v0 rendered by its camera
(--pixels: 84x84, three frames, action repeat 4, the proprioception beside the image), beside the same task from
its vector observation, 100k agent steps (400k environment steps from pixels), 2 seeds. docs/results.md ("Learning
from pixels") has the results.

    python scripts/experiments/pixels_dm_control.py --jobs 2      # rendering costs 12-14 ms a frame on a CPU
    python scripts/experiments/pixels_dm_control.py --envs dm_control/finger-spin-v0 --dry-run
"""
import sys

import recipe

COMMON = ("--compile", "on", "--checkpoint-every", "10000")
VARIANTS = [("avg-pixels", "avg", ("--pixels", *COMMON)),
            ("stream_ac-pixels", "stream_ac", ("--pixels", *COMMON)),
            ("avg", "avg", COMMON),
            ("stream_ac", "stream_ac", COMMON)]
DEFAULTS = {"budget": 100_000, "num_seeds": 2, "envs": ["dm_control/reacher-easy-v0"]}

if __name__ == "__main__":
    sys.exit(recipe.main("pixels_dm_control", "DeepMind Control from pixels", VARIANTS, paper=DEFAULTS,
                         small={"budget": 5_000, "num_seeds": 1, "envs": DEFAULTS["envs"]}))
