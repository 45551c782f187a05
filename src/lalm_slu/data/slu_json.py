"""The SLU target format (one line of JSON) and the one parser for model output.

Target: {"scenario": "alarm", "action": "set", "entities": [{"type": "time", "filler": "six am"}]}

The trainer builds targets with `format_target`; the decoder and the scorer read model output with
`parse_prediction`, which never raises: output it cannot read unambiguously becomes an empty
prediction (parsed=False) that scores as wrong.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from typing import Any, Collection

from lalm_slu.data.records import make_intent

JSON_SEPARATORS = (", ", ": ")
_CLOSER = {"{": "}", "[": "]"}
# Opening braces tried before giving up: bounds the work on degenerate output ("{{{{...").
MAX_OBJECT_STARTS = 8


def format_target(scenario: str, action: str, entities: list[dict]) -> str:
    """The training target: keys in a fixed order, entities as [{type, filler}] in transcript order."""
    target = {
        "scenario": scenario,
        "action": action,
        "entities": [{"type": e["type"], "filler": e["filler"]} for e in entities],
    }
    return json.dumps(target, ensure_ascii=False, separators=JSON_SEPARATORS)


@dataclass
class Prediction:
    """What a model said. `error` is None for clean output, else what was repaired or why parsing failed."""

    scenario: str | None = None
    action: str | None = None
    entities: list[dict] = field(default_factory=list)
    parsed: bool = False
    error: str | None = None

    @property
    def intent(self) -> str | None:
        if self.scenario is None or self.action is None:
            return None
        return make_intent(self.scenario, self.action)

    def to_dict(self) -> dict:
        return {
            "scenario": self.scenario,
            "action": self.action,
            "entities": self.entities,
            "parsed": self.parsed,
            "error": self.error,
        }


def parse_prediction(text: Any, known_scenarios: Collection[str] | None = None) -> Prediction:
    """Read the first SLU object in `text`, tolerating the slips generative models make.

    `known_scenarios` lets an `intent` like "iot_hue_lightoff" stand in for a missing scenario/action
    when its split point is otherwise ambiguous (more than one underscore).
    """
    if not isinstance(text, str):
        return Prediction(error=f"output is {type(text).__name__}, not text")
    notes: list[str] = []
    obj = _first_object(text, notes)
    if obj is None:
        return Prediction(error="no JSON object found")
    return _prediction_from_object(obj, notes, known_scenarios)


def _first_object(text: str, notes: list[str]) -> dict | None:
    """The first `{...}` in `text` that loads as a dict holding at least one SLU key."""
    start = text.find("{")
    for _ in range(MAX_OBJECT_STARTS):
        if start == -1:
            break
        candidate, repaired = _balanced_span(text, start)
        if candidate is not None:
            obj = _load_lenient(candidate)
            if isinstance(obj, dict) and _lower_keys(obj).keys() & {"scenario", "action", "intent", "entities"}:
                if repaired:
                    notes.append("closed truncated JSON")
                if text[:start].strip() or text[start + len(candidate) - repaired :].strip():
                    notes.append("ignored text around the JSON")
                return obj
        start = text.find("{", start + 1)
    return None


def _balanced_span(text: str, start: int) -> tuple[str | None, int]:
    """Text from `start` to its matching close brace; closes brackets left open at the end of the text.

    Returns (span, number of closing characters appended). A string left open is not repaired:
    the cut-off value could be anything.
    """
    in_string, left_open = _string_mask(text, start)
    stack: list[str] = []
    for index in range(start, len(text)):
        char = text[index]
        if in_string[index - start]:
            continue
        if char in _CLOSER:
            stack.append(_CLOSER[char])
        elif char in "}]":
            if not stack or stack[-1] != char:
                return None, 0
            stack.pop()
            if not stack:
                return text[start : index + 1], 0
    if left_open:
        return None, 0
    closers = "".join(reversed(stack))
    return text[start:].rstrip() + closers, len(closers)


def _string_mask(text: str, start: int = 0) -> tuple[list[bool], bool]:
    """For each character from `start`: is it part of a quoted string? Also: is a string left open?"""
    mask: list[bool] = []
    quote: str | None = None
    escaped = False
    for char in text[start:]:
        if quote:
            mask.append(True)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        else:
            mask.append(char in "\"'")
            if char in "\"'":
                quote = char
    return mask, quote is not None


def _load_lenient(candidate: str) -> Any:
    for attempt in (candidate, _drop_trailing_commas(candidate)):
        try:
            return json.loads(attempt)
        except (json.JSONDecodeError, RecursionError):
            pass
        try:
            # Single-quoted, Python-style dicts are a common slip.
            return ast.literal_eval(attempt)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return None


def _drop_trailing_commas(candidate: str) -> str:
    """Remove commas directly before a closing bracket, outside string literals."""
    in_string, _ = _string_mask(candidate)
    out: list[str] = []
    for char, quoted in zip(candidate, in_string):
        if not quoted and char in "}]":
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":
                out.pop()
        out.append(char)
    return "".join(out)


def _lower_keys(obj: dict) -> dict:
    return {str(key).strip().lower(): value for key, value in obj.items()}


def _prediction_from_object(obj: dict, notes: list[str], known_scenarios: Collection[str] | None) -> Prediction:
    fields = _lower_keys(obj)
    scenario = _clean_label(fields.get("scenario"))
    action = _clean_label(fields.get("action"))
    if scenario is None or action is None:
        scenario, action = _fill_from_intent(scenario, action, _clean_label(fields.get("intent")), known_scenarios)
        if scenario is None or action is None:
            return Prediction(error="missing scenario/action and no unambiguous intent")
        notes.append("scenario/action taken from intent")
    if "entities" not in fields:
        notes.append("no entities field: read as none")
    entities = _entities_from_value(fields.get("entities"), notes)
    return Prediction(scenario, action, entities, parsed=True, error="; ".join(notes) or None)


def _clean_label(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _fill_from_intent(
    scenario: str | None, action: str | None, intent: str | None, known_scenarios: Collection[str] | None
) -> tuple[str | None, str | None]:
    if intent is None:
        return scenario, action
    if scenario is not None:
        prefix = scenario + "_"
        return (scenario, intent[len(prefix) :] or None) if intent.startswith(prefix) else (scenario, None)
    if action is not None:
        suffix = "_" + action
        return (intent[: -len(suffix)] or None, action) if intent.endswith(suffix) else (None, action)
    splits = [i for i, char in enumerate(intent) if char == "_" and 0 < i < len(intent) - 1]
    if known_scenarios is not None:
        splits = [i for i in splits if intent[:i] in known_scenarios]
    if len(splits) != 1:
        return None, None
    return intent[: splits[0]], intent[splits[0] + 1 :]


def _entities_from_value(value: Any, notes: list[str]) -> list[dict]:
    """Entities as [{type, filler}]; items that cannot be read unambiguously are dropped (and noted)."""
    if value is None:
        return []
    if isinstance(value, dict):
        # {"date": "today", "time": "six"}: a mapping from type to filler.
        value = [{key: filler} for key, filler in value.items()]
        notes.append("entities given as a mapping")
    if not isinstance(value, (list, tuple)):
        notes.append(f"entities field is {type(value).__name__}: read as none")
        return []
    entities, dropped = [], 0
    for item in value:
        entity = _entity_from_item(item)
        if entity is None:
            dropped += 1
        else:
            entities.append(entity)
    if dropped:
        notes.append(f"dropped {dropped} unreadable entit{'y' if dropped == 1 else 'ies'}")
    return entities


def _entity_from_item(item: Any) -> dict | None:
    if isinstance(item, dict):
        fields = _lower_keys(item)
        if "type" in fields and "filler" in fields:
            entity_type, filler = fields["type"], fields["filler"]
        elif len(item) == 1 and not fields.keys() & {"type", "filler"}:
            # {"date": "today"} instead of {"type": "date", "filler": "today"}.
            ((entity_type, filler),) = item.items()
        else:
            return None
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        entity_type, filler = item
    else:
        return None
    if not isinstance(entity_type, str) or not entity_type.strip() or isinstance(filler, (dict, list, tuple)):
        return None
    if filler is None:
        return None
    return {"type": entity_type.strip(), "filler": str(filler).strip()}
