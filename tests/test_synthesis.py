import json
from pathlib import Path

import pytest
import soundfile
from conftest import make_utterances

from lalm_slu.cli import main
from lalm_slu.data.records import DataError, read_manifest
from lalm_slu.speech.synthesis import audio_file_name, synthesize_utterances, voices_from_json
from lalm_slu.speech.tts import Voice

VOICES = [Voice("en-us+m3", 170, 50), Voice("en-us+f2", 160, 60), Voice("en+m5", 150, 40)]


def audio_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*.flac"))}


def test_audio_is_byte_identical_for_any_worker_count_and_on_rerun(tmp_path):
    utterances = make_utterances(6)
    runs = [("one", 1), ("two", 2), ("again", 1)]
    for name, workers in runs:
        synthesize_utterances(utterances, tmp_path / name, VOICES, seed=3, workers=workers, chunk_size=2)
    one, two, again = (audio_bytes(tmp_path / name) for name, _ in runs)
    assert len(one) == 6
    assert one == two == again


def test_spawned_and_forkserver_chunk_processes_give_the_same_audio(tmp_path, monkeypatch):
    import multiprocessing

    from lalm_slu.speech import synthesis

    utterances = make_utterances(4)
    synthesize_utterances(utterances, tmp_path / "default", VOICES, seed=2, workers=2, chunk_size=2)
    monkeypatch.setattr(synthesis, "fresh_process_context", lambda: multiprocessing.get_context("spawn"))
    synthesize_utterances(utterances, tmp_path / "spawned", VOICES, seed=2, workers=2, chunk_size=2)
    assert audio_bytes(tmp_path / "default") == audio_bytes(tmp_path / "spawned")


def test_synthesized_manifest_points_to_16khz_mono_flac_of_the_stated_duration(tmp_path):
    [utterance] = synthesize_utterances(make_utterances(1), tmp_path / "audio", VOICES, seed=0, chunk_size=4)
    audio, rate = soundfile.read(utterance.audio)
    info = soundfile.info(utterance.audio)
    assert (rate, info.channels, info.format) == (16_000, 1, "FLAC")
    assert utterance.duration_s == pytest.approx(len(audio) / 16_000)
    assert 0.5 < utterance.duration_s < 10
    assert utterance.recordings == [utterance.audio]


def test_each_utterance_gets_a_voice_from_the_given_list_deterministically(tmp_path):
    utterances = make_utterances(8)
    first = synthesize_utterances(utterances, tmp_path / "a", VOICES[:2], seed=1, chunk_size=8)
    second = synthesize_utterances(utterances, tmp_path / "b", VOICES[:2], seed=1, chunk_size=8)
    voices = [u.voice for u in first]
    assert set(voices) <= {v.key for v in VOICES[:2]} and len(set(voices)) == 2
    assert voices == [u.voice for u in second]


def test_an_utterance_over_the_duration_limit_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="utt0000.*max_duration_s"):
        synthesize_utterances(make_utterances(1), tmp_path, VOICES, seed=0, max_duration_s=0.1)


def test_unknown_espeak_variant_is_rejected_instead_of_silently_ignored():
    with pytest.raises(ValueError, match="variant 'zz'"):
        voices_from_json([{"name": "en-us+zz"}])
    assert voices_from_json([{"name": "de+m1", "rate_wpm": 150}]) == [Voice("de+m1", 150, 50)]


def test_unsafe_ids_get_distinct_file_names():
    names = {audio_file_name(uid) for uid in ["a/b", "a_b", "a b", "../x"]}
    assert len(names) == 4 and all("/" not in name and name.endswith(".flac") for name in names)
    assert audio_file_name("massive-en-12") == "massive-en-12.flac"


def test_synthesize_speech_command_writes_a_speech_manifest(tmp_path, manifest_file):
    manifest = manifest_file(make_utterances(3, split="test"))
    out = tmp_path / "speech.parquet"
    voices = json.dumps([{"name": "en-us+m7", "rate_wpm": 165, "pitch": 50}])
    main(["synthesize-speech", "--manifest", str(manifest), "--out-manifest", str(out),
          "--audio-dir", str(tmp_path / "audio"), "--voices-json", voices, "--seed", "0"])  # fmt: skip
    frame = read_manifest(out)
    assert list(frame["id"]) == ["utt0000", "utt0001", "utt0002"]
    assert set(frame["voice"]) == {"en-us+m7@165wpm@p50"}
    assert all(Path(path).is_file() for path in frame["audio"])
    assert frame["duration_s"].gt(0).all()


