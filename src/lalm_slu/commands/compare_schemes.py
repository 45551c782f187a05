"""`lalm-slu compare-schemes`: paired-bootstrap comparisons of the grid's settings from their predictions.

Each arm's runs, test set and input come from the aggregate CSV (their scores' meta); a run's predictions on them
are the workflow's `runs/{run}/predictions/{testset}.{modality}.jsonl` among --predictions. Every test utterance is
scored with the one scorer; one CSV row per comparison × metric (see lalm_slu.report.comparisons).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lalm_slu.config.settings import block_properties
from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.evaluation.metrics import METRIC_NAMES
from lalm_slu.report.comparisons import compare_predictions
from lalm_slu.report.tables import DEFAULT_TABLE_METRICS

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--metrics", required=True, type=Path, help="aggregate CSV: each run's settings")
    parser.add_argument(
        "--predictions", required=True, nargs="+", type=Path, help="runs/{run}/predictions/{testset}.{modality}.jsonl"
    )
    parser.add_argument("--gold", required=True, nargs="+", type=_testset_path, metavar="TESTSET=MANIFEST")
    defaults = block_properties("comparisons")
    parser.add_argument(
        "--bootstrap", type=int, default=defaults["bootstrap"]["default"], help="resamples of the test utterances"
    )
    parser.add_argument("--seed", type=int, default=defaults["seed"]["default"], help="seed of the resampling")
    for field, compared in (("scheme", "two schemes at every budget both ran"),
                            ("modality", "two decode inputs on every run that has both")):
        parser.add_argument(f"--{field}-pair", dest=f"{field}_pairs", nargs=2, action="append", default=[],
                            metavar=("REFERENCE", "COMPARED"), help=f"also compare these {compared} (repeatable)")
    parser.add_argument(
        "--metric", dest="metrics_compared", nargs="+", choices=METRIC_NAMES, default=list(DEFAULT_TABLE_METRICS)
    )
    parser.add_argument("--out", required=True, type=Path, help="CSV, one row per comparison × metric")


def _testset_path(text: str) -> tuple[str, Path]:
    testset, separator, path = text.partition("=")
    if not separator or not testset or not path:
        raise argparse.ArgumentTypeError(f"expected TESTSET=MANIFEST, got {text!r}")
    return testset, Path(path)


def run(args) -> int:
    frame = compare_predictions(args.metrics, args.predictions, args.gold, args.scheme_pairs, args.modality_pairs,
                                args.metrics_compared, args.bootstrap, args.seed)
    write_text_atomic(args.out, frame.to_csv(index=False, lineterminator="\n", float_format="%.6f"))
    log.info("wrote %d comparisons to %s", len(frame) // len(args.metrics_compared), args.out)
    return 0
