"""Collect `results/runs/{run}/metrics/{testset}.{modality}.json` files into one long-format CSV."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from lalm_slu.evaluation.metrics import METRIC_NAMES
from lalm_slu.core.outputs import atomic_output
from lalm_slu.data.records import DataError

# What a run's `meta` block may carry (written by `score --meta`); other keys follow, sorted.
META_COLUMNS = (
    "run",
    "corpus",
    "lang",
    "source",
    "target",
    "target_text",
    "scheme",
    "budget",
    "seed",
    "testset",
    "modality",
    "granularity",
    "wall_time_s",
)
VALUE_COLUMNS = ("metric", "value", "ci_low", "ci_high")
COUNT_COLUMNS = ("n_gold", "n_missing", "n_extra", "n_parse_failures", "parse_failure_rate")

# What a score must say it scores (score --meta); a file's name is never read for them.
IDENTITY_KEYS = ("run", "testset", "modality")


def metric_rows(path: str | os.PathLike) -> list[dict]:
    """One row per metric of one score JSON; run, testset and modality come from its `meta`."""
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        metrics, counts = result["metrics"], result["counts"]
    except FileNotFoundError:
        raise DataError("metrics file not found", path) from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"not a score result ({type(error).__name__}: {error})", path) from None
    meta = dict(result.get("meta") or {})
    meta.setdefault("granularity", result.get("granularity"))
    missing = [key for key in IDENTITY_KEYS if meta.get(key) is None]
    if missing:
        raise DataError(f"meta lacks {', '.join(missing)} (written by `score --meta`)", path)
    summary = path.parent.parent / "model" / "summary.json"
    if meta.get("wall_time_s") is None and path.parent.name == "metrics" and summary.exists():
        # The fine-tuning run's wall time, from the model directory beside the run's metrics.
        meta["wall_time_s"] = json.loads(summary.read_text(encoding="utf-8")).get("wall_time_s")
    shared = {**meta, **{key: counts.get(key) for key in COUNT_COLUMNS}}
    for name in (name for name in METRIC_NAMES if name in metrics):
        check_finite(metrics[name], name, path)
    return [
        {**shared, "metric": name, **{field: metrics[name].get(field) for field in ("value", "ci_low", "ci_high")}}
        for name in METRIC_NAMES
        if name in metrics
    ]


def check_finite(metric, name: str, path) -> None:
    """A metric's value is a finite number and its interval, if any, finite numbers: a NaN would be averaged
    away over seeds, unseen."""
    if not isinstance(metric, dict):
        raise DataError(f"metric {name!r} is {metric!r}, expected an object with a value", path)
    for field in ("value", "ci_low", "ci_high"):
        value = metric.get(field)
        if value is None and field != "value":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"metric {name!r}: {field} is {value!r}, expected a finite number", path)


def aggregate_metrics(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    rows = [row for path in paths for row in metric_rows(path)]
    extra = sorted({key for row in rows for key in row} - set(META_COLUMNS + VALUE_COLUMNS + COUNT_COLUMNS))
    columns = list(META_COLUMNS) + extra + list(VALUE_COLUMNS) + list(COUNT_COLUMNS)
    frame = pd.DataFrame(rows, columns=columns)
    duplicated = frame.duplicated(["run", "testset", "modality", "metric"])
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise DataError(f"two metric files for run {first['run']!r}, {first['testset']}.{first['modality']}")
    # Deterministic order whatever order the files were given in.
    metric_rank = frame["metric"].map({name: rank for rank, name in enumerate(METRIC_NAMES)})
    order = frame.assign(_rank=metric_rank).sort_values(["run", "testset", "modality", "_rank"], kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def write_metrics_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
    return Path(path)


def read_metrics_csv(path: str | os.PathLike) -> pd.DataFrame:
    """The aggregate CSV with identifiers as text (budgets like "115shot" and "10" stay comparable)."""
    path = Path(path)
    if not path.exists():
        raise DataError("metrics CSV not found", path)
    text_columns = {name: "string" for name in META_COLUMNS if name not in ("seed", "wall_time_s")}
    frame = pd.read_csv(path, dtype={**text_columns, "metric": "string"}, keep_default_na=False, na_values=[""])
    missing = [
        c for c in ("run", "scheme", "budget", "seed", "testset", "modality", "metric", "value") if c not in frame
    ]
    if missing:
        raise DataError(f"not an aggregate metrics CSV: missing columns {missing}", path)
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad = ~np.isfinite(values.to_numpy(dtype="float64"))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"value {frame['value'].iloc[row]!r} of {frame['metric'].iloc[row]} for run "
                        f"{frame['run'].iloc[row]!r} is not a finite number", path, row + 2)  # after the header
    return frame
