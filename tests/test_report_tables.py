import pandas as pd
import pytest

from lalm_slu.cli import main
from lalm_slu.report.aggregate import aggregate_metrics, read_metrics_csv, write_metrics_csv
from lalm_slu.report.summary import budget_label, budget_sort_key
from lalm_slu.report.tables import build_tables, to_latex, to_markdown
from report_fakes import write_fake_results


@pytest.fixture
def metrics_csv(tmp_path):
    paths = write_fake_results(tmp_path / "results")
    return write_metrics_csv(aggregate_metrics(paths), tmp_path / "results" / "metrics.csv")


@pytest.fixture
def tables(metrics_csv):
    return {table.name: table for table in build_tables(read_metrics_csv(metrics_csv))}


def test_one_table_per_corpus_language_and_one_cross_lingual_table(tables):
    assert sorted(tables) == ["slurp-en.test.speech", "xsid-crosslingual.test.speech", "xsid-de.test.speech"]


def test_monolingual_rows_run_from_text_only_through_budgets_to_oracle(tables):
    cells = tables["slurp-en.test.speech"].cells
    assert list(zip(cells["Scheme"], cells["Speech budget"])) == [
        ("text only", "0 %"),
        ("direct mixing", "1 %"),
        ("curriculum", "1 %"),
        ("direct mixing", "10 %"),
        ("curriculum", "10 %"),
        ("oracle (all speech)", "100 %"),
    ]


def test_cells_are_mean_and_sd_over_seeds_in_percent(tables):
    cells = tables["slurp-en.test.speech"].cells.set_index(["Scheme", "Speech budget"])
    # Seeds 0 and 1 score 74 and 76 (%): mean 75.0, sd (n - 1) sqrt(2) = 1.4.
    assert cells.loc[("curriculum", "10 %"), "Intent acc."] == "75.0 ± 1.4"
    assert cells.loc[("curriculum", "10 %"), "Seeds"] == "2"


def test_percent_of_oracle_divides_by_the_oracle_mean(tables):
    numbers = tables["slurp-en.test.speech"].numbers.set_index(["scheme", "budget"])
    # text-only mean 0.51, oracle mean 0.81.
    assert numbers.loc[("text_only", "0"), "slu_f1_pct_of_oracle"] == pytest.approx(100 * 0.51 / 0.81)
    assert numbers.loc[("oracle", "100"), "intent_accuracy_pct_of_oracle"] == pytest.approx(100.0)
    cells = tables["slurp-en.test.speech"].cells
    assert cells.loc[0, "SLU-F1 % of oracle"] == "63.0"


def test_a_single_seed_shows_no_sd(tables):
    cells = tables["xsid-crosslingual.test.speech"].cells
    assert "±" not in "".join(cells["Intent acc."])


def test_cross_lingual_rows_show_pair_target_text_and_target_speech_budget(tables):
    cells = tables["xsid-crosslingual.test.speech"].cells
    rows = list(
        zip(
            cells["Source"],
            cells["Target"],
            cells["Target text"],
            cells["Scheme"],
            cells["Target speech"],
            cells["SLU-F1"],
        )
    )
    assert rows == [
        ("en", "de", "no", "direct mixing", "10 %", "35.0"),
        ("en", "de", "yes", "curriculum", "0 %", "30.0"),
        ("en", "de", "yes", "curriculum", "115-shot", "40.0"),
        ("en", "de", "yes", "curriculum", "10 %", "45.0"),
    ]


def test_cross_lingual_percent_is_of_the_target_language_oracle(tables):
    numbers = tables["xsid-crosslingual.test.speech"].numbers
    curriculum_10 = numbers[(numbers["scheme"] == "curriculum") & (numbers["target_speech_budget"] == "10")]
    assert curriculum_10["slu_f1_pct_of_target_oracle"].iloc[0] == pytest.approx(50.0)  # 0.45 / 0.90


def test_budgets_sort_zero_then_shots_then_percentages():
    assert sorted(["10", "115shot", "0", "2", "5shot", "100"], key=budget_sort_key) == [
        "0",
        "5shot",
        "115shot",
        "2",
        "10",
        "100",
    ]
    assert [budget_label(b) for b in ("0", "2.5", "115shot")] == ["0 %", "2.5 %", "115-shot"]


def test_markdown_has_a_title_header_and_right_aligned_numbers(tables):
    text = to_markdown(tables["slurp-en.test.speech"])
    lines = text.splitlines()
    assert lines[0].startswith("**slurp (en), test set, speech input**")
    assert (
        lines[2]
        == "| Scheme | Speech budget | Intent acc. | Intent acc. % of oracle | SLU-F1 | SLU-F1 % of oracle | Seeds |"
    )
    assert lines[3] == "|:---|:---|---:|---:|---:|---:|---:|"
    assert lines[4] == "| text only | 0 % | 51.0 ± 1.4 | 63.0 | 51.0 ± 1.4 | 63.0 | 2 |"


def test_latex_escapes_specials_and_rules_off_reference_rows(tables):
    text = to_latex(tables["slurp-en.test.speech"])
    assert "\\begin{tabular}{llrrrrr}" in text
    assert "text only & 0 \\% & 51.0 $\\pm$ 1.4 & 63.0 & 51.0 $\\pm$ 1.4 & 63.0 & 2 \\\\" in text
    body = text.split("\\midrule\n", 1)[1]
    # A rule after the text-only row and before the oracle row.
    assert body.count("\\midrule") == 2
    assert body.index("\\midrule") < body.index("direct mixing")
    assert body.rindex("\\midrule") < body.index("oracle")


def test_table_metrics_are_selectable(metrics_csv):
    tables = build_tables(read_metrics_csv(metrics_csv), metrics=("scenario_accuracy",))
    assert "Scenario acc." in tables[0].cells.columns
    assert "SLU-F1" not in tables[0].cells.columns


def test_tables_command_writes_csv_markdown_and_latex(metrics_csv, tmp_path):
    out_dir = tmp_path / "tables"
    assert main(["tables", "--metrics", str(metrics_csv), "--out-dir", str(out_dir)]) == 0
    names = sorted(path.name for path in out_dir.iterdir())
    assert names == sorted(
        f"{stem}.{ext}"
        for stem in ("slurp-en.test.speech", "xsid-crosslingual.test.speech", "xsid-de.test.speech")
        for ext in ("csv", "md", "tex")
    )
    numbers = pd.read_csv(out_dir / "slurp-en.test.speech.csv", dtype={"budget": str})
    assert list(numbers["budget"]) == ["0", "1", "1", "10", "10", "100"]
    assert numbers.loc[0, "intent_accuracy_mean"] == pytest.approx(0.51)
