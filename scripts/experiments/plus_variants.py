"""The "+" variants: IAC, SAC-1 and TD3-1 with and without the three techniques of AVG (observation
normalisation, penultimate normalisation, TD-error scaling), with AVG for reference.

    python scripts/experiments/plus_variants.py                     # paper: 10M steps, 30 seeds, 5 MuJoCo tasks
    python scripts/experiments/plus_variants.py --small             # 50k steps, 3 seeds, Hopper-v4
"""
import sys

import recipe

VARIANTS = [("avg", "avg", ())]
for name, algo, base in (("iac", "iac", ()), ("sac-1", "sac_incremental", recipe.INCREMENTAL),
                         ("td3-1", "td3_incremental", recipe.INCREMENTAL)):
    VARIANTS += [(name, algo, (*base, *recipe.PLAIN)), (name + "+", algo, (*base, *recipe.PLUS))]

if __name__ == "__main__":
    sys.exit(recipe.main("plus_variants", "Incremental baselines with and without AVG's techniques", VARIANTS))
