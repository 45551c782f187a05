import pandas as pd
import pytest

from lalm_slu.cli import main
from lalm_slu.report.aggregate import aggregate_metrics, read_metrics_csv, write_metrics_csv
from lalm_slu.report.summary import budget_label, budget_sort_key
from lalm_slu.report.tables import build_tables, to_latex, to_markdown
from report_fakes import write_fake_results


@pytest.fixture
def metrics_csv(tmp_path):
    paths = write_fake_results(tmp_path / "results", modalities=("speech", "text", "cascade"))
    return write_metrics_csv(aggregate_metrics(paths), tmp_path / "results" / "metrics.csv")


@pytest.fixture
def tables(metrics_csv):
    return {table.name: table for table in build_tables(read_metrics_csv(metrics_csv))}


def test_one_table_per_corpus_language_and_one_cross_lingual_table(tables):
    assert sorted(tables) == ["slurp-en.test", "xsid-crosslingual.test", "xsid-de.test"]


def test_speech_text_and_cascade_inputs_are_columns_side_by_side_in_one_table(tables):
    cells = tables["slurp-en.test"].cells.set_index(["Scheme", "Speech budget"])
    columns = [c for c in cells.columns if c.startswith("SLU-F1")]
    assert columns == ["SLU-F1 speech", "SLU-F1 speech % of oracle", "SLU-F1 text", "SLU-F1 cascade"]
    # Curriculum at 10 %: 75 % on speech, 5 points more from the gold text, 10 fewer from the cascade's transcripts.
    row = cells.loc[("curriculum", "10 %")]
    assert (row["SLU-F1 speech"], row["SLU-F1 text"], row["SLU-F1 cascade"]) == ("75.0 ± 1.4", "80.0 ± 1.4", "65.0 ± 1.4")
    assert tables["slurp-en.test"].title == "slurp (en), test set, speech, text, cascade input"


def test_the_cascade_transcripts_wer_is_in_the_note_of_its_test_set(metrics_csv):
    tables = {t.name: t for t in build_tables(read_metrics_csv(metrics_csv), cascade_wer={"test": 0.234})}
    assert "WER 23.4 %" in tables["slurp-en.test"].note
    assert "WER 23.4 %" in to_markdown(tables["xsid-crosslingual.test"]).splitlines()[0]
    speech_only = build_tables(read_metrics_csv(metrics_csv).query("modality == 'speech'"), cascade_wer={"test": 0.234})
    assert all("WER" not in table.note for table in speech_only)


def test_monolingual_rows_run_from_text_only_through_budgets_to_oracle(tables):
    cells = tables["slurp-en.test"].cells
    assert list(zip(cells["Scheme"], cells["Speech budget"])) == [
        ("text only", "0 %"),
        ("direct mixing", "1 %"),
        ("curriculum", "1 %"),
        ("direct mixing", "10 %"),
        ("curriculum", "10 %"),
        ("oracle (all speech)", "100 %"),
    ]


def test_cells_are_mean_and_sd_over_seeds_in_percent(tables):
    cells = tables["slurp-en.test"].cells.set_index(["Scheme", "Speech budget"])
    # Seeds 0 and 1 score 74 and 76 (%): mean 75.0, sd (n - 1) sqrt(2) = 1.4.
    assert cells.loc[("curriculum", "10 %"), "Intent acc. speech"] == "75.0 ± 1.4"
    assert cells.loc[("curriculum", "10 %"), "Seeds"] == "2"


def test_percent_of_oracle_divides_by_the_oracle_mean_on_the_same_input(tables):
    numbers = tables["slurp-en.test"].numbers.set_index(["scheme", "budget"])
    # text-only mean 0.51, oracle mean 0.81 on speech; both 0.10 lower on the cascade.
    assert numbers.loc[("text_only", "0"), "slu_f1_speech_pct_of_oracle"] == pytest.approx(100 * 0.51 / 0.81)
    assert numbers.loc[("text_only", "0"), "slu_f1_cascade_pct_of_oracle"] == pytest.approx(100 * 0.41 / 0.71)
    assert numbers.loc[("oracle", "100"), "intent_accuracy_text_pct_of_oracle"] == pytest.approx(100.0)
    cells = tables["slurp-en.test"].cells
    assert cells.loc[0, "SLU-F1 speech % of oracle"] == "63.0"


def test_a_single_seed_shows_no_sd(tables):
    cells = tables["xsid-crosslingual.test"].cells
    assert "±" not in "".join(cells["Intent acc. speech"])


def test_cross_lingual_rows_show_pair_target_text_and_target_speech_budget(tables):
    cells = tables["xsid-crosslingual.test"].cells
    rows = list(
        zip(
            cells["Source"],
            cells["Target"],
            cells["Target text"],
            cells["Scheme"],
            cells["Target speech"],
            cells["SLU-F1 speech"],
            cells["SLU-F1 cascade"],
        )
    )
    assert rows == [
        ("en", "de", "no", "direct mixing", "10 %", "35.0", "25.0"),
        ("en", "de", "yes", "curriculum", "0 %", "30.0", "20.0"),
        ("en", "de", "yes", "curriculum", "115-shot", "40.0", "30.0"),
        ("en", "de", "yes", "curriculum", "10 %", "45.0", "35.0"),
    ]


