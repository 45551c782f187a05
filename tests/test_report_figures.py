from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from lalm_slu.cli import main
from lalm_slu.report.aggregate import aggregate_metrics, read_metrics_csv, write_metrics_csv
from lalm_slu.report.figures import (
    budget_curves_figure,
    crosslingual_figure,
    find_chromium,
    write_figures,
)
from lalm_slu.data.records import DataError
from lalm_slu.report.loss_curves import loss_curves_figure, read_loss_curves
from lalm_slu.report.summary import CROSSLINGUAL_KEYS, MONOLINGUAL_KEYS, is_crosslingual, seed_summary
from report_fakes import write_fake_results

FIGURE_FILES = ["budget_curves.pdf", "budget_curves.png", "crosslingual.pdf", "crosslingual.png", "index.html"]


@pytest.fixture
def metrics_csv(tmp_path):
    paths = write_fake_results(tmp_path / "results")
    return write_metrics_csv(aggregate_metrics(paths), tmp_path / "results" / "metrics.csv")


@pytest.fixture
def summaries(metrics_csv):
    frame = read_metrics_csv(metrics_csv)
    cross = is_crosslingual(frame)
    return (
        seed_summary(frame[~cross], MONOLINGUAL_KEYS),
        seed_summary(frame[cross], (*CROSSLINGUAL_KEYS, "target_text")),
    )


