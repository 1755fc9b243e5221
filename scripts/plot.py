"""Learning curves and a final-performance table from the TensorBoard event files of runs.

    python scripts/plot.py runs/ --out figures/returns

Finds every run under the given paths: a run directory (one holding events.out.tfevents.* files), or an episodes file
(ENV__EXP__SEED.csv.gz, as --export-episodes writes them: global step, return and length of every episode, the way
docs/data/ keeps finished runs without their directories). Groups runs by (environment, experiment name) from their
args.json or the file's header (or from the run name ENV__EXP__SEED[__TIME]), and draws the
mean episodic return against the steps the runs count (environment steps, or agent steps for runs that repeat each
action: the axis and the table say which) with a 95% confidence band across seeds (a group of fewer than 3 runs: each
run's own curve instead), one panel per environment, as PNG and PDF. Each run is interpolated onto a common step grid within the steps it covers; where fewer runs than
the group's total cover a step (runs still in progress, or of different lengths), the curve is drawn dotted. Prints
a Markdown table of final performance per group (--final-steps adds the mean over a run's last N steps, the paper's
measure; --per-seed the score of every run; --segments each run's episodes per stretch of steps). Runs still being
written are read as far as they go.
"""
import argparse
import gzip
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TAG = "charts/episodic_return"


class PlotError(Exception):
    """Bad input, reported in one line with exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error of these scripts
        raise PlotError(message)


# ------------------------------------------------------------------------------------------------- statistics
def t_quantile(p, df):
    """Quantile of Student's t with an integer number of degrees of freedom (p > 0.5), by bisection on the
    closed-form two-sided CDF (Abramowitz and Stegun 26.7.3-4); exact to double precision, no scipy needed."""
    if df < 1:
        raise ValueError("df must be at least 1")
    target = 2 * p - 1  # P(|T| <= t)

    def two_sided(theta):
        c2 = math.cos(theta) ** 2
        total = 0.0
        if df % 2:
            term = math.cos(theta)
            for j in range((df - 1) // 2):
                total += term
                term *= c2 * (2 * j + 2) / (2 * j + 3)
            return 2 / math.pi * (theta + math.sin(theta) * total)
        term = 1.0
        for j in range(df // 2):
            total += term
            term *= c2 * (2 * j + 1) / (2 * j + 2)
        return math.sin(theta) * total

    lo, hi = 0.0, math.pi / 2  # t = sqrt(df) tan(theta)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if two_sided(mid) < target else (lo, mid)
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def mean_ci(values, level=0.95):
    """Mean and half-width of the t confidence interval across runs; the half-width is NaN for a single run."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    if n == 1:
        return float(values[0]), math.nan
    return float(values.mean()), t_quantile(0.5 + level / 2, n - 1) * float(values.std(ddof=1)) / math.sqrt(n)


# ----------------------------------------------------------------------------------------------- reading runs
@dataclass
class Run:
    path: Path
    env: str
    exp_name: str
    seed: object
    steps: np.ndarray
    returns: np.ndarray
    finished: bool
    lengths: np.ndarray = None
    action_repeat: int = 1  # environment steps per step counted (agent steps); 1: the steps are environment steps


EPISODES = ".csv.gz"  # an exported run: its episodes, one line each


def find_run_dirs(paths):
    """Directories holding event files and episodes files, at or below each path; hidden directories (such as
    runs/.discarded, where sweep.py keeps restarted attempts) are skipped."""
    found = []
    for root in map(Path, paths):
        if not root.exists():
            raise PlotError(f"{root} does not exist")
        if root.is_file() and root.name.endswith(EPISODES):
            found.append(root)
            continue
        for hit in sorted([*root.rglob("events.out.tfevents.*"), *root.rglob(f"*{EPISODES}")]):
            run = hit if hit.name.endswith(EPISODES) else hit.parent
            if any(part.startswith(".") for part in run.relative_to(root).parts[:-1 if run == hit else None]):
                continue
            if run not in found:
                found.append(run)
    return found


