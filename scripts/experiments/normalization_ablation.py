"""The normalisation ablation: AVG with each of the 8 on/off combinations of observation normalisation (obs),
penultimate normalisation (pen) and TD-error scaling (td). avg-obs+pen+td is AVG as published, avg-none has none.

    python scripts/experiments/normalization_ablation.py            # paper: 10M steps, 30 seeds, 5 MuJoCo tasks
    python scripts/experiments/normalization_ablation.py --small    # 50k steps, 3 seeds, Hopper-v4
"""
import itertools
import sys

import recipe


def variants():
    out = []
    for obs, pen, td in itertools.product((True, False), repeat=3):
        used = [label for label, on in (("obs", obs), ("pen", pen), ("td", td)) if on]
        flags = ("--obs-norm" if obs else "--no-obs-norm", "--feature-norm", "penultimate" if pen else "none",
                 "--scale-td" if td else "--no-scale-td")
        out.append(("avg-" + ("+".join(used) or "none"), "avg", flags))
    return out


if __name__ == "__main__":
    sys.exit(recipe.main("normalization_ablation", "AVG normalisation ablation", variants()))