def test_synthesize_speech_command_rejects_malformed_voices(tmp_path, manifest_file):
    manifest = manifest_file(make_utterances(1))
    with pytest.raises(SystemExit, match="--voices-json"):
        main(["synthesize-speech", "--manifest", str(manifest), "--out-manifest", str(tmp_path / "o.parquet"),
              "--audio-dir", str(tmp_path), "--voices-json", '[{"rate_wpm": 100}]', "--seed", "0"])  # fmt: skip


# eSpeak NG reports word positions to the sample; its waveform generator advances 64 native samples (22,050 Hz) a step.
ESPEAK_FRAME_S = 64 / 22_050


@pytest.mark.parametrize("voice", [Voice("en-us+m3", 135, 50), Voice("en-us+f2", 195, 60), Voice("en+m1", 165, 35)])
def test_word_times_start_where_the_words_audio_starts(voice):
    import numpy as np

    from lalm_slu.speech.tts import ESpeakSynthesizer

    # Words that start with a voiced sound, after a pause: each word's audio begins where it is heard.
    audio, times = ESpeakSynthesizer().synthesize_timed("seven, eight, nine, eleven", voice)
    assert [word for word, _, _ in times] == ["seven,", "eight,", "nine,", "eleven"]
    assert times[-1][2] == pytest.approx(len(audio) / 16_000, abs=1e-3)
    loud = np.abs(audio) > 0.01
    for (_, start, end), (_, next_start, _) in zip(times, times[1:]):
        assert end == next_start
        first_sound = np.flatnonzero(loud[int((next_start - 0.03) * 16_000) :])[0] / 16_000 + next_start - 0.03
        assert first_sound == pytest.approx(next_start, abs=ESPEAK_FRAME_S)


@pytest.mark.parametrize(
    "text",
    ["wake me up. then play some jazz please", "Set an alarm. Wake me at seven. Is it raining? Yes it is."],
)
def test_every_word_of_several_sentences_gets_its_own_time_within_the_audio(text):
    from lalm_slu.speech.tts import ESpeakSynthesizer

    audio, times = ESpeakSynthesizer().synthesize_timed(text, Voice("en-us+m3", 160, 50))
    duration = len(audio) / 16_000
    assert [word for word, _, _ in times] == text.split()
    # Every word is spoken: it starts inside the audio and lasts at least one eSpeak step.
    assert all(0 <= start < end <= duration + 1e-3 for _, start, end in times)
    assert all(end - start >= ESPEAK_FRAME_S for _, start, end in times)


def test_an_event_between_words_or_inside_the_previous_word_goes_to_the_word_it_starts():
    from lalm_slu.speech.tts import word_times

    # "a b. c d" (1-based positions 1, 3, 6, 8): c's event on the space before it (5), d's inside c (6).
    times = word_times("a b. c d", [(1, 0), (3, 100), (5, 200), (6, 300)], 100, 5.0)
    assert [start for _, start, _ in times] == [0.0, 1.0, 2.0, 3.0]


def test_the_speech_manifest_holds_each_words_times(tmp_path):
    utterances = make_utterances(3)
    main(["synthesize-speech", "--manifest", str(write_manifest_for(utterances, tmp_path)), "--out-manifest",
          str(tmp_path / "speech.parquet"), "--audio-dir", str(tmp_path / "audio2"), "--voices-json",
          json.dumps([{"name": "en-us+m3"}]), "--seed", "0"])
    manifest = read_manifest(tmp_path / "speech.parquet")
    for text, times, duration in zip(manifest["text"], manifest["word_times"], manifest["duration_s"]):
        assert [word for word, _, _ in times] == text.split()
        starts = [start for _, start, _ in times]
        assert starts == sorted(starts) and times[-1][2] == pytest.approx(duration, abs=1e-3)


def write_manifest_for(utterances, tmp_path):
    from lalm_slu.data.records import write_manifest

    return write_manifest(utterances, tmp_path / "text.parquet")
