"""Bad input never crashes obscurely, never passes silently, never reaches a shell.

Each case is one bad input or fault a user could meet; it asserts the named error (file and line, or
config key, and a non-zero exit) or the documented repair with its count, and that nothing computed
before is lost. docs/RELIABILITY.md lists the classes and points here.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import yaml
from conftest import BIN, REPO, WorkflowCopy, make_utterances, subprocess_env

from lalm_slu.data.budgets import write_budget_ids
from lalm_slu.cli import main
from lalm_slu.data.corpora import slurp_release
from lalm_slu.data.records import Utterance, read_manifest, write_manifest
from lalm_slu.data.audio import write_flac
from lalm_slu.config.files import schema_path

# A file or folder name a shell would split, expand or run, and its parts.
NASTY = "it's \"a\" $(rm -f canary) `rm -f canary`; rm -f canary &"


def default_config() -> dict:
    """config.yaml over the demo model's recipe, as the Snakefile loads them."""
    config = yaml.safe_load((REPO / "workflow/configs/demo_model.yaml").read_text())
    config.update(yaml.safe_load((REPO / "config.yaml").read_text()))
    return config


def slurp_release_record(slurp_id, recordings, sentence="wake me at five am",
                         annotation="wake me at [time : five am]", scenario="alarm", action="set") -> dict:
    return {"slurp_id": slurp_id, "sentence": sentence, "sentence_annotation": annotation, "scenario": scenario,
            "action": action, "recordings": [{"file": name} for name in recordings]}  # fmt: skip


def write_jsonl(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def write_tone(path, seconds=0.3, rate=16_000, amplitude=0.2, subtype=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = amplitude * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)
    soundfile.write(path, samples.astype(np.float32), rate, subtype=subtype)


# ================================================================ security: nothing reaches a shell


def recorded_corpus_config(source: str, audio_root: str) -> dict:
    config = default_config()
    config["corpora"] = {
        "tiny": {"reader": "slurp_release", "source": source, "languages": ["en"], "speech": "recorded",
                 "audio_root": audio_root, "options": {"recording": "first"}}
    }  # fmt: skip
    config["grid"] = {"monolingual": [], "crosslingual": []}
    config["demo_model"] = {"train_data": [], "eval_data": []}  # it names corpora this config lacks
    return config


@pytest.mark.slow
def test_file_names_with_shell_syntax_reach_jobs_as_one_argument_and_run_nothing(tmp_path):
    copy = WorkflowCopy(tmp_path)
    source, audio_root = f"corpora/en US/{NASTY}", f"audio root/{NASTY}"
    for split, name in (("train", "train"), ("dev", "devel"), ("test", "test")):
        write_jsonl(copy.root / source / f"{name}.jsonl", [slurp_release_record(f"{split}1", [f"{split} 1.flac"])])
        write_tone(copy.root / audio_root / f"{split} 1.flac")
    (copy.root / "config.yaml").write_text(yaml.safe_dump(recorded_corpus_config(source, audio_root)))
    (copy.root / "canary").write_text("still here\n")
    copy.snakemake("results/speech/tiny/en/test.parquet")
    assert (copy.root / "canary").exists()
    manifest = copy.root / "results/speech/tiny/en/test.parquet"
    assert soundfile.info(next((copy.root / "results/speech/tiny/en/test").glob("*.flac"))).samplerate == 16_000
    assert manifest.stat().st_size > 0


def planned_commands(copy: WorkflowCopy, *targets: str) -> list[list[str]]:
    """Every planned job's shell command, split as the shell would split it."""
    output = copy.snakemake("--dry-run", "--printshellcmds", *targets).stdout
    return [shlex.split(line.strip()) for line in output.splitlines() if "python -m lalm_slu" in line]


def test_planned_commands_keep_every_config_path_and_option_one_argument(tmp_path):
    copy = WorkflowCopy(tmp_path)
    config = recorded_corpus_config(f"corpora/{NASTY}", f"audio/{NASTY}")
    config["corpora"]["hub"] = {
        "reader": "speech_massive_hub", "source": "FBK-MT/Speech-MASSIVE", "languages": ["fr"],
        "locales": {"fr": "fr-FR"}, "download": {"corpus": "speech_massive"}, "speech": "recorded", "audio_root": ".",
        "options": {"cache_dir": f"hf cache/{NASTY}", "audio_dir": f"audio dir/{NASTY}"},
    }  # fmt: skip
    (copy.root / "config.yaml").write_text(yaml.safe_dump(config))
    (copy.root / f"corpora/{NASTY}").mkdir(parents=True)
    commands = planned_commands(copy, "results/speech/tiny/en/test.parquet", "results/manifests/hub/fr/test.parquet")
    arguments = [argument for command in commands for argument in command]
    assert f"corpora/{NASTY}" in arguments
    assert f"audio/{NASTY}" in arguments
    assert f"hf cache/{NASTY}" in arguments  # the download job's --cache-dir
    assert f"cache_dir=hf cache/{NASTY}" in arguments and f"audio_dir=audio dir/{NASTY}" in arguments
    assert len(commands) == 4  # download, two prepare-corpus, ingest-audio


@pytest.mark.parametrize(
    "path",
    ["data/en\nUS.jsonl", "data/en-US.jsonl\n", "\rdata", "-data/en-US.jsonl", ""],
    ids=["newline-inside", "trailing-newline", "carriage-return", "leading-dash", "empty"],
)
def test_schema_refuses_a_path_no_command_line_can_carry(path):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = default_config()
    config["corpora"]["slurp"]["source"] = {"en": path}
    with pytest.raises(WorkflowError, match="source"):
        validate(config, str(schema_path()))


# ================================================================ readers: prepare-corpus


def massive_record(id="1", partition="train", utt="wake me at five am", annot="wake me at [time : five am]",
                   scenario="alarm", intent="alarm_set") -> dict:
    return {"id": id, "locale": "en-US", "partition": partition, "scenario": scenario, "intent": intent,
            "utt": utt, "annot_utt": annot}  # fmt: skip


def massive_lines(count=3) -> list[bytes]:
    """`count` good MASSIVE lines, one per split in turn, with distinct texts."""
    splits = ("train", "dev", "test")
    return [
        json.dumps(massive_record(id=str(i), partition=splits[i % 3], utt=f"wake me at {i} am",
                                  annot=f"wake me at [time : {i} am]")).encode()  # fmt: skip
        for i in range(count)
    ]


def write_lines(path, lines: list[bytes], ending=b"\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + ending for line in lines))
    return path


def prepare_corpus(source, out_dir, *options, reader="massive", on_bad_record="error") -> int:
    return main(["prepare-corpus", "--reader", reader, "--source", str(source), "--corpus", "tiny", "--lang", "en",
                 "--out-dir", str(out_dir), "--on-bad-record", on_bad_record, *options])  # fmt: skip


def manifests_in(folder) -> list[str]:
    return sorted(path.name for path in folder.glob("*.parquet")) if folder.exists() else []


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("wake me at cinq \xe9t\xe9".encode("latin-1"), r"not UTF-8 text: byte 0xe9"),
        (b"null", r"a record must be a JSON object, not null"),
        (b"[]", r"a record must be a JSON object, not \[\]"),
        (b"42", r"a record must be a JSON object, not 42"),
        (b'"wake me"', r"a record must be a JSON object"),
        (json.dumps(massive_record(id="9", annot=None)).encode(), r"field 'annot_utt' is null, expected str"),
        (json.dumps(massive_record(id="9", utt=None)).encode(), r"field 'utt' is null"),
        (json.dumps(massive_record(id="9", scenario=None)).encode(), r"field 'scenario' is null"),
        (json.dumps(massive_record(id="9", intent=7)).encode(), r"field 'intent' is 7, expected str"),
        (json.dumps(massive_record(id=None)).encode(), r"field 'id' is null, expected str or int"),
        (json.dumps(massive_record(id=True)).encode(), r"field 'id' is true"),
        (json.dumps(massive_record(id="9", partition=["train"])).encode(), r"field 'partition' is \[\"train\"\]"),
        (b'{"id": "9", "partition": "train", "utt": "wake', r"invalid JSON"),  # truncated by a full disk
        (b"\xef\xbb\xbf" + json.dumps(massive_record(id="9")).encode(), r"invalid JSON \(Unexpected UTF-8 BOM"),
    ],
    ids=["latin-1-byte", "null-line", "array-line", "number-line", "string-line", "null-annotation", "null-utt",
         "null-scenario", "number-intent", "null-id", "boolean-id", "list-partition", "truncated-line", "bom-line"],
)  # fmt: skip
def test_bad_jsonl_line_stops_prepare_corpus_naming_file_and_line(tmp_path, capsys, bad_line, message):
    source = write_lines(tmp_path / "en.jsonl", massive_lines(2) + [bad_line])
    assert prepare_corpus(source, tmp_path / "out") == 1
    assert re.search(rf"{re.escape(str(source))}:3: .*{message}", capsys.readouterr().err)
    assert manifests_in(tmp_path / "out") == []