def write_episodes(run, path, tag_lengths="charts/episodic_length"):
    """A run's episodes as a compressed CSV: a header line with what identifies the run, then global step, return
    (to 0.01) and length per episode."""
    lengths = run.lengths if run.lengths is not None else read_scalars(run.path, tag_lengths)[1]
    if len(lengths) != len(run.returns):
        raise PlotError(f"{run.path}: {len(run.returns)} returns but {len(lengths)} episode lengths")
    args = read_json(Path(run.path) / "args.json") or {}
    commit = (args.get("made_with") or {}).get("git_commit")
    with gzip.open(path, "wt", compresslevel=9) as f:
        f.write(f"# env={run.env} exp_name={run.exp_name} seed={run.seed} finished={str(run.finished).lower()} "
                f"algo={args.get('algo')} commit={commit} action_repeat={run.action_repeat}\n")
        f.write("global_step,return,length\n")
        for step, value, length in zip(run.steps, run.returns, lengths):
            f.write(f"{int(step)},{value:.2f},{int(length)}\n")


def read_episodes(path):
    """(identity, steps, returns, lengths) of an episodes file written by write_episodes."""
    try:
        with gzip.open(path, "rt") as f:
            header = dict(part.split("=", 1) for part in f.readline().lstrip("# ").split())
            f.readline()
            table = np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, ValueError, EOFError) as e:
        raise PlotError(f"{path} is not an episodes file ({type(e).__name__})") from None
    seed = int(header["seed"]) if header.get("seed", "").isdigit() else header.get("seed")
    ident = (header["env"], header["exp_name"], seed, header.get("finished") == "true")
    return ident, table[:, 0], table[:, 1], table[:, 2]


def action_repeat_of(run_dir):
    """Environment steps per counted step: --action-repeat from args.json or the episodes file's header (1 if
    neither says)."""
    if run_dir.name.endswith(EPISODES):
        with gzip.open(run_dir, "rt") as f:
            header = dict(part.split("=", 1) for part in f.readline().lstrip("# ").split() if "=" in part)
        value = header.get("action_repeat")
    else:
        value = (read_json(run_dir / "args.json") or {}).get("action_repeat")
    return int(value) if str(value).isdigit() else 1


def step_unit(runs):
    """What the runs' steps count, for an axis or a table: environment steps, or agent steps with their repeat."""
    repeats = sorted({r.action_repeat for r in runs})
    if repeats == [1]:
        return "environment steps"
    if len(repeats) == 1:
        return f"agent steps (each {repeats[0]} environment steps)"
    return "agent steps (action repeat " + "/".join(map(str, repeats)) + ")"


