"""Argument shapes several commands share."""

from __future__ import annotations

from lalm_slu.evaluation.metrics import METRIC_NAMES


def add_metrics_argument(parser, dest: str, default, help: str) -> None:
    """--metric METRIC [METRIC ...]: the metrics a command shows, in this order."""
    parser.add_argument(
        "--metric", dest=dest, nargs="+", choices=METRIC_NAMES, metavar="METRIC", default=list(default), help=help
    )

