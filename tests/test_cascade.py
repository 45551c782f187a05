"""The cascade baseline: the base model's transcripts, made once per test set, read as text by every run."""

from __future__ import annotations

import json
import re
from collections import Counter

from test_workflow_dag import planned_jobs, prepare
from tiny_model import INSTRUCTION, tiny_assets  # noqa: F401 - session fixture

from lalm_slu.evaluation.cascade import extract_transcript, transcribe_test_set
from lalm_slu.evaluation.decode import decode_manifest
from lalm_slu.model.loading import load_model_and_processor
from lalm_slu.data.records import read_manifest
from lalm_slu.config.settings import GenerationSettings


def test_the_answer_pattern_extracts_the_transcript():
    pattern = r'content of this audio is:\s*"?(.*?)"?$'
    assert extract_transcript('The original content of this audio is: "wake me up"', pattern) == "wake me up"
    assert extract_transcript("  wake me up ", None) == "wake me up"
    # An answer the pattern misses is kept whole.
    assert extract_transcript("wake me up", pattern) == "wake me up"


def test_transcripts_replace_the_text_and_keep_the_gold_transcript(tiny_assets, tmp_path):  # noqa: F811
    settings = {"instruction": "Write down what is said.", "max_new_tokens": 8, "batch_size": 3,
                "device": "cpu", "precision": "fp32", "answer_pattern": None}
    summary = transcribe_test_set(str(tiny_assets.model_dir), str(tiny_assets.speech_manifest), settings,
                                  str(tmp_path / "cascade.parquet"), str(tmp_path / "wer.json"))
    gold = read_manifest(tiny_assets.speech_manifest)
    cascade = read_manifest(tmp_path / "cascade.parquet")
    assert cascade["id"].tolist() == gold["id"].tolist()
    assert cascade["reference_text"].tolist() == gold["text"].tolist()
    assert cascade["text"].tolist() == [a.strip() for a in cascade["asr_answer"]]
    assert cascade["entities"].tolist() == gold["entities"].tolist()
    wer = json.loads((tmp_path / "wer.json").read_text())
    assert wer["wer"] == summary["wer"] and wer["utterances"] == len(gold)


def test_a_cascade_decode_reads_the_transcripts_as_text(tiny_assets):  # noqa: F811
    model, processor = load_model_and_processor(str(tiny_assets.model_dir))
    manifest = read_manifest(tiny_assets.speech_manifest)
    manifest["text"] = ["play some jazz"] * len(manifest)  # what a cascade manifest holds: transcripts as text
    decoding = GenerationSettings.from_dict({"num_beams": 1, "batch_size": 4, "max_new_tokens": 6}, "test settings")
    cascade = decode_manifest(model, processor, manifest, "cascade", decoding, INSTRUCTION)
    text = decode_manifest(model, processor, manifest, "text", decoding, INSTRUCTION)
    assert [p["raw"] for p in cascade] == [p["raw"] for p in text]
    assert len({p["raw"] for p in cascade}) == 1


def test_transcripts_are_made_once_per_test_set_and_read_by_every_run(workflow_copy):
    prepare(workflow_copy)
    jobs = planned_jobs(workflow_copy)
    transcriptions = Counter(w for rule, w in jobs if rule == "transcribe_test_set")
    assert transcriptions == {"testset=slurp-en": 1, "testset=xsid-de": 1}
    runs = {w for rule, w in jobs if rule == "finetune_model"}
    decodes = [w for rule, w in jobs if rule == "decode_test_set"]
    assert len(decodes) == len(runs) > 1
    output = workflow_copy.snakemake("--dry-run", "--printshellcmds").stdout
    commands = [line for line in output.splitlines() if "python -m lalm_slu decode " in line]
    assert len(commands) == len(runs)
    # Each run's one decode job reads the transcripts for its cascade input.
    assert all(re.search(r"--input cascade results/cascade/[^ ]+\.parquet ", command) for command in commands)
    # The tables put the cascade beside speech and text, with each test set's transcription WER.
    tables = next(line for line in output.splitlines() if "python -m lalm_slu tables " in line)
    assert "--cascade-wer results/cascade/slurp-en.wer.json results/cascade/xsid-de.wer.json " in tables
