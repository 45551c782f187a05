"""SLURP release jsonl (`dataset/slurp/{train,devel,test}.jsonl` of the SLURP repository).

Each line: `slurp_id`, `sentence`, `sentence_annotation` (`[type : filler]` inline; its case may differ from the lower-cased `sentence`), `scenario`,
`action`, and `recordings` (a list of {file, wer, ent_wer, status}); one utterance was read by
several speakers, near-field (`-headset.flac`) and far-field.

Which recording becomes the utterance's `audio` is a config choice (`recording`):
- `first`: the first listed recording;
- `headset`: the first headset recording, else the first;
- `all`: one record per recording, id `<slurp_id>#<k>` (k = position in the list).
Speech budgets and subset caps count utterances, not recordings: every record of one utterance
shares `utterance_key(id)` and is kept or dropped together.
`audio` is the recording's file name, relative to the audio root that `ingest-audio` is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lalm_slu.data.corpora.common import RECORDING_SEPARATOR, BadRecordPolicy, RecordCollector, check_fields
from lalm_slu.data.corpora.massive import parse_bracket_spans
from lalm_slu.data.records import DataError, Utterance

RELEASE_FILES = {"train": "train.jsonl", "dev": "devel.jsonl", "test": "test.jsonl"}
RECORDING_MODES = ("first", "headset", "all")
FIELD_TYPES = {
    "slurp_id": (str, int), "sentence": str, "sentence_annotation": str, "scenario": str, "action": str,
    "recordings": list,
}  # fmt: skip


def choose_recordings(files: list[str], mode: str) -> list[str]:
    """The recording file(s) whose audio the utterance uses under `mode`."""
    if mode not in RECORDING_MODES:
        raise ValueError(f"recording mode must be one of {RECORDING_MODES}, got {mode!r}")
    if not files:
        return []
    if mode == "all":
        return list(files)
    if mode == "headset":
        headset = [name for name in files if name.endswith("-headset.flac")]
        return headset[:1] or files[:1]
    return files[:1]


def utterances_from_slurp_record(
    record: dict, corpus: str, lang: str, split: str, recording: str, path, line
) -> list[Utterance]:
    check_fields(record, FIELD_TYPES, path, line)
    text = record["sentence"]
    plain, spans = parse_bracket_spans(record["sentence_annotation"], path, line)
    # SLURP lower-cases `sentence` but not the annotation; fillers are cut from `sentence` by offset.
    if plain.lower() != text.lower() or len(plain) != len(text):
        raise DataError(f"annotation without brackets {plain!r} differs from sentence {text!r}", path, line)
    entities = [{"type": entity_type, "filler": text[start:end]} for entity_type, start, end in spans]
    files = recording_files(record["recordings"], path, line)
    base = dict(
        corpus=corpus,
        lang=lang,
        split=split,
        text=text,
        scenario=record["scenario"],
        action=record["action"],
        entities=entities,
        recordings=files,
    )
    slurp_id = str(record["slurp_id"])
    chosen = choose_recordings(files, recording)
    if recording == "all":
        return [
            Utterance(id=f"{slurp_id}{RECORDING_SEPARATOR}{files.index(name)}", audio=name, **base) for name in chosen
        ]
    return [Utterance(id=slurp_id, audio=chosen[0] if chosen else None, **base)]


def recording_files(recordings: list, path, line) -> list[str]:
    """The file names of a record's recordings; a record without any has no speech to give (an error)."""
    if not recordings:
        raise DataError("record has no recordings (speech is what this corpus is read for)", path, line)
    for item in recordings:
        if not isinstance(item, dict) or not isinstance(item.get("file"), str) or not item["file"]:
            raise DataError(f"recording {json.dumps(item)[:60]} has no file name", path, line)
    return [item["file"] for item in recordings]


def read_slurp_release(
    source: str | os.PathLike, corpus: str, lang: str, policy: BadRecordPolicy, recording: str = "headset"
) -> list[Utterance]:
    """`source` is the folder holding train.jsonl / devel.jsonl / test.jsonl (a missing one is skipped)."""
    folder = Path(source)
    if recording not in RECORDING_MODES:
        raise ValueError(f"recording must be one of {RECORDING_MODES}, got {recording!r}")
    present = {split: folder / name for split, name in RELEASE_FILES.items() if (folder / name).is_file()}
    if not present:
        raise DataError(f"no SLURP release file ({', '.join(RELEASE_FILES.values())}) found", folder)
    collector = RecordCollector(policy)
    for split, path in present.items():
        collector.read_jsonl(
            path,
            lambda record, line_number, split=split, path=path: utterances_from_slurp_record(
                record, corpus, lang, split, recording, path, line_number
            ),
        )
    return collector.utterances
