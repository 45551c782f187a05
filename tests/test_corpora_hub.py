"""Hub readers on local folders written in the hub's schema, the gated-dataset message, and `download`."""

import json
from collections import Counter
from pathlib import Path

import pytest
import soundfile

from fixtures.hub_schema import make_italic, make_slurp_mirror, make_speech_massive, wav_bytes
from lalm_slu.cli import main
from lalm_slu.data.corpora import hub, read_corpus
from lalm_slu.data.corpora.common import BadRecordPolicy
from lalm_slu.data.records import DataError, read_manifest

SHOT = [("1", "alarm_set", "réveille-moi à cinq heures", "réveille-moi à [time : cinq heures]"),
        ("2", "weather_query", "quel temps fait-il", "quel temps fait-il")]
TRAIN = SHOT + [("3", "calendar_set", "ajoute une réunion", "ajoute une [event_name : réunion]"),
                ("4", "alarm_set", "réveille-moi demain", "réveille-moi [date : demain]")]
VALIDATION = [("10", "music_likeness", "j'aime ce morceau", "j'aime ce morceau")]
TEST = [("20", "weather_query", "il pleut demain", "il pleut [date : demain]")]


@pytest.fixture
def speech_massive(tmp_path):
    return make_speech_massive(tmp_path, "fr-FR", {"train": TRAIN, "train_115": SHOT, "validation": VALIDATION}, TEST)


def test_speech_massive_maps_splits_labels_and_audio(speech_massive, tmp_path):
    main_repo, test_repo = speech_massive
    utterances = hub.read_speech_massive(str(main_repo), "speech_massive", "fr-FR", BadRecordPolicy("error"),
                                         test_source=str(test_repo), cache_dir=str(tmp_path / "hf"),
                                         audio_dir=str(tmp_path / "audio"))
    assert Counter(u.split for u in utterances) == {"train": 4, "dev": 1, "test": 1}
    first = next(u for u in utterances if u.id == "1")
    assert (first.scenario, first.action, first.voice) == ("alarm", "set", "spk1")
    assert first.entities == [{"type": "time", "filler": "cinq heures"}]
    assert first.recordings == ["train/1.wav"]
    assert soundfile.info(first.audio).samplerate == 16_000 and first.duration_s == pytest.approx(0.5)


def test_speech_massive_115_shot_only_locale_puts_the_shots_in_train(tmp_path):
    main_repo, test_repo = make_speech_massive(tmp_path, "ko-KR", {"train_115": SHOT, "validation": VALIDATION}, TEST)
    utterances = hub.read_speech_massive(str(main_repo), "sm", "ko-KR", BadRecordPolicy("error"),
                                         test_source=str(test_repo), cache_dir=str(tmp_path / "hf"))
    assert sorted(u.id for u in utterances if u.split == "train") == ["1", "2"]
    assert all(u.audio is None for u in utterances)  # no audio_dir: text-only manifest
    assert hub.speech_massive_shot_ids(str(main_repo), "ko-KR", cache_dir=str(tmp_path / "hf")) == ["1", "2"]


def test_prepare_corpus_writes_the_115_shot_subset(speech_massive, tmp_path):
    main_repo, test_repo = speech_massive
    out = tmp_path / "manifests"
    main(["prepare-corpus", "--reader", "speech_massive_hub", "--source", str(main_repo), "--corpus", "speech_massive",
          "--lang", "fr-FR", "--out-dir", str(out), "--option", f"test_source={test_repo}",
          f"cache_dir={tmp_path / 'hf'}", f"audio_dir={tmp_path / 'audio'}", "max_duration_s=10"])
    assert (out / "subsets" / "train_115.txt").read_text() == "1\n2\n"
    train = read_manifest(out / "train.parquet")
    assert sorted(train["id"]) == ["1", "2", "3", "4"] and train["audio"].notna().all()


def test_speech_massive_bad_annotation_names_dataset_and_row(tmp_path):
    broken = [("5", "alarm_set", "réveille-moi", "[time : réveille-moi")]
    main_repo, test_repo = make_speech_massive(tmp_path, "fr-FR", {"validation": broken}, TEST)
    with pytest.raises(DataError, match=r"\[fr-FR/validation\]:1: unbalanced"):
        hub.read_speech_massive(str(main_repo), "sm", "fr-FR", BadRecordPolicy("error"), test_source=str(test_repo),
                                cache_dir=str(tmp_path / "hf"))


def test_italic_reads_intent_only_labels_from_the_parquet_export_layout(tmp_path):
    folder = make_italic(tmp_path, {"train": [(1, "alarm_set", "svegliami alle sette"), (2, "iot_hue_lightoff", "spegni la luce")],
                                    "validation": [(3, "qa_factoid", "chi è il presidente")],
                                    "test": [(4, "weather_query", "piove domani")]})
    splits = read_corpus("italic_hub", str(folder), "italic", "it", cache_dir=str(tmp_path / "hf"),
                         audio_dir=str(tmp_path / "audio"))
    assert {split: [u.id for u in items] for split, items in splits.items()} == {"train": ["1", "2"], "dev": ["3"], "test": ["4"]}
    light = splits["train"][1]
    assert (light.scenario, light.action, light.entities, light.voice) == ("iot", "hue_lightoff", [], "0")
    assert Path(light.audio).is_file()


