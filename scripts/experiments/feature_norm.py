"""Feature normalisation alternatives for AVG: penultimate (unit L2 norm, the paper's), LayerNorm and RMSNorm on
the last hidden features, and none.

    python scripts/experiments/feature_norm.py                      # paper: 10M steps, 30 seeds, 5 MuJoCo tasks
    python scripts/experiments/feature_norm.py --small              # 50k steps, 3 seeds, Hopper-v4
"""
import sys

import recipe

VARIANTS = [(f"avg-fn-{kind}", "avg", ("--feature-norm", kind)) for kind in ("penultimate", "layer", "rms", "none")]

if __name__ == "__main__":
    sys.exit(recipe.main("feature_norm", "AVG feature normalisation", VARIANTS))
