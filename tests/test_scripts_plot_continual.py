"""scripts/plot_continual.py on synthetic runs of a changing task whose per-segment scores and diagnostics are known."""
import json

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from helpers import script_module

pytestmark = pytest.mark.xdist_group("plot")

plot = script_module("plot")
pc = script_module("plot_continual")

SEGMENT = 100
FRICTIONS = (0.5, 1.0, 0.2)
EPISODES = np.arange(10, 3 * SEGMENT + 1, 10)  # episode ends; the one at step 100 still ran on segment 0
REPORTS = np.arange(50, 3 * SEGMENT + 1, 50)


def write_run(run_dir, exp_name, seed, returns, segments, reports=REPORTS):
    run_dir.mkdir(parents=True)
    writer = SummaryWriter(str(run_dir))
    for step, value, k in zip(EPISODES, returns, segments):
        writer.add_scalar("charts/episodic_return", value, int(step))
        writer.add_scalar("charts/episodic_length", 10, int(step))
        writer.add_scalar("env/segment", k, int(step))
        writer.add_scalar("env/friction", FRICTIONS[k], int(step))
    for step in reports:
        for net, scale in (("critic", 1.0), ("actor", 3.0)):
            writer.add_scalar(f"plasticity/{net}_dormant_1", scale * step / 1000, int(step))
            writer.add_scalar(f"plasticity/{net}_dormant_2", scale * step / 2000, int(step))
            writer.add_scalar(f"plasticity/{net}_effective_rank", scale * step + seed, int(step))
            writer.add_scalar(f"plasticity/{net}_mean_abs_w/trunk.0", step / 100, int(step))
            writer.add_scalar(f"plasticity/{net}_mean_abs_w/trunk.2", step / 50, int(step))
            writer.add_scalar(f"plasticity/{net}_mean_abs_w/q", 1e6, int(step))  # the output layer: not hidden
    writer.close()
    (run_dir / "args.json").write_text(json.dumps({"env": "Slip-v0", "exp_name": exp_name, "seed": seed}))
    (run_dir / "summary.json").write_text(json.dumps({"finished": True}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("continual")
    segments = (EPISODES - 1) // SEGMENT
    for seed in (1, 2):  # a continuing learner scoring 100 k + seed on segment k
        write_run(base / f"avg{seed}", "avg", seed, 100.0 * segments + seed, segments)
    write_run(base / "upgd1", "avg-upgd", 1, np.full(len(EPISODES), -3.0), segments)
    write_run(base / "fresh1", "avg-fresh1", 1, np.full(len(EPISODES), 77.0), np.ones(len(EPISODES), int))
    return base


def table_rows(text, heading):
    block = text.split(heading, 1)[1].split("\n\n", 2)[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_segment_returns_against_the_fresh_learner(runs):
    text = pc.tables(pc.load([runs]))
    rows = table_rows(text, "mean episodic return per segment")
    assert [r[:2] for r in rows] == [["0", "0.500"], ["1", "1.000"], ["2", "0.200"]]
    header = text.split("mean episodic return per segment", 1)[1].split("\n\n", 2)[1].splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][2:] == ["avg (n=2)", "avg-upgd (n=1)", "avg-fresh"]
    for k, row in enumerate(rows):
        mean, half = plot.mean_ci([100 * k + 1, 100 * k + 2])
        assert row[2] == f"{mean:.0f} ± {half:.0f}"
        assert row[3] == "-3"
        assert row[4] == ("77" if k == 1 else "-")


def test_diagnostics_at_each_segments_last_report(runs):
    rows = table_rows(pc.tables(pc.load([runs])), "diagnostics at each segment's last report")
    for k, row in enumerate(rows):
        end = (k + 1) * SEGMENT  # the last report at or before the segment's last episode
        dormant, rank, weights = row[1].split(" / ")
        assert float(dormant) == pytest.approx(end / 2000, abs=1e-3)  # the last hidden layer's
        assert float(rank) == pytest.approx(end + 1.5, abs=0.5)  # seeds 1 and 2 averaged
        assert float(weights) == pytest.approx(np.mean([end / 100, end / 50]), abs=1e-4)


def test_hidden_layer_means_leave_the_output_layer_out(runs):
    run = next(r for r in pc.load([runs]) if r.exp_name == "avg" and r.seed == 1)
    steps, dormant = run.layer_mean("actor", "dormant")
    np.testing.assert_allclose(steps, REPORTS)
    np.testing.assert_allclose(dormant, 3 * (REPORTS / 1000 + REPORTS / 2000) / 2, rtol=1e-6)
    _, weights = run.layer_mean("critic", "mean_abs_w")
    np.testing.assert_allclose(weights, (REPORTS / 100 + REPORTS / 50) / 2, rtol=1e-6)
    assert pc.segment_starts(run) == {0: 10, 1: 110, 2: 210}
    assert (run.base, run.variant, run.fresh_segment) == ("avg", "plain", None)


def test_export_then_read_gives_the_same_tables_and_a_figure(runs, tmp_path):
    out = tmp_path / "data"
    assert pc.main([str(runs), "--export", str(out), "--no-figure", "--table", str(tmp_path / "a.md")]) == 0
    assert sorted(p.name for p in out.iterdir())[:2] == ["Slip-v0__avg-fresh1__1.csv.gz",
                                                          "Slip-v0__avg-fresh1__1.scalars.csv.gz"]
    assert pc.main([str(out), "--out", str(tmp_path / "fig"), "--table", str(tmp_path / "b.md")]) == 0
    assert (tmp_path / "a.md").read_text() == (tmp_path / "b.md").read_text()
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert pc.main([str(tmp_path / "empty")]) == 2
    assert pc.main([str(tmp_path / "missing")]) == 2
    assert pc.main([str(tmp_path / "empty"), "--smooth", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("plot_continual.py: error: ") for e in errors)
