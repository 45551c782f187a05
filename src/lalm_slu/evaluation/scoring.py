"""Scoring predictions against gold labels with SLURP's metrics: reading both files, matching predictions to gold
utterances or recordings, and the result `lalm-slu score` writes.

Gold: our manifest (.parquet) or a SLURP release file (.jsonl). Predictions (.jsonl), one object a line:
ours (`id`, `raw`, `scenario`, `action`, `entities`, `parsed`) or SLURP's (`file` = a recording, or
`slurp_id` for gold-transcript predictions, with `scenario`, `action`, `entities`), the format of SLURP's
`scripts/evaluation/evaluate.py`, which `lalm-slu export-slurp` writes with `slurp_prediction_line`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.data.records import DataError, read_manifest
from lalm_slu.data.slu_json import parse_prediction
from lalm_slu.data.text_lines import read_lines
from lalm_slu.evaluation.metrics import METRIC_NAMES, LabelledExample, Scores, score_examples

GRANULARITIES = ("utterance", "recording")
_ANNOTATED_ENTITY = re.compile(r"\[\s*([^\[\]:]+?)\s*:\s*([^\[\]]*?)\s*\]")


@dataclass(frozen=True)
class GoldUtterance:
    key: str
    labels: LabelledExample
    recordings: tuple[str, ...] = ()

    def recording_keys(self) -> tuple[str, ...]:
        """Its recordings' file names; an utterance without recordings (synthesized speech) is its own id."""
        return self.recordings or (self.key,)


@dataclass
class PredictionFile:
    """Predictions keyed by utterance id or by recording file name (`key_kind`)."""

    path: Path
    key_kind: str | None = None
    by_key: dict[str, LabelledExample] = field(default_factory=dict)
    n_parse_failures: int = 0
    n_bad_lines: int = 0


# --- gold -----------------------------------------------------------------------------------------


def read_gold(path: Path) -> list[GoldUtterance]:
    """Gold utterances; a gold file with no utterances, or one that repeats an id, is an error."""
    path = Path(path)
    if path.suffix == ".parquet":  # numbered by row
        numbered = list(enumerate(_gold_from_manifest(path), start=1))
    elif path.suffix == ".jsonl":  # numbered by line
        numbered = [(line, _gold_from_slurp_line(obj, path, line)) for line, obj in _json_lines(path)]
    else:
        raise DataError("gold must be a manifest (.parquet) or a SLURP release file (.jsonl)", path)
    if not numbered:
        raise DataError("gold holds no utterances: every score would be 0", path)
    unit = "row" if path.suffix == ".parquet" else "line"
    first_seen: dict[str, int] = {}
    for number, gold in numbered:
        if gold.key in first_seen:
            raise DataError(f"gold repeats utterance {gold.key!r} (first at {unit} {first_seen[gold.key]})", path, number)
        first_seen[gold.key] = number
    return [gold for _, gold in numbered]


def _gold_from_manifest(path: Path) -> list[GoldUtterance]:
    frame = read_manifest(path)
    gold = []
    for row in frame.itertuples(index=False):
        recordings = list(row.recordings) or ([row.audio] if isinstance(row.audio, str) else [])
        labels = LabelledExample.from_entities(row.scenario, row.action, row.entities)
        gold.append(GoldUtterance(str(row.id), labels, tuple(os.path.basename(r) for r in recordings)))
    return gold


def _gold_from_slurp_line(obj: dict, path: Path, line: int) -> GoldUtterance:
    try:
        key = str(obj["slurp_id"])
        recordings = tuple(os.path.basename(r["file"]) for r in obj.get("recordings", []))
        return GoldUtterance(
            key, LabelledExample.from_entities(obj["scenario"], obj["action"], _slurp_entities(obj)), recordings
        )
    except (KeyError, TypeError, IndexError) as error:
        raise DataError(f"not a SLURP release record ({type(error).__name__}: {error})", path, line) from None


def _slurp_entities(obj: dict) -> list[dict]:
    """Fillers as SLURP's scorer builds them (token surfaces joined by spaces), else from the annotation."""
    if "tokens" in obj and "entities" in obj:
        tokens = obj["tokens"]
        return [
            {"type": e["type"], "filler": " ".join(tokens[i]["surface"] for i in e["span"])} for e in obj["entities"]
        ]
    return [{"type": t, "filler": f} for t, f in _ANNOTATED_ENTITY.findall(obj["sentence_annotation"])]


# --- predictions ----------------------------------------------------------------------------------

_KEY_FIELDS = {"id": "utterance", "slurp_id": "utterance", "file": "recording"}


