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

from pathlib import Path

from lalm_slu.evaluation.scoring import write_slurp_predictions


def add_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, type=Path, help="a run's predictions (.jsonl, as decode writes them)")
    parser.add_argument(
        "--gold", required=True, type=Path, help="the test set's manifest (.parquet) or SLURP release file (.jsonl)"
    )
    parser.add_argument("--out", required=True, type=Path, help="where to write SLURP's format (.jsonl)")


def run(args) -> int:
    write_slurp_predictions(args.gold, args.pred, args.out)
    return 0
