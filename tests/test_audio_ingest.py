"""Recorded audio → checked 16 kHz mono FLAC (speech/audio.py) and the ingest-audio command."""

import numpy as np
import pytest
import soundfile

from lalm_slu.cli import main
from lalm_slu.data.records import Utterance, read_manifest, write_manifest
from lalm_slu.data.audio import AudioRejected, cache_name, ingest_utterances, read_mono_16k, standardize


def tone(seconds, rate, channels=1, amplitude=0.3):
    t = np.arange(int(seconds * rate)) / rate
    mono = amplitude * np.sin(2 * np.pi * 300 * t)
    return np.stack([mono, -mono * 0.5], axis=1)[:, :channels] if channels > 1 else mono


@pytest.fixture
def recordings(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    soundfile.write(root / "stereo44k.wav", tone(1.0, 44_100, channels=2), 44_100)
    soundfile.write(root / "narrow8k.flac", tone(0.5, 8_000), 8_000)
    soundfile.write(root / "empty.wav", np.zeros(0), 16_000)
    soundfile.write(root / "silent.wav", np.zeros(16_000), 16_000)
    (root / "garbage.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    soundfile.write(root / "long40s.flac", tone(40.0, 16_000, amplitude=0.1), 16_000)
    return root


def utterances(names):
    return [Utterance(id=f"u{i}", corpus="c", lang="en", split="train", text="hello", scenario="a", action="b",
                      audio=name) for i, name in enumerate(names)]


def test_stereo_44k_is_downmixed_and_resampled(recordings):
    samples = read_mono_16k(recordings / "stereo44k.wav", "x")
    assert samples.ndim == 1 and samples.dtype == np.float32
    assert abs(len(samples) - 16_000) <= 2
    # left and -0.5 x left average to 0.25 x left: peak 0.3 → 0.075
    assert np.max(np.abs(samples)) == pytest.approx(0.075, abs=0.005)


def test_standardize_writes_16k_mono_flac_once(recordings, tmp_path):
    destination = tmp_path / "cache" / "a.flac"
    duration = standardize(recordings / "narrow8k.flac", "narrow", destination, 30)
    info = soundfile.info(destination)
    assert (info.samplerate, info.channels, info.format) == (16_000, 1, "FLAC")
    assert duration == pytest.approx(0.5, abs=0.001)
    before = destination.stat().st_mtime_ns
    assert standardize(recordings / "narrow8k.flac", "narrow", destination, 30) == duration
    assert destination.stat().st_mtime_ns == before  # cached copy reused


def test_corrupt_cached_copy_is_rewritten(recordings, tmp_path):
    destination = tmp_path / "a.flac"
    destination.write_bytes(b"not a flac")
    standardize(recordings / "narrow8k.flac", "narrow", destination, 30)
    assert soundfile.info(destination).samplerate == 16_000


@pytest.mark.parametrize("name, reason", [
    ("empty.wav", "empty"), ("silent.wav", "silent"), ("garbage.wav", "unreadable"),
    ("long40s.flac", "too_long"), ("absent.wav", "missing"),
])
def test_bad_files_are_rejected_naming_the_file(recordings, tmp_path, name, reason):
    with pytest.raises(AudioRejected) as caught:
        standardize(recordings / name, recordings / name, tmp_path / "out.flac", 30)
    assert caught.value.reason == reason
    assert name in str(caught.value)
    assert not (tmp_path / "out.flac").exists()


def test_ingest_drop_mode_keeps_good_files_and_counts_each_reason(recordings, tmp_path):
    names = ["stereo44k.wav", "narrow8k.flac", "empty.wav", "silent.wav", "garbage.wav", "long40s.flac"]
    kept, report = ingest_utterances(utterances(names), recordings, tmp_path / "cache", 30, "drop", threads=2)
    assert [u.id for u in kept] == ["u0", "u1"]
    assert [round(u.duration_s, 2) for u in kept] == [1.0, 0.5]
    assert all(u.audio == str(tmp_path / "cache" / cache_name(u.id)) for u in kept)
    assert {reason: report.count(reason) for reason in report.rejected} == {
        "empty": 1, "silent": 1, "unreadable": 1, "too_long": 1}


def test_ingest_error_mode_stops_at_the_first_bad_file(recordings, tmp_path):
    with pytest.raises(AudioRejected, match="garbage.wav"):
        ingest_utterances(utterances(["narrow8k.flac", "garbage.wav"]), recordings, tmp_path / "cache", 30, "error")


def test_max_duration_is_configurable(recordings, tmp_path):
    kept, _ = ingest_utterances(utterances(["long40s.flac"]), recordings, tmp_path / "cache", 60, "error")
    assert kept[0].duration_s == pytest.approx(40.0)


def test_ingest_audio_command_writes_manifest_with_cached_audio(recordings, tmp_path):
    manifest = write_manifest(utterances(["stereo44k.wav", "garbage.wav"]), tmp_path / "in.parquet")
    code = main(["ingest-audio", "--manifest", str(manifest), "--audio-root", str(recordings),
                 "--out-manifest", str(tmp_path / "out.parquet"), "--audio-dir", str(tmp_path / "cache"),
                 "--on-bad-audio", "drop"])
    assert code == 0
    out = read_manifest(tmp_path / "out.parquet")
    assert list(out["id"]) == ["u0"]
    assert soundfile.info(out["audio"].iloc[0]).samplerate == 16_000
    assert out["duration_s"].iloc[0] == pytest.approx(1.0, abs=0.001)


def test_cache_names_stay_distinct_for_similar_ids():
    assert cache_name("12#0") != cache_name("12_0")
    assert cache_name("a/b").endswith(".flac") and "/" not in cache_name("a/b")