def read_predictions(path: Path, on_bad_line: str = "error") -> PredictionFile:
    path = Path(path)
    predictions = PredictionFile(path)
    for line, obj in _json_lines(path, on_bad_line, predictions):
        try:
            key, key_kind, labels, parsed = _prediction_from_line(obj)
            if predictions.key_kind not in (None, key_kind):
                raise ValueError(f"keyed by {key_kind} but earlier lines are keyed by {predictions.key_kind}")
            if key in predictions.by_key:
                raise ValueError(f"duplicate prediction for {key!r}")
        except ValueError as error:
            if on_bad_line == "error":
                raise DataError(str(error), path, line) from None
            predictions.n_bad_lines += 1
            continue
        predictions.key_kind = key_kind
        predictions.by_key[key] = labels
        predictions.n_parse_failures += not parsed
    return predictions


def _prediction_from_line(obj) -> tuple[str, str, LabelledExample, bool]:
    if not isinstance(obj, dict):
        raise ValueError("a prediction line must be a JSON object")
    key_field = next((name for name in _KEY_FIELDS if name in obj), None)
    if key_field is None:
        raise ValueError(f"a prediction needs one of {sorted(_KEY_FIELDS)}")
    key = str(obj[key_field])
    if key_field == "file":
        key = os.path.basename(key)
    if "scenario" not in obj and "raw" in obj:
        # A decoder may write only the raw output; read it with the one parser.
        parsed = parse_prediction(obj["raw"])
        obj = {**obj, **parsed.to_dict()}
    for name in ("scenario", "action"):
        if name not in obj or not (obj[name] is None or isinstance(obj[name], str)):
            raise ValueError(f"{name!r} must be given as a string or null")
    entities = obj.get("entities") or []
    if not isinstance(entities, list) or not all(isinstance(e, dict) for e in entities):
        raise ValueError("'entities' must be a list of {type, filler} objects")
    # SLURP's scorer reads a missing type as "unknown" and a missing filler as "".
    entities = [{"type": e.get("type", "unknown"), "filler": e.get("filler", "")} for e in entities]
    parsed = bool(obj.get("parsed", True)) and obj["scenario"] is not None and obj["action"] is not None
    return key, _KEY_FIELDS[key_field], LabelledExample.from_entities(obj["scenario"], obj["action"], entities), parsed


def slurp_prediction_line(file: str, labels: LabelledExample | None) -> dict:
    """One line of SLURP's prediction format, read back by `_prediction_from_line`. No labels (a missing or
    unreadable prediction) give null scenario and action: SLURP's scorer skips a recording without a line,
    but scores this one as wrong, as ours does."""
    if labels is None:
        labels = LabelledExample(None, None)
    entities = [{"type": entity_type, "filler": filler} for entity_type, filler in labels.entities]
    return {"file": file, "scenario": labels.scenario, "action": labels.action, "entities": entities}


def _json_lines(path: Path, on_bad_line: str = "error", tally: PredictionFile | None = None):
    """(line number, object) for every non-blank line; bad JSON is an error or (with "count") tallied."""
    counting = on_bad_line == "count" and tally is not None

    def count_bad_line(error: DataError) -> None:
        tally.n_bad_lines += 1

    for number, text in read_lines(path, reject=count_bad_line if counting else None):
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as error:
            if not counting:
                raise DataError(f"malformed JSON ({error.msg} at column {error.colno})", path, number) from None
            tally.n_bad_lines += 1


# --- scoring --------------------------------------------------------------------------------------