def test_italic_rejects_silent_audio_per_policy(tmp_path):
    folder = make_italic(tmp_path, {"train": [(1, "alarm_set", "svegliami")]}, audio=wav_bytes(amplitude=0.0))
    with pytest.raises(DataError, match="silent"):
        hub.read_italic(str(folder), "italic", "it", BadRecordPolicy("error"), cache_dir=str(tmp_path / "hf"),
                        audio_dir=str(tmp_path / "audio"))
    policy = BadRecordPolicy("drop")
    assert hub.read_italic(str(folder), "italic", "it", policy, cache_dir=str(tmp_path / "hf"),
                           audio_dir=str(tmp_path / "audio")) == []
    assert len(policy.dropped) == 1


def test_slurp_hub_joins_release_labels_with_mirror_audio(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    lines = [
        {"slurp_id": 7, "sentence": "wake me at five", "sentence_annotation": "wake me at [time : five]",
         "scenario": "alarm", "action": "set", "recordings": [{"file": "audio-7.flac"}, {"file": "audio-7-headset.flac"}]},
        {"slurp_id": 8, "sentence": "play jazz", "sentence_annotation": "play [music_genre : jazz]",
         "scenario": "play", "action": "music", "recordings": [{"file": "audio-8.flac"}]},
    ]
    (release / "devel.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    mirror = make_slurp_mirror(tmp_path, {"devel": ["audio-7.flac", "audio-7-headset.flac"], "train": ["audio-99.flac"]})
    policy = BadRecordPolicy("drop")
    utterances = hub.read_slurp_hub(str(mirror), "slurp", "en", policy, annotations=str(release),
                                    audio_dir=str(tmp_path / "audio"), cache_dir=str(tmp_path / "hf"))
    assert [(u.id, u.split, u.recordings[1]) for u in utterances] == [("7", "dev", "audio-7-headset.flac")]
    assert soundfile.info(utterances[0].audio).channels == 1
    assert len(policy.dropped) == 1 and "audio-8.flac" in policy.dropped[0]


def raise_gated(*args, **kwargs):
    """What `datasets.load_dataset` raises for a gated repository without a token."""
    import importlib

    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub import errors
    from huggingface_hub.errors import GatedRepoError

    http = importlib.import_module(errors.Response.__module__.split(".")[0])  # the HTTP client huggingface_hub uses
    url = "https://huggingface.co/api/datasets/RiTA-nlp/ITALIC"
    response = http.Response(401, request=http.Request("GET", url))
    try:
        raise GatedRepoError("Access to dataset RiTA-nlp/ITALIC is restricted.", response=response)
    except GatedRepoError as error:
        raise DatasetNotFoundError("Dataset 'RiTA-nlp/ITALIC' is a gated dataset on the Hub. You must be authenticated to access it.") from error


def test_gated_dataset_error_says_how_to_authenticate(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", raise_gated)
    with pytest.raises(hub.HubAccessError) as caught:
        hub.load_hub("RiTA-nlp/ITALIC", data_dir="massive")
    message = str(caught.value)
    assert "https://huggingface.co/datasets/RiTA-nlp/ITALIC" in message
    assert "huggingface-cli login" in message and "HF_TOKEN" in message


def test_download_reports_gated_access_and_writes_no_stamp(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", raise_gated)
    with pytest.raises(SystemExit, match="accept its terms"):
        main(["download", "--corpus", "italic", "--cache-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_download_fetches_every_locale_and_writes_a_stamp(monkeypatch, tmp_path, speech_massive):
    import datasets

    main_repo, test_repo = speech_massive
    real_load = datasets.load_dataset
    calls = []

    def local_load(path, **kwargs):  # the hub repositories, served from the local copies
        calls.append((path, kwargs["name"], kwargs["cache_dir"]))
        return real_load(str(test_repo if path.endswith("-test") else main_repo), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", local_load)
    assert main(["download", "--corpus", "speech_massive", "--locales", "fr-FR", "--cache-dir", str(tmp_path / "hf")]) == 0
    assert calls == [("FBK-MT/Speech-MASSIVE", "fr-FR", str(tmp_path / "hf")),
                     ("FBK-MT/Speech-MASSIVE-test", "fr-FR", str(tmp_path / "hf"))]
    stamp = json.loads((tmp_path / "hf" / "download-speech_massive.json").read_text())
    assert stamp["fetched"][0]["splits"] == {"train": 4, "train_115": 2, "validation": 1}
    assert stamp["fetched"][1]["splits"] == {"test": 1}


def test_download_needs_locales_for_per_locale_corpora(tmp_path):
    with pytest.raises(SystemExit, match="needs --locales"):
        main(["download", "--corpus", "speech_massive", "--cache-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["download", "--corpus", "timit", "--cache-dir", str(tmp_path)])
