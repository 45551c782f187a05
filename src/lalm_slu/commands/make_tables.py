"""`lalm-slu tables`: paper tables (CSV, Markdown, LaTeX) from the aggregate metrics CSV."""

from __future__ import annotations

import logging
from pathlib import Path

from lalm_slu.commands.arguments import add_metrics_argument
from lalm_slu.report.paper_tables import write_paper_tables
from lalm_slu.report.tables import DEFAULT_TABLE_METRICS

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
    add_metrics_argument(parser, "table_metrics", DEFAULT_TABLE_METRICS, "metrics shown (columns), in this order")


def run(args) -> int:
    written = write_paper_tables(args.metrics, args.out_dir, args.table_metrics, args.cascade_wer, args.comparisons)
    log.info("wrote %d table files to %s", len(written), args.out_dir)
    return 0