@pytest.mark.parametrize(
    "bad_line",
    [b"null", "caf\xe9".encode("latin-1"), json.dumps(massive_record(id="9", annot=None)).encode()],
    ids=["null-line", "latin-1-byte", "null-annotation"],
)
def test_drop_mode_drops_and_counts_a_bad_line_and_keeps_the_good_ones(tmp_path, caplog, bad_line):
    source = write_lines(tmp_path / "en.jsonl", massive_lines(3) + [bad_line])
    assert prepare_corpus(source, tmp_path / "out", on_bad_record="drop") == 0
    assert sum(len(read_manifest(tmp_path / "out" / name)) for name in manifests_in(tmp_path / "out")) == 3
    assert "dropped 1 bad record(s)" in caplog.text


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "the source holds no records"), (b"\n \n\n", "the source holds no records")],
    ids=["empty-file", "blank-lines-only"],
)
def test_source_without_records_is_an_error_not_three_empty_manifests(tmp_path, capsys, content, reason):
    source = tmp_path / "en.jsonl"
    source.write_bytes(content)
    assert prepare_corpus(source, tmp_path / "out") == 1
    assert f"{source}: no utterances for tiny/en: {reason}" in capsys.readouterr().err
    assert manifests_in(tmp_path / "out") == []


def test_source_whose_every_record_is_bad_is_an_error_even_when_dropping(tmp_path, capsys):
    source = write_lines(tmp_path / "en.jsonl", [b"null", b"[]"])
    assert prepare_corpus(source, tmp_path / "out", on_bad_record="drop") == 1
    assert "no utterances for tiny/en: all 2 records were bad" in capsys.readouterr().err


@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-32", "cp1252"], ids=["utf-16", "utf-32", "windows-1252"]
)
def test_file_in_another_encoding_is_named_at_its_first_line(tmp_path, capsys, encoding):
    source = tmp_path / "en.jsonl"
    source.write_bytes(json.dumps(massive_record(utt="caf\xe9 at five", annot="caf\xe9 at [time : five]"),
                                  ensure_ascii=False).encode(encoding))  # fmt: skip
    assert prepare_corpus(source, tmp_path / "out") == 1
    assert re.search(rf"{re.escape(str(source))}:1: not UTF-8 text", capsys.readouterr().err)


@pytest.mark.parametrize(
    "separator", ["\u2028", "\u2029", "\x85", "\x0c", "\x1e", "\r"],
    ids=["line-separator", "paragraph-separator", "next-line", "form-feed", "record-separator", "lone-cr"],
)
def test_unusual_line_break_inside_a_jsonl_line_keeps_line_numbers(tmp_path, capsys, separator):
    tricky = massive_record(id="7", utt=f"wake{separator}me", annot=f"wake{separator}me")
    lines = massive_lines(2) + [json.dumps(tricky, ensure_ascii=False).encode(), b"null"]
    source = write_lines(tmp_path / "en.jsonl", lines)
    assert prepare_corpus(source, tmp_path / "out") == 1
    assert f"{source}:4: a record must be a JSON object" in capsys.readouterr().err


def test_windows_line_endings_read_like_unix_ones(tmp_path):
    source = write_lines(tmp_path / "en.jsonl", massive_lines(3), ending=b"\r\n")
    assert prepare_corpus(source, tmp_path / "out") == 0
    assert read_manifest(tmp_path / "out" / "train.parquet")["text"].tolist() == ["wake me at 0 am"]


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda tmp: tmp / "absent.jsonl", "MASSIVE jsonl file not found"),
        (lambda tmp: (tmp / "folder.jsonl").mkdir() or tmp / "folder.jsonl", "MASSIVE jsonl file not found"),
        (lambda tmp: (tmp / "loop.jsonl").symlink_to(tmp / "loop.jsonl") or tmp / "loop.jsonl",
         "MASSIVE jsonl file not found"),
    ],
    ids=["missing", "a-folder", "symlink-loop"],
)  # fmt: skip
def test_source_that_is_no_readable_file_is_named(tmp_path, capsys, make_source, message):
    source = make_source(tmp_path)
    assert prepare_corpus(source, tmp_path / "out") == 1
    assert f"{source}: {message}" in capsys.readouterr().err


def test_manifest_folder_that_is_a_file_fails_naming_it_and_keeps_the_file(tmp_path, capsys):
    source = write_lines(tmp_path / "en.jsonl", massive_lines(3))
    (tmp_path / "out").write_text("someone's notes\n")
    assert prepare_corpus(source, tmp_path / "out") == 1
    assert str(tmp_path / "out") in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "someone's notes\n"


# ---------------------------------------------------------------- SLURP release text


def write_release(folder, records_by_split: dict[str, list]) -> None:
    for split, records in records_by_split.items():
        name = {"train": "train", "dev": "devel", "test": "test"}[split]
        lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in records]
        write_lines(folder / f"{name}.jsonl", lines)


def good_release_records() -> dict[str, list]:
    return {
        split: [slurp_release_record(f"{split}{i}", [f"{split}{i}-headset.flac"], sentence=f"wake me at {split} {i}",
                                     annotation=f"wake me at [time : {split} {i}]") for i in range(2)]
        for split in ("train", "dev", "test")
    }  # fmt: skip