def test_figures_command_writes_png_pdf_and_an_index(metrics_csv, tmp_path):
    out_dir = tmp_path / "figures"
    assert main(["figures", "--metrics", str(metrics_csv), "--out-dir", str(out_dir)]) == 0
    assert sorted(path.name for path in out_dir.iterdir()) == FIGURE_FILES
    assert (out_dir / "budget_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out_dir / "budget_curves.pdf").read_bytes()[:5] == b"%PDF-"
    assert '<img src="crosslingual.png"' in (out_dir / "index.html").read_text()


def test_figures_are_byte_identical_when_rerun(metrics_csv, tmp_path):
    frame = read_metrics_csv(metrics_csv)
    write_figures(frame, tmp_path / "first")
    write_figures(frame, tmp_path / "second")
    for name in FIGURE_FILES:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_figure_files_carry_no_dates_or_software_versions(metrics_csv, tmp_path):
    write_figures(read_metrics_csv(metrics_csv), tmp_path)
    pdf = (tmp_path / "budget_curves.pdf").read_bytes()
    png = (tmp_path / "budget_curves.png").read_bytes()
    assert b"/CreationDate" not in pdf and b"/Producer" not in pdf and b"/Creator" not in pdf
    assert b"Software" not in png and b"matplotlib version" not in png


def test_budget_curves_have_a_panel_per_language_and_modality_and_a_row_per_metric(summaries):
    mono, _ = summaries
    figure = budget_curves_figure(mono, metrics=("slu_f1", "intent_accuracy"))
    axes = [a for a in figure.axes if a.get_title() or a.get_ylabel() or a.get_xlabel() or a.lines]
    assert len(axes) == 2  # slurp/en × two metrics; xsid/de has only an oracle run: no curve, no panel
    assert not any("xsid" in a.get_title() for a in figure.axes)
    assert figure.axes[0].get_title() == "slurp (en)\ntest set, speech input"
    assert figure.axes[0].get_ylabel() == "SLU-F1 (%)"


def test_budget_curves_plot_scheme_means_on_a_symlog_axis_that_shows_budget_zero(summaries):
    mono, _ = summaries
    axes = budget_curves_figure(mono, metrics=("slu_f1",)).axes[0]
    assert axes.get_xscale() == "symlog"
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["0", "1", "10", "100"]
    assert axes.get_xlim()[0] < 0
    curves = {line.get_label(): line for line in axes.lines if line.get_marker() == "o"}
    assert list(curves["curriculum"].get_xdata()) == [1.0, 10.0]
    assert list(curves["curriculum"].get_ydata()) == pytest.approx([63.0, 75.0])  # mean of seeds, in %


def test_text_only_and_oracle_are_horizontal_reference_lines(summaries):
    mono, _ = summaries
    axes = budget_curves_figure(mono, metrics=("slu_f1",)).axes[0]
    references = {line.get_label(): line for line in axes.lines if line.get_marker() != "o"}
    assert list(references["text only"].get_ydata()) == pytest.approx([51.0, 51.0])
    assert list(references["oracle (all speech)"].get_ydata()) == pytest.approx([81.0, 81.0])
    assert references["text only"].get_linestyle() == "--"


def test_curves_have_bands_from_the_mean_bootstrap_bounds(summaries):
    mono, _ = summaries
    axes = budget_curves_figure(mono, metrics=("slu_f1",)).axes[0]
    bands = axes.collections
    assert len(bands) == 2  # direct mixing, curriculum
    y = np.concatenate([path.vertices[:, 1] for path in bands[1].get_paths()])
    assert y.min() == pytest.approx(58.0) and y.max() == pytest.approx(80.0)  # curriculum: 63 - 5 .. 75 + 5


def test_crosslingual_figure_puts_budgets_on_an_ordered_categorical_axis(summaries):
    mono, cross = summaries
    axes = crosslingual_figure(cross, mono, metrics=("slu_f1",)).axes[0]
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["0 %", "115-shot", "10 %"]
    assert axes.get_title() == "xsid en→de\ntest set, speech input"
    labels = axes.get_legend_handles_labels()[1]
    assert "curriculum, target text" in labels and "direct mixing, no target text" in labels
    oracle = next(line for line in axes.lines if line.get_label().startswith("target oracle"))
    assert list(oracle.get_ydata()) == pytest.approx([90.0, 90.0])


def test_missing_cross_lingual_runs_give_a_placeholder_figure(metrics_csv, tmp_path):
    frame = read_metrics_csv(metrics_csv)
    write_figures(frame[~is_crosslingual(frame)], tmp_path)
    assert (tmp_path / "crosslingual.png").exists()
    empty = crosslingual_figure(seed_summary(frame.iloc[0:0], CROSSLINGUAL_KEYS), pd.DataFrame())
    assert empty.axes[0].texts[0].get_text() == "no cross-lingual runs in the metrics CSV"


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")
def test_figures_render_in_headless_chromium(metrics_csv, tmp_path):
    out_dir = tmp_path / "figures"
    shot = tmp_path / "screenshot.png"
    assert main(["figures", "--metrics", str(metrics_csv), "--out-dir", str(out_dir), "--screenshot", str(shot)]) == 0
    pixels = (matplotlib.image.imread(shot)[:, :, :3] * 255).round().astype(int)
    # The curriculum orange (#ff7f0e) only appears if the browser actually loaded and drew the PNGs.
    orange = np.all(np.abs(pixels - [255, 127, 14]) <= 6, axis=-1)
    assert orange.sum() > 200


def test_a_test_sets_speech_text_and_cascade_panels_sit_side_by_side_on_one_scale(tmp_path):
    frame = aggregate_metrics(write_fake_results(tmp_path / "results", modalities=("cascade", "text", "speech")))
    mono = seed_summary(frame[~is_crosslingual(frame)], MONOLINGUAL_KEYS)
    top_row = budget_curves_figure(mono, metrics=("slu_f1", "intent_accuracy")).axes[:3]
    assert [a.get_title().split(", ")[-1] for a in top_row] == ["speech input", "text input", "cascade input"]
    assert top_row[0].get_ylim() == top_row[2].get_ylim()  # end to end and cascade read off one y scale


def write_loss_csvs(results: Path, runs: list[str], with_dev: str | None = None) -> list[Path]:
    """A model directory per run with a fabricated loss.csv (and `with_dev`'s dev.csv)."""
    model_dirs = []
    for index, run in enumerate(runs):
        model_dir = results / "runs" / run / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        steps = np.arange(1, 21)
        pd.DataFrame({"step": steps, "phase": 1, "loss": 3.0 / steps + 0.1 * index, "lr": 1e-3}).to_csv(
            model_dir / "loss.csv", index=False)
        if run == with_dev:
            pd.DataFrame({"step": [10, 20, 10, 20], "inputs": ["text", "text", "speech", "speech"],
                          "loss": [0.9, 0.6, 1.2, 0.8]}).to_csv(model_dir / "dev.csv", index=False)
        model_dirs.append(model_dir)
    return model_dirs


def test_loss_curves_overlay_seeds_per_scheme_and_budget_with_dev_loss_where_evaluated(metrics_csv, tmp_path):
    runs = ["slurp-en_direct_mixing_b10_s0", "slurp-en_direct_mixing_b10_s1", "slurp-en_curriculum_b10_s0"]
    model_dirs = write_loss_csvs(metrics_csv.parent, runs, with_dev=runs[1])
    figure = loss_curves_figure(read_loss_curves(model_dirs, read_metrics_csv(metrics_csv)))
    panels = {axes.get_title(): axes for axes in figure.axes if axes.get_title()}
    assert sorted(panels) == ["slurp (en)\ncurriculum, 10 %", "slurp (en)\ndirect mixing, 10 %"]
    mixing = panels["slurp (en)\ndirect mixing, 10 %"]
    assert sorted(line.get_label() for line in mixing.get_lines()) == [
        "seed 0", "seed 1", "seed 1, dev (speech)", "seed 1, dev (text)"]
    train = next(line for line in mixing.get_lines() if line.get_label() == "seed 1")
    assert train.get_ydata().tolist() == pd.read_csv(model_dirs[1] / "loss.csv")["loss"].tolist()


def test_figures_command_draws_the_loss_curves_of_the_runs_it_is_given(metrics_csv, tmp_path):
    model_dirs = write_loss_csvs(metrics_csv.parent, ["slurp-en_direct_mixing_b10_s0", "xsid-de_oracle_b100_s0"])
    out_dir = tmp_path / "figures"
    assert main(["figures", "--metrics", str(metrics_csv), "--out-dir", str(out_dir), "--runs",
                 *map(str, model_dirs)]) == 0
    assert matplotlib.image.imread(out_dir / "loss_curves.png").shape[0] > 100
    assert '<img src="loss_curves.png"' in (out_dir / "index.html").read_text()


def test_a_run_missing_from_the_metrics_csv_is_an_error_naming_its_directory(metrics_csv, tmp_path):
    model_dirs = write_loss_csvs(tmp_path, ["slurp-en_unknown_b10_s0"])
    with pytest.raises(DataError, match="slurp-en_unknown_b10_s0.*not in the metrics CSV"):
        read_loss_curves(model_dirs, read_metrics_csv(metrics_csv))
