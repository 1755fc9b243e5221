"""What every recipe in this folder shares: the command line, running the sweep (here or on Slurm) and the plot.

A recipe is a list of variants, (experiment name, algorithm script, extra arguments), run over environments and
seeds. Defaults are the paper's: 10M steps, 30 seeds, the five MuJoCo tasks. --small gives a budget that runs on
a workstation in minutes per run: 50k steps, 3 seeds, Hopper-v4 (explicit --budget/--num-seeds/--envs win).
"""
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import plot  # noqa: E402
import slurm  # noqa: E402
import sweep  # noqa: E402

PAPER = {"budget": 10_000_000, "num_seeds": 30, "envs": ["Hopper-v4", "Walker2d-v4", "Ant-v4", "HalfCheetah-v4",
                                                          "Humanoid-v4"]}
SMALL = {"budget": 50_000, "num_seeds": 3, "envs": ["Hopper-v4"]}

# The three techniques of the AVG paper (observation normalisation, penultimate normalisation, TD-error scaling),
# all on ("+") or all off, spelled out so that a recipe does not depend on each script's defaults.
PLUS = ("--obs-norm", "--feature-norm", "penultimate", "--scale-td")
PLAIN = ("--no-obs-norm", "--feature-norm", "none", "--no-scale-td")
# SAC-1 and TD3-1: learn from the latest transition only, from the first step on.
INCREMENTAL = ("--buffer-size", "1", "--batch-size", "1", "--learning-starts", "0")


def size_text(n):
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else \
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def main(name, title, variants, add_args=None, argv=None, paper=PAPER, small=SMALL, plot_args=()):
    """variants: a list of (exp_name, algo, extra args[, {"seeds": N, "budget": STEPS}]), or a function of the parsed
    arguments returning one. paper, small: the defaults without and with --small (budget, num_seeds, envs);
    plot_args: more options for the figure's plot.py."""
    PAPER, SMALL = paper, small  # noqa: N806 (the module defaults, or the recipe's own)
    parser = sweep.ArgumentParser(description=title, allow_abbrev=False,
                                  epilog="Arguments after -- (or not known here) go to every run's script.")
    parser.add_argument("--budget", type=sweep.parse_steps, help=f"steps per run (paper: {PAPER['budget']:,})")
    parser.add_argument("--num-seeds", type=int, help=f"seeds 1..N per variant and environment (paper: "
                                                      f"{PAPER['num_seeds']})")
    parser.add_argument("--envs", nargs="+", help=f"environments (paper: {' '.join(PAPER['envs'])})")
    parser.add_argument("--small", action="store_true",
                        help=f"a budget for one machine: {SMALL['budget']:,} steps, {SMALL['num_seeds']} seeds, "
                             f"{' '.join(SMALL['envs'])}")
    parser.add_argument("--jobs", "-j", type=int, default=sweep.default_jobs(), help="runs at a time (local)")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure after a local sweep")
    parser.add_argument("--figures", default="figures", help="where the figure and table go (%(default)s)")
    parser.add_argument("--smooth", type=int, default=10,
                        help="curves: trailing mean over this many episodes per run (%(default)s; the table is raw)")
    parser.add_argument("--slurm", action="store_true", help="submit to Slurm as one job array instead")
    slurm.add_slurm_args(parser)
    if add_args:
        add_args(parser)
    try:
        args, extra = sweep.parse_known_with_passthrough(parser, argv)
        defaults = SMALL if args.small else PAPER
        budget = args.budget or defaults["budget"]
        num_seeds = args.num_seeds or defaults["num_seeds"]
        envs = sweep.parse_envs(args.envs or defaults["envs"])
        if num_seeds < 1 or args.jobs < 1:
            raise sweep.SweepError("--num-seeds and --jobs must be at least 1")
        slurm_only = [opt for opt in ("name", "time", "mem", "partition", "account", "max_running", "sbatch_arg",
                                      "wait") if getattr(args, opt)]
        if slurm_only and not args.slurm:
            raise sweep.SweepError(f"--{slurm_only[0].replace('_', '-')} applies to --slurm only")
        chosen = variants(args) if callable(variants) else variants
        chosen = [(exp, algo, (*opts, *extra), *own) for exp, algo, opts, *own in chosen]
        jobs = sweep.make_jobs(chosen, envs, range(1, num_seeds + 1), budget)
        exp_names = [exp for exp, *_ in chosen]
        own = any(len(c) > 3 for c in chosen)
        print(f"{name}: {len(chosen)} variants x {len(envs)} env(s) x {'up to ' if own else ''}{num_seeds} seed(s) = "
              f"{len(jobs)} runs of {budget:,} steps" + (" (some variants: their own seeds or budget)" if own else ""),
              flush=True)
        plot_cmd = ["runs", "--envs", *envs, "--exp-names", *exp_names, "--out", f"{args.figures}/{name}",
                    "--table", f"{args.figures}/{name}.md", "--title", f"{title} ({size_text(budget)} steps)",
                    "--smooth", str(args.smooth), *plot_args]
        if args.slurm:
            run_name = args.name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            code = slurm.submit(jobs, run_name, slurm.sbatch_lines(args), args.wait, args.dry_run, args.max_running)
            if not args.dry_run:
                print(f"when it is done, plot it with: python {slurm.display(plot.__file__)} {shlex.join(plot_cmd)}")
            return code
        if args.dry_run:
            sweep.dry_run(jobs)
            return 0
        missing = sorted({job.script.name for job in jobs if not job.script.exists()})
        if missing:
            raise sweep.SweepError(f"{', '.join(missing)} not in {sweep.ROOT} (yet); --dry-run shows the commands")
    except sweep.SweepError as e:
        print(f"{name}.py: error: {e}", file=sys.stderr)
        return 2
    outcomes, stopped_by = sweep.run_local(jobs, args.jobs)
    sweep.print_summary(outcomes)
    code = sweep.exit_status(outcomes, stopped_by)
    done = [str(job.run_dir) for job in jobs if sweep.is_finished(job.run_dir)]
    if args.no_plot or stopped_by is not None or not done:
        return code
    print()
    # Only this sweep's run directories: other seeds of the same experiments in ./runs may have other budgets.
    plot_code = plot.main([*done, *plot_cmd[1:]])
    return code or plot_code