@pytest.mark.parametrize("recording", ["first", "headset", "all"])
def test_slurp_record_without_recordings_is_an_error_in_every_recording_mode(tmp_path, capsys, recording):
    records = good_release_records()
    records["test"].append(slurp_release_record("lonely", []))
    write_release(tmp_path / "slurp", records)
    status = prepare_corpus(tmp_path / "slurp", tmp_path / "out", "--option", f"recording={recording}",
                            reader="slurp_release")  # fmt: skip
    assert status == 1
    assert f"{tmp_path / 'slurp' / 'test.jsonl'}:3: record has no recordings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "recordings, message",
    [([{"wer": 0.1}], "has no file name"), ([{"file": ""}], "has no file name"), (["a.flac"], "has no file name"),
     (None, "field 'recordings' is null")],
    ids=["no-file-key", "empty-file-name", "bare-string", "null-recordings"],
)  # fmt: skip
def test_slurp_recording_without_a_file_name_is_named(tmp_path, capsys, recordings, message):
    records = good_release_records()
    records["dev"].append({**slurp_release_record("odd", ["x.flac"]), "recordings": recordings})
    write_release(tmp_path / "slurp", records)
    assert prepare_corpus(tmp_path / "slurp", tmp_path / "out", reader="slurp_release") == 1
    assert re.search(rf"devel.jsonl:3: .*{message}", capsys.readouterr().err)


def test_slurp_drop_mode_counts_a_record_without_recordings_and_ingests_the_rest(tmp_path, caplog):
    records = good_release_records()
    records["test"].append(slurp_release_record("lonely", [], sentence="play jazz", annotation="play jazz"))
    write_release(tmp_path / "slurp", records)
    for name in ("test0-headset.flac", "test1-headset.flac"):
        write_tone(tmp_path / "audio" / name)
    assert prepare_corpus(tmp_path / "slurp", tmp_path / "out", reader="slurp_release", on_bad_record="drop") == 0
    assert "dropped 1 bad record(s)" in caplog.text
    status = main(["ingest-audio", "--manifest", str(tmp_path / "out/test.parquet"), "--audio-root",
                   str(tmp_path / "audio"), "--out-manifest", str(tmp_path / "speech.parquet"),
                   "--audio-dir", str(tmp_path / "flac")])  # fmt: skip
    assert status == 0
    assert sorted(read_manifest(tmp_path / "speech.parquet")["id"]) == ["test0", "test1"]


def test_slurp_non_utf8_line_names_the_release_file(tmp_path, capsys):
    records = good_release_records()
    records["dev"].append(b'{"slurp_id": 5, "sentence": "caf\xe9"}')
    write_release(tmp_path / "slurp", records)
    assert prepare_corpus(tmp_path / "slurp", tmp_path / "out", reader="slurp_release") == 1
    assert f"{tmp_path / 'slurp' / 'devel.jsonl'}:3: not UTF-8 text" in capsys.readouterr().err


# ---------------------------------------------------------------- xSID line-aligned train files


def write_xsid_train(folder, texts: list[str], labels: list[str], ending="\n") -> None:
    train = folder / "train-en"
    train.mkdir(parents=True, exist_ok=True)
    (train / "text.en").write_bytes("".join(t + ending for t in texts).encode())
    (train / "label.en").write_bytes("".join(label + ending for label in labels).encode())


XSID_TEXTS = ["wake me up", "play some jazz", "will it rain"]
XSID_LABELS = ["O O O\talarm/set_alarm", "O O B-genre\tPlayMusic", "O O O\tGetWeather"]


@pytest.mark.parametrize(
    "separator", ["\u2028", "\x85", "\x0b", "\x1c"],
    ids=["line-separator", "next-line", "vertical-tab", "file-separator"],
)
def test_xsid_unusual_line_break_inside_a_text_line_keeps_the_files_aligned(tmp_path, separator):
    texts = [XSID_TEXTS[0], f"play some{separator}jazz", XSID_TEXTS[2]]
    write_xsid_train(tmp_path / "xsid", texts, XSID_LABELS)
    assert prepare_corpus(tmp_path / "xsid", tmp_path / "out", reader="xsid") == 0
    assert len(read_manifest(tmp_path / "out" / "train.parquet")) == 3


@pytest.mark.parametrize(
    "texts, labels, longer, line",
    [(XSID_TEXTS, XSID_LABELS[:2], "text.en", 3), (XSID_TEXTS[:1], XSID_LABELS, "label.en", 2)],
    ids=["labels-short", "texts-short"],
)
def test_xsid_files_of_different_length_name_the_first_line_without_partner(
    tmp_path, capsys, texts, labels, longer, line
):
    write_xsid_train(tmp_path / "xsid", texts, labels)
    assert prepare_corpus(tmp_path / "xsid", tmp_path / "out", reader="xsid") == 1
    assert f"train-en/{longer}:{line}: line-aligned files differ in length" in capsys.readouterr().err


def test_xsid_crlf_files_read_like_unix_ones(tmp_path):
    write_xsid_train(tmp_path / "xsid", XSID_TEXTS, XSID_LABELS, ending="\r\n")
    assert prepare_corpus(tmp_path / "xsid", tmp_path / "out", reader="xsid") == 0
    assert read_manifest(tmp_path / "out" / "train.parquet")["action"].tolist()[1] == "play"


def test_xsid_conll_non_utf8_line_is_named(tmp_path, capsys):
    folder = tmp_path / "xsid" / "xSID-0.7"
    folder.mkdir(parents=True)
    (folder / "de.valid.conll").write_bytes(
        b"# text = weck mich\n# intent = alarm/set_alarm\n1\tweck\talarm/set_alarm\tO\n2\tm\xfcch\talarm/set_alarm\tO\n"
    )
    status = main(["prepare-corpus", "--reader", "xsid", "--source", str(tmp_path / "xsid"), "--corpus", "tiny",
                   "--lang", "de", "--out-dir", str(tmp_path / "out")])  # fmt: skip
    assert status == 1
    assert "de.valid.conll:4: not UTF-8 text: byte 0xfc" in capsys.readouterr().err


# ================================================================ audio: ingest-audio


def ingest(manifest, audio_root, out_dir, on_bad_audio="error") -> int:
    return main(["ingest-audio", "--manifest", str(manifest), "--audio-root", str(audio_root), "--out-manifest",
                 str(out_dir / "speech.parquet"), "--audio-dir", str(out_dir / "flac"),
                 "--on-bad-audio", on_bad_audio])  # fmt: skip


def recorded_manifest(tmp_path, audio_names) -> object:
    utterances = [Utterance(id=f"u{i}", corpus="tiny", lang="en", split="test", text="wake me", scenario="alarm",
                            action="set", audio=name) for i, name in enumerate(audio_names)]  # fmt: skip
    return write_manifest(utterances, tmp_path / "text.parquet")


def write_float_wav(path, samples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.asarray(samples, dtype=np.float32), 16_000, subtype="FLOAT")


def tone_with(value, position=100):
    samples = 0.2 * np.sin(np.arange(4000) / 5)
    samples[position] = value
    return samples


