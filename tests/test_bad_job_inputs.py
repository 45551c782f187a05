"""Bad input to the newer jobs (voices, word times and interleaving, imitation, alignment, cascade and decode inputs,
fine-tuning settings, reporting, downloads) and the modes of written files.

As in test_bad_inputs.py, each case is one input a user could meet; it asserts the named error (file, key or line,
and a non-zero exit) or the documented repair with its count, and that nothing is left half-written.
docs/RELIABILITY.md lists the classes and points here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import stat

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_utterances
from test_bad_inputs import default_config, gold_line, prediction_line, score, write_lines

from lalm_slu.cli import main
from lalm_slu.planning.config_checks import ConfigError, check_config
from lalm_slu.data.mixtures import MixturePart, build_mixture
from lalm_slu.core.outputs import atomic_output, write_text_atomic
from lalm_slu.data.records import DataError, Utterance, read_manifest, write_manifest
from lalm_slu.report.aggregate import write_metrics_csv
from lalm_slu.config.settings import InterleavingSettings
from lalm_slu.speech import synthesis
from lalm_slu.speech.tts import ESpeakSynthesizer, Voice, word_times
from lalm_slu.speech.voice_table import read_voice_table
from lalm_slu.config.files import schema_path

VOICE_SCHEMA = schema_path("voices")


def error_line(capsys) -> str:
    """The command's last line on stderr: its one-line error."""
    return capsys.readouterr().err.strip().splitlines()[-1]


# ================================================================ file modes and the atomic writer


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask-022", "umask-002", "umask-077"])
def test_outputs_get_the_mode_the_umask_gives_ordinary_files(tmp_path, mask, mode):
    with umask(mask):
        path = write_text_atomic(tmp_path / "metrics.json", "{}\n")
    assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.parametrize(
    "write",
    [lambda path: write_manifest(make_utterances(2), path),
     lambda path: write_metrics_csv(pd.DataFrame({"run": ["r"], "value": [0.5]}), path)],
    ids=["manifest", "metrics-csv"],
)  # fmt: skip
def test_files_colleagues_read_are_group_and_world_readable_under_umask_022(tmp_path, write):
    path = tmp_path / "out" / "file.parquet"
    path.parent.mkdir()
    with umask(0o022):
        write(path)
    for written in path.parent.iterdir():
        assert stat.S_IMODE(written.stat().st_mode) == 0o644, written


def test_aggregation_on_a_full_disk_names_the_output_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    metrics = score_json(tmp_path)
    out = tmp_path / "metrics.csv"
    out.write_text("earlier,table\n")

    def disk_full(self, path, *args, **kwargs):
        with open(path, "w") as handle:
            handle.write("run,")  # a first block, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    assert main(["aggregate", "--metrics", str(metrics), "--out", str(out)]) == 1
    assert f"cannot write the output (No space left on device): '{out}'" in error_line(capsys)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gold.jsonl", "metrics.csv", "pred.jsonl", "runs"]
    assert out.read_text() == "earlier,table\n"


def test_an_error_inside_the_writer_that_is_not_the_disk_keeps_its_own_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="figure.png"), atomic_output(tmp_path / "copy.png") as tmp:
        open(tmp_path / "figure.png").close()
    assert list(tmp_path.iterdir()) == []


# ================================================================ voices


