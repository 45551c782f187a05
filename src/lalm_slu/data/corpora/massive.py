"""MASSIVE (and SLURP-style) jsonl: one JSON object per line, entities inline as `[type : filler]`.

Each line has `id`, `partition` (train/dev/test), `scenario`, `intent` (= scenario_action),
`utt` and `annot_utt`. The annotation with its brackets removed must equal `utt` exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

from lalm_slu.data.corpora.common import BadRecordPolicy, RecordCollector, check_fields
from lalm_slu.data.records import DataError, Utterance

ANNOTATION_SEPARATOR = " : "


def parse_bracket_annotation(annotation: str, path=None, line=None) -> tuple[str, list[dict]]:
    """`wake me at [time : five am]` → ("wake me at five am", [{"type": "time", "filler": "five am"}])."""
    plain, spans = parse_bracket_spans(annotation, path, line)
    return plain, [{"type": entity_type, "filler": plain[start:end]} for entity_type, start, end in spans]


def parse_bracket_spans(annotation: str, path=None, line=None) -> tuple[str, list[tuple[str, int, int]]]:
    """Like parse_bracket_annotation, with each entity as (type, start, end) character offsets in the plain text."""
    text_parts: list[str] = []
    spans: list[tuple[str, int, int]] = []
    plain_length = 0
    position = 0
    while position < len(annotation):
        open_at = annotation.find("[", position)
        close_at = annotation.find("]", position)
        if open_at < 0:
            if close_at >= 0:
                raise DataError(f"unbalanced ']' at character {close_at} in {annotation!r}", path, line)
            text_parts.append(annotation[position:])
            break
        if 0 <= close_at < open_at:
            raise DataError(f"unbalanced ']' at character {close_at} in {annotation!r}", path, line)
        end = annotation.find("]", open_at)
        if end < 0:
            raise DataError(f"unbalanced '[' at character {open_at} in {annotation!r}", path, line)
        inner = annotation[open_at + 1 : end]
        if "[" in inner:
            raise DataError(f"nested '[' inside the entity starting at character {open_at} in {annotation!r}", path, line)
        entity_type, separator, filler = inner.partition(ANNOTATION_SEPARATOR)
        if not separator:
            raise DataError(f"entity {inner!r} lacks the ' : ' between type and filler in {annotation!r}", path, line)
        if not entity_type.strip() or not filler.strip():
            raise DataError(f"entity {inner!r} has an empty type or filler in {annotation!r}", path, line)
        text_parts.append(annotation[position:open_at])
        plain_length += open_at - position
        text_parts.append(filler)
        spans.append((entity_type.strip(), plain_length, plain_length + len(filler)))
        plain_length += len(filler)
        position = end + 1
    return "".join(text_parts), spans


def utterance_from_massive_fields(
    record: dict, corpus: str, lang: str, split: str, path, line
) -> Utterance:
    """Shared by the jsonl reader and the Speech-MASSIVE hub reader (same field names)."""
    utt_id = str(record["id"])
    text = record["utt"]
    plain, entities = parse_bracket_annotation(record["annot_utt"], path, line)
    if plain != text:
        raise DataError(f"annotation without brackets {plain!r} differs from utt {text!r} (id {utt_id})", path, line)
    scenario = record["scenario"]
    prefix = f"{scenario}_"
    if not record["intent"].startswith(prefix):
        raise DataError(f"intent {record['intent']!r} does not start with scenario {scenario!r}", path, line)
    return Utterance(
        id=utt_id,
        corpus=corpus,
        lang=lang,
        split=split,
        text=text,
        scenario=scenario,
        action=record["intent"][len(prefix) :],
        entities=entities,
    )


FIELD_TYPES = {"id": (str, int), "partition": str, "scenario": str, "intent": str, "utt": str, "annot_utt": str}


def read_massive(source: str | os.PathLike, corpus: str, lang: str, policy: BadRecordPolicy) -> list[Utterance]:
    """`source` is one MASSIVE locale file, e.g. `data/massive/en-US.jsonl`."""
    path = Path(source)
    if not path.is_file():
        raise DataError("MASSIVE jsonl file not found", path)
    collector = RecordCollector(policy)

    def to_utterances(record: dict, line_number: int) -> list[Utterance]:
        check_fields(record, FIELD_TYPES, path, line_number)
        return [utterance_from_massive_fields(record, corpus, lang, record["partition"], path, line_number)]

    collector.read_jsonl(path, to_utterances)
    return collector.utterances