def score_files(
    gold: list[GoldUtterance],
    predictions: PredictionFile,
    granularity: str | None = None,
    bootstrap_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Match predictions to gold examples, score them, and count what did not match."""
    granularity = granularity or ("recording" if predictions.key_kind == "recording" else "utterance")
    pairs, gold_keys = matched_examples(gold, predictions, granularity)
    n_missing = sum(predicted is None for _, predicted in pairs)
    scores = score_examples(pairs, bootstrap_resamples, seed)
    n_pred = len(predictions.by_key)
    return {
        "granularity": granularity,
        "counts": {
            "n_gold": len(pairs),
            "n_gold_utterances": len(gold),
            "n_pred": n_pred,
            "n_missing": n_missing,
            "n_extra": len(predictions.by_key.keys() - gold_keys),
            "n_bad_lines": predictions.n_bad_lines,
            "n_parse_failures": predictions.n_parse_failures,
            "parse_failure_rate": predictions.n_parse_failures / n_pred if n_pred else 0.0,
        },
        "metrics": scores.metrics_dict(),
        "confusion": _confusion(scores),
        "bootstrap": {"resamples": bootstrap_resamples, "seed": seed, "confidence": 0.95},
    }


def score_report(
    gold_path: Path,
    predictions_path: Path,
    granularity: str | None = None,
    bootstrap_resamples: int = 1000,
    seed: int = 0,
    on_bad_line: str = "error",
    meta: dict | None = None,
    as_json: bool = False,
) -> str:
    """The scores of a prediction file against its gold, as JSON text (with `meta` first, if given) or a table."""
    gold = read_gold(gold_path)
    predictions = read_predictions(predictions_path, on_bad_line=on_bad_line)
    result = score_files(gold, predictions, granularity, bootstrap_resamples, seed)
    if meta is not None:
        result = {"meta": meta, **result}
    return json.dumps(result, indent=2, ensure_ascii=False) + "\n" if as_json else format_table(result)


def matched_examples(
    gold: list[GoldUtterance], predictions: PredictionFile, granularity: str = "utterance"
) -> tuple[list[tuple[LabelledExample, LabelledExample | None]], set[str]]:
    """(gold, prediction-or-None) pairs in gold order, one per example, and the prediction keys gold asks for.
    Predictions that hold nothing, or nothing for this gold, are a DataError: they would score as all misses."""
    if granularity == "utterance" and predictions.key_kind == "recording":
        raise DataError("predictions keyed by recording file need --granularity recording", predictions.path)
    pairs, gold_keys = [], set()
    for utterance in gold:
        examples = [utterance.key] if granularity == "utterance" else utterance.recording_keys()
        for example_key in examples:
            lookup = example_key if predictions.key_kind == "recording" else utterance.key
            gold_keys.add(lookup)
            pairs.append((utterance.labels, predictions.by_key.get(lookup)))
    if not predictions.by_key and not predictions.n_bad_lines:
        raise DataError("holds no predictions: every utterance would score as a miss", predictions.path)
    if predictions.by_key and not predictions.by_key.keys() & gold_keys:
        raise DataError(f"none of its {len(predictions.by_key)} predictions is for an utterance of the gold "
                        "(predictions of another test set?)", predictions.path)
    return pairs, gold_keys


def _confusion(scores: Scores) -> dict:
    t = scores.totals
    pooled = {part: t[f"word_{part}"] + t[f"char_{part}"] for part in ("tp", "fp", "fn")}
    return {
        "span_exact": {part: t[f"exact_{part}"] for part in ("tp", "fp", "fn")},
        "span_word": {part: t[f"word_{part}"] for part in ("tp", "fp", "fn")},
        "span_char": {part: t[f"char_{part}"] for part in ("tp", "fp", "fn")},
        "slu": pooled,
    }


def format_table(result: dict) -> str:
    lines = [f"{'metric':<22} {'value':>7}   95% CI"]
    for name in METRIC_NAMES:
        metric = result["metrics"][name]
        interval = ""
        if metric["ci_low"] is not None:
            interval = f"[{100 * metric['ci_low']:.2f}, {100 * metric['ci_high']:.2f}]"
        lines.append(f"{name:<22} {100 * metric['value']:>7.2f}   {interval}")
    counts = result["counts"]
    lines.append("")
    lines.append(f"granularity: {result['granularity']}")
    lines.append(
        ", ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in counts.items()
        )
    )
    return "\n".join(lines) + "\n"


# --- SLURP's prediction format, for SLURP's own scorer ---------------------------------------------


def slurp_export_lines(gold_path: Path, predictions_path: Path) -> list[dict]:
    """One SLURP prediction line per recording of every gold utterance, in gold order."""
    gold, predictions = read_gold(gold_path), read_predictions(predictions_path)
    if predictions.key_kind == "recording":
        raise DataError("already keyed by recording file (SLURP's format)", predictions_path)
    matched_examples(gold, predictions)  # the scorer's checks: predictions exist, and for this gold
    lines, written = [], {}
    for utterance in gold:
        for file in utterance.recording_keys():
            if file in written:  # SLURP's scorer would keep one of them silently
                raise DataError(f"recording {file!r} belongs to utterances {written[file]!r} and {utterance.key!r}; "
                                "SLURP's format has one line per recording", gold_path)
            written[file] = utterance.key
            lines.append(slurp_prediction_line(file, predictions.by_key.get(utterance.key)))
    return lines


def write_slurp_predictions(gold_path: Path, predictions_path: Path, out: Path) -> None:
    lines = slurp_export_lines(gold_path, predictions_path)
    write_text_atomic(out, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