@pytest.mark.parametrize(
    "samples, message",
    [
        (tone_with(np.nan), "non_finite: 1 sample value"),
        (tone_with(np.inf), "non_finite: 1 sample value"),
        (tone_with(-np.inf, position=0), "non_finite: 1 sample value"),
        (tone_with(1.5), "out_of_range: peak 1.5 exceeds full scale"),
        (tone_with(-3.0), "out_of_range: peak 3 exceeds full scale"),
        (np.full(4000, 40.0), "out_of_range: peak 40 exceeds full scale"),
    ],
    ids=["nan", "plus-infinity", "minus-infinity-first", "peak-1.5", "trough-minus-3", "integer-scaled-floats"],
)
def test_float_audio_with_impossible_values_is_rejected_naming_the_file(tmp_path, capsys, samples, message):
    write_float_wav(tmp_path / "raw" / "bad.wav", samples)
    manifest = recorded_manifest(tmp_path, ["bad.wav"])
    assert ingest(manifest, tmp_path / "raw", tmp_path / "out") == 1
    assert f"{tmp_path / 'raw' / 'bad.wav'}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "speech.parquet").exists()


def test_full_scale_float_audio_is_kept(tmp_path):
    write_float_wav(tmp_path / "raw" / "loud.wav", np.sign(np.sin(np.arange(4000) / 5)))
    assert ingest(recorded_manifest(tmp_path, ["loud.wav"]), tmp_path / "raw", tmp_path / "out") == 0


def test_drop_mode_counts_impossible_audio_and_keeps_the_good_clips(tmp_path, caplog):
    write_float_wav(tmp_path / "raw" / "nan.wav", tone_with(np.nan))
    write_float_wav(tmp_path / "raw" / "loud.wav", tone_with(2.0))
    write_tone(tmp_path / "raw" / "good.flac")
    manifest = recorded_manifest(tmp_path, ["nan.wav", "good.flac", "loud.wav"])
    assert ingest(manifest, tmp_path / "raw", tmp_path / "out", on_bad_audio="drop") == 0
    assert read_manifest(tmp_path / "out" / "speech.parquet")["id"].tolist() == ["u1"]
    assert "dropped 1 utterance(s) with non_finite audio" in caplog.text
    assert "dropped 1 utterance(s) with out_of_range audio" in caplog.text


@pytest.mark.parametrize("on_bad_audio", ["error", "drop"])
def test_utterance_without_audio_is_named_not_a_type_error(tmp_path, capsys, on_bad_audio):
    write_tone(tmp_path / "raw" / "good.flac")
    manifest = recorded_manifest(tmp_path, ["good.flac", None])
    status = ingest(manifest, tmp_path / "raw", tmp_path / "out", on_bad_audio=on_bad_audio)
    if on_bad_audio == "error":
        assert status == 1
        assert "missing: utterance 'u1' names no audio file" in capsys.readouterr().err
    else:
        assert status == 0
        assert read_manifest(tmp_path / "out" / "speech.parquet")["id"].tolist() == ["u0"]


def test_every_clip_rejected_is_an_error_not_an_empty_manifest(tmp_path, capsys):
    write_float_wav(tmp_path / "raw" / "nan.wav", tone_with(np.nan))
    manifest = recorded_manifest(tmp_path, ["nan.wav", "absent.wav"])
    assert ingest(manifest, tmp_path / "raw", tmp_path / "out", on_bad_audio="drop") == 1
    assert "all 2 utterances were rejected" in capsys.readouterr().err
    assert not (tmp_path / "out" / "speech.parquet").exists()


@pytest.mark.parametrize(
    "make_file, reason",
    [
        (lambda path: path.write_bytes(b"fLaC\x00\x00\x00\x22" + bytes(20)), "unreadable"),
        (lambda path: path.write_bytes(path.with_name("good.flac").read_bytes()[:60]), "unreadable"),
        (lambda path: path.mkdir(), "missing"),
        (lambda path: path.symlink_to(path.with_name("nowhere.flac")), "missing"),
    ],
    ids=["corrupt-header", "truncated-flac", "a-folder", "dangling-symlink"],
)
def test_audio_file_that_cannot_be_decoded_is_named_with_its_reason(tmp_path, capsys, make_file, reason):
    write_tone(tmp_path / "raw" / "good.flac")
    make_file(tmp_path / "raw" / "bad.flac")
    manifest = recorded_manifest(tmp_path, ["good.flac", "bad.flac"])
    assert ingest(manifest, tmp_path / "raw", tmp_path / "out") == 1
    assert f"{tmp_path / 'raw' / 'bad.flac'}: {reason}" in capsys.readouterr().err


def test_corrupt_manifest_is_named(tmp_path, capsys):
    (tmp_path / "text.parquet").write_bytes(b"PAR1 this is not parquet")
    assert ingest(tmp_path / "text.parquet", tmp_path, tmp_path / "out") == 1
    assert f"{tmp_path / 'text.parquet'}: not a readable parquet manifest" in capsys.readouterr().err


def test_audio_cache_folder_that_is_a_file_fails_naming_it(tmp_path, capsys):
    write_tone(tmp_path / "raw" / "good.flac")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "flac").write_text("not a folder")
    assert ingest(recorded_manifest(tmp_path, ["good.flac"]), tmp_path / "raw", tmp_path / "out") == 1
    assert str(tmp_path / "out" / "flac") in capsys.readouterr().err


# ================================================================ predictions and gold: score


def score(gold, pred, *options) -> int:
    return main(["score", "--gold", str(gold), "--pred", str(pred), "--bootstrap", "0", *options])


def gold_line(slurp_id, scenario="alarm", action="set") -> bytes:
    record = slurp_release_record(slurp_id, [f"{slurp_id}.flac"], scenario=scenario, action=action)
    return json.dumps(record).encode()


def prediction_line(utterance_id, scenario="alarm", action="set") -> bytes:
    return json.dumps({"id": utterance_id, "scenario": scenario, "action": action, "entities": []}).encode()


def test_gold_that_repeats_an_id_is_an_error_naming_both_lines(tmp_path, capsys):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1), gold_line(2), gold_line(1, action="query")])
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("1"), prediction_line("2")])
    assert score(gold, pred) == 1
    assert f"{gold}:3: gold repeats utterance '1' (first at line 1)" in capsys.readouterr().err


def test_gold_manifest_that_repeats_an_id_is_an_error_naming_the_row(tmp_path, capsys):
    gold = recorded_manifest(tmp_path, ["a.flac", "b.flac"])
    frame = read_manifest(gold)
    frame.loc[1, "id"] = "u0"
    frame["entities"] = frame["entities"].map(json.dumps)
    frame["recordings"] = frame["recordings"].map(json.dumps)
    frame.to_parquet(gold, index=False)
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("u0")])
    assert score(gold, pred) == 1
    assert f"{gold}:2: gold repeats utterance 'u0' (first at row 1)" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_empty_gold_is_an_error_not_a_zero_score(tmp_path, capsys, suffix):
    gold = tmp_path / f"gold{suffix}"
    if suffix == ".jsonl":
        gold.write_bytes(b"")
    else:
        write_manifest([], gold)
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("1")])
    assert score(gold, pred, "--out", str(tmp_path / "m.json")) == 1
    assert f"{gold}: gold holds no utterances" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_gold_with_a_non_utf8_byte_is_named(tmp_path, capsys):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1), b'{"slurp_id": 2, "sentence": "caf\xe9"}'])
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("1")])
    assert score(gold, pred) == 1
    assert f"{gold}:2: not UTF-8 text: byte 0xe9" in capsys.readouterr().err


def test_gold_line_that_is_null_is_named(tmp_path, capsys):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1), b"null"])
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("1")])
    assert score(gold, pred) == 1
    assert f"{gold}:2: not a SLURP release record" in capsys.readouterr().err


