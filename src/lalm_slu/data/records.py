"""The one utterance record every stage reads and writes, and its manifest files.

A manifest is a parquet file with one row per utterance (columns = MANIFEST_COLUMNS).
Entities are stored as a JSON string so that every reader (pandas, pyarrow, duckdb, a
person with `jq`) sees the same plain `[{"type": ..., "filler": ...}]` list.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from lalm_slu.core.outputs import atomic_output

SPLITS = ("train", "dev", "test")

MANIFEST_COLUMNS = (
    "id",
    "corpus",
    "lang",
    "split",
    "text",
    "scenario",
    "action",
    "intent",
    "entities",
    "audio",
    "duration_s",
    "voice",
    "recordings",
    "word_times",
)
# Columns a manifest written before they existed may lack; read_manifest fills them with nulls.
OPTIONAL_COLUMNS = ("word_times",)


class DataError(ValueError):
    """Bad input data; the message names the file (and line or key) at fault."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(where + message)
        self.path = None if path is None else str(path)
        self.line = line


@dataclass
class Utterance:
    """One labelled utterance. `intent` is always `scenario_action`."""

    id: str
    corpus: str
    lang: str
    split: str
    text: str
    scenario: str
    action: str
    entities: list[dict] = field(default_factory=list)
    audio: str | None = None
    duration_s: float | None = None
    voice: str | None = None
    # SLURP keeps several recordings per utterance; `audio` is the one chosen by config.
    recordings: list[str] = field(default_factory=list)
    # [[word, start_s, end_s], ...] per whitespace word of `text`, where known: eSpeak NG's word events (demo) or a
    # forced alignment (recorded speech); interleaved training cuts a span of words' audio with them.
    word_times: list | None = None

    @property
    def intent(self) -> str:
        return make_intent(self.scenario, self.action)

    def to_row(self) -> dict:
        row = asdict(self)
        row["intent"] = self.intent
        row["entities"] = json.dumps(self.entities, ensure_ascii=False)
        row["recordings"] = json.dumps(self.recordings, ensure_ascii=False)
        row["word_times"] = None if self.word_times is None else json.dumps(self.word_times, ensure_ascii=False)
        return {key: row[key] for key in MANIFEST_COLUMNS}


def make_intent(scenario: str, action: str) -> str:
    return f"{scenario}_{action}"


def validate_utterance(utt: Utterance, path=None, line=None) -> None:
    """Raise DataError for a record no later stage could use."""
    if utt.split not in SPLITS:
        raise DataError(f"unknown split {utt.split!r} (expected one of {SPLITS})", path, line)
    if not utt.text or not utt.text.strip():
        raise DataError(f"empty transcript for utterance {utt.id!r}", path, line)
    if not utt.scenario or not utt.action:
        raise DataError(f"missing scenario/action for utterance {utt.id!r}", path, line)
    for entity in utt.entities:
        if set(entity) != {"type", "filler"}:
            raise DataError(f"entity {entity!r} must have exactly 'type' and 'filler'", path, line)
        if entity["filler"].lower() not in utt.text.lower():
            raise DataError(
                f"entity filler {entity['filler']!r} does not occur in transcript {utt.text!r}", path, line
            )


def check_unique_ids(utterances: Iterable[Utterance], path=None) -> None:
    seen: set[str] = set()
    for index, utt in enumerate(utterances, start=1):
        if utt.id in seen:
            raise DataError(f"duplicate utterance id {utt.id!r} (record {index})", path)
        seen.add(utt.id)


def write_manifest(utterances: Iterable[Utterance] | pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written manifest."""
    frame = utterances if isinstance(utterances, pd.DataFrame) else manifest_frame(utterances)
    with atomic_output(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def manifest_frame(utterances: Iterable[Utterance]) -> pd.DataFrame:
    frame = pd.DataFrame([u.to_row() for u in utterances], columns=list(MANIFEST_COLUMNS))
    frame["duration_s"] = frame["duration_s"].astype("float64")
    return frame


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest; `entities` and `recordings` come back as Python lists."""
    path = Path(path)
    if not path.exists():
        raise DataError("manifest not found", path)
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"not a readable parquet manifest ({error})", path) from None
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns and c not in OPTIONAL_COLUMNS]
    if missing:
        raise DataError(f"not a manifest: missing columns {missing}", path)
    frame["entities"] = frame["entities"].map(json.loads)
    frame["recordings"] = frame["recordings"].map(json.loads)
    frame["word_times"] = frame["word_times"].map(_json_or_none) if "word_times" in frame else None
    return frame


def _json_or_none(value):
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else json.loads(value)


def json_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A manifest frame as read_manifest returns it, with its list columns back as JSON strings (for writing)."""
    frame = frame.copy()
    for column in ("entities", "recordings"):
        frame[column] = frame[column].map(lambda value: json.dumps(list(value), ensure_ascii=False))
    frame["word_times"] = frame["word_times"].map(lambda v: None if v is None else json.dumps(v, ensure_ascii=False))
    return frame


def utterances_from_frame(frame: pd.DataFrame) -> list[Utterance]:
    """Inverse of manifest_frame (after read_manifest)."""
    keep = [c for c in MANIFEST_COLUMNS if c != "intent"]
    rows = frame[keep].to_dict("records")
    out = []
    for row in rows:
        # Parquet gives NaN for a missing value in some columns; downstream code tests for None.
        for column in ("duration_s", "audio", "voice"):
            if row[column] is not None and not isinstance(row[column], str) and pd.isna(row[column]):
                row[column] = None
        out.append(Utterance(**row))
    return out
