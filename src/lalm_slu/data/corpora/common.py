"""What every corpus reader shares: the bad-record policy, record collection, and split helpers."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

from lalm_slu.data.records import DataError, Utterance, validate_utterance
from lalm_slu.data.text_lines import read_lines

log = logging.getLogger(__name__)

BAD_RECORD_MODES = ("error", "drop")

# SLURP's `all` recording mode gives one record per recording, id `<utterance id>#<k>`;
# budgets and caps count utterances, so they group records by the part before the separator.
RECORDING_SEPARATOR = "#"


def utterance_key(utterance_id: str) -> str:
    """The utterance a record belongs to (records of one utterance share it)."""
    return utterance_id.split(RECORDING_SEPARATOR, 1)[0]


class BadRecordPolicy:
    """Either raise on the first bad record ("error") or drop and count every bad record ("drop")."""

    _WARN_FIRST = 5

    def __init__(self, mode: str = "error"):
        if mode not in BAD_RECORD_MODES:
            raise ValueError(f"on_bad_record must be one of {BAD_RECORD_MODES}, got {mode!r}")
        self.mode = mode
        self.dropped: list[str] = []

    def reject(self, error: DataError) -> None:
        if self.mode == "error":
            raise error
        if len(self.dropped) < self._WARN_FIRST:
            log.warning("dropping bad record: %s", error)
        self.dropped.append(str(error))


class RecordCollector:
    """Validate each record where it is read, so an error names its file and line."""

    def __init__(self, policy: BadRecordPolicy):
        self.policy = policy
        self.utterances: list[Utterance] = []
        self._first_seen: dict[str, str] = {}

    def add(self, utt: Utterance, path: str | os.PathLike, line: int | None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        try:
            validate_utterance(utt, path, line)
            if utt.id in self._first_seen:
                raise DataError(f"duplicate utterance id {utt.id!r} (first at {self._first_seen[utt.id]})", path, line)
        except DataError as error:
            self.policy.reject(error)
            return
        self._first_seen[utt.id] = where
        self.utterances.append(utt)

    def reject(self, error: DataError) -> None:
        self.policy.reject(error)

    def read_jsonl(self, path: str | os.PathLike, to_utterances: Callable[[dict, int], list[Utterance]]) -> None:
        """Each non-empty line of a JSON-lines file through `to_utterances(record, line_number)`; a line that is
        not UTF-8, not JSON or not an object, or a record that raises DataError, goes to the bad-record policy,
        naming its file and line."""
        for line_number, line in read_lines(path, reject=self.reject):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise DataError(f"a record must be a JSON object, not {json.dumps(record)[:40]}", path, line_number)
                utterances = to_utterances(record, line_number)
            except json.JSONDecodeError as error:
                self.reject(DataError(f"invalid JSON ({error.msg})", path, line_number))
                continue
            except DataError as error:
                self.reject(error)
                continue
            for utt in utterances:
                self.add(utt, path, line_number)


def check_fields(record: dict, types: dict[str, type | tuple[type, ...]], path, line) -> None:
    """Every field present and of its type (a null annotation is as bad as a missing one)."""
    missing = [key for key in types if key not in record]
    if missing:
        raise DataError(f"missing keys {missing}", path, line)
    for key, expected in types.items():
        if not isinstance(record[key], expected) or isinstance(record[key], bool):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise DataError(f"field {key!r} is {json.dumps(record[key])[:40]}, expected {names}", path, line)


def split_scenario_action(intent: str, path=None, line=None) -> tuple[str, str]:
    """MASSIVE-style `scenario_action` (scenario names hold no underscore) → (scenario, action)."""
    scenario, sep, action = intent.partition("_")
    if not sep or not scenario or not action:
        raise DataError(f"intent {intent!r} is not of the form scenario_action", path, line)
    return scenario, action
