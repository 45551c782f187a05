"""`lalm-slu export-slurp`: a run's predictions in SLURP's prediction format, for SLURP's own scorer.

One JSON line per recording of every test utterance, in the manifest's order:
`{"file": <recording file name>, "scenario", "action", "entities": [{"type", "filler"}]}`, the format
`scripts/evaluation/evaluate.py` of github.com/pswietojanski/slurp reads. File names are the manifest's
recordings (SLURP's release file names); an utterance without recordings (synthesized speech) is written
under its utterance id. Every recording of an utterance gets the utterance's prediction, as
`lalm-slu score --granularity recording` counts it. A missing or unparsable prediction is written with null
scenario and action and no entities: SLURP's scorer skips a recording that has no line, and would leave it
out of its scores, but scores this line as wrong, as `lalm-slu score` does. Fillers are written as they are
scored (lower case, single spaces).
"""

from __future__ import annotations

import json
from pathlib import Path

from lalm_slu.evaluation.scoring import matched_examples, read_gold, read_predictions, slurp_prediction_line
from lalm_slu.data.records import DataError
from lalm_slu.core.outputs import write_text_atomic


def add_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, type=Path, help="a run's predictions (.jsonl, as decode writes them)")
    parser.add_argument(
        "--gold", required=True, type=Path, help="the test set's manifest (.parquet) or SLURP release file (.jsonl)"
    )
    parser.add_argument("--out", required=True, type=Path, help="where to write SLURP's format (.jsonl)")


def export_lines(gold_path: Path, predictions_path: Path) -> list[dict]:
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


def run(args) -> int:
    lines = export_lines(args.gold, args.pred)
    write_text_atomic(args.out, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return 0
