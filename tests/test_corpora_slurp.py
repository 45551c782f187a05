"""SLURP release reader and the choice of recording per utterance."""

import json
from collections import Counter
from pathlib import Path

import pytest

from lalm_slu.data.corpora.common import BadRecordPolicy, utterance_key
from lalm_slu.data.corpora.slurp import choose_recordings, read_slurp_release
from lalm_slu.data.records import DataError

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = ["audio-1-headset.flac", "audio-1.flac", "audio-2-headset.flac"]


def slurp_line(slurp_id=1, sentence="wake me at five am", annotation="wake me at [time : five am]", files=FILES):
    return {"slurp_id": slurp_id, "sentence": sentence, "sentence_annotation": annotation, "intent": "alarm_set",
            "scenario": "alarm", "action": "set",
            "recordings": [{"file": name, "wer": 0.0, "ent_wer": 0.0, "status": "correct"} for name in files]}


def write_release(folder, devel=(), test=()):
    folder.mkdir(exist_ok=True)
    for name, lines in (("devel.jsonl", devel), ("test.jsonl", test)):
        (folder / name).write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return folder


def test_vendored_release_reads_devel_and_test_dropping_inconsistent_annotations():
    policy = BadRecordPolicy("drop")
    utterances = read_slurp_release(DATA / "slurp", "slurp", "en", policy)
    # 2,033 devel / 2,974 test lines; 16 have an annotation whose words differ from the sentence.
    assert Counter(u.split for u in utterances) == {"dev": 2029, "test": 2962}
    assert len(policy.dropped) == 16
    assert all(u.audio and u.audio in u.recordings for u in utterances)


def test_entity_fillers_come_from_the_lower_cased_sentence():
    utterances = read_slurp_release(DATA / "slurp", "slurp", "en", BadRecordPolicy("drop"))
    by_id = {u.id: u for u in utterances}
    first = by_id["13804"]
    assert first.intent == "qa_currency"
    assert first.entities == [{"type": "currency_name", "filler": "american dollar"},
                              {"type": "currency_name", "filler": "japanese yen"}]
    for utt in utterances:
        for entity in utt.entities:
            assert entity["filler"] in utt.text


@pytest.mark.parametrize("mode, expected", [
    ("first", ["audio-1-headset.flac"]),
    ("headset", ["audio-1-headset.flac"]),
    ("all", FILES),
])
def test_choose_recordings(mode, expected):
    assert choose_recordings(FILES, mode) == expected


def test_headset_mode_falls_back_to_first_recording():
    assert choose_recordings(["a.flac", "b.flac"], "headset") == ["a.flac"]
    assert choose_recordings(["a.flac", "b-headset.flac"], "first") == ["a.flac"]


def test_all_mode_gives_one_record_per_recording_sharing_the_utterance_key(tmp_path):
    folder = write_release(tmp_path / "slurp", devel=[slurp_line()])
    utterances = read_slurp_release(folder, "slurp", "en", BadRecordPolicy("error"), recording="all")
    assert [u.id for u in utterances] == ["1#0", "1#1", "1#2"]
    assert [u.audio for u in utterances] == FILES
    assert {utterance_key(u.id) for u in utterances} == {"1"}
    assert all(u.recordings == FILES for u in utterances)


def test_mismatched_annotation_names_file_and_line(tmp_path):
    folder = write_release(tmp_path / "slurp", test=[slurp_line(), slurp_line(2, annotation="wake me at [time : six am]")])
    with pytest.raises(DataError, match="differs from sentence") as caught:
        read_slurp_release(folder, "slurp", "en", BadRecordPolicy("error"))
    assert (caught.value.path, caught.value.line) == (str(folder / "test.jsonl"), 2)


def test_unknown_recording_mode_and_empty_folder_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="recording must be one of"):
        read_slurp_release(DATA / "slurp", "slurp", "en", BadRecordPolicy("error"), recording="loudest")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no SLURP release file"):
        read_slurp_release(tmp_path / "empty", "slurp", "en", BadRecordPolicy("error"))
