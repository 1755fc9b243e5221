"""Continual learning at a glance: the return and the plasticity diagnostics against steps, the task's changes marked,
and a table per segment of the continuing learners against fresh ones.

    python scripts/plot_continual.py runs/ --out figures/continual --table continual.md
    python scripts/plot_continual.py runs/ --export docs/data/continual      # keep runs without their directories
    python scripts/plot_continual.py docs/data/continual --out docs/figures/continual

Reads run directories (TensorBoard events) or what --export writes: per run ENV__EXP__SEED.csv.gz (its episodes, the
file plot.py --export-episodes writes and reads) and ENV__EXP__SEED.scalars.csv.gz beside it (the env/ and plasticity/
tags: tag, global step, value). Experiment names follow scripts/experiments/continual.py: BASE (a plain learner),
BASE-REMEDY (avg-upgd, stream_ac-cbp) and BASE-freshK, a new learner trained on segment K's friction alone, the
plasticity reference.

The figure has one column per base algorithm and four rows: the episodic return (mean over seeds; each fresh learner's
curve in grey, drawn from where its segment starts in the continuing runs), the tau-dormant share of hidden units
(mean over the hidden layers), the effective rank of the last hidden layer, and mean |w| over the hidden layers; critic
solid, actor dashed. Vertical lines mark the changes, with each segment's friction above the top panel.

The table scores each segment k (the episodes the continuing run logged with env/segment = k): the continuing
learners' mean return over the segment, mean across seeds, beside the fresh learner's mean over its own run of the
same length on the same friction; then each learner's diagnostics at the segment's last report.
"""
import argparse
import csv
import gzip
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import plot  # scripts/plot.py: run discovery, episodes files, curves

SCALARS = ".scalars.csv.gz"
PREFIXES = ("env/", "plasticity/")
FRESH = re.compile(r"fresh(\d+)")
NETS = {"critic": "-", "actor": "--"}  # line style of each network in the diagnostic panels


@dataclass
class Run:
    path: Path
    env: str
    exp_name: str
    seed: object
    finished: bool
    steps: np.ndarray
    returns: np.ndarray
    lengths: np.ndarray
    scalars: dict = field(default_factory=dict)  # tag -> (steps, values)

    @property
    def base(self):
        return self.exp_name.partition("-")[0]

    @property
    def variant(self):
        return self.exp_name.partition("-")[2] or "plain"

    @property
    def fresh_segment(self):
        match = FRESH.fullmatch(self.variant)
        return int(match[1]) if match else None

    def series(self, tag):
        return self.scalars.get(tag, (np.zeros(0), np.zeros(0)))

    def layer_mean(self, net, kind):
        """Mean over the hidden layers of plasticity/{net}_dormant_{i} (kind 'dormant') or of the hidden layers'
        plasticity/{net}_mean_abs_w/trunk.* (kind 'mean_abs_w'), on the steps all of them share."""
        pattern = re.compile(rf"plasticity/{net}_dormant_\d+" if kind == "dormant"
                             else rf"plasticity/{net}_mean_abs_w/trunk\.\d+")
        tags = sorted(t for t in self.scalars if pattern.fullmatch(t))
        if not tags:
            return np.zeros(0), np.zeros(0)
        steps = self.scalars[tags[0]][0]
        n = min(len(self.scalars[t][0]) for t in tags)
        return steps[:n], np.mean([self.scalars[t][1][:n] for t in tags], axis=0)