def test_prediction_with_a_non_utf8_byte_is_named(tmp_path, capsys):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1), gold_line(2)])
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("1"), b'{"id": "2", "raw": "caf\xe9"}'])
    assert score(gold, pred) == 1
    assert f"{pred}:2: not UTF-8 text" in capsys.readouterr().err


def test_prediction_with_a_non_utf8_byte_is_counted_as_a_bad_line_when_counting(tmp_path, capsys):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1), gold_line(2)])
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("1"), b'{"id": "2", "raw": "caf\xe9"}'])
    assert score(gold, pred, "--on-bad-line", "count", "--json") == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert (counts["n_bad_lines"], counts["n_missing"]) == (1, 1)


@pytest.mark.parametrize("which", ["gold", "pred"])
def test_missing_gold_or_prediction_file_is_named(tmp_path, capsys, which):
    files = {"gold": tmp_path / "gold.jsonl", "pred": tmp_path / "pred.jsonl"}
    write_lines(files["gold"], [gold_line(1)])
    write_lines(files["pred"], [prediction_line("1")])
    files[which].unlink()
    assert score(files["gold"], files["pred"]) == 1
    assert f"{files[which]}: file not found" in capsys.readouterr().err


# ================================================================ outputs: nothing half-written


def test_full_disk_while_scoring_keeps_the_old_metrics_and_leaves_no_tmp(tmp_path, capsys, monkeypatch):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1)])
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("1")])
    out = tmp_path / "metrics" / "m.json"
    out.parent.mkdir()
    out.write_text('{"earlier": "result"}\n')

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", disk_full)
    assert score(gold, pred, "--json", "--out", str(out)) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.json"]
    assert out.read_text() == '{"earlier": "result"}\n'


def test_failing_manifest_write_keeps_the_old_manifest_and_leaves_no_tmp(tmp_path, monkeypatch):
    path = write_manifest(make_utterances(3), tmp_path / "train.parquet")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_manifest(make_utterances(5), path)
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]
    assert len(read_manifest(path)) == 3


def test_failing_audio_write_leaves_no_partial_flac(tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(soundfile, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        write_flac(np.zeros(1600, dtype=np.float32), tmp_path / "cache" / "a.flac")
    assert list((tmp_path / "cache").iterdir()) == []


def test_failing_budget_write_leaves_no_partial_id_list(tmp_path, monkeypatch):
    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        write_budget_ids(["a", "b"], tmp_path / "5.txt")
    assert list(tmp_path.iterdir()) == []


# ================================================================ config: refused before any job, naming the key


def validate_config(config) -> None:
    from snakemake.utils import validate

    validate(config, str(schema_path()))


def set_key(path: str, value):
    """An edit of the default config: set the dotted `path` (list items by index) to `value`."""

    def edit(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[int(last) if isinstance(node, list) else last] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (set_key("corpora.slurp.options", {"recording": "first"}), r"'recording' was unexpected"),
        (set_key("corpora.xsid.options", {"cache_dir": "x"}), r"'cache_dir' was unexpected"),
        (set_key("corpora.slurp.reader", "slurp_release"), None),  # valid: its one option may be left out
        (set_key("corpora.slurp", {"reader": "slurp_release", "source": "x", "languages": ["en"],
                                   "options": {"recording": "best"}}), r"'best' is not one of \['first', 'headset'"),
        (set_key("corpora.slurp", {"reader": "slurp_hub", "source": "x", "languages": ["en"],
                                   "options": {"audio_dir": "a"}}), r"'annotations' is a required property"),
        (set_key("corpora.slurp.options", {"max_duration_s": 30}), r"'max_duration_s' was unexpected"),
        (set_key("corpora.slurp.max_utterances.train", 0), r"0 is less than the minimum of 1"),
        (set_key("corpora.slurp.max_utterances.validation", 5), r"'validation' was unexpected"),
        (set_key("corpora.slurp.subset_seed", -1), r"-1 is less than the minimum of 0"),
        (set_key("corpora.slurp.on_bad_record", "skip"), r"'skip' is not one of \['error', 'drop'\]"),
        (set_key("corpora.slurp.audio_root", "audio\nroot"), r"audio_root"),
        (set_key("corpora.slurp", {"reader": "speech_massive_hub", "source": "x", "languages": ["en"],
                                   "options": {"cache_dir": "c"},  # a download needs its hub cache
                                   "download": {"corpus": "massive", "locales": ["en US"]}}), r"'en US' does not match"),
        (set_key("prompt.instructions", "Answer in JSON."), r"'instructions' was unexpected"),
        (set_key("prompt.instruction", ""), r"should be non-empty|is too short"),
        (set_key("grid.monolingual.0.budget", [5]), r"'budget' was unexpected"),
        (set_key("grid.crosslingual.0.target", "de"), r"'target' was unexpected"),
        (set_key("grid.seeds", [-1]), r"-1 is less than the minimum of 0"),
        (set_key("speech.tts.voices", ["voices.tsv"]), r"is not of type 'string'"),
        (set_key("speech.tts.chunk_size", 0), r"0 is less than the minimum of 1"),
        (set_key("scoring.bootstrap", -5), r"-5 is less than the minimum of 0"),
        (set_key("scoring.boostrap", 100), r"'boostrap' was unexpected"),
        (set_key("audio_frames.batch_size", 0), r"0 is less than the minimum of 1"),
        (set_key("audio_frames.precompte", True), r"'precompte' was unexpected"),
        (set_key("demo_model.pretrain.stepz", 10), r"'stepz' was unexpected"),
        (set_key("demo_model.pretrain.batch_size", 0), r"0 is less than the minimum of 1"),
        (set_key("demo_model.continue_pretrain.0.instruction_step", 10), r"'instruction_step' was unexpected"),
        (set_key("demo_model.continue_pretrain.0.instruction_tasks", {"transcribe": -1}), r"-1 is less than"),
        (set_key("demo_model.architecture", {"audio": {}, "text": {}}), r"'vocab_size' is a required property"),
        (set_key("demo_model.max_utterances.xsid.tran", 10), r"'tran' was unexpected"),
        (set_key("demo_model.pretrain_options.voices_per_sentence", 0), r"0 is less than the minimum of 1"),
        (set_key("demo_model.train_data.0.split", "test"), r"'test' is not one of \['train', 'dev'\]"),
    ],
)  # fmt: skip
def test_config_error_is_refused_by_the_schema_naming_the_key(edit, message):
    from snakemake.exceptions import WorkflowError

    config = default_config()
    edit(config)
    if message is None:
        validate_config(config)
        return
    with pytest.raises(WorkflowError, match=message):
        validate_config(config)


def test_reader_options_in_the_schema_are_the_readers_keyword_arguments():
    from lalm_slu.data.corpora import READERS, reader_options

    schema = yaml.safe_load(schema_path().read_text())
    corpus = schema["properties"]["corpora"]["additionalProperties"]
    listed = {}
    for rule in corpus["allOf"]:
        if "reader" not in rule["if"]["properties"]:
            continue  # a rule on other keys (download, speech)
        readers = rule["if"]["properties"]["reader"]
        options = set(rule["then"]["properties"]["options"].get("properties", {}))
        for reader in readers.get("enum", [readers.get("const")]):
            listed[reader] = options
    assert listed == {reader: set(reader_options(reader)) for reader in READERS}


def test_pretraining_keys_in_the_schema_are_the_pretrain_config_fields():
    from dataclasses import fields

    from lalm_slu.demo_model.pretrain import PretrainConfig

    schema = yaml.safe_load(schema_path().read_text())
    assert set(schema["$defs"]["pretrain_stage"]["properties"]) == {f.name for f in fields(PretrainConfig)}


def test_demo_architecture_keys_in_the_schema_are_the_default_architecture():
    from lalm_slu.demo_model.build import DEFAULT_ARCHITECTURE

    architecture = yaml.safe_load(schema_path().read_text())["$defs"]["demo_architecture"]
    assert set(architecture["properties"]) == set(DEFAULT_ARCHITECTURE)
    for part in ("audio", "text"):
        assert set(architecture["properties"][part]["properties"]) == set(DEFAULT_ARCHITECTURE[part])


def test_misspelt_prompt_key_stops_snakemake_before_planning_any_job(workflow_copy):
    config = default_config()
    config["prompt"]["instructon"] = "Answer in JSON."
    (workflow_copy.root / "config.yaml").write_text(yaml.safe_dump(config))
    result = workflow_copy.snakemake("--dry-run", check=False)
    assert result.returncode != 0
    assert "'instructon' was unexpected" in result.stderr + result.stdout
    assert "Building DAG of jobs" not in result.stderr + result.stdout


# ================================================================ downloads: SLURP release text


@pytest.fixture
def release_mirror(tmp_path, monkeypatch):
    """A file:// copy of the three release files, and their blob ids pinned in place of the real ones."""
    mirror = tmp_path / "mirror"
    write_release(mirror, good_release_records())
    blobs = {name: slurp_release.git_blob_id((mirror / name).read_bytes()) for name in RELEASE_NAMES}
    monkeypatch.setattr(slurp_release, "RELEASE_BLOBS", blobs)
    monkeypatch.setattr(slurp_release.time, "sleep", lambda seconds: None)
    return mirror


RELEASE_NAMES = ("train.jsonl", "devel.jsonl", "test.jsonl")


def download_release_command(mirror, out_dir, stamp) -> int:
    return main(["download-slurp-release", "--url-base", mirror.as_uri(), "--out-dir", str(out_dir),
                 "--stamp", str(stamp), "--attempts", "3"])  # fmt: skip


def test_release_download_writes_the_three_checked_files_then_the_stamp(tmp_path, release_mirror):
    assert download_release_command(release_mirror, tmp_path / "slurp", tmp_path / "stamp.json") == 0
    for name in RELEASE_NAMES:
        assert (tmp_path / "slurp" / name).read_bytes() == (release_mirror / name).read_bytes()
    stamp = json.loads((tmp_path / "stamp.json").read_text())
    assert stamp["commit"] == slurp_release.SLURP_COMMIT
    assert stamp["files"]["test.jsonl"]["git_blob"] == slurp_release.RELEASE_BLOBS["test.jsonl"]


def test_pinned_blob_id_is_gits_checksum_of_the_content():
    assert slurp_release.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def flaky_fetch(failures: list, real_fetch):
    """A fetch that raises or returns the given failures first, then fetches for real."""

    def fetch(url):
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, BaseException):
                raise failure
            return failure
        return real_fetch(url)

    return fetch


