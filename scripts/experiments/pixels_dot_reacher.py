"""Learning from pixels on VisualDotReacher-v0 (84x84 images, three stacked, beside the proprioception), with the
same task as a vector (DotReacher-v0) beside it: AVG and Stream AC(lambda) with their defaults (one encoder,
shared), AVG with one encoder per network (the measurement behind the shared default), 60k steps, 3 seeds (the
per-network variant 2). docs/results.md ("Learning from pixels") has the results.

    python scripts/experiments/pixels_dot_reacher.py --jobs 2      # two runs at a time
    python scripts/experiments/pixels_dot_reacher.py --dry-run     # the exact commands
"""
import sys

import recipe

COMMON = ("--compile", "on", "--checkpoint-every", "20000")
IMAGES, VECTORS = ["VisualDotReacher-v0"], ["DotReacher-v0"]
VARIANTS = [("avg-pixels", "avg", COMMON, {"envs": IMAGES}),
            ("stream_ac-pixels", "stream_ac", COMMON, {"envs": IMAGES}),
            ("avg-pixels-separate", "avg", ("--no-shared-encoder", *COMMON), {"envs": IMAGES, "seeds": 2}),
            ("avg", "avg", COMMON, {"envs": VECTORS}),
            ("stream_ac", "stream_ac", COMMON, {"envs": VECTORS})]
DEFAULTS = {"budget": 60_000, "num_seeds": 3, "envs": IMAGES + VECTORS}

if __name__ == "__main__":
    sys.exit(recipe.main("pixels_dot_reacher", "VisualDotReacher-v0 and DotReacher-v0", VARIANTS, paper=DEFAULTS,
                         small={"budget": 5_000, "num_seeds": 1, "envs": IMAGES + VECTORS}))
