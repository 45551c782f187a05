"""`lalm-slu figures`: paper figures (PNG, PDF) and an index.html from the aggregate metrics CSV, and the runs'
loss curves from their model directories."""

from __future__ import annotations

import logging
from pathlib import Path

from lalm_slu.commands.arguments import add_metrics_argument
from lalm_slu.report.aggregate import read_metrics_csv
from lalm_slu.report.figures import FIGURE_METRICS, screenshot_html, write_figures

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--metrics", required=True, type=Path, help="aggregate CSV written by `lalm-slu aggregate`")
    parser.add_argument("--out-dir", required=True, type=Path)
    add_metrics_argument(parser, "figure_metrics", FIGURE_METRICS, "metrics plotted (one row of panels each)")
    parser.add_argument(
        "--runs",
        nargs="*",
        type=Path,
        metavar="MODEL_DIR",
        help="runs' model directories (results/runs/RUN/model): their loss.csv and dev.csv make loss_curves",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        help="also render OUT_DIR/index.html in headless chromium and save this PNG (a browser check)",
    )


def run(args) -> int:
    written = write_figures(read_metrics_csv(args.metrics), args.out_dir, tuple(args.figure_metrics), args.runs)
    log.info("wrote %d figure files to %s", len(written), args.out_dir)
    if args.screenshot is not None:
        screenshot_html(args.out_dir / "index.html", args.screenshot)
    return 0