@pytest.mark.parametrize(
    "failure",
    [
        http.client.IncompleteRead(b'{"slurp_id": 1', 500),
        urllib.error.URLError("Connection reset by peer"),
        TimeoutError("timed out"),
        b'{"slurp_id": "train0", "sentence": "wake',
    ],
    ids=["connection-dropped-mid-file", "connection-reset", "timeout", "short-body-wrong-checksum"],
)
def test_interrupted_release_download_is_retried_and_completes(tmp_path, release_mirror, monkeypatch, caplog, failure):
    real_fetch = slurp_release.fetch
    monkeypatch.setattr(slurp_release, "fetch", flaky_fetch([failure], real_fetch))
    assert download_release_command(release_mirror, tmp_path / "slurp", tmp_path / "stamp.json") == 0
    assert "attempt 1/3 failed" in caplog.text
    assert (tmp_path / "slurp" / "train.jsonl").read_bytes() == (release_mirror / "train.jsonl").read_bytes()


def test_release_download_that_keeps_failing_leaves_no_file_and_no_stamp(tmp_path, release_mirror, monkeypatch, capsys):
    monkeypatch.setattr(slurp_release, "fetch", lambda url: b"<html>rate limited</html>")
    assert download_release_command(release_mirror, tmp_path / "slurp", tmp_path / "stamp.json") == 1
    assert "download failed after 3 attempts; last: checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "stamp.json").exists()
    assert not (tmp_path / "slurp").exists() or list((tmp_path / "slurp").iterdir()) == []


def test_release_file_missing_from_the_mirror_is_named(tmp_path, release_mirror, capsys):
    (release_mirror / "devel.jsonl").unlink()
    assert download_release_command(release_mirror, tmp_path / "slurp", tmp_path / "stamp.json") == 1
    assert f"{release_mirror.as_uri()}/devel.jsonl: download failed after 3 attempts" in capsys.readouterr().err
    assert not (tmp_path / "slurp" / "devel.jsonl").exists() and not (tmp_path / "stamp.json").exists()


def test_half_written_release_file_from_a_crash_is_replaced_not_trusted(tmp_path, release_mirror):
    (tmp_path / "slurp").mkdir()
    (tmp_path / "slurp" / "test.jsonl").write_bytes((release_mirror / "test.jsonl").read_bytes()[:50])
    assert download_release_command(release_mirror, tmp_path / "slurp", tmp_path / "stamp.json") == 0
    assert (tmp_path / "slurp" / "test.jsonl").read_bytes() == (release_mirror / "test.jsonl").read_bytes()


def test_complete_release_files_are_kept_not_fetched_again(tmp_path, release_mirror, monkeypatch):
    assert download_release_command(release_mirror, tmp_path / "slurp", tmp_path / "stamp.json") == 0
    monkeypatch.setattr(slurp_release, "fetch", lambda url: pytest.fail(f"fetched {url} again"))
    assert download_release_command(release_mirror, tmp_path / "slurp", tmp_path / "stamp2.json") == 0


def release_text_config(reader="slurp_release") -> dict:
    config = recorded_corpus_config("resources/slurp", "audio")
    config["corpora"]["tiny"].update(reader=reader, download_release_text=True)
    return config


def test_release_text_download_is_a_job_before_prepare_corpus(workflow_copy):
    (workflow_copy.root / "config.yaml").write_text(yaml.safe_dump(release_text_config()))
    commands = [command[command.index("lalm_slu") + 1 :] for command in
                planned_commands(workflow_copy, "results/manifests/tiny/en/test.parquet")]  # fmt: skip
    assert commands[0] == ["download-slurp-release", "--out-dir", "resources/slurp", "--stamp",
                           "resources/downloads/tiny-release.json", ">", "logs/download_slurp_release/tiny.log",
                           "2>&1"]  # fmt: skip
    assert commands[1][0] == "prepare-corpus"


def test_release_text_download_for_a_reader_without_release_text_is_refused(workflow_copy):
    config = release_text_config()
    config["corpora"]["tiny"].update(reader="massive", options={})
    (workflow_copy.root / "config.yaml").write_text(yaml.safe_dump(config))
    result = workflow_copy.snakemake("--dry-run", check=False)
    assert result.returncode != 0
    assert "config corpora.tiny.download_release_text: only the SLURP readers" in result.stdout + result.stderr


