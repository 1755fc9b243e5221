"""The paper's main comparison: AVG against the incremental baselines IAC, SAC-1 and TD3-1, and Stream AC(lambda),
with batch SAC (1M buffer, batch 256) as the reference line.

    python scripts/experiments/avg_vs_baselines.py                  # paper: 10M steps, 30 seeds, 5 MuJoCo tasks
    python scripts/experiments/avg_vs_baselines.py --small          # 50k steps, 3 seeds, Hopper-v4
    python scripts/experiments/avg_vs_baselines.py --small --dry-run

The baselines run without the three normalisation techniques (see plus_variants.py for those), AVG with them,
as in the paper; Stream AC runs with its published defaults. Batch SAC at these budgets is by far the slowest
line (256-sample updates on CPU).
"""
import sys

import recipe

VARIANTS = [
    ("avg", "avg", ()),
    ("iac", "iac", recipe.PLAIN),
    ("sac-1", "sac_incremental", (*recipe.INCREMENTAL, *recipe.PLAIN)),
    ("td3-1", "td3_incremental", (*recipe.INCREMENTAL, *recipe.PLAIN)),
    ("stream_ac", "stream_ac", ()),
    ("sac-batch", "sac_incremental", ("--buffer-size", "1000000", "--batch-size", "256", "--learning-starts", "5000",
                                      *recipe.PLAIN)),
]

if __name__ == "__main__":
    sys.exit(recipe.main("avg_vs_baselines", "AVG vs incremental baselines", VARIANTS))