def write_voice_table(path, rows):
    path.write_text("lang\tsplit\tvoice\trate_wpm\tpitch\n" + "".join("\t".join(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    "voice, lang, message",
    [("klingon+m7", "en", r"eSpeak NG's voice 'klingon' speaks piqd, not 'en'"),
     ("zzzz+m1", "en", r"eSpeak NG has no voice 'zzzz'"),
     ("en-us+m99", "en", r"eSpeak NG has no voice variant 'm99'"),
     ("ko+m1", "en", r"eSpeak NG's voice 'ko' speaks ko, not 'en'"),
     ("de+f1", "it", r"eSpeak NG's voice 'de' speaks de.*, not 'it'")],
    ids=["voice-of-another-language", "no-such-voice", "no-such-variant", "korean-for-english", "german-for-italian"],
)  # fmt: skip
def test_voice_table_row_espeak_cannot_speak_is_named_with_its_line(tmp_path, voice, lang, message):
    rows = [(lang, "train", f"{lang}+m1", "160", "50"), (lang, "test", voice, "160", "50")]
    table = write_voice_table(tmp_path / "voices.tsv", rows)
    with pytest.raises(ValueError, match=rf"{re.escape(str(table))}, line 3 \(voice\): {message}"):
        read_voice_table(table, VOICE_SCHEMA)


def test_the_shipped_voice_table_speaks_every_language_in_voices_espeak_has():
    voices = read_voice_table(REPO / "workflow/configs/voices.tsv", VOICE_SCHEMA)
    assert sorted(voices) == ["de", "en", "it"]


def synthesize(tmp_path, utterances, voices='[{"name": "en-us+m1"}]'):
    manifest = write_manifest(utterances, tmp_path / "text.parquet")
    return main(["synthesize-speech", "--manifest", str(manifest), "--out-manifest", str(tmp_path / "speech.parquet"),
                 "--audio-dir", str(tmp_path / "audio"), "--voices-json", voices, "--seed", "0"])  # fmt: skip


def test_synthesis_refuses_a_voice_espeak_does_not_have(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"--voices-json: .*eSpeak NG has no voice 'zzzz'"):
        synthesize(tmp_path, make_utterances(1), '[{"name": "zzzz+m1"}]')
    assert not (tmp_path / "speech.parquet").exists()


@pytest.mark.parametrize("text", ["?!", "...", "- -"], ids=["question-marks", "dots", "dashes"])
def test_utterance_with_nothing_to_speak_is_refused_naming_it(tmp_path, capsys, text):
    utterances = make_utterances(2)
    utterances[1] = Utterance(**{**utterances[1].__dict__, "text": text})
    assert synthesize(tmp_path, utterances) == 1
    assert f"text.parquet: utterance 'utt0001' has nothing to speak: {text!r}" in error_line(capsys)
    assert not (tmp_path / "speech.parquet").exists()


def test_utterance_that_synthesizes_to_silence_is_refused(tmp_path, monkeypatch):
    silence = np.zeros(800, dtype=np.float32)
    monkeypatch.setattr(ESpeakSynthesizer, "synthesize_timed", lambda self, text, voice, seed=0: (silence, []))
    job = synthesis.SynthesisJob("u1", "wake me up", Voice("en-us+m1"), str(tmp_path / "u1.flac"))
    with pytest.raises(DataError, match=r"no audible audio for utterance 'u1'"):
        synthesis.synthesize_chunk([job], 0, None)
    assert not (tmp_path / "u1.flac").exists()


# ================================================================ word times and interleaved spans


@pytest.mark.parametrize(
    "text", ["in the city", "set an alarm for a meeting", "what is the weather like in the city"],
    ids=["in-the", "for-a", "two-thes"],
)
def test_every_spoken_word_gets_audio_of_its_own(text):
    audio, times = ESpeakSynthesizer().synthesize_timed(text, Voice("en-us+m1", 165, 50))
    assert [word for word, _, _ in times] == text.split()
    assert all(end - start >= 0.04 for _, start, end in times), times  # "the", "a": no more 0 s words
    assert times[-1][2] == round(len(audio) / 16_000, 4)
    assert all(a[2] == b[1] for a, b in zip(times, times[1:]))  # the spans tile the clip


def test_a_word_without_an_event_shares_the_span_it_is_spoken_in_by_its_letters():
    # "in the city": eSpeak speaks "the" joined to "in" and gives it no event.
    times = word_times("in the city", [(1, 0), (8, 5000)], 10_000, 1.0)
    assert times == [["in", 0.0, 0.2], ["the", 0.2, 0.5], ["city", 0.5, 1.0]]


def test_a_token_with_nothing_to_speak_keeps_no_duration():
    times = word_times("wake me ?!", [(1, 0), (6, 3000)], 10_000, 0.6)
    assert times == [["wake", 0.0, 0.3], ["me", 0.3, 0.6], ["?!", 0.6, 0.6]]


def interleaving_part(count=40):
    ids = tuple(f"u{i}" for i in range(count))
    return ids, MixturePart("en", "text.parquet", "speech.parquet", ids, ids, True)


def test_a_span_shorter_than_min_span_s_is_drawn_again_and_counted(caplog):
    ids, part = interleaving_part()
    # Every word 0.3 s except a 0 s second word: a span of it alone must not be trained on.
    times = {("speech.parquet", uid): [["a", 0.0, 0.3], ["b", 0.3, 0.3], ["c", 0.3, 0.6], ["d", 0.6, 0.9]]
             for uid in ids}  # fmt: skip
    settings = InterleavingSettings(1.0, 1, 1, 0.1)
    with caplog.at_level(logging.INFO, logger="lalm_slu.data.mixtures"):
        mixture = build_mixture("interleaving", [part], 0, settings, times)
    spans = mixture[mixture["modality"] == "interleaved"]
    assert len(spans) == 40 and not (spans["span_start"] == 1).any()
    redrawn = int(re.search(r"(\d+) of 40 spans drawn again", caplog.text).group(1))
    assert 0 < redrawn < 40  # the draws of "b" alone, and no other
    unchanged = build_mixture("interleaving", [part], 0, InterleavingSettings(1.0, 1, 1, 0.0), times)
    moved = (unchanged["span_start"] != mixture["span_start"]).sum()
    assert moved == redrawn == (unchanged["span_start"] == 1).sum()


def test_an_item_without_a_long_enough_span_stays_speech_and_is_counted(caplog):
    ids, part = interleaving_part(10)
    times = {("speech.parquet", uid): [["a", 0.0, 0.05], ["b", 0.05, 0.1], ["c", 0.1, 0.15]] for uid in ids}
    with caplog.at_level(logging.INFO, logger="lalm_slu.data.mixtures"):
        mixture = build_mixture("interleaving", [part], 0, InterleavingSettings(1.0, 1, 1, 0.1), times)
    assert (mixture["modality"] != "interleaved").all()
    assert "10 items left as speech" in caplog.text


def mix_interleaved(tmp_path, interleave: str) -> int:
    utterances = make_utterances(4)
    text = write_manifest(utterances, tmp_path / "text.parquet")
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{u.id}\n" for u in utterances))
    return main(["mix-training-set", "--scheme", "interleaving", "--text-manifest", str(text), "--speech-manifest",
                 str(text), "--speech-ids", str(ids), "--seed", "0", "--out", str(tmp_path / "mixture.parquet"),
                 "--interleave", interleave])  # fmt: skip


@pytest.mark.parametrize(
    "interleave, message",
    [('{"min_span_words": 1, "max_span_words": 2}', "--interleave: missing setting fraction"),
     ('{"fraction": 0.5, "min_span_words": 1}', "--interleave: missing setting max_span_words"),
     ('{"fraction": 0.5, "min_span_words": 1, "max_span_words": 2, "min_span_seconds": 1}',
      "--interleave: unknown setting min_span_seconds"),
     ('{"fraction": "half", "min_span_words": 1, "max_span_words": 2}',
      "--interleave: fraction must be of type number, not 'half'"),
     ('{"fraction": 0.5, min_span_words: 1}', "--interleave: not JSON"),
     ('[0.5, 1, 2]', "--interleave: expected a mapping of settings, not [0.5, 1, 2]")],
    ids=["missing-fraction", "missing-max-words", "misspelt-key", "fraction-as-text", "not-json", "json-list"],
)  # fmt: skip
def test_interleave_block_that_is_not_one_is_named(tmp_path, capsys, interleave, message):
    assert mix_interleaved(tmp_path, interleave) == 1
    assert f"lalm-slu mix-training-set: error: {message}" in error_line(capsys)
    assert not (tmp_path / "mixture.parquet").exists()


# ================================================================ imitation


def mix_imitation(tmp_path, targets) -> int:
    utterances = make_utterances(4)
    text = write_manifest(utterances, tmp_path / "text.parquet")
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{u.id}\n" for u in utterances))
    return main(["mix-training-set", "--scheme", "behaviour_imitation", "--text-manifest", str(text),
                 "--speech-manifest", str(text), "--speech-ids", str(ids), "--seed", "0", "--imitation-targets",
                 str(targets), "--out", str(tmp_path / "mixture.parquet")])  # fmt: skip


@pytest.mark.parametrize(
    "make, message",
    [(lambda tmp: write_manifest(make_utterances(2), tmp / "targets.parquet"),
      r"not an imitation targets file \(imitation-targets'\): missing columns \['manifest', 'task', 'instruction', "
      r"'target'\]"),
     (lambda tmp: (tmp / "targets.parquet").write_text("id,task\n") and tmp / "targets.parquet",
      "not a parquet file of imitation targets"),
     (lambda tmp: tmp / "absent.parquet", "imitation targets file not found"),
     (lambda tmp: pd.DataFrame(columns=["id", "lang", "manifest", "task", "instruction", "target"]).to_parquet(
         tmp / "targets.parquet") or tmp / "targets.parquet", "imitation targets file holds no targets")],
    ids=["a-manifest", "a-csv", "missing", "no-rows"],
)  # fmt: skip
def test_file_that_is_not_imitation_targets_is_named(tmp_path, capsys, make, message):
    targets = make(tmp_path)
    assert mix_imitation(tmp_path, targets) == 1
    assert re.search(rf"{re.escape(str(targets))}: {message}", error_line(capsys))
    assert not (tmp_path / "mixture.parquet").exists()


def test_empty_speech_pool_is_an_error_and_writes_no_targets_file(tmp_path, capsys):
    manifest = write_manifest(make_utterances(2), tmp_path / "train.parquet")
    (tmp_path / "pool.txt").write_text("")
    status = main(["imitation-targets", "--model", str(tmp_path / "no-model"), "--pool", str(manifest),
                   str(tmp_path / "pool.txt"), "--tasks", '[{"task": "slu", "instruction": "x"}]', "--settings", "{}",
                   "--out", str(tmp_path / "targets.parquet")])  # fmt: skip
    assert status == 1
    assert f"the paired-speech pool is empty (no ids in {tmp_path / 'pool.txt'})" in error_line(capsys)
    assert not (tmp_path / "targets.parquet").exists()


def test_two_imitation_tasks_of_one_name_are_refused_by_the_job(tmp_path):
    from lalm_slu.training.imitation import write_imitation_targets
    from lalm_slu.config.settings import SettingsError

    tasks = [{"task": "slu", "instruction": "a"}, {"task": "slu", "instruction": "b"}]
    with pytest.raises(SettingsError, match=r"task names \['slu', 'slu'\] repeat one"):
        write_imitation_targets({}, [], tasks, {}, str(tmp_path / "targets.parquet"))
    assert not (tmp_path / "targets.parquet").exists()


# ================================================================ forced alignment


def tiny_ctc_model(folder):
    """A randomly initialised wav2vec2 CTC model (window 400 samples, as the real ones) and its processor."""
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2Processor)  # fmt: skip

    folder.mkdir(parents=True)
    letters = ["<pad>", "<unk>", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'"]
    (folder / "vocab.json").write_text(json.dumps({letter: index for index, letter in enumerate(letters)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    processor = Wav2Vec2Processor(Wav2Vec2FeatureExtractor(), tokenizer)
    config = Wav2Vec2Config(vocab_size=len(letters), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=16, conv_dim=(8, 8), conv_kernel=(10, 79), conv_stride=(5, 2),
                            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, pad_token_id=0)  # fmt: skip
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_ctc_frames_follow_the_convolutions():
    from lalm_slu.speech.alignment import ctc_frames
    from transformers import Wav2Vec2Config

    config = Wav2Vec2Config()  # the real front end: 400 samples per frame, a frame each 320
    assert [ctc_frames(config, samples) for samples in (399, 400, 719, 720, 16_000)] == [0, 1, 1, 2, 49]


def test_clip_shorter_than_the_ctc_window_is_skipped_and_counted_not_fatal(tmp_path, capsys, caplog):
    import soundfile

    model = tiny_ctc_model(tmp_path / "ctc")
    utterances = []
    for index, seconds in enumerate((0.5, 0.01)):  # the second: 160 samples, shorter than the model's window
        audio = tmp_path / f"u{index}.flac"
        soundfile.write(audio, (0.1 * np.sin(np.arange(int(seconds * 16_000)) / 5)).astype(np.float32), 16_000)
        utterances.append(Utterance(**{**make_utterances(2)[index].__dict__, "audio": str(audio),
                                       "duration_s": seconds, "text": "wake me"}))  # fmt: skip
    manifest = write_manifest(utterances, tmp_path / "speech.parquet")
    status = main(["align-words", "--model", str(model), "--manifest", str(manifest), "--settings",
                   '{"device": "cpu"}', "--out", str(tmp_path / "aligned.parquet")])  # fmt: skip
    assert status == 0
    assert json.loads(capsys.readouterr().out)["shorter_than_window"] == 1
    assert "u1.flac lasts 0.010 s, shorter than the CTC model's window" in caplog.text
    times = read_manifest(tmp_path / "aligned.parquet")["word_times"].tolist()
    assert times[0] and times[1] is None


# ================================================================ cascade and decode inputs


def cascade_manifest(tmp_path, rows=2):
    frame = read_manifest(write_manifest(make_utterances(rows, split="test"), tmp_path / "gold.parquet"))
    frame = frame.assign(reference_text=frame["text"], asr_answer=frame["text"])
    path = tmp_path / "cascade.parquet"
    frame.assign(entities=frame["entities"].map(json.dumps), recordings=frame["recordings"].map(json.dumps)).to_parquet(
        path, index=False)
    return path


@pytest.mark.parametrize(
    "modality, make, message",
    [("cascade", lambda tmp: write_manifest(make_utterances(2, split="test"), tmp / "gold.parquet"),
      "cascade input must be a cascade manifest"),
     ("text", cascade_manifest, "text input must be the gold test manifest, not a cascade manifest"),
     ("speech", lambda tmp: write_manifest([], tmp / "gold.parquet"), r"no utterances to decode \(speech input\)"),
     ("text", lambda tmp: write_manifest([], tmp / "gold.parquet"), r"no utterances to decode \(text input\)"),
     ("cascade", lambda tmp: cascade_manifest(tmp, 0), r"no utterances to decode \(cascade input\)"),
     ("text", lambda tmp: (tmp / "gold.parquet").write_text("id\n1\n") and tmp / "gold.parquet",
      "not a parquet manifest"),
     ("text", lambda tmp: tmp / "absent.parquet", "manifest not found")],
    ids=["gold-as-cascade", "cascade-as-text", "empty-speech", "empty-text", "empty-cascade", "not-parquet",
         "missing"],
)  # fmt: skip
def test_decode_input_of_the_wrong_kind_is_named_before_the_model_loads(tmp_path, capsys, modality, make, message):
    manifest = make(tmp_path)
    out = tmp_path / f"test.{modality}.jsonl"
    status = main(["decode", "--model", str(tmp_path / "no-model"), "--input", modality, str(manifest), str(out),
                   "--settings", "{}"])  # fmt: skip
    assert status == 1
    assert re.search(rf"lalm-slu decode: error: {re.escape(str(manifest))}: {message}", error_line(capsys))
    assert not out.exists()


def test_transcribing_an_empty_test_set_is_an_error_not_a_wer_of_zero(tmp_path, capsys):
    manifest = write_manifest([], tmp_path / "test.parquet")
    status = main(["transcribe-test-set", "--model", str(tmp_path / "no-model"), "--manifest", str(manifest),
                   "--settings", "{}", "--out", str(tmp_path / "cascade.parquet"), "--wer", str(tmp_path / "wer.json")])
    assert status == 1
    assert f"{manifest}: no utterances to transcribe" in error_line(capsys)
    assert not (tmp_path / "wer.json").exists() and not (tmp_path / "cascade.parquet").exists()


# ================================================================ fine-tuning settings


def finetune_settings() -> dict:
    from lalm_slu.config.layered import load_config
    from lalm_slu.planning.grid import expand_grid
    from lalm_slu.planning.job_arguments import run_settings

    config = load_config(workdir=REPO)
    run = next(run for run in expand_grid(config).values() if run.scheme == "curriculum")
    return json.loads(json.dumps(run_settings(config, run)))


def drop(block):
    return lambda settings: settings.pop(block)


@pytest.mark.parametrize(
    "edit, message",
    [(drop("prompt"), r"missing prompt \(expected the blocks model, training, scheme, prompt\)"),
     (lambda s: s.update(promt=s.pop("prompt")), "missing prompt; unknown promt"),
     (lambda s: s.update(optimiser={}), "unknown optimiser"),
     (lambda s: s["scheme"]["phases"][0].update(epochs="three"), r"scheme.phases\[0\].epochs: 'three' is not of type"),
     (lambda s: s["scheme"]["phases"][1].update(learning_rate="1e-3"),
      r"scheme.phases\[1\].learning_rate: '1e-3' is not of type 'number'"),
     (lambda s: s["scheme"]["phases"][0].update(epochs=0), r"scheme.phases\[0\].epochs: 0 is less than the minimum"),
     (lambda s: s["scheme"].update(phases=[]), r"scheme.phases: \[\] should be non-empty"),
     (lambda s: s["scheme"].update(name="curricullum"), "scheme.name: 'curricullum' is not one of"),
     (lambda s: s["training"].update(global_batch=16),
      r"training: Additional properties are not allowed \('global_batch'"),
     (lambda s: s["training"].pop("seed"), "training: 'seed' is a required property"),
     (lambda s: s["model"].pop("path"), "model: 'path' is a required property"),
     (lambda s: s["model"].update(lora={"rank": 0}), "model.lora.rank: 0 is less than the minimum of 1")],
    ids=["missing-block", "misspelt-block", "unknown-block", "epochs-as-text", "learning-rate-as-text",
         "zero-epochs", "no-phases", "misspelt-scheme", "misspelt-training-key", "no-seed", "no-model-path",
         "lora-rank-zero"],
)  # fmt: skip
def test_fine_tuning_settings_the_trainer_cannot_use_are_named_at_entry(tmp_path, capsys, edit, message):
    settings = finetune_settings()
    edit(settings)
    status = main(["finetune", "--mixture", str(tmp_path / "mixture.parquet"), "--settings", json.dumps(settings),
                   "--out-dir", str(tmp_path / "model"), "--work-dir", str(tmp_path / "work")])  # fmt: skip
    assert status == 1
    assert re.search(rf"lalm-slu finetune: error: --settings: {message}", error_line(capsys))
    assert not (tmp_path / "model").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize("settings, message", [("{not json", "--settings: not JSON"),
                                                ("[1, 2]", "--settings: expected an object with blocks")],
                         ids=["not-json", "a-list"])
def test_fine_tuning_settings_that_are_no_object_are_named(tmp_path, capsys, settings, message):
    status = main(["finetune", "--mixture", "m.parquet", "--settings", settings, "--out-dir", str(tmp_path / "model"),
                   "--work-dir", str(tmp_path / "work")])
    assert status == 1
    assert message in error_line(capsys)


def test_every_run_of_the_demo_passes_the_fine_tuning_check():
    from lalm_slu.config.layered import load_config
    from lalm_slu.config.settings import check_finetune_settings
    from lalm_slu.planning.grid import expand_grid
    from lalm_slu.planning.job_arguments import run_settings

    config = load_config(workdir=REPO)
    for run in expand_grid(config).values():
        check_finetune_settings(json.loads(json.dumps(run_settings(config, run))))


# ================================================================ reporting


def score_json(tmp_path, run="tiny-en_text_only_b0_s0"):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1), gold_line(2)])
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("1"), prediction_line("2")])
    out = tmp_path / "runs" / run / "metrics" / "tiny-en.speech.json"
    meta = {"run": run, "testset": "tiny-en", "modality": "speech"}
    assert score(gold, pred, "--json", "--meta", json.dumps(meta), "--out", str(out)) == 0
    return out


