"""`lalm-slu aggregate`: every run's metric JSON files → one long CSV (run × test set × modality × metric)."""

from __future__ import annotations

from pathlib import Path

from lalm_slu.report.aggregate import aggregate_metrics, write_metrics_csv


def add_arguments(parser) -> None:
    parser.add_argument(
        "--metrics",
        required=True,
        nargs="+",
        type=Path,
        help="score JSON files, normally results/runs/{run}/metrics/{testset}.{modality}.json",
    )
    parser.add_argument("--out", required=True, type=Path, help="the long-format CSV, e.g. results/metrics.csv")


def run(args) -> int:
    write_metrics_csv(aggregate_metrics(args.metrics), args.out)
    return 0