# ================================================================ what a careful user tries next


def lalm_slu_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lalm_slu", *args]


def run_bound_by_file_modes(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` as a user whom file modes bind.

    Tests run as root, whom no mode stops; the command keeps root's uid (so it still reaches the
    interpreter under /root) but loses the capabilities that override file modes.
    """
    if os.geteuid() == 0:
        unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
        if shutil.which("setpriv") is None or subprocess.run([*unprivileged, "true"]).returncode != 0:
            pytest.skip("needs setpriv allowed to drop root's file-mode override")
        command = [*unprivileged, *command]
    return subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def prepare_corpus_command(source, out_dir, reader="massive") -> list[str]:
    return lalm_slu_command("prepare-corpus", "--reader", reader, "--source", str(source), "--corpus", "tiny",
                            "--lang", "en", "--out-dir", str(out_dir))  # fmt: skip


def snapshot(folder) -> dict[str, bytes]:
    """Every file under `folder` and its bytes: what must be there, unchanged, after a failure."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- permission denied


@pytest.mark.parametrize("unreadable", ["file", "folder"])
def test_source_the_user_may_not_read_is_named_without_a_traceback(tmp_path, unreadable):
    write_release(tmp_path / "slurp", good_release_records())
    blocked = tmp_path / "slurp" / "test.jsonl" if unreadable == "file" else tmp_path / "slurp"
    blocked.chmod(0)
    try:
        result = run_bound_by_file_modes(prepare_corpus_command(tmp_path / "slurp", tmp_path / "out", "slurp_release"))
    finally:
        blocked.chmod(0o755)
    assert result.returncode == 1
    [error] = error_lines(result.stderr)
    if unreadable == "file":
        assert error == f"lalm-slu prepare-corpus: error: {blocked}: cannot read (Permission denied)"
    else:  # the first release file it tries to look at, inside the folder
        inside = re.escape(str(blocked))
        assert re.fullmatch(rf"lalm-slu prepare-corpus: error: .*Permission denied: '{inside}/\w+\.jsonl'", error)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def score_command(gold, pred, out) -> list[str]:
    return lalm_slu_command("score", "--gold", str(gold), "--pred", str(pred), "--bootstrap", "0", "--out", str(out))


def scoring_inputs(tmp_path):
    gold = write_lines(tmp_path / "gold.jsonl", [gold_line(1), gold_line(2)])
    pred = write_lines(tmp_path / "pred.jsonl", [prediction_line("1"), prediction_line("2")])
    return gold, pred


@pytest.mark.parametrize("command", ["prepare-corpus", "score"])
def test_output_folder_the_user_may_not_write_is_named_and_earlier_outputs_stay(tmp_path, command):
    out = tmp_path / "out"
    source = write_lines(tmp_path / "en.jsonl", massive_lines(6))
    gold, pred = scoring_inputs(tmp_path)
    if command == "prepare-corpus":
        assert prepare_corpus(source, out) == 0
        argv, target = prepare_corpus_command(source, out), out / "train.parquet"
    else:
        out.mkdir()
        (out / "m.json").write_text('{"earlier": "result"}\n')
        argv, target = score_command(gold, pred, out / "m.json"), out / "m.json"
    before = snapshot(out)
    out.chmod(0o555)
    try:
        result = run_bound_by_file_modes(argv)
    finally:
        out.chmod(0o755)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"lalm-slu {command}: error: [Errno 13] cannot write the output (Permission denied): '{target}'"
    ]
    assert "Traceback" not in result.stderr
    assert snapshot(out) == before


# ---------------------------------------------------------------- a results folder on a read-only disk


@contextlib.contextmanager
def immutable(folder):
    """`folder` made immutable (chattr +i): not even root may create, rename or remove anything in it."""
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_manifests_on_a_read_only_disk_fail_naming_the_output_and_keep_the_earlier_ones(tmp_path, capsys):
    source = write_lines(tmp_path / "en.jsonl", massive_lines(6))
    assert prepare_corpus(source, tmp_path / "out") == 0
    before = snapshot(tmp_path / "out")
    write_lines(source, massive_lines(9))  # new data: the job must write again
    capsys.readouterr()
    with immutable(tmp_path / "out"):
        assert prepare_corpus(source, tmp_path / "out") == 1
        after = snapshot(tmp_path / "out")
    errors = error_lines(capsys.readouterr().err)
    target = tmp_path / "out" / "train.parquet"
    assert errors == [f"lalm-slu prepare-corpus: error: [Errno 1] cannot write the output (Operation not permitted): "
                      f"'{target}'"]  # fmt: skip
    assert after == before


def test_metrics_on_a_read_only_disk_fail_naming_the_output_and_keep_the_earlier_ones(tmp_path, capsys):
    gold, pred = scoring_inputs(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "m.json").write_text('{"earlier": "result"}\n')
    with immutable(tmp_path / "metrics"):
        assert score(gold, pred, "--out", str(tmp_path / "metrics" / "m.json")) == 1
    assert "cannot write the output (Operation not permitted)" in capsys.readouterr().err
    assert snapshot(tmp_path / "metrics") == {"m.json": b'{"earlier": "result"}\n'}


def test_output_folder_that_cannot_be_created_on_a_read_only_disk_is_named(tmp_path, capsys):
    source = write_lines(tmp_path / "en.jsonl", massive_lines(6))
    (tmp_path / "results").mkdir()
    with immutable(tmp_path / "results"):
        assert prepare_corpus(source, tmp_path / "results" / "manifests") == 1
    err = capsys.readouterr().err
    assert f"Operation not permitted: '{tmp_path / 'results' / 'manifests'}'" in err
    assert list((tmp_path / "results").iterdir()) == []


# ---------------------------------------------------------------- huge files


def test_enormous_line_is_named_without_reading_it_whole(tmp_path, capsys):
    from lalm_slu.data.text_lines import MAX_LINE_BYTES

    source = tmp_path / "en.jsonl"
    with source.open("wb") as handle:  # e.g. a whole JSON array, or a compressed file, given as JSON lines
        handle.write(b"".join(line + b"\n" for line in massive_lines(2)))
        handle.write(b"[" + b'{"id": "x"}, ' * (3 * MAX_LINE_BYTES // 13) + b"{}]\n")
    assert prepare_corpus(source, tmp_path / "out") == 1
    assert f"{source}:3: line longer than 1 MiB: no record is this long" in capsys.readouterr().err
    assert manifests_in(tmp_path / "out") == []


def test_drop_mode_drops_and_counts_an_enormous_line_and_keeps_the_line_numbers(tmp_path, caplog):
    from lalm_slu.data.text_lines import MAX_LINE_BYTES

    lines = massive_lines(6)
    source = write_lines(tmp_path / "en.jsonl", lines[:3] + [b"x" * (2 * MAX_LINE_BYTES + 5)] + lines[3:] + [b"null"])
    assert prepare_corpus(source, tmp_path / "out", on_bad_record="drop") == 0
    assert sum(len(read_manifest(tmp_path / "out" / name)) for name in manifests_in(tmp_path / "out")) == 6
    assert "dropped 2 bad record(s)" in caplog.text
    assert f"{source}:8: a record must be a JSON object" in caplog.text  # numbering survives the long line


def test_source_far_larger_than_the_caps_keeps_exactly_the_caps(tmp_path):
    source = write_lines(tmp_path / "en.jsonl", massive_lines(60_000))  # about 12 MB
    started = time.monotonic()
    assert prepare_corpus(source, tmp_path / "out", "--max-utterances", "train=20", "dev=5", "test=5") == 0
    assert time.monotonic() - started < 60
    counts = {name: len(read_manifest(tmp_path / "out" / name)) for name in manifests_in(tmp_path / "out")}
    assert counts == {"dev.parquet": 5, "test.parquet": 5, "train.parquet": 20}


# ---------------------------------------------------------------- concurrent runs and clock skew (Snakemake)

TOY_SNAKEFILE = """
rule all:
    input: "results/x.out", "results/y.out"

rule copy_data:
    input: "data/{name}.txt"
    output: "results/{name}.copy"
    shell: "cp {input:q} {output:q}"

# Waits (at most a minute) for the test to create `release`, so a run can be caught in the middle.
rule finish_copy:
    input: "results/{name}.copy"
    output: "results/{name}.out"
    shell: "touch started; for i in $(seq 600); do [ -e release ] && break; sleep 0.1; done; cp {input:q} {output:q}"
"""


class ToyWorkflow:
    """Two chains data/{x,y}.txt -> results/*.copy -> results/*.out, run with this workflow's local profile.

    data/y.txt is larger than Snakemake's checksum limit (1 MB), as corpora, audio and models are: for it
    Snakemake has only the file time to decide whether the input changed.
    """

    def __init__(self, root: Path):
        self.root = root
        (root / "Snakefile").write_text(TOY_SNAKEFILE)
        (root / "data").mkdir()
        (root / "data/x.txt").write_text("x\n")
        (root / "data/y.txt").write_bytes(b"y" * 2_000_000 + b"\n")

    def command(self, *args: str) -> list[str]:
        return [str(BIN / "snakemake"), "--profile", str(REPO / "profiles/default"), *args]

    def snakemake(self, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args), cwd=self.root, env=subprocess_env(), capture_output=True,
                                text=True, timeout=180)  # fmt: skip
        result.output = result.stdout + result.stderr
        return result

    def start(self) -> subprocess.Popen:
        """A run caught in its last jobs: they wait for `release`."""
        process = subprocess.Popen(self.command(), cwd=self.root, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while not ((self.root / "started").exists() and self.copies_recorded()):
            assert process.poll() is None and time.monotonic() < deadline, "the first run never reached its last jobs"
            time.sleep(0.1)
        return process

    def copies_recorded(self) -> bool:
        """Both copy jobs finished as Snakemake sees it (their metadata written): one chain's last job can start
        while the other's copy still runs, on a loaded machine."""
        metadata = self.root / ".snakemake/metadata"
        names = {base64.urlsafe_b64decode(p.name).decode() for p in metadata.iterdir()} if metadata.is_dir() else set()
        return {"results/x.copy", "results/y.copy"} <= names

    def release(self) -> None:
        (self.root / "release").touch()

    def times(self) -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in (self.root / "results").iterdir()}


@pytest.fixture
def toy(tmp_path):
    return ToyWorkflow(tmp_path)


DAY = 24 * 3600


@pytest.mark.slow
def test_second_run_on_the_same_results_folder_is_refused_while_the_first_runs(toy):
    first = toy.start()
    try:
        before = snapshot(toy.root / "results")
        second = toy.snakemake()
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.output
        assert snapshot(toy.root / "results") == before
    finally:
        toy.release()
        assert first.wait(timeout=120) == 0
    assert (toy.root / "results/y.out").read_bytes() == (toy.root / "data/y.txt").read_bytes()


@pytest.mark.slow
def test_stale_lock_of_a_killed_run_is_named_and_unlock_resumes_only_the_unfinished_jobs(toy):
    killed = toy.start()
    os.killpg(killed.pid, signal.SIGKILL)  # snakemake and its jobs, as `kill -9` or a lost node would
    killed.wait(timeout=60)
    finished = toy.times()
    assert set(finished) == {"x.copy", "y.copy"}
    refused = toy.snakemake()
    assert refused.returncode != 0
    assert "Directory cannot be locked" in refused.output and "--unlock" in refused.output
    assert toy.snakemake("--unlock").returncode == 0
    toy.release()
    assert toy.snakemake().returncode == 0
    assert {name: time for name, time in toy.times().items() if name.endswith(".copy")} == finished
    assert (toy.root / "results/x.out").read_text() == "x\n"


@pytest.mark.slow
def test_results_folder_on_a_read_only_disk_stops_the_run_naming_the_output_and_keeps_everything(toy):
    toy.release()
    assert toy.snakemake().returncode == 0
    before = snapshot(toy.root / "results")
    (toy.root / "data/x.txt").write_text("new x\n")  # the x chain must run again
    with immutable(toy.root / "results"):
        stopped = toy.snakemake()
    assert stopped.returncode != 0
    # Snakemake's own report: it cannot remove the output it is about to redo.
    last_line = stopped.output.rstrip().splitlines()[-1]
    assert last_line == "PermissionError: [Errno 1] Operation not permitted: 'results/x.copy'"
    assert snapshot(toy.root / "results") == before


@pytest.mark.slow
def test_small_input_dated_in_the_future_reruns_nothing(toy):
    toy.release()
    assert toy.snakemake().returncode == 0
    before = toy.times()
    os.utime(toy.root / "data/x.txt", (time.time() + DAY, time.time() + DAY))
    assert "Nothing to be done" in toy.snakemake().output  # same content: Snakemake compares checksums
    assert toy.times() == before


@pytest.mark.slow
def test_large_input_dated_in_the_future_stops_its_job_naming_the_clock_skew_and_touch_repairs_it(toy):
    toy.release()
    assert toy.snakemake().returncode == 0
    before = toy.times()
    os.utime(toy.root / "data/y.txt", (time.time() + DAY, time.time() + DAY))
    skewed = toy.snakemake()
    assert skewed.returncode != 0
    assert re.search(r"Output results/y.copy has older modification time .* than input data/y.txt", skewed.output)
    assert "clock skew" in skewed.output
    after = toy.times()
    assert {name: after[name] for name in ("x.copy", "x.out", "y.out")} == {
        name: before[name] for name in ("x.copy", "x.out", "y.out")
    }  # the other chain and the downstream output are untouched; only y.copy, being redone, is gone
    assert "y.copy" not in after
    os.utime(toy.root / "data/y.txt")  # the repair: `touch data/y.txt`, then run again
    assert toy.snakemake().returncode == 0
    assert "Nothing to be done" in toy.snakemake().output


@pytest.mark.slow
def test_outputs_dated_in_the_past_after_a_clock_jump_rerun_only_the_chain_of_the_large_input(toy):
    toy.release()
    assert toy.snakemake().returncode == 0
    for name in ("x.copy", "y.copy"):
        os.utime(toy.root / "results" / name, (time.time() - DAY, time.time() - DAY))
    before = toy.times()
    assert toy.snakemake().returncode == 0
    after = toy.times()
    assert {name for name in before if after[name] != before[name]} == {"y.copy", "y.out"}
