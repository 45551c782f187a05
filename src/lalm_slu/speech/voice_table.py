"""The TTS voice table (config speech.tts.voices): one row per eSpeak NG voice, language and split.

Plain Python (csv, json schema): the workflow reads it while planning."""

import csv
from functools import cache
from pathlib import Path

import jsonschema
import yaml

SPLITS = ("train", "test")


def parse_values(cell: str):
    """'150' -> 150, '135,165,195' -> [135, 165, 195] (one voice per value); anything else stays text."""
    values = [value.strip() for value in cell.split(",")]
    if not all(value.lstrip("-").isdigit() for value in values):
        return cell
    return int(values[0]) if len(values) == 1 else [int(value) for value in values]


@cache
def read_voice_table(path, schema_path) -> dict:
    """{lang: {split: [{name, rate_wpm, pitch}, ...]}} in the table's row order (read once; do not
    modify it); a bad row, or a language without both splits, is a ValueError naming the file."""
    validator = jsonschema.Draft202012Validator(yaml.safe_load(Path(schema_path).read_text()))
    voices = {}
    with open(path, newline="", encoding="utf-8") as table:
        rows = csv.DictReader(table, delimiter="\t")
        for line, row in enumerate(rows, start=2):
            record = {key: parse_values(value) if key in ("rate_wpm", "pitch") else value
                      for key, value in row.items() if value not in (None, "")}  # fmt: skip
            error = jsonschema.exceptions.best_match(validator.iter_errors(record))
            if error is not None:
                where = ".".join(map(str, error.absolute_path))
                raise ValueError(f"{path}, line {line}{f' ({where})' if where else ''}: {error.message}")
            splits = voices.setdefault(record["lang"], {split: [] for split in SPLITS})
            splits[record["split"]].append(
                {"name": record["voice"], "rate_wpm": record["rate_wpm"], "pitch": record["pitch"]}
            )
    for lang, splits in voices.items():
        missing = [split for split in SPLITS if not splits[split]]
        if missing:
            raise ValueError(f"{path}: language {lang!r} has no {' or '.join(missing)} voices")
    return voices
