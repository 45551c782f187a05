"""`lalm-slu score`: SLURP metrics of a prediction file against gold labels (lalm_slu.evaluation.scoring reads
and scores both; the gold and prediction formats are described there)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lalm_slu.config.settings import block_properties
from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.evaluation.scoring import GRANULARITIES, score_report


def add_arguments(parser) -> None:
    parser.add_argument("--gold", required=True, type=Path, help="manifest (.parquet) or SLURP release (.jsonl)")
    parser.add_argument("--pred", required=True, type=Path, help="predictions (.jsonl): ours or SLURP's format")
    parser.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        help="one example per utterance or per gold recording (default: recording iff predictions are keyed by file)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=block_properties("scoring")["bootstrap"]["default"],
        help="bootstrap resamples for 95%% CIs (0: none; default: the config's scoring.bootstrap)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument(
        "--on-bad-line",
        choices=("error", "count"),
        default="error",
        help="a malformed prediction line: stop with an error, or count it and score its example as missed",
    )
    parser.add_argument("--meta", type=_json_object, help="JSON object copied into the output's meta block")
    parser.add_argument("--json", action="store_true", help="write JSON instead of a table")
    parser.add_argument("--out", type=Path, help="write here instead of standard output")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def run(args) -> int:
    text = score_report(args.gold, args.pred, args.granularity, args.bootstrap, args.seed, args.on_bad_line, args.meta,
                        args.json)
    if args.out is None:
        print(text, end="")
    else:
        write_text_atomic(args.out, text)
    return 0