def identify(run_dir):
    """(env, exp_name, seed, finished) from args.json and summary.json (an episodes file: its header), or from the
    ENV__EXP__SEED run name."""
    if run_dir.name.endswith(EPISODES):
        return read_episodes(run_dir)[0]
    args = read_json(run_dir / "args.json")
    summary = read_json(run_dir / "summary.json")
    finished = isinstance(summary, dict) and summary.get("finished") is True
    if isinstance(args, dict) and {"env", "exp_name"} <= args.keys():
        return args["env"], args["exp_name"], args.get("seed"), finished
    match = re.fullmatch(r"(.+?)__(.+?)__(\d+)(?:__\d+)?", run_dir.name)
    if match:
        return match[1], match[2], int(match[3]), finished
    return None


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_scalars(run_dir, tag=TAG):
    """(steps, values) of one scalar tag, read with TensorBoard's own loader: it reads all event files of the
    directory in order, drops the steps a resumed run wrote again (purge on restart) and stops cleanly at a
    record that is still being written."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 1,
                                     event_accumulator.HISTOGRAMS: 1, event_accumulator.IMAGES: 1,
                                     event_accumulator.AUDIO: 1, event_accumulator.COMPRESSED_HISTOGRAMS: 1})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return np.zeros(0), np.zeros(0)
    events = accumulator.Scalars(tag)
    steps = np.array([e.step for e in events], dtype=float)
    values = np.array([e.value for e in events], dtype=float)
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def load_runs(paths, tag=TAG, envs=None, exp_names=None, log=sys.stderr):
    runs, skipped = [], []
    for run_dir in find_run_dirs(paths):
        ident = identify(run_dir)
        if ident is None:
            skipped.append(f"{run_dir} (no args.json and not named ENV__EXP__SEED)")
            continue
        env, exp_name, seed, finished = ident
        if (envs and env not in envs) or (exp_names and exp_name not in exp_names):
            continue
        lengths = None
        if run_dir.name.endswith(EPISODES):
            if tag != TAG:
                skipped.append(f"{run_dir} (an episodes file holds {TAG} only)")
                continue
            _, steps, values, lengths = read_episodes(run_dir)
        else:
            steps, values = read_scalars(run_dir, tag)
        keep = np.isfinite(values)
        if not keep.any():
            skipped.append(f"{run_dir} (no {tag} yet)")
            continue
        runs.append(Run(run_dir, env, exp_name, seed, steps[keep], values[keep], finished,
                        None if lengths is None else lengths[keep], action_repeat_of(run_dir)))
    for note in skipped:
        print(f"plot.py: skipped {note}", file=log)
    return runs


def group_runs(runs, exp_order=None):
    """{(env, exp_name): [runs]}, environments and experiments in the order given (else sorted)."""
    rank = {name: i for i, name in enumerate(exp_order or [])}
    groups = {}
    for run in sorted(runs, key=lambda r: (r.env, rank.get(r.exp_name, len(rank)), r.exp_name, str(r.seed))):
        groups.setdefault((run.env, run.exp_name), []).append(run)
    return groups


# ------------------------------------------------------------------------------------------------ curves, table
def smooth(values, window):
    """Trailing mean over the last `window` episodes (window 1: none)."""
    if window <= 1:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def curve(runs, points=200, window=1):
    """The group's mean and 95% band on a common grid of steps. A run contributes only between its first and last
    episode (no extrapolation); n counts the runs at each grid step, and the band needs n >= 2."""
    end = max(r.steps[-1] for r in runs)
    grid = np.linspace(0, end, points)
    table = np.full((len(runs), points), np.nan)
    for i, run in enumerate(runs):
        inside = (grid >= run.steps[0]) & (grid <= run.steps[-1])
        table[i, inside] = np.interp(grid[inside], run.steps, smooth(run.returns, window))
    n = np.isfinite(table).sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before the first episode
        mean = np.nanmean(table, 0)
        sd = np.nanstd(table, 0, ddof=1)
    half = np.array([t_quantile(0.975, k - 1) if k >= 2 else np.nan for k in n]) * sd / np.sqrt(np.maximum(n, 1))
    return grid, mean, half, n


def final_performance(runs, fraction=0.1, steps=None):
    """Final return of a group: the window is the last `fraction` of the steps that every run of the group has
    reached, (1 - fraction) * S < step <= S with S the shortest run's last step (or, with `steps`, the last that many:
    S - steps < step <= S), so runs of different lengths or still in progress are compared over the same steps. Each
    run scores the mean return of its episodes that ended in the window (its last episode before S if none did); the
    group gets the mean and 95% CI of those scores."""
    common_end = min(r.steps[-1] for r in runs)
    start = common_end - steps if steps else (1 - fraction) * common_end
    scores = []
    for run in runs:
        inside = (run.steps > start) & (run.steps <= common_end)
        scores.append(run.returns[inside].mean() if inside.any() else run.returns[run.steps <= common_end][-1])
    mean, half = mean_ci(scores)
    return {"runs": len(runs), "unfinished": sum(not r.finished for r in runs), "window": (start, common_end),
            "mean": mean, "half": half, "scores": scores}


def fmt(x):
    return "n/a" if not math.isfinite(x) else f"{x:.1f}" if abs(x) < 1e5 else f"{x:.3g}"


def steps_text(x):
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if float(f"{x / size:.3g}") >= 1:  # 999,990 is "1M", not "1e+03k"
            return f"{x / size:.3g}{unit}"
    return f"{x:.0f}"


def interval(f):
    return "n/a (1 run)" if not math.isfinite(f["half"]) else f"[{fmt(f['mean'] - f['half'])}, {fmt(f['mean'] + f['half'])}]"


def markdown_table(groups, fraction=0.1, final_steps=None):
    extra = f" last {steps_text(final_steps)} steps (mean) | 95% CI |" if final_steps else ""
    lines = [f"| environment | experiment | runs | final return (mean) | 95% CI | window | steps counted |{extra}",
             "|---|---|---|---|---|---|---|" + ("---|---|" if final_steps else "")]
    for (env, exp_name), runs in groups.items():
        f = final_performance(runs, fraction)
        runs_text = f"{f['runs']}" + (f" ({f['unfinished']} unfinished)" if f["unfinished"] else "")
        line = (f"| {env} | {exp_name} | {runs_text} | {fmt(f['mean'])} | {interval(f)} | "
                f"{steps_text(f['window'][0])}-{steps_text(f['window'][1])} | {step_unit(runs)} |")
        if final_steps:
            last = final_performance(runs, steps=final_steps)
            line += f" {fmt(last['mean'])} | {interval(last)} |"
        lines.append(line)
    lines.append("")
    lines.append(f"Final return: per run, the mean episodic return over the last {fraction:.0%} of the steps that "
                 "all runs of its group reached (the window); then the mean across runs and a 95% t-interval."
                 + (f" Last {steps_text(final_steps)} steps: the same over the last {final_steps:,} of those steps "
                    "(the AVG paper's measure)." if final_steps else ""))
    return "\n".join(lines)


def per_seed_table(groups, fraction=0.1, final_steps=None):
    """Each run's scores (the windows of its group, as in the main table), episodes and the steps it reached."""
    extra = f" last {steps_text(final_steps)} steps |" if final_steps else ""
    lines = [f"| environment | experiment | seed | last {fraction:.0%} |{extra} episodes | steps reached |",
             "|---|---|---|---|" + ("---|" if final_steps else "") + "---|---|"]
    for (env, exp_name), runs in groups.items():
        scores = final_performance(runs, fraction)["scores"]
        last = final_performance(runs, steps=final_steps)["scores"] if final_steps else [None] * len(runs)
        for run, score, last_score in zip(runs, scores, last):
            lines.append(f"| {env} | {exp_name} | {run.seed} | {fmt(score)} |"
                         + (f" {fmt(last_score)} |" if final_steps else "")
                         + f" {len(run.returns)} | {steps_text(run.steps[-1])}{'' if run.finished else ' (unfinished)'} |")
    return "\n".join(lines)


