"""`lalm-slu export-slurp`: a run's predictions in SLURP's prediction format; scoring the export gives the
metrics of the original predictions, and a prediction that could not be parsed stays a wrong answer."""

import json

import pytest

from lalm_slu.cli import main
from lalm_slu.data.records import Utterance, write_manifest
from lalm_slu.data.slu_json import format_target
from test_score_cli import SLURP_GOLD, our_prediction_line, write_jsonl

TIME = [{"type": "time", "filler": "six am"}]


def utterance(uid, text, scenario, action, entities, recordings=()):
    return Utterance(uid, "slurp", "en", "test", text, scenario, action, entities, recordings=list(recordings))


@pytest.fixture
def gold(tmp_path):
    utterances = [
        utterance("101", "wake me up at six am", "alarm", "set", TIME, ["audio/audio-1-headset.flac"]),
        utterance("102", "what is the weather", "weather", "query", [], ["audio-2.flac"]),
        utterance("103", "play jazz", "play", "music", [{"type": "music_genre", "filler": "jazz"}], ["audio-3.flac"]),
        utterance("104", "stop", "audio", "volume_mute", [], ["audio-4.flac"]),
    ]
    return write_manifest(utterances, tmp_path / "test.parquet")


@pytest.fixture
def predictions(tmp_path):
    return write_jsonl(tmp_path / "pred.jsonl", [
        our_prediction_line("101", format_target("alarm", "set", [{"type": "time", "filler": "Six AM"}])),
        our_prediction_line("102", "the weather, I think"),  # not parsed
        our_prediction_line("103", format_target("play", "radio", [{"type": "music_genre", "filler": "jazz"}])),
        # 104: no prediction at all
    ])


def export(gold, predictions, out):
    assert main(["export-slurp", "--gold", str(gold), "--pred", str(predictions), "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def score(gold, predictions, capsys):
    assert main(["score", "--gold", str(gold), "--pred", str(predictions), "--json", "--bootstrap", "20"]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_recording_gets_one_line_in_slurps_format(tmp_path, gold, predictions):
    lines = export(gold, predictions, tmp_path / "slurp.jsonl")
    assert [line["file"] for line in lines] == ["audio-1-headset.flac", "audio-2.flac", "audio-3.flac", "audio-4.flac"]
    assert lines[0] == {"file": "audio-1-headset.flac", "scenario": "alarm", "action": "set", "entities": TIME}
    assert all(set(line) == {"file", "scenario", "action", "entities"} for line in lines)


def test_scoring_the_export_gives_the_metrics_of_the_original_predictions(tmp_path, gold, predictions, capsys):
    original = score(gold, predictions, capsys)
    export(gold, predictions, tmp_path / "slurp.jsonl")
    exported = score(gold, tmp_path / "slurp.jsonl", capsys)
    assert exported["granularity"] == "recording"
    assert exported["metrics"] == original["metrics"]
    assert exported["confusion"] == original["confusion"]


def test_an_unparsed_or_missing_prediction_is_a_line_slurp_scores_as_wrong(tmp_path, gold, predictions, capsys):
    # SLURP's evaluate.py skips a recording without a line: leaving it out would drop the miss from its scores.
    lines = export(gold, predictions, tmp_path / "slurp.jsonl")
    empty = {"scenario": None, "action": None, "entities": []}
    assert lines[1] == {"file": "audio-2.flac", **empty}
    assert lines[3] == {"file": "audio-4.flac", **empty}
    counts = score(gold, tmp_path / "slurp.jsonl", capsys)["counts"]
    assert (counts["n_missing"], counts["n_parse_failures"]) == (0, 2)


def test_utterances_without_recordings_are_written_under_their_id(tmp_path, predictions, capsys):
    gold = write_manifest([utterance("101", "wake me up at six am", "alarm", "set", TIME)], tmp_path / "tts.parquet")
    lines = export(gold, predictions, tmp_path / "slurp.jsonl")
    assert [line["file"] for line in lines] == ["101"]
    assert score(gold, tmp_path / "slurp.jsonl", capsys)["metrics"]["intent_accuracy"]["value"] == 1.0


def test_every_recording_of_a_slurp_release_utterance_gets_its_prediction(tmp_path, capsys):
    release = write_jsonl(tmp_path / "test.jsonl", SLURP_GOLD)
    pred = write_jsonl(tmp_path / "pred.jsonl", [our_prediction_line("101", format_target("takeaway", "query", []))])
    lines = export(release, pred, tmp_path / "slurp.jsonl")
    assert [(line["file"], line["action"]) for line in lines] == [
        ("audio-1-headset.flac", "query"), ("audio-1.flac", "query"), ("audio-2.flac", None)]


def test_predictions_already_keyed_by_recording_or_for_another_test_set_are_refused(tmp_path, gold, capsys):
    by_file = write_jsonl(tmp_path / "by_file.jsonl", [{"file": "audio-2.flac", "scenario": "a", "action": "b"}])
    other = write_jsonl(tmp_path / "other.jsonl", [our_prediction_line("999", format_target("a", "b", []))])
    for pred, message in ((by_file, "already keyed by recording"), (other, "none of its 1 predictions")):
        assert main(["export-slurp", "--gold", str(gold), "--pred", str(pred), "--out", str(tmp_path / "x")]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_a_recording_listed_under_two_utterances_is_refused_naming_both(tmp_path, predictions, capsys):
    # SLURP read with `recording: all` keeps one utterance per recording, each listing all recordings.
    gold = write_manifest([
        utterance("101#0", "wake me up at six am", "alarm", "set", TIME, ["a-headset.flac", "a.flac"]),
        utterance("101#1", "wake me up at six am", "alarm", "set", TIME, ["a-headset.flac", "a.flac"]),
    ], tmp_path / "all.parquet")
    pred = write_jsonl(tmp_path / "p.jsonl", [our_prediction_line("101#0", format_target("alarm", "set", TIME))])
    assert main(["export-slurp", "--gold", str(gold), "--pred", str(pred), "--out", str(tmp_path / "x")]) == 1
    assert "'a-headset.flac' belongs to utterances '101#0' and '101#1'" in capsys.readouterr().err
