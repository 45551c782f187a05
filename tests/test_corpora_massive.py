"""MASSIVE jsonl reader and the `[type : filler]` annotation parser."""

import json
from collections import Counter
from pathlib import Path

import pytest

from lalm_slu.data.corpora.common import BadRecordPolicy
from lalm_slu.data.corpora.massive import parse_bracket_annotation, read_massive
from lalm_slu.data.records import DataError

DATA = Path(__file__).resolve().parents[1] / "data"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def record(id="1", partition="train", utt="wake me at five am", annot="wake me at [time : five am]",
           scenario="alarm", intent="alarm_set"):
    return {"id": id, "locale": "en-US", "partition": partition, "scenario": scenario, "intent": intent,
            "utt": utt, "annot_utt": annot, "worker_id": "1"}


def test_vendored_en_us_has_the_published_split_sizes():
    utterances = read_massive(DATA / "massive" / "en-US.jsonl", "massive", "en", BadRecordPolicy("error"))
    assert Counter(u.split for u in utterances) == {"train": 11514, "dev": 2033, "test": 2974}
    assert len({u.intent for u in utterances}) == 60
    assert len({u.scenario for u in utterances}) == 18


def test_vendored_record_becomes_scenario_action_and_entities():
    utterances = read_massive(DATA / "massive" / "en-US.jsonl", "massive", "en", BadRecordPolicy("error"))
    first = utterances[0]
    assert (first.id, first.split, first.scenario, first.action, first.intent) == ("0", "test", "alarm", "set", "alarm_set")
    assert first.text == "wake me up at five am this week"
    assert first.entities == [{"type": "time", "filler": "five am"}, {"type": "date", "filler": "this week"}]


def test_parser_keeps_filler_text_exactly_and_splits_at_first_separator():
    text, entities = parse_bracket_annotation("at [time : 5:30 pm] on [date : Friday's]")
    assert text == "at 5:30 pm on Friday's"
    assert entities == [{"type": "time", "filler": "5:30 pm"}, {"type": "date", "filler": "Friday's"}]


def test_parser_without_entities_returns_text_unchanged():
    assert parse_bracket_annotation("olly quiet") == ("olly quiet", [])


@pytest.mark.parametrize(
    "annotation, problem",
    [
        ("wake me at [time : five am", r"unbalanced '\['"),
        ("wake me at time : five am]", r"unbalanced '\]'"),
        ("wake [date : [time : five] am]", "nested"),
        ("wake me at [time five am]", "lacks the ' : '"),
        ("wake me at [time :five am]", "lacks the ' : '"),
        ("wake me at [ : five am]", "empty type or filler"),
    ],
)
def test_malformed_brackets_raise_naming_file_and_line(tmp_path, annotation, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [record(), record(id="2", annot=annotation)])
    with pytest.raises(DataError, match=problem) as caught:
        read_massive(path, "massive", "en", BadRecordPolicy("error"))
    assert caught.value.path == str(path) and caught.value.line == 2


@pytest.mark.parametrize(
    "fields, problem",
    [
        (dict(utt="wake me at six am"), "differs from utt"),
        (dict(utt="", annot=""), "empty transcript"),
        (dict(partition="training"), "unknown split 'training'"),
        (dict(id="1"), "duplicate utterance id '1'"),
        (dict(intent="weather_query"), "does not start with scenario"),
    ],
)
def test_bad_records_raise_naming_file_and_line(tmp_path, fields, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [record(), record(**{"id": "2", **fields})])
    with pytest.raises(DataError, match=problem) as caught:
        read_massive(path, "massive", "en", BadRecordPolicy("error"))
    assert str(caught.value).startswith(f"{path}:2: ")


def test_invalid_json_and_missing_keys_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        read_massive(path, "massive", "en", BadRecordPolicy("error"))
    broken = record(id="2")
    del broken["annot_utt"]
    write_jsonl(path, [record(), broken])
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing keys \['annot_utt'\]"):
        read_massive(path, "massive", "en", BadRecordPolicy("error"))


def test_drop_mode_skips_and_counts_every_bad_record(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        record(id="1"),
        record(id="2", annot="wake me at [time : five am"),
        record(id="3", partition="training"),
        record(id="1"),
        record(id="4"),
    ])
    policy = BadRecordPolicy("drop")
    utterances = read_massive(path, "massive", "en", policy)
    assert [u.id for u in utterances] == ["1", "4"]
    assert len(policy.dropped) == 3
    assert all(str(path) in message for message in policy.dropped)
