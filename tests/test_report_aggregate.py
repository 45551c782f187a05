import json

import pytest

from lalm_slu.cli import main
from lalm_slu.evaluation.metrics import METRIC_NAMES
from lalm_slu.data.records import DataError
from lalm_slu.report.aggregate import aggregate_metrics, read_metrics_csv, write_metrics_csv
from report_fakes import score_result, write_fake_results, write_result


def test_one_row_per_run_testset_modality_and_metric(tmp_path):
    paths = write_fake_results(tmp_path / "results", modalities=("speech", "text"))
    frame = aggregate_metrics(paths)
    assert len(paths) == 2 * (12 + 4 + 1)
    assert len(frame) == len(paths) * len(METRIC_NAMES)
    assert not frame.duplicated(["run", "testset", "modality", "metric"]).any()


def test_rows_carry_meta_values_intervals_and_counts(tmp_path):
    frame = aggregate_metrics(write_fake_results(tmp_path / "results"))
    row = frame[(frame["run"] == "slurp-en_curriculum_b10_s1") & (frame["metric"] == "slu_f1")].iloc[0]
    assert (row["corpus"], row["lang"], row["scheme"], row["budget"], row["seed"]) == (
        "slurp",
        "en",
        "curriculum",
        "10",
        1,
    )
    assert (row["testset"], row["modality"], row["granularity"]) == ("test", "speech", "utterance")
    assert (row["value"], row["ci_low"], row["ci_high"]) == pytest.approx((0.76, 0.71, 0.81))
    assert (row["n_gold"], row["parse_failure_rate"]) == (100, 0.02)


def test_csv_is_identical_whatever_the_order_of_input_files(tmp_path):
    paths = write_fake_results(tmp_path / "results")
    first = write_metrics_csv(aggregate_metrics(paths), tmp_path / "a.csv").read_bytes()
    second = write_metrics_csv(aggregate_metrics(list(reversed(paths))), tmp_path / "b.csv").read_bytes()
    assert first == second


def test_rows_are_ordered_by_run_testset_modality_then_metric_order(tmp_path):
    frame = aggregate_metrics(write_fake_results(tmp_path / "results"))
    assert list(frame["run"]) == sorted(frame["run"])
    first_run = frame[frame["run"] == frame["run"].iloc[0]]
    assert list(first_run["metric"]) == list(METRIC_NAMES)


def test_run_testset_and_modality_come_from_meta_not_the_file_name(tmp_path):
    path = tmp_path / "results" / "runs" / "another-run" / "metrics" / "other.speech.json"
    path.parent.mkdir(parents=True)
    meta = {"run": "slurp-en_oracle_b100_s0", "testset": "slurp-en", "modality": "text", "scheme": "oracle"}
    path.write_text(json.dumps(score_result(0.5, meta)))
    frame = aggregate_metrics([path])
    identities = set(zip(frame["run"], frame["testset"], frame["modality"]))
    assert identities == {("slurp-en_oracle_b100_s0", "slurp-en", "text")}


def test_a_score_whose_meta_lacks_its_test_set_and_input_is_an_error(tmp_path):
    path = tmp_path / "runs" / "r1" / "metrics" / "test.speech.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(score_result(0.5, {"run": "r1", "scheme": "oracle"})))
    with pytest.raises(DataError, match=r"test.speech.json: meta lacks testset, modality"):
        aggregate_metrics([path])


def test_a_file_that_is_not_a_score_result_is_named(tmp_path):
    path = tmp_path / "runs" / "r" / "metrics" / "test.speech.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"metrics": {}}')
    with pytest.raises(DataError, match=r"test.speech.json: not a score result"):
        aggregate_metrics([path])


def test_the_same_run_twice_is_an_error(tmp_path):
    path = write_fake_results(tmp_path / "results")[0]
    with pytest.raises(DataError, match="two metric files for run"):
        aggregate_metrics([path, path])


def test_aggregate_command_writes_a_csv_that_reads_back_with_text_budgets(tmp_path):
    paths = write_fake_results(tmp_path / "results")
    out = tmp_path / "results" / "metrics.csv"
    assert main(["aggregate", "--metrics", *map(str, paths), "--out", str(out)]) == 0
    frame = read_metrics_csv(out)
    assert sorted(frame["budget"].unique()) == ["0", "1", "10", "100", "115shot"]
    assert len(frame) == len(paths) * len(METRIC_NAMES)


def test_reading_a_csv_that_is_not_an_aggregate_is_an_error(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"other.csv: not an aggregate metrics CSV"):
        read_metrics_csv(path)


def test_wall_time_comes_from_the_runs_model_summary(tmp_path):
    import json

    metrics_dir = tmp_path / "runs" / "r1" / "metrics"
    metrics_dir.mkdir(parents=True)
    score = {"metrics": {"intent_accuracy": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}}, "counts": {},
             "meta": {"run": "r1", "testset": "t", "modality": "speech"}}
    (metrics_dir / "t.speech.json").write_text(json.dumps(score))
    (tmp_path / "runs" / "r1" / "model").mkdir()
    (tmp_path / "runs" / "r1" / "model" / "summary.json").write_text(json.dumps({"wall_time_s": 12.5}))
    frame = aggregate_metrics([metrics_dir / "t.speech.json"])
    assert frame["wall_time_s"].tolist() == [12.5]
