"""scripts/plot.py on event files of a real short avg.py run plus synthetic runs whose final means are known."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from helpers import script_module

pytestmark = pytest.mark.xdist_group("plot")  # one worker: the module fixture is built once

ROOT = Path(__file__).resolve().parent.parent
plot = script_module("plot")

PLOT = [sys.executable, str(ROOT / "scripts" / "plot.py")]
STEPS = np.arange(10, 1001, 10)


def write_run(run_dir, steps, returns, args=None, finished=True):
    run_dir.mkdir(parents=True)
    writer = SummaryWriter(str(run_dir))
    for step, value in zip(steps, returns):
        writer.add_scalar("charts/episodic_return", value, int(step))
        writer.add_scalar("charts/SPS", 1000.0, int(step))
    writer.close()
    if args:
        (run_dir / "args.json").write_text(json.dumps(args))
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({"finished": True}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("plot")
    # A real run: 600 steps of Pendulum-v1, so three episodes.
    subprocess.run([sys.executable, str(ROOT / "avg.py"), "--env", "Pendulum-v1", "--seed", "7", "--total-timesteps",
                    "600", "--compile", "off", "--run-name", "real"], cwd=base, check=True, capture_output=True)
    synth = base / "synth"
    # Group a: three finished runs, return c + step / 50 with c = 10, 20, 30.
    for seed, c in enumerate((10, 20, 30), 1):
        write_run(synth / f"a{seed}", STEPS, c + STEPS / 50, {"env": "Synth-v0", "exp_name": "a", "seed": seed})
    # Group b, identified from run names alone: one finished run (100 throughout) and one still running, at step 500,
    # returning its step count, whose events file ends in a half-written record (its last, an SPS scalar).
    write_run(synth / "Synth-v0__b__1__1700000000", STEPS, np.full(len(STEPS), 100.0))
    write_run(synth / "Synth-v0__b__2__1700000001", STEPS[STEPS <= 500], STEPS[STEPS <= 500].astype(float),
              finished=False)
    events = next((synth / "Synth-v0__b__2__1700000001").glob("events.out.tfevents.*"))
    events.write_bytes(events.read_bytes()[:-10])
    # Group c: a single run, so no confidence interval.
    write_run(synth / "c1", STEPS, np.full(len(STEPS), -5.0), {"env": "Other-v0", "exp_name": "c", "seed": 1})
    # Not runs: a restarted attempt kept by sweep.py, and a directory without events.
    write_run(synth / ".discarded" / "a1.1", STEPS, np.full(len(STEPS), 1e6), {"env": "Synth-v0", "exp_name": "a"})
    (synth / "empty").mkdir()
    return base


def test_t_quantile_matches_tables():
    for df, expected in [(1, 12.7062), (2, 4.3027), (3, 3.1824), (10, 2.2281), (29, 2.0452), (120, 1.9799)]:
        assert plot.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 4, 7, 30, 500):
        assert plot.t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-10)


@pytest.mark.parametrize("steps, text", [(999_990, "1M"), (950_000, "950k"), (2_500_000, "2.5M"), (999.7, "1k"),
                                         (1500, "1.5k"), (12, "12")])
def test_steps_are_written_in_the_unit_their_rounding_reaches(steps, text):
    assert plot.steps_text(steps) == text


def test_final_performance_and_curves_match_known_values(runs):
    loaded = plot.load_runs([runs / "synth"], log=open("/dev/null", "w"))
    groups = plot.group_runs(loaded)
    assert {k: len(v) for k, v in groups.items()} == {("Other-v0", "c"): 1, ("Synth-v0", "a"): 3,
                                                      ("Synth-v0", "b"): 2}
    a = plot.final_performance(groups["Synth-v0", "a"])
    # Window (900, 1000]: steps 910..1000, mean step 955, so c + 19.1 per run.
    assert a["window"] == (900, 1000) and a["scores"] == pytest.approx([29.1, 39.1, 49.1])
    assert a["mean"] == pytest.approx(39.1)
    assert a["half"] == pytest.approx(4.302653 * 10 / math.sqrt(3), rel=1e-6)
    b = plot.final_performance(groups["Synth-v0", "b"])
    # The run in progress reached step 500: window (450, 500] for both; its steps 460..500 average 480.
    assert b["window"] == (450, 500) and b["scores"] == pytest.approx([100, 480]) and b["unfinished"] == 1
    assert b["half"] == pytest.approx(12.706205 * np.std([100, 480], ddof=1) / math.sqrt(2), rel=1e-6)
    assert math.isnan(plot.final_performance(groups["Other-v0", "c"])["half"])

    grid, mean, half, n = plot.curve(groups["Synth-v0", "a"], points=101)
    inside = grid >= 10
    assert np.allclose(mean[inside], 20 + grid[inside] / 50) and (n[inside] == 3).all() and (n[~inside] == 0).all()
    assert np.allclose(half[inside], 4.302653 * 10 / math.sqrt(3), rtol=1e-6)
    grid, mean, half, n = plot.curve(groups["Synth-v0", "b"], points=101)
    assert (n[(grid >= 10) & (grid <= 500)] == 2).all() and (n[grid > 500] == 1).all()
    assert np.allclose(mean[grid > 500], 100) and np.isnan(half[grid > 500]).all()


def test_a_reference_line_runs_from_its_groups_end_to_its_panels_end_at_its_final_return(runs):
    groups = plot.group_runs(plot.load_runs([runs / "synth"], log=open("/dev/null", "w")))
    # Group b's runs reach step 500 together, its final return is 290 (the table's), and group a's runs on the same
    # panel go on to step 1000; group c is alone on its panel.
    assert plot.reference_lines(groups, ["b", "c"]) == {("Synth-v0", "b"): (500, 1000, pytest.approx(290.0)),
                                                        ("Other-v0", "c"): (1000, 1000, pytest.approx(-5.0))}
    assert plot.reference_lines(groups, []) == {}


def test_cli_draws_figure_and_table_from_real_and_synthetic_runs(runs):
    out = runs / "figures" / "all"
    result = subprocess.run([*PLOT, "runs/real", "synth", "--out", str(out), "--table", str(runs / "table.md")],
                            cwd=runs, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stderr  # the half-written record is read up to where it ends
    for ext in ("png", "pdf"):
        assert out.with_suffix(f".{ext}").stat().st_size > 10_000
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in result.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| environment")}
    assert rows[("Synth-v0", "a")] == "| Synth-v0 | a | 3 | 39.1 | [14.3, 63.9] | 900-1k | environment steps |"
    assert rows[("Synth-v0", "b")].startswith("| Synth-v0 | b | 2 (1 unfinished) | 290.0 | ")
    assert rows[("Other-v0", "c")] == "| Other-v0 | c | 1 | -5.0 | n/a (1 run) | 900-1k | environment steps |"
    # The real run: three episodes, at steps 200, 400 and 600; its final window (540, 600] holds the last one,
    # read here record by record, without TensorBoard's accumulator that plot.py uses.
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    returns = {}
    for record in RawEventFileLoader(str(next((runs / "runs" / "real").glob("events.out.tfevents.*")))).Load():
        event = Event.FromString(record)
        for value in event.summary.value:
            if value.tag == "charts/episodic_return":
                returns[event.step] = value.simple_value
    assert sorted(returns) == [200, 400, 600]
    assert rows[("Pendulum-v1", "avg")] == f"| Pendulum-v1 | avg | 1 | {returns[600]:.1f} | n/a (1 run) | 540-600 | environment steps |"
    assert (runs / "table.md").read_text().strip() == result.stdout.split("\n\nwrote")[0].strip()


def test_filters_and_bad_input(runs, tmp_path):
    result = subprocess.run([*PLOT, "synth", "--exp-names", "b", "a", "--envs", "Synth-v0", "--out",
                             str(tmp_path / "f"), "--formats", "png"], cwd=runs, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| Synth")]
    assert [r.split("|")[2].strip() for r in rows] == ["b", "a"]  # the order asked for
    assert (tmp_path / "f.png").exists() and not (tmp_path / "f.pdf").exists()
    for args, message in [(["nowhere"], "nowhere does not exist"),
                          (["synth", "--exp-names", "zzz"], "no runs with charts/episodic_return"),
                          (["synth", "--points", "1"], "--points must be >= 2"),
                          (["synth", "--above", "5"], "--above needs --segments"),
                          (["synth", "--segments", "0"], "--segments must be >= 1"),
                          (["synth", "--reference", "zzz"], "--reference zzz: no such experiment among the runs"),
                          (["synth", "--final-steps", "0"], "--final-steps >= 1"),
                          ([], "required: paths")]:
        result = subprocess.run([*PLOT, *args, "--out", str(tmp_path / "g")], cwd=runs, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "g.png").exists()


def test_episodes_exported_to_csv_plot_and_score_as_the_event_files_do(runs, tmp_path):
    """--export-episodes writes global step, return and length of every episode; plot.py reads those files as runs,
    with the same groups and final returns as from the event files (returns kept to 0.01)."""
    real = runs / "runs" / "real"
    out = subprocess.run([*PLOT, str(real), "--out", str(tmp_path / "fig"), "--formats", "png", "--export-episodes",
                          str(tmp_path / "data")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    exported = tmp_path / "data" / "Pendulum-v1__avg__7.csv.gz"
    ident, steps, returns, lengths = plot.read_episodes(exported)
    assert ident == ("Pendulum-v1", "avg", 7, True)
    assert list(steps) == [200, 400, 600] and list(lengths) == [200, 200, 200]
    from_events = plot.load_runs([real])[0]
    np.testing.assert_allclose(returns, from_events.returns, atol=0.005)
    from_csv = plot.load_runs([exported])[0]
    assert (from_csv.env, from_csv.exp_name, from_csv.seed) == ("Pendulum-v1", "avg", 7)
    again = subprocess.run([*PLOT, str(tmp_path / "data"), "--out", str(tmp_path / "fig2"), "--formats", "png"],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "| Pendulum-v1 | avg | 1 |" in again.stdout


def test_final_steps_and_per_seed_scores(runs):
    """Group a: return c + step / 50, episodes every 10 steps to step 1000. The last 100 steps (901-1000) average
    c + 19.1 per run, so 39.1 across c = 10, 20, 30; the per-seed table lists each."""
    groups = plot.group_runs(plot.load_runs([runs / "synth"], envs=["Synth-v0"], exp_names=["a"]))
    last = plot.final_performance(groups[("Synth-v0", "a")], steps=100)
    assert last["window"] == (900, 1000) and last["scores"] == pytest.approx([29.1, 39.1, 49.1])
    table = plot.markdown_table(groups, 0.1, 100) + "\n" + plot.per_seed_table(groups, 0.1, 100)
    assert "| Synth-v0 | a | 3 | 39.1 |" in table and "last 100 steps" in table
    assert "| Synth-v0 | a | 1 | 29.1 | 29.1 | 100 | 1k |" in table


def test_segment_table_counts_and_averages_the_episodes_ending_in_each_segment(runs):
    """Group a's runs (return c + step / 50, an episode every 10 steps), in segments of 300 steps: (0, 300], (300, 600],
    (600, 900], (900, 1200], the last one holding only steps 910-1000. Each cell against numpy on the same arrays; group
    b's unfinished run (to step 500) has no episode in the last two segments."""
    groups = plot.group_runs(plot.load_runs([runs / "synth"], envs=["Synth-v0"]))
    table = plot.segment_table(groups, 300, above=35).splitlines()
    assert table[0] == "| environment | experiment | seed | measure | 0-300 | 300-600 | 600-900 | 900-1.2k |"
    rows = {tuple(c.strip() for c in line.split("|")[2:5]): [c.strip() for c in line.split("|")[5:-1]]
            for line in table[2:]}
    for seed, c in enumerate((10, 20, 30), 1):
        returns = c + STEPS / 50.0
        bins = [(STEPS > lo) & (STEPS <= lo + 300) for lo in (0, 300, 600, 900)]
        assert rows[("a", str(seed), "episodes")] == [str(b.sum()) for b in bins] == ["30", "30", "30", "10"]
        assert rows[("a", str(seed), "mean return")] == [f"{returns[b].mean():.0f}" for b in bins]
        assert rows[("a", str(seed), "share above 35")] == [f"{(returns[b] > 35).mean():.2f}" for b in bins]
    assert rows[("a", "2", "share above 35")] == ["0.00", "0.00", "0.50", "1.00"]  # 20 + step / 50 > 35: step > 750
    assert rows[("b", "2", "episodes")] == ["30", "20", "0", "0"]
    assert rows[("b", "2", "mean return")][2:] == ["-", "-"]


