"""read_corpus (overlap removal, stratified cap, bad-record policy) and the prepare-corpus command."""

import json
import logging
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from lalm_slu.cli import main
from lalm_slu.data.corpora import cap_stratified, overlap_key, read_corpus, remove_eval_overlap
from lalm_slu.data.records import MANIFEST_COLUMNS, Utterance, read_manifest

DATA = Path(__file__).resolve().parents[1] / "data"


def utt(id, intent="alarm_set", text=None, split="train"):
    scenario, action = intent.split("_", 1)
    return Utterance(id=id, corpus="c", lang="en", split=split, text=text or f"text {id}", scenario=scenario, action=action)


def test_overlap_key_ignores_case_spacing_and_tokenisation():
    assert overlap_key("Is it going to rain today?") == overlap_key("is it going to  rain today ?")
    assert overlap_key("is it hot") != overlap_key("is it hot today")


def test_remove_eval_overlap_drops_only_repeated_texts():
    train = [utt("1", text="Wake me up"), utt("2", text="play jazz"), utt("3", text="wake me up")]
    kept, removed = remove_eval_overlap(train, [utt("9", text="wake me up", split="test")])
    assert [u.id for u in kept] == ["2"] and removed == 2


def test_cap_is_stratified_by_intent_and_seeded():
    items = [utt(f"a{i}", "alarm_set") for i in range(60)] + [utt(f"w{i}", "weather_query") for i in range(30)]
    items += [utt(f"m{i}", "music_play") for i in range(10)]
    capped = cap_stratified(items, 20, seed=0)
    assert Counter(u.intent for u in capped) == {"alarm_set": 12, "weather_query": 6, "music_play": 2}
    assert [u.id for u in capped] == [u.id for u in cap_stratified(items, 20, seed=0)]
    assert [u.id for u in capped] != [u.id for u in cap_stratified(items, 20, seed=1)]
    positions = [items.index(u) for u in capped]
    assert positions == sorted(positions)  # original order is kept


def test_cap_gives_leftovers_to_largest_remainders():
    items = [utt(f"a{i}", "alarm_set") for i in range(5)] + [utt(f"w{i}", "weather_query") for i in range(5)]
    items += [utt("m0", "music_play"), utt("m1", "music_play")]
    # shares 1.25, 1.25, 0.5: the one leftover goes to the largest remainder, music_play
    assert Counter(u.intent for u in cap_stratified(items, 3, seed=0)) == {"alarm_set": 1, "weather_query": 1, "music_play": 1}
    assert len(cap_stratified(items, 100, seed=0)) == 12


def test_cap_counts_utterances_not_recordings():
    items = [utt(f"{n}#{k}", "alarm_set") for n in range(10) for k in range(3)]
    capped = cap_stratified(items, 4, seed=0)
    assert len(capped) == 12 and len({u.id.split("#")[0] for u in capped}) == 4


def test_read_corpus_caps_massive_and_removes_overlap(caplog):
    caplog.set_level(logging.INFO)
    splits = read_corpus("massive", DATA / "massive" / "en-US.jsonl", "massive", "en",
                         max_utterances={"train": 2000, "test": 300}, seed=0)
    assert {split: len(items) for split, items in splits.items()} == {"train": 2000, "dev": 2033, "test": 300}
    assert "removed 33 train utterance(s)" in caplog.text
    held_out = {overlap_key(u.text) for u in splits["dev"] + splits["test"]}
    assert not any(overlap_key(u.text) in held_out for u in splits["train"])
    assert len({u.intent for u in splits["train"]}) == 60  # every intent keeps its share


def test_read_corpus_drop_mode_logs_the_count(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    good = {"id": "1", "partition": "train", "scenario": "alarm", "intent": "alarm_set", "utt": "wake me", "annot_utt": "wake me"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "2", "annot_utt": "[x : wake me"}) + "\n")
    splits = read_corpus("massive", path, "m", "en", on_bad_record="drop")
    assert [u.id for u in splits["train"]] == ["1"]
    assert "dropped 1 bad record(s)" in caplog.text


def test_read_corpus_rejects_unknown_reader_option_and_split():
    with pytest.raises(ValueError, match="has no option"):
        read_corpus("massive", DATA / "massive" / "en-US.jsonl", "m", "en", recording="all")
    with pytest.raises(ValueError, match="not splits"):
        read_corpus("massive", DATA / "massive" / "en-US.jsonl", "m", "en", max_utterances={"valid": 3})


def test_prepare_corpus_writes_three_manifests_even_for_a_missing_split(tmp_path):
    out = tmp_path / "slurp"
    code = main(["prepare-corpus", "--reader", "slurp_release", "--source", str(DATA / "slurp"), "--corpus", "slurp",
                 "--lang", "en", "--out-dir", str(out), "--max-utterances", "dev=50", "test=80",
                 "--on-bad-record", "drop", "--option", "recording=all"])
    assert code == 0
    train, dev, test = (read_manifest(out / f"{split}.parquet") for split in ("train", "dev", "test"))
    assert len(train) == 0 and list(train.columns) == list(MANIFEST_COLUMNS)
    assert dev["id"].str.split("#").str[0].nunique() == 50
    assert test["id"].str.split("#").str[0].nunique() == 80
    assert (dev["audio"].notna()).all() and isinstance(dev["recordings"].iloc[0], list)


def test_prepare_corpus_rejects_bad_arguments(tmp_path):
    base = ["prepare-corpus", "--reader", "massive", "--source", str(DATA / "massive" / "en-US.jsonl"),
            "--corpus", "m", "--lang", "en", "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit):
        main(base + ["--max-utterances", "train=many"])
    with pytest.raises(SystemExit, match="has no option"):
        main(base + ["--option", "recording=all"])
    assert not list(tmp_path.glob("*.parquet"))


def test_prepare_corpus_manifest_round_trips_entities(tmp_path):
    main(["prepare-corpus", "--reader", "xsid", "--source", str(DATA / "xsid"), "--corpus", "xsid", "--lang", "it",
          "--out-dir", str(tmp_path)])
    dev = read_manifest(tmp_path / "dev.parquet")
    assert len(dev) == 300 and len(read_manifest(tmp_path / "train.parquet")) == 0
    row = dev.iloc[0]
    assert row["intent"] == "weather_find" and row["entities"][0] == {"type": "weather/attribute", "filler": "Pioverà"}
    assert pd.isna(row["audio"])


def test_reader_options_given_as_text_become_numbers_where_the_readers_default_is_one():
    from lalm_slu.data.corpora.prepare import convert_option

    assert convert_option("speech_massive_hub", "max_duration_s", "12.5") == 12.5
    assert convert_option("speech_massive_hub", "config", "fr-FR") == "fr-FR"
    assert convert_option("slurp_release", "recording", "headset") == "headset"