def segment_table(groups, size, above=None):
    """Each run's episodes per segment of `size` steps, k * size < step <= (k + 1) * size: how many ended there,
    their mean return and, with `above`, the share of them whose return is above it ('-' where none ended)."""
    count = max(1, math.ceil(max(r.steps[-1] for runs in groups.values() for r in runs) / size))
    heads = [f"{steps_text(k * size)}-{steps_text((k + 1) * size)}" for k in range(count)]
    measures = ["episodes", "mean return"] + ([f"share above {above:g}"] if above is not None else [])
    lines = ["| environment | experiment | seed | measure | " + " | ".join(heads) + " |",
             "|---|---|---|---|" + "---|" * count]
    for (env, exp_name), runs in groups.items():
        for run in runs:
            segment = np.ceil(run.steps / size).astype(int) - 1  # step k * size ends segment k - 1
            cells = {m: [] for m in measures}
            for k in range(count):
                returns = run.returns[segment == k]
                cells["episodes"].append(str(len(returns)))
                cells["mean return"].append(f"{returns.mean():.0f}" if len(returns) else "-")
                if above is not None:
                    cells[measures[2]].append(f"{(returns > above).mean():.2f}" if len(returns) else "-")
            lines += [f"| {env} | {exp_name} | {run.seed} | {m} | " + " | ".join(cells[m]) + " |" for m in measures]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ figure
def reference_lines(groups, names, fraction=0.1):
    """For each group of an experiment in `names`: its final return (as in the table) as a level that runs on from
    where the group's runs end to where its panel's longest run ends, so a shorter reference run (batch SAC at 1M
    steps beside 10M-step runs) can be read against the others' ends. {(env, exp): (from_step, to_step, level)}"""
    lines = {}
    for (env, exp_name), runs in groups.items():
        if exp_name in names:
            last = max(r.steps[-1] for (e, _), members in groups.items() if e == env for r in members)
            final = final_performance(runs, fraction)
            lines[env, exp_name] = (final["window"][1], last, final["mean"])
    return lines