@pytest.mark.parametrize(
    "field, value, shown",
    [("value", math.nan, "nan"), ("value", math.inf, "inf"), ("ci_low", -math.inf, "-inf"), ("value", None, "None"),
     ("value", "0.5", "'0.5'")],
    ids=["nan-value", "infinite-value", "infinite-interval", "null-value", "value-as-text"],
)  # fmt: skip
def test_metric_that_is_not_a_finite_number_is_refused_by_aggregation(tmp_path, capsys, field, value, shown):
    path = score_json(tmp_path)
    result = json.loads(path.read_text())
    result["metrics"]["intent_accuracy"][field] = value
    path.write_text(json.dumps(result))  # json writes NaN and Infinity, as Python's json reads them
    assert main(["aggregate", "--metrics", str(path), "--out", str(tmp_path / "metrics.csv")]) == 1
    assert f"{path}: metric 'intent_accuracy': {field} is {shown}, expected a finite number" in error_line(capsys)
    assert not (tmp_path / "metrics.csv").exists()


@pytest.mark.parametrize("value", ["nan", "inf", ""], ids=["nan", "infinite", "empty"])
def test_metrics_csv_value_that_is_not_finite_is_named_with_its_line(tmp_path, capsys, value):
    path = score_json(tmp_path)
    csv = tmp_path / "metrics.csv"
    assert main(["aggregate", "--metrics", str(path), "--out", str(csv)]) == 0
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("value")] = value
    lines[3] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    assert main(["tables", "--metrics", str(csv), "--out-dir", str(tmp_path / "tables")]) == 1
    assert re.search(rf"{re.escape(str(csv))}:4: value .* is not a finite number", error_line(capsys))
    assert not (tmp_path / "tables").exists()


