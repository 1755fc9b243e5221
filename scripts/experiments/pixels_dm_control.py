"""DeepMind Control from pixels: AVG and Stream AC(lambda) on dm_control/reacher-easy-v0 rendered by its camera
(--pixels: 84x84, three frames, action repeat 4, the proprioception beside the image), beside the same task from
its vector observation, 100k agent steps (400k environment steps from pixels), 2 seeds; and the vector with the pixel
runs' action repeat (Stream AC 2 seeds, AVG 1) and AVG from the image without the vector (1 seed). docs/results.md
("Learning from pixels") has the results.

    python scripts/experiments/pixels_dm_control.py --jobs 2      # rendering costs 12-14 ms a frame on a CPU
    python scripts/experiments/pixels_dm_control.py --envs dm_control/finger-spin-v0 --dry-run
"""
import sys

import recipe

COMMON = ("--compile", "on", "--checkpoint-every", "10000")
VARIANTS = [("avg-pixels", "avg", ("--pixels", *COMMON)),
            ("stream_ac-pixels", "stream_ac", ("--pixels", *COMMON)),
            ("avg", "avg", COMMON),
            ("stream_ac", "stream_ac", COMMON),
            # What separates the first and third: the action repeat alone (the vector, each action 4 times), and the
            # image alone (--no-proprio: reacher's vector observation holds the target's offset, the image only a disc)
            ("avg-repeat4", "avg", ("--action-repeat", "4", *COMMON), {"seeds": 1}),
            ("stream_ac-repeat4", "stream_ac", ("--action-repeat", "4", *COMMON)),
            ("avg-pixels-only", "avg", ("--pixels", "--no-proprio", *COMMON), {"seeds": 1})]
DEFAULTS = {"budget": 100_000, "num_seeds": 2, "envs": ["dm_control/reacher-easy-v0"]}

if __name__ == "__main__":
    sys.exit(recipe.main("pixels_dm_control", "DeepMind Control from pixels", VARIANTS, paper=DEFAULTS,
                         small={"budget": 5_000, "num_seeds": 1, "envs": DEFAULTS["envs"]}))