PER_SEED_BELOW = 3  # a group of fewer runs is drawn run by run, without a confidence band


def draw(groups, out, points=200, window=1, formats=("png", "pdf"), title=None, ylabel="episodic return",
         references=(), fraction=0.1):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    envs = list(dict.fromkeys(env for env, _ in groups))
    exp_names = list(dict.fromkeys(exp for _, exp in groups))
    colors = {exp: plt.get_cmap("tab10" if len(exp_names) <= 10 else "tab20")(i % 20)
              for i, exp in enumerate(exp_names)}
    levels = reference_lines(groups, references, fraction)
    cols = min(3, len(envs))
    rows = math.ceil(len(envs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, env in zip(axes.flat, envs):
        means, bands = [], []
        for (group_env, exp_name), runs in groups.items():
            if group_env != env:
                continue
            grid, mean, half, n = curve(runs, points, window)
            color = colors[exp_name]
            # Dotted where only some of the group's runs cover the step; the solid line hides it elsewhere.
            ax.plot(grid, mean, color=color, lw=1.2, ls=":")
            ax.plot(grid, np.where(n == len(runs), mean, np.nan), color=color, lw=1.6)
            if len(runs) >= PER_SEED_BELOW:
                ax.fill_between(grid, mean - half, mean + half, where=np.isfinite(half), color=color, alpha=0.2, lw=0)
            else:  # a t-interval of 2 runs spans most of the panel (t = 12.7): each run's own curve says more
                for run in runs:
                    seed_grid, seed_mean, _, _ = curve([run], points, window)
                    ax.plot(seed_grid, seed_mean, color=color, lw=0.7, alpha=0.55)
                    bands += [seed_mean]
                half = np.full_like(mean, np.nan)
            if (env, exp_name) in levels:
                start, end, level = levels[env, exp_name]
                ax.hlines(level, start, end, color=color, lw=1.2, ls="--")
            means.append(mean)
            bands += [mean - half, mean + half]
        fit_axis_to_curves(ax, np.concatenate(means), np.concatenate(bands))
        ax.set_title(env)
        ax.set_xlabel(step_unit([r for (group_env, _), runs in groups.items() if group_env == env for r in runs]))
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(envs):]:
        ax.set_visible(False)
    # One legend for all panels (an experiment has one colour throughout), beside them so it hides no curve.
    handles, labels = [], []
    for exp_name in exp_names:
        sizes = sorted({len(runs) for (_, e), runs in groups.items() if e == exp_name})
        handles.append(Line2D([], [], color=colors[exp_name], lw=1.6))
        labels.append(f"{exp_name} (n={sizes[0]}" + (f"-{sizes[-1]})" if len(sizes) > 1 else ")")
                      + (", thin: each run" if sizes[0] < PER_SEED_BELOW else "")
                      + (", dashed: its final return" if exp_name in references else ""))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in formats:
        path = out.with_name(f"{out.name}.{ext}")
        fig.savefig(path, dpi=150, bbox_inches="tight")
        written.append(path)
    plt.close(fig)
    return written


def fit_axis_to_curves(ax, means, bands):
    """With few seeds a t band can be many times wider than the spread of the curves (t = 12.7 for 2 seeds), and
    scaling the axis to it flattens every curve. Then fit the axis to the curves and say that bands are cut."""
    means, bands = means[np.isfinite(means)], bands[np.isfinite(bands)]
    if not len(means) or not len(bands):
        return
    lo, hi = means.min(), means.max()
    span = max(hi - lo, 1e-9 + 1e-3 * abs(hi))
    if bands.max() - bands.min() > 3 * span:
        ax.set_ylim(lo - 0.5 * span, hi + 0.5 * span)
        ax.text(0.99, 0.01, "CI bands clipped", transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                color="0.4")


# --------------------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("paths", nargs="+", help="run directories, or directories that hold them (e.g. runs/)")
    parser.add_argument("--out", default="figures/returns", help="output file name without extension (%(default)s)")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"])
    parser.add_argument("--envs", nargs="+", help="only these environments")
    parser.add_argument("--exp-names", nargs="+", help="only these experiments, in this order in the legend")
    parser.add_argument("--tag", default=TAG, help="the scalar to plot (default %(default)s)")
    parser.add_argument("--points", type=int, default=200, help="points of the common step grid (%(default)s)")
    parser.add_argument("--smooth", type=int, default=1,
                        help="trailing mean over this many episodes before interpolating (default 1: none)")
    parser.add_argument("--final-fraction", type=float, default=0.1,
                        help="the table's final window, a fraction of the steps (default %(default)s)")
    parser.add_argument("--final-steps", type=int,
                        help="also score each run by its mean return over the last N steps (the paper: 10000)")
    parser.add_argument("--per-seed", action="store_true", help="also print every run's scores")
    parser.add_argument("--segments", type=int, metavar="STEPS",
                        help="also tabulate each run's episodes per segment of STEPS steps: count and mean return")
    parser.add_argument("--above", type=float, metavar="RETURN",
                        help="with --segments, also the share of each segment's episodes whose return is above this")
    parser.add_argument("--table", help="also write the Markdown tables (final, per-seed, segments) to this file")
    parser.add_argument("--export-episodes", metavar="DIR",
                        help="write each run's episodes to DIR/ENV__EXP__SEED.csv.gz (global step, return, length)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--reference", nargs="+", default=[], metavar="EXP",
                        help="draw these experiments' final returns on, dashed, to the end of the longest run "
                             "(a shorter reference run, e.g. batch SAC)")
    try:
        args = parser.parse_args(argv)
        # `is not None`: a 0 given on the command line is refused, not taken for the option left out
        if (args.points < 2 or args.smooth < 1 or not 0 < args.final_fraction <= 1
                or (args.final_steps is not None and args.final_steps < 1)):
            raise PlotError("--points must be >= 2, --smooth >= 1, --final-steps >= 1 and 0 < --final-fraction <= 1")
        if (args.segments is not None and args.segments < 1) or (args.above is not None and args.segments is None):
            raise PlotError("--segments must be >= 1, and --above needs --segments")
        runs = load_runs(args.paths, args.tag, args.envs, args.exp_names)
        if not runs:
            raise PlotError(f"no runs with {args.tag} under {', '.join(args.paths)}"
                            + (" (after the --envs/--exp-names filters)" if args.envs or args.exp_names else ""))
        groups = group_runs(runs, args.exp_names)
        missing = sorted(set(args.reference) - {exp for _, exp in groups})
        if missing:
            raise PlotError(f"--reference {missing[0]}: no such experiment among the runs")
        for (env, exp_name), members in groups.items():
            seeds = [r.seed for r in members]
            if len(set(map(str, seeds))) < len(seeds):
                print(f"plot.py: warning: {env} / {exp_name} has the same seed in several runs: "
                      + ", ".join(str(r.path) for r in members), file=sys.stderr)
        ylabel = "episodic return" if args.tag == TAG else args.tag
        written = draw(groups, args.out, args.points, args.smooth, args.formats, args.title, ylabel,
                       args.reference, args.final_fraction)
        table = markdown_table(groups, args.final_fraction, args.final_steps)
        if args.per_seed:
            table += "\n\n" + per_seed_table(groups, args.final_fraction, args.final_steps)
        if args.segments:
            table += "\n\n" + segment_table(groups, args.segments, args.above)
        if args.export_episodes:
            folder = Path(args.export_episodes)
            folder.mkdir(parents=True, exist_ok=True)
            for run in runs:
                path = folder / f"{run.env.replace('/', '-')}__{run.exp_name}__{run.seed}{EPISODES}"
                if path.resolve() != Path(run.path).resolve():
                    write_episodes(run, path)
                    written.append(path)
        if args.table:
            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            Path(args.table).write_text(table + "\n")
    except PlotError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"plot.py: error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2
    print(table)
    print("\nwrote " + ", ".join(map(str, written)) + (f", {args.table}" if args.table else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