def test_predictions_for_another_test_set_are_refused_not_scored_as_misses(tmp_path, capsys):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1), gold_line(2)])
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("71"), prediction_line("72")])
    assert score(gold, pred, "--json", "--out", str(tmp_path / "m.json")) == 1
    assert f"{pred}: none of its 2 predictions is for an utterance of the gold" in error_line(capsys)
    assert not (tmp_path / "m.json").exists()


def test_an_empty_prediction_file_is_refused_not_scored_as_misses(tmp_path, capsys):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1)])
    pred = tmp_path / "pred.jsonl"
    pred.write_text("")
    assert score(gold, pred) == 1
    assert f"{pred}: holds no predictions" in error_line(capsys)


@pytest.mark.parametrize(
    "content, message",
    [('{"utterances": 3}', r"not a transcription summary with a 'wer' \(KeyError"),
     ("wer=0.1", r"not a transcription summary with a 'wer' \(JSONDecodeError"),
     ('{"wer": null}', r"'wer' is None, expected a finite number ≥ 0"),
     ('{"wer": -0.5}', r"'wer' is -0.5, expected a finite number ≥ 0"),
     ('{"wer": NaN}', r"'wer' is nan, expected a finite number ≥ 0"),
     ('[0.1]', r"not a transcription summary with a 'wer' \(TypeError")],
    ids=["no-wer", "not-json", "null", "negative", "nan", "a-list"],
)  # fmt: skip
def test_wer_file_without_a_usable_wer_is_named(tmp_path, capsys, content, message):
    wer = tmp_path / "tiny-en.wer.json"
    wer.write_text(content)
    status = main(["tables", "--metrics", str(tmp_path / "metrics.csv"), "--out-dir", str(tmp_path / "tables"),
                   "--cascade-wer", str(wer)])  # fmt: skip
    assert status == 1
    assert re.search(rf"{re.escape(str(wer))}: {message}", error_line(capsys))


