"""xSID reader: English train files, CoNLL evaluation files, BIO → entity spans."""

from collections import Counter
from pathlib import Path

import pytest

from lalm_slu.data.corpora import remove_eval_overlap
from lalm_slu.data.corpora.common import BadRecordPolicy
from lalm_slu.data.corpora.xsid import bio_spans, entities_from_bio, read_xsid, scenario_action
from lalm_slu.data.records import DataError

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def english():
    policy = BadRecordPolicy("drop")
    return read_xsid(DATA / "xsid", "xsid", "en", policy), policy


def test_english_train_has_one_record_per_line_except_malformed_tags(english):
    utterances, policy = english
    counts = Counter(u.split for u in utterances)
    # 43,605 train lines; 357 carry the malformed tag `Orecurring_datetime` and are dropped.
    assert counts == {"train": 43605 - 357, "dev": 300, "test": 500}
    assert len(policy.dropped) == 357
    assert all("Orecurring_datetime" in message for message in policy.dropped)


def test_train_ids_are_line_numbers(english):
    utterances, _ = english
    first = utterances[0]
    assert (first.id, first.text, first.intent) == ("train-1", "tell me the weather report for half moon bay", "weather_find")
    assert first.entities == [{"type": "location", "filler": "half moon bay"}]


@pytest.mark.parametrize("lang", ["de", "it"])
def test_eval_languages_have_300_dev_and_500_test(lang):
    utterances = read_xsid(DATA / "xsid", "xsid", lang, BadRecordPolicy("error"))
    assert Counter(u.split for u in utterances) == {"dev": 300, "test": 500}


def test_eval_ids_align_across_languages_and_fillers_are_transcript_substrings():
    english = read_xsid(DATA / "xsid", "xsid", "en", BadRecordPolicy("drop"))
    german = read_xsid(DATA / "xsid", "xsid", "de", BadRecordPolicy("error"))
    english_eval = {u.id: u.intent for u in english if u.split != "train"}
    assert {u.id: u.intent for u in german} == english_eval
    first = german[0]
    assert (first.id, first.text) == ("valid-1", "Regnet es heute?")
    assert first.entities == [{"type": "weather/attribute", "filler": "Regnet"}, {"type": "datetime", "filler": "heute"}]


def test_english_train_overlapping_eval_text_is_removed(english):
    utterances, _ = english
    train = [u for u in utterances if u.split == "train"]
    evaluation = [u for u in utterances if u.split != "train"]
    kept, removed = remove_eval_overlap(train, evaluation)
    # Tokenised train text vs raw eval text ("rain today?" = "rain today ?"): 1,599 lines of the
    # full file (181 distinct texts) repeat an en valid/test sentence; 4 lines (1 text) are among the 357 dropped.
    assert removed == 1595
    assert len({u.text.lower() for u in train} - {u.text.lower() for u in kept}) == 180


def test_bio_spans():
    assert bio_spans(["O", "B-a", "I-a", "B-a", "O", "B-b"]) == [("a", 1, 3), ("a", 3, 4), ("b", 5, 6)]
    assert bio_spans(["B-a", "I-b"]) == [("a", 0, 1), ("b", 1, 2)]  # an orphan I- starts a span (conlleval)
    assert bio_spans(["O", "O"]) == []


def test_bio_rejects_unknown_tags():
    with pytest.raises(DataError, match="'X-a' at token 2"):
        bio_spans(["O", "X-a"])


def test_fillers_span_the_transcript_from_first_to_last_token():
    text = "wake me at 5 p.m. tomorrow!"
    tokens = ["wake", "me", "at", "5", "p.m.", "tomorrow", "!"]
    tags = ["O", "O", "O", "B-datetime", "I-datetime", "I-datetime", "O"]
    assert entities_from_bio(text, tokens, tags) == [{"type": "datetime", "filler": "5 p.m. tomorrow"}]


def test_token_missing_from_text_and_length_mismatch_raise():
    with pytest.raises(DataError, match="token 'pm' not found"):
        entities_from_bio("at 5 p.m.", ["at", "5", "pm"], ["O", "B-t", "I-t"])
    with pytest.raises(DataError, match="3 tokens but 2 tags"):
        entities_from_bio("a b c", ["a", "b", "c"], ["O", "O"])


def test_intent_mapping():
    assert scenario_action("alarm/set_alarm") == ("alarm", "set_alarm")
    assert scenario_action("PlayMusic") == ("music", "play")
    with pytest.raises(DataError, match="unknown xSID intent 'Dance'"):
        scenario_action("Dance")


def test_malformed_conll_names_file_and_line(tmp_path):
    folder = tmp_path / "xsid" / "xSID-0.7"
    folder.mkdir(parents=True)
    good = "# text = wake me\n# intent = alarm/set_alarm\n1\twake\talarm/set_alarm\tO\n2\tme\talarm/set_alarm\tO\n"
    bad = "# text = hello\n# intent = alarm/set_alarm\n1\thello\tO\n"
    (folder / "nl.valid.conll").write_text(good + "\n" + bad, encoding="utf-8")
    with pytest.raises(DataError, match="expected 4 tab-separated fields") as caught:
        read_xsid(tmp_path / "xsid", "xsid", "nl", BadRecordPolicy("error"))
    assert caught.value.line == 8
    missing_intent = "# text = hello\n1\thello\tx/y\tO\n"
    (folder / "nl.valid.conll").write_text(good + "\n" + missing_intent, encoding="utf-8")
    with pytest.raises(DataError, match=r"nl.valid.conll:6: sentence lacks the '# intent = ' header"):
        read_xsid(tmp_path / "xsid", "xsid", "nl", BadRecordPolicy("error"))


def test_unknown_language_is_an_error():
    with pytest.raises(DataError, match="no xSID files for language 'fr'"):
        read_xsid(DATA / "xsid", "xsid", "fr", BadRecordPolicy("error"))
