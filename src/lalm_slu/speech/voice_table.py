"""The TTS voice table (config speech.tts.voices): one row per eSpeak NG voice, language and split.

Plain Python (csv, json schema): the workflow reads it while planning, and checks each voice against the voices
eSpeak NG's data (the espeakng-loader wheel) really holds: eSpeak NG speaks an unknown name in a fallback voice."""

import csv
import re
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
def espeak_voices() -> dict[str, frozenset[str]]:
    """The names eSpeak NG selects a voice by, lower case (each voice file's `name`, its path under lang/, its file
    name, the languages it declares), each with the languages of its voice."""
    import espeakng_loader

    root = Path(espeakng_loader.get_data_path()) / "lang"
    voices: dict[str, set[str]] = {}
    for path in sorted(path for path in root.rglob("*") if path.is_file()):
        text = path.read_text(encoding="utf-8", errors="replace")
        fields = [line.strip().partition(" ") for line in text.splitlines()]
        languages = {value.split()[0].lower() for key, _, value in fields if key == "language" and value.strip()}
        names = {value.strip().lower() for key, _, value in fields if key == "name" and value.strip()}
        for name in names | languages | {path.relative_to(root).as_posix().lower(), path.name.lower()}:
            voices.setdefault(name, set()).update(languages)
    return {name: frozenset(languages) for name, languages in voices.items()}


def unknown_voice(name: str, lang: str | None = None) -> str | None:
    """Why eSpeak NG cannot speak language `lang` in voice `name` (`voice` or `voice+variant`), or None if it can."""
    import espeakng_loader

    voice, _, variant = name.partition("+")
    languages = espeak_voices().get(voice.lower())
    if languages is None:
        return f"eSpeak NG has no voice {voice!r} (voice {name!r}; its voices: `espeak-ng --voices`)"
    if lang is not None and not any(code == lang or code.startswith(f"{lang}-") for code in languages):
        return f"eSpeak NG's voice {voice!r} speaks {', '.join(sorted(languages))}, not {lang!r}"
    if variant and not (re.fullmatch(r"[A-Za-z0-9_-]+", variant)
                        and (Path(espeakng_loader.get_data_path()) / "voices" / "!v" / variant).is_file()):
        return f"eSpeak NG has no voice variant {variant!r} (voice {name!r})"
    return None


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
            problem = unknown_voice(record["voice"], record["lang"])
            if problem:
                raise ValueError(f"{path}, line {line} (voice): {problem}")
            splits = voices.setdefault(record["lang"], {split: [] for split in SPLITS})
            splits[record["split"]].append(
                {"name": record["voice"], "rate_wpm": record["rate_wpm"], "pitch": record["pitch"]}
            )
    for lang, splits in voices.items():
        missing = [split for split in SPLITS if not splits[split]]
        if missing:
            raise ValueError(f"{path}: language {lang!r} has no {' or '.join(missing)} voices")
    return voices
