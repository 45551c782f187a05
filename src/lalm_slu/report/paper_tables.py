"""Every table of the paper from the report's inputs: the metrics tables (with the cascade's WER in their notes)
and, given the comparisons CSV, the comparisons and findings tables."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

from lalm_slu.data.records import DataError
from lalm_slu.report.aggregate import read_metrics_csv
from lalm_slu.report.comparisons import comparisons_table, read_comparisons_csv
from lalm_slu.report.findings import findings_table
from lalm_slu.report.tables import build_tables, write_tables


def write_paper_tables(
    metrics_csv: Path,
    out_dir: Path,
    metrics: Sequence[str],
    cascade_wer_files: Iterable[Path] = (),
    comparisons_csv: Path | None = None,
) -> list[Path]:
    """Write the tables into `out_dir`; `cascade_wer_files` are {testset}.wer.json transcription summaries."""
    metrics = tuple(metrics)
    cascade_wer = {path.name.removesuffix(".wer.json"): read_cascade_wer(path) for path in cascade_wer_files}
    tables = build_tables(read_metrics_csv(metrics_csv), metrics, cascade_wer)
    if comparisons_csv is not None:
        comparisons = read_comparisons_csv(comparisons_csv)
        tables += [comparisons_table(comparisons, metrics), findings_table(comparisons, metrics)]
    return write_tables(tables, out_dir)


def read_cascade_wer(path: Path) -> float:
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
