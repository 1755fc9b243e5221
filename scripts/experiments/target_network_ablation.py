"""The target-network ablation: AVG with a Polyak-averaged target critic at several rates tau; tau = 1 is AVG
without a target network (the paper finds the target network does not help).

    python scripts/experiments/target_network_ablation.py                     # paper budget, taus 1 0.1 0.01 0.005
    python scripts/experiments/target_network_ablation.py --small --taus 1 0.01
"""
import sys

import recipe


def add_args(parser):
    parser.add_argument("--taus", nargs="+", type=float, default=[1.0, 0.1, 0.01, 0.005],
                        help="target rates in (0, 1] (default: %(default)s)")


def variants(args):
    return [(f"avg-tau{tau:g}", "avg", ("--target-tau", f"{tau:g}")) for tau in dict.fromkeys(args.taus)]


if __name__ == "__main__":
    sys.exit(recipe.main("target_network_ablation", "AVG with target networks", variants, add_args))