def test_steps_are_labelled_as_what_the_runs_count_and_kept_in_the_exported_episodes(tmp_path):
    """A run with an action repeat counts agent steps: args.json's action_repeat labels the axis and the table, and
    an exported episodes file keeps it (a file without it counts environment steps)."""
    for seed, repeat in ((1, 4), (2, 4)):
        write_run(tmp_path / "runs" / f"p{seed}", STEPS, STEPS / 10.0,
                  {"env": "Pix-v0", "exp_name": "pixels", "seed": seed, "action_repeat": repeat})
    runs = plot.load_runs([tmp_path / "runs"], log=open("/dev/null", "w"))
    assert [r.action_repeat for r in runs] == [4, 4]
    assert plot.step_unit(runs) == "agent steps (each 4 environment steps)"
    assert plot.step_unit([plot.Run(Path("x"), "E", "e", 1, STEPS, STEPS, True)]) == "environment steps"
    assert plot.step_unit([*runs, plot.Run(Path("x"), "E", "e", 1, STEPS, STEPS, True)]) == \
        "agent steps (action repeat 1/4)"
    lengths = np.full(len(STEPS), 10)
    plot.write_episodes(plot.Run(runs[0].path, "Pix-v0", "pixels", 1, STEPS, STEPS / 10.0, True, lengths, 4),
                        tmp_path / "p.csv.gz")
    assert plot.load_runs([tmp_path / "p.csv.gz"])[0].action_repeat == 4
    table = plot.markdown_table(plot.group_runs(runs))
    assert "| steps counted |" in table and "| agent steps (each 4 environment steps) |" in table


@pytest.mark.parametrize("n_runs, bands", [(2, 0), (3, 1)])
def test_a_group_of_fewer_than_three_runs_is_drawn_run_by_run_without_a_band(tmp_path, monkeypatch, n_runs, bands):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    filled, lines = [], []
    monkeypatch.setattr(Axes, "fill_between", lambda self, *a, **k: filled.append(a))
    plot_line = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: lines.append(a) or plot_line(self, *a, **k))
    for seed in range(1, n_runs + 1):
        write_run(tmp_path / "runs" / f"r{seed}", STEPS, STEPS / 10.0 + seed, {"env": "E-v0", "exp_name": "e",
                                                                               "seed": seed})
    groups = plot.group_runs(plot.load_runs([tmp_path / "runs"], log=open("/dev/null", "w")))
    plot.draw(groups, tmp_path / "fig", formats=("png",))
    assert len(filled) == bands
    assert len(lines) == 2 + (n_runs if n_runs < 3 else 0)  # the mean (dotted and solid), and each run's below 3