def test_cross_lingual_percent_is_of_the_target_language_oracle(tables):
    numbers = tables["xsid-crosslingual.test"].numbers
    curriculum_10 = numbers[(numbers["scheme"] == "curriculum") & (numbers["target_speech_budget"] == "10")]
    assert curriculum_10["slu_f1_speech_pct_of_target_oracle"].iloc[0] == pytest.approx(50.0)  # 0.45 / 0.90


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
    text = to_markdown(tables["slurp-en.test"])
    lines = text.splitlines()
    assert lines[0].startswith("**slurp (en), test set, speech, text, cascade input**")
    assert lines[2] == (
        "| Scheme | Speech budget | Intent acc. speech | Intent acc. speech % of oracle | Intent acc. text"
        " | Intent acc. cascade | SLU-F1 speech | SLU-F1 speech % of oracle | SLU-F1 text | SLU-F1 cascade | Seeds |"
    )
    assert lines[3] == "|:---|:---|" + "---:|" * 9
    assert lines[4] == (
        "| text only | 0 % | 51.0 ± 1.4 | 63.0 | 56.0 ± 1.4 | 41.0 ± 1.4 | 51.0 ± 1.4 | 63.0 | 56.0 ± 1.4 | 41.0 ± 1.4 | 2 |"
    )


def test_latex_escapes_specials_and_rules_off_reference_rows(tables):
    text = to_latex(tables["slurp-en.test"])
    assert "\\begin{tabular}{llrrrrrrrrr}" in text
    assert "text only & 0 \\% & 51.0 $\\pm$ 1.4 & 63.0 & 56.0 $\\pm$ 1.4 & 41.0 $\\pm$ 1.4 & " in text
    body = text.split("\\midrule\n", 1)[1]
    # A rule after the text-only row and before the oracle row.
    assert body.count("\\midrule") == 2
    assert body.index("\\midrule") < body.index("direct mixing")
    assert body.rindex("\\midrule") < body.index("oracle")


def test_table_metrics_are_selectable(metrics_csv):
    tables = build_tables(read_metrics_csv(metrics_csv), metrics=("scenario_accuracy",))
    assert "Scenario acc. speech" in tables[0].cells.columns
    assert not any(c.startswith("SLU-F1") for c in tables[0].cells.columns)


def test_tables_command_writes_csv_markdown_and_latex(metrics_csv, tmp_path):
    out_dir = tmp_path / "tables"
    assert main(["tables", "--metrics", str(metrics_csv), "--out-dir", str(out_dir)]) == 0
    names = sorted(path.name for path in out_dir.iterdir())
    assert names == sorted(
        f"{stem}.{ext}"
        for stem in ("slurp-en.test", "xsid-crosslingual.test", "xsid-de.test")
        for ext in ("csv", "md", "tex")
    )
    numbers = pd.read_csv(out_dir / "slurp-en.test.csv", dtype={"budget": str})
    assert list(numbers["budget"]) == ["0", "1", "1", "10", "10", "100"]
    assert numbers.loc[0, "intent_accuracy_speech_mean"] == pytest.approx(0.51)
    assert numbers.loc[0, "intent_accuracy_cascade_mean"] == pytest.approx(0.41)


def test_tables_command_reads_the_cascade_wer_files(metrics_csv, tmp_path):
    wer = tmp_path / "cascade" / "test.wer.json"
    wer.parent.mkdir()
    wer.write_text('{"utterances": 3, "wer": 0.5}')
    out_dir = tmp_path / "tables"
    main(["tables", "--metrics", str(metrics_csv), "--cascade-wer", str(wer), "--out-dir", str(out_dir)])
    assert "WER 50.0 %" in (out_dir / "slurp-en.test.md").read_text().splitlines()[0]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"wer": 0.25}', None),
        ('{"wer": -0.1}', "'wer' is -0.1, expected a finite number ≥ 0"),
        ('{"wer": NaN}', "'wer' is nan, expected a finite number ≥ 0"),
        ('{"wer": true}', "'wer' is True, expected a finite number ≥ 0"),
        ('{"utterances": 3}', "not a transcription summary with a 'wer' \\(KeyError"),
        ("[0.25", "not a transcription summary with a 'wer' \\(JSONDecodeError"),
    ],
    ids=["valid", "negative", "nan", "boolean", "no-wer", "not-json"],
)
def test_a_cascade_wer_file_is_read_or_refused_naming_it(tmp_path, content, message):
    from lalm_slu.data.records import DataError
    from lalm_slu.report.paper_tables import read_cascade_wer

    path = tmp_path / "test.wer.json"
    path.write_text(content)
    if message is None:
        assert read_cascade_wer(path) == 0.25
    else:
        with pytest.raises(DataError, match=message) as error:
            read_cascade_wer(path)
        assert str(path) in str(error.value)