# ================================================================ planning: values a job would reject late


def demo_config() -> dict:
    from snakemake.utils import validate

    config = default_config()
    validate(config, str(schema_path()))
    return config


def demo_voices() -> dict:
    return read_voice_table(REPO / "workflow/configs/voices.tsv", VOICE_SCHEMA)


@pytest.mark.parametrize(
    "edit, message",
    [(lambda c: c["comparisons"].update(modality_pairs=[["cascade", "speech"]]) or c["decode"].update(
        modalities=["speech", "text"]), r"comparisons.modality_pairs\[0\]: \['cascade'\] not decoded"),
     (lambda c: c["comparisons"].update(scheme_pairs=[["oracle", "oracle"]]),
      r"comparisons.scheme_pairs\[0\]: compares 'oracle' with itself"),
     (lambda c: c["schemes"]["mtbi"]["imitation"].update(tasks=[{"task": "slu", "instruction": None, "model": "phase1"},
                                                               {"task": "slu", "instruction": "x", "model": "base"}]),
      r"schemes.(behaviour_imitation|mtbi).imitation.tasks: task names \['slu'\] given more than once"),
     (lambda c: c["grid"]["monolingual"][0]["scheme_settings"].update(behaviour_imitation={"imitation": {"tasks": [
         {"task": "a", "instruction": "x"}, {"task": "a", "instruction": "y"}]}}),
      r"grid.monolingual\[0\].scheme_settings.behaviour_imitation.imitation.tasks: task names \['a'\]"),
     (lambda c: c["cascade"].update(answer_pattern="Transcript: (.*"),
      r"cascade.answer_pattern: 'Transcript: \(\.\*' is not a regular expression"),
     (lambda c: c["cascade"].update(answer_pattern="Transcript: .*"),
      r"cascade.answer_pattern: 'Transcript: \.\*' has no group; group 1 is the transcript")],
    ids=["modality-not-decoded", "scheme-with-itself", "repeated-task", "repeated-task-in-scheme-settings",
         "pattern-no-regex", "pattern-without-group"],
)  # fmt: skip
def test_config_value_a_job_would_reject_late_is_refused_at_planning(edit, message):
    config = demo_config()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        check_config(config, demo_voices())


