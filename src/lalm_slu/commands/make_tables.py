"""`lalm-slu tables`: paper tables (CSV, Markdown, LaTeX) from the aggregate metrics CSV."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from lalm_slu.evaluation.metrics import METRIC_NAMES
from lalm_slu.data.records import DataError
from lalm_slu.report.aggregate import read_metrics_csv
from lalm_slu.report.comparisons import comparisons_table, read_comparisons_csv
from lalm_slu.report.findings import findings_table
from lalm_slu.report.tables import DEFAULT_TABLE_METRICS, build_tables, write_tables

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--metrics", required=True, type=Path, help="aggregate CSV written by `lalm-slu aggregate`")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument(
        "--comparisons", type=Path, help="CSV written by `lalm-slu compare-schemes`: adds the comparisons and findings"
    )
    parser.add_argument(
        "--cascade-wer",
        nargs="*",
        type=Path,
        default=[],
        help="{testset}.wer.json files written by `lalm-slu transcribe-test-set`: the cascade's WER in the notes",
    )
    parser.add_argument(
        "--metric",
        dest="table_metrics",
        nargs="+",
        choices=METRIC_NAMES,
        metavar="METRIC",
        default=list(DEFAULT_TABLE_METRICS),
        help="metrics shown (columns), in this order",
    )


def run(args) -> int:
    metrics = tuple(args.table_metrics)
    cascade_wer = {path.name.removesuffix(".wer.json"): _wer(path) for path in args.cascade_wer}
    tables = build_tables(read_metrics_csv(args.metrics), metrics, cascade_wer)
    if args.comparisons is not None:
        comparisons = read_comparisons_csv(args.comparisons)
        tables += [comparisons_table(comparisons, metrics), findings_table(comparisons, metrics)]
    written = write_tables(tables, args.out_dir)
    log.info("wrote %d table files to %s", len(written), args.out_dir)
    return 0


def _wer(path: Path) -> float:
    """The cascade's WER from a transcribe-test-set summary: a finite number ≥ 0."""
    try:
        wer = json.loads(path.read_text(encoding="utf-8"))["wer"]
    except FileNotFoundError:
        raise DataError("WER file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise DataError(f"not a transcription summary with a 'wer' ({type(error).__name__}: {error})", path) from None
    if isinstance(wer, bool) or not isinstance(wer, (int, float)) or not math.isfinite(wer) or wer < 0:
        raise DataError(f"'wer' is {wer!r}, expected a finite number ≥ 0", path)
    return float(wer)