def read_tags(run_dir):
    """The run's env/ and plasticity/ scalars, one pass of TensorBoard's loader (which drops the steps a resumed run
    wrote twice)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        if tag.startswith(PREFIXES) or tag in (plot.TAG, "charts/episodic_length"):
            events = acc.Scalars(tag)
            steps = np.array([e.step for e in events], dtype=float)
            order = np.argsort(steps, kind="stable")
            out[tag] = steps[order], np.array([e.value for e in events], dtype=float)[order]
    return out


def read_scalars_file(path):
    columns = {}
    try:
        with gzip.open(path, "rt") as f:
            for row in csv.DictReader(line for line in f if not line.startswith("#")):
                columns.setdefault(row["tag"], []).append((float(row["global_step"]), float(row["value"])))
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise plot.PlotError(f"{path} is not a scalars file ({type(e).__name__})") from None
    return {tag: (np.array([s for s, _ in rows]), np.array([v for _, v in rows])) for tag, rows in columns.items()}


def write_scalars_file(run, path):
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", compresslevel=9) as f:
        f.write(f"# env={run.env} exp_name={run.exp_name} seed={run.seed}\ntag,global_step,value\n")
        for tag, (steps, values) in sorted(run.scalars.items()):
            f.writelines(f"{tag},{int(s)},{v:.6g}\n" for s, v in zip(steps, values))
    tmp.replace(path)


def load(paths, log=sys.stderr):
    runs = []
    for found in plot.find_run_dirs(paths):
        if found.name.endswith(SCALARS):  # read beside its episodes file
            continue
        ident = plot.identify(found)
        if ident is None:
            print(f"plot_continual.py: skipped {found} (no args.json and not named ENV__EXP__SEED)", file=log)
            continue
        env, exp_name, seed, finished = ident
        if found.name.endswith(plot.EPISODES):
            _, steps, returns, lengths = plot.read_episodes(found)
            side = found.with_name(found.name[:-len(plot.EPISODES)] + SCALARS)
            scalars = read_scalars_file(side) if side.exists() else {}
        else:
            scalars = read_tags(found)
            steps, returns = scalars.pop(plot.TAG, (np.zeros(0), np.zeros(0)))
            lengths = scalars.pop("charts/episodic_length", (None, np.full(len(returns), np.nan)))[1]
        if not len(returns):
            print(f"plot_continual.py: skipped {found} (no episodes yet)", file=log)
            continue
        runs.append(Run(found, env, exp_name, seed, finished, steps, returns, lengths, scalars))
    return runs


def segment_starts(run):
    """{segment: step of its first episode's end} from the run's env/segment series (empty if it logged none)."""
    steps, segments = run.series("env/segment")
    starts = {}
    for s, k in zip(steps, segments.astype(int)):
        starts.setdefault(int(k), s)
    return starts


def segment_frictions(run):
    steps, frictions = run.series("env/friction")
    _, segments = run.series("env/segment")
    return {int(k): f for k, f in zip(segments, frictions)}


def continuing(runs):
    return [r for r in runs if r.fresh_segment is None]


def by_experiment(runs):
    """{(env, base, variant): runs}, plain first, then the remedies by name, whatever order the files came in."""
    groups = {}
    for run in sorted(runs, key=lambda r: (r.variant != "plain", r.variant, str(r.seed))):
        groups.setdefault((run.env, run.base, run.variant), []).append(run)
    return groups


# ------------------------------------------------------------------------------------------------------- table
def segment_mean(run, k):
    _, segments = run.series("env/segment")
    if len(segments) != len(run.returns):  # each episode logs its segment; anything else is not a changing task
        return np.nan
    inside = segments.astype(int) == k
    return run.returns[inside].mean() if inside.any() else np.nan


def last_report(run, series, k):
    """The diagnostic's value at segment k's last report (reports after the segment's last episode belong to k+1)."""
    steps, values = series
    seg_steps, segments = run.series("env/segment")
    ends = seg_steps[segments.astype(int) == k]
    if not len(ends) or not len(steps):
        return np.nan
    inside = steps <= ends[-1]
    return values[inside][-1] if inside.any() else np.nan


def cell(values):
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    mean, half = plot.mean_ci(values)
    return f"{mean:.0f} ± {half:.0f}" if np.isfinite(half) else f"{mean:.0f}"


def tables(runs):
    lines = []
    for env in dict.fromkeys(r.env for r in runs):
        env_runs = [r for r in runs if r.env == env]
        groups = by_experiment(continuing(env_runs))
        fresh = {(r.base, r.fresh_segment): r for r in env_runs if r.fresh_segment is not None}
        reference = next((r for r in continuing(env_runs) if segment_frictions(r)), None)
        count = 1 + max([max(segment_frictions(r), default=0) for r in continuing(env_runs)]
                        + [k for _, k in fresh], default=0)
        frictions = segment_frictions(reference) if reference else {}
        for k in range(count):  # the fresh learner's own friction where no continuing run reached segment k
            frictions.setdefault(k, next((segment_frictions(r).get(k) for (_, j), r in fresh.items() if j == k), None))
        bases = list(dict.fromkeys([b for _, b, _ in groups] + [b for b, _ in fresh]))
        heads = [f"{b}{'' if v == 'plain' else '-' + v} (n={len(groups[env, b, v])})" for _, b, v in groups]
        heads += [f"{b}-fresh" for b in bases if any(fb == b for fb, _ in fresh)]
        lines += [f"**{env}**: mean episodic return per segment (continuing learners: mean across seeds ± 95% "
                  "half-width; fresh: one learner trained on that segment's friction alone, as long)", "",
                  "| segment | friction | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
        for k in range(count):
            row = [cell([segment_mean(r, k) for r in members]) for members in groups.values()]
            row += [cell([fresh[b, k].returns.mean()] if (b, k) in fresh else []) for b in bases
                    if any(fb == b for fb, _ in fresh)]
            friction = f"{frictions[k]:.3f}" if frictions.get(k) is not None else "-"
            lines.append(f"| {k} | {friction} | " + " | ".join(row) + " |")
        lines += ["", f"**{env}**: the critic's diagnostics at each segment's last report (mean across seeds): "
                  "dormant share of its last hidden layer / effective rank / mean |w| of its hidden layers", "",
                  "| segment | " + " | ".join(heads[:len(groups)]) + " |", "|---|" + "---|" * len(groups)]
        for k in range(count):
            row = []
            for members in groups.values():
                layers = sorted(t for t in members[0].scalars if re.fullmatch(r"plasticity/critic_dormant_\d+", t))
                dormant = [last_report(r, r.series(layers[-1]), k) for r in members] if layers else []
                rank = [last_report(r, r.series("plasticity/critic_effective_rank"), k) for r in members]
                weights = [last_report(r, r.layer_mean("critic", "mean_abs_w"), k) for r in members]
                row.append(" / ".join(_mean(v, f) for v, f in ((dormant, "{:.3f}"), (rank, "{:.0f}"),
                                                                (weights, "{:.4f}"))))
            lines.append(f"| {k} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def _mean(values, form):
    values = [v for v in values if np.isfinite(v)]
    return form.format(np.mean(values)) if values else "-"


# ------------------------------------------------------------------------------------------------------ figure
def draw(runs, out, points=200, window=20, formats=("png",), title=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    envs = list(dict.fromkeys(r.env for r in runs))
    columns = [(env, base) for env in envs for base in dict.fromkeys(r.base for r in runs if r.env == env)]
    variants = list(dict.fromkeys(v for _, _, v in by_experiment(continuing(runs))))
    colors = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}
    rows = ("episodic return", "dormant share (hidden layers)", "effective rank (last hidden layer)",
            "mean |w| (hidden layers)")
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(6.0 * len(columns), 2.4 * len(rows) + 0.6),
                             squeeze=False, sharex="col")
    for c, (env, base) in enumerate(columns):
        mine = [r for r in runs if r.env == env and r.base == base]
        groups = by_experiment(continuing(mine))
        for (_, _, variant), members in groups.items():
            color = colors[variant]
            grid, mean, _, _ = plot.curve([_as_plot_run(r, r.steps, r.returns) for r in members], points, window)
            axes[0, c].plot(grid, mean, color=color, lw=1.3)
            for net, style in NETS.items():
                for row, series in ((1, lambda r: r.layer_mean(net, "dormant")),
                                    (2, lambda r: r.series(f"plasticity/{net}_effective_rank")),
                                    (3, lambda r: r.layer_mean(net, "mean_abs_w"))):
                    got = [(r, *series(r)) for r in members]
                    got = [_as_plot_run(r, s, v) for r, s, v in got if len(s) >= 2]
                    if got:
                        grid, mean, _, _ = plot.curve(got, points)
                        axes[row, c].plot(grid, mean, color=color, lw=1.1, ls=style)
        starts = {}
        for r in continuing(mine):
            for k, s in segment_starts(r).items():
                starts.setdefault(k, s)
        for r in mine:  # fresh learners, shifted to where their segment starts in the continuing runs
            k = r.fresh_segment
            if k is None:
                continue
            offset = starts.get(k, k * r.steps[-1])
            grid, mean, _, _ = plot.curve([_as_plot_run(r, r.steps, r.returns)], max(points // 5, 10), window)
            axes[0, c].plot(grid + offset, mean, color="0.45", lw=1.0)
        frictions = {}
        for r in continuing(mine):
            for k, f in segment_frictions(r).items():
                frictions.setdefault(k, f)
        for ax in axes[:, c]:
            for k, s in starts.items():
                if k > 0:
                    ax.axvline(s, color="0.7", lw=0.7, ls=":")
            ax.grid(alpha=0.25)
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        top = axes[0, c]
        for k, s in starts.items():
            if k in frictions:
                top.annotate(f"{frictions[k]:.2g}", (s, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                             ha="left", va="bottom", color="0.35")
        top.set_title(f"{env} · {base}", pad=14)
        axes[-1, c].set_xlabel("environment steps")
    for r, label in enumerate(rows):
        axes[r, 0].set_ylabel(label, fontsize=9)
    handles = [Line2D([], [], color=colors[v], lw=1.6) for v in variants]
    labels = list(variants)
    if any(r.fresh_segment is not None for r in runs):
        handles.append(Line2D([], [], color="0.45", lw=1.0))
        labels.append("fresh learner per segment")
    handles += [Line2D([], [], color="k", lw=1.0, ls=s) for s in NETS.values()]
    labels += [f"{net} (diagnostics)" for net in NETS]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in formats:
        path = out.with_name(f"{out.name}.{ext}")
        fig.savefig(path, dpi=130, bbox_inches="tight")
        written.append(path)
    plt.close(fig)
    return written


def _as_plot_run(run, steps, values):
    return plot.Run(run.path, run.env, run.exp_name, run.seed, steps, values, run.finished)


def export(runs, folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        stem = f"{run.env.replace('/', '-')}__{run.exp_name}__{run.seed}"
        episodes, scalars = folder / f"{stem}{plot.EPISODES}", folder / f"{stem}{SCALARS}"
        if episodes.resolve() != Path(run.path).resolve():
            plot.write_episodes(plot.Run(run.path, run.env, run.exp_name, run.seed, run.steps, run.returns,
                                         run.finished, run.lengths), episodes)
            written.append(episodes)
        if run.scalars and scalars.resolve() != Path(run.path).resolve():
            write_scalars_file(run, scalars)
            written.append(scalars)
    return written


def main(argv=None):
    parser = plot.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("paths", nargs="+", help="run directories, folders holding them, or exported files")
    parser.add_argument("--out", default="figures/continual", help="figure file name without extension (%(default)s)")
    parser.add_argument("--formats", nargs="+", default=["png"], choices=["png", "pdf", "svg"])
    parser.add_argument("--envs", nargs="+", help="only these environments")
    parser.add_argument("--exp-names", nargs="+", help="only these experiments")
    parser.add_argument("--smooth", type=int, default=20, help="trailing mean over this many episodes (%(default)s)")
    parser.add_argument("--points", type=int, default=300, help="points of the common step grid (%(default)s)")
    parser.add_argument("--table", help="also write the Markdown tables to this file")
    parser.add_argument("--export", metavar="DIR", help="write each run's episodes and diagnostics to DIR")
    parser.add_argument("--no-figure", action="store_true", help="tables (and --export) only")
    parser.add_argument("--title", help="figure title")
    try:
        args = parser.parse_args(argv)
        if args.points < 2 or args.smooth < 1:
            raise plot.PlotError("--points must be >= 2 and --smooth >= 1")
        runs = [r for r in load(args.paths) if (not args.envs or r.env in args.envs)
                and (not args.exp_names or r.exp_name in args.exp_names)]
        if not runs:
            raise plot.PlotError(f"no runs with episodes under {', '.join(args.paths)}")
        written = [] if args.no_figure else draw(runs, args.out, args.points, args.smooth, args.formats, args.title)
        table = tables(runs)
        if args.export:
            written += export(runs, args.export)
        if args.table:
            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            Path(args.table).write_text(table + "\n")
            written.append(args.table)
    except plot.PlotError as e:
        print(f"plot_continual.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"plot_continual.py: error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2
    print(table)
    if written:
        print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