@pytest.mark.parametrize("key, pair", [("scheme_pairs", ["direct_mixing", "curiculum"]),
                                       ("modality_pairs", ["speech", "cascades"])],
                         ids=["misspelt-scheme", "misspelt-modality"])  # fmt: skip
def test_misspelt_comparison_pair_is_refused_by_the_schema(key, pair):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = default_config()
    config.setdefault("comparisons", {})[key] = [pair]
    with pytest.raises(WorkflowError, match=f"{key}"):
        validate(config, str(schema_path()))


def test_the_demo_config_passes_every_planning_check():
    check_config(demo_config(), demo_voices())


# ================================================================ downloads


@pytest.mark.parametrize(
    "error",
    [lambda: __import__("httpx2").ConnectError("[Errno -2] Name or service not known"),
     lambda: ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")],
    ids=["no-name-resolution", "connection-refused"],
)
def test_download_model_without_network_names_the_repository_and_url(tmp_path, monkeypatch, error):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise error()

    monkeypatch.setattr(huggingface_hub, "model_info", offline)
    with pytest.raises(SystemExit) as stopped:
        main(["download-model", "--hub-id", "Qwen/Qwen2-Audio-7B-Instruct", "--revision", "main", "--out-dir",
              str(tmp_path / "model"), "--stamp", str(tmp_path / "stamp.json")])  # fmt: skip
    message = str(stopped.value)
    assert "cannot fetch Qwen/Qwen2-Audio-7B-Instruct at main from https://huggingface.co/Qwen/Qwen2" in message
    assert "download on a node with network" in message
    assert not (tmp_path / "model").exists() and not (tmp_path / "stamp.json").exists()
