"""The cascade baseline: the base model (before any SLU fine-tuning) transcribes the test speech once, and every
fine-tuned run reads that transcript as text input (decode modality `cascade`).

The transcripts are a manifest: the test manifest's rows with `text` replaced by the base model's transcript
(the gold transcript moves to `reference_text`), so decoding a cascade is decoding text from another manifest.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping

import numpy as np

from lalm_slu.model.batches import ChatItem, token_counts
from lalm_slu.evaluation.decode import answers_longest_first
from lalm_slu.evaluation.metrics import word_error_rate
from lalm_slu.model.loading import device_and_dtype, load_model_and_processor
from lalm_slu.core.outputs import atomic_output, write_text_atomic
from lalm_slu.data.records import DataError, json_columns, read_manifest
from lalm_slu.config.settings import CascadeSettings
from lalm_slu.data.audio import load_audio

log = logging.getLogger(__name__)


def extract_transcript(answer: str, pattern: str | None) -> str:
    """The transcript in a model's answer: group 1 of `pattern` (searched), else the whole answer; an answer the
    pattern does not match is kept whole (a transcript of what the model said is still the cascade's input)."""
    if pattern:
        match = re.search(pattern, answer)
        if match:
            return match.group(1).strip()
    return answer.strip()


def transcribe_manifest(model, processor, manifest, settings: CascadeSettings) -> list[str]:
    """The base model's raw answers to `settings.instruction` for every clip of `manifest`, in its order."""
    rows = manifest.to_dict("records")
    missing = [row["id"] for row in rows if not row["audio"]]
    if missing:
        raise ValueError(f"{len(missing)} utterances have no audio (e.g. {missing[:3]})")
    no_audio = np.zeros(0, dtype=np.float32)
    lengths = token_counts(processor, [ChatItem(settings.instruction, audio=no_audio)] * len(rows),
                           [float(row["duration_s"] or 0.0) for row in rows])

    def batch(indices):
        return [ChatItem(settings.instruction, audio=load_audio(rows[i]["audio"])) for i in indices], None

    return answers_longest_first(model, processor, lengths, batch, settings, "transcribe")


def transcribe_test_set(model_dir: str, manifest_path: str, settings: Mapping, out_manifest: str,
                        out_wer: str) -> dict:
    """Write the cascade manifest (transcripts as `text`) and the transcripts' WER against the gold text.
    `settings`: the job's --settings JSON (lalm_slu.config.settings.CascadeSettings)."""
    started = time.time()
    transcription = CascadeSettings.from_dict(settings, "transcribe-test-set --settings")
    manifest = read_manifest(manifest_path)
    if manifest.empty:  # its WER would read 0.0
        raise DataError("no utterances to transcribe", manifest_path)
    device, dtype = device_and_dtype(transcription)
    model, processor = load_model_and_processor(model_dir, dtype=dtype, device=device)
    answers = transcribe_manifest(model, processor, manifest, transcription)
    transcripts = [extract_transcript(answer, transcription.answer_pattern) for answer in answers]
    cascade = manifest.copy()
    cascade["reference_text"] = cascade["text"]
    cascade["asr_answer"] = answers
    cascade["text"] = transcripts
    with atomic_output(out_manifest) as tmp:
        json_columns(cascade).to_parquet(tmp, index=False)
    summary = {
        "utterances": len(cascade),
        "wer": round(word_error_rate(list(manifest["text"]), transcripts), 4),
        "empty_transcripts": int(sum(not t for t in transcripts)),
        "instruction": transcription.instruction,
        "answer_pattern": transcription.answer_pattern,
        "wall_time_s": round(time.time() - started, 2),
    }
    write_text_atomic(out_wer, json.dumps(summary, indent=2) + "\n")
    log.info("transcribed %s: %s", manifest_path, summary)
    return summary
