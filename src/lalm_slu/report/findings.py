"""The paper's claims, each judged on the demo's paired comparisons: shown, not shown or reversed.

A claim names the comparisons it rests on and a boundary: "shown" when the whole 95 % interval lies on the
paper's side of it, "reversed" when it lies wholly on the other side, "not shown" when it straddles it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from lalm_slu.report.comparisons import SCHEME_PAIR, VS_NO_TARGET_SPEECH, VS_ORACLE, VS_TEXT_ONLY
from lalm_slu.report.summary import budget_percent, metric_label, yes_no
from lalm_slu.report.tables import Table

SHOWN, NOT_SHOWN, REVERSED = "shown", "not shown", "reversed"
# The paper's claims are about speech input.
FINDINGS_MODALITY = "speech"
# "2-5 % speech" and "scarce speech": percentage budgets up to 5 %, and every k-shot budget.
SCARCE_BUDGET_MAX_PERCENT = 5.0
# Text-only fine-tuning reaches 85-95 % of the oracle's SLU-F1 in the paper: at least 85 % is its side.
TEXT_ONLY_SHARE_OF_ORACLE = 0.85


@dataclass(frozen=True)
class Claim:
    text: str
    selects: Callable[[pd.Series], bool]  # which comparison rows (one per metric) the claim rests on
    measure: str  # "difference" (boundary 0) or "ratio" (boundary `boundary`)
    boundary: float = 0.0


def is_scarce(budget: str) -> bool:
    percent = budget_percent(budget)
    return percent is None or 0 < percent <= SCARCE_BUDGET_MAX_PERCENT


def _monolingual(row) -> bool:
    return pd.isna(row["compared_source"])


CLAIMS = (
    Claim(
        "Text-only fine-tuning reaches at least 85 % of the oracle (paper: 85–95 % of SLU-F1)",
        lambda row: row["question"] == VS_ORACLE and _monolingual(row) and row["compared_scheme"] == "text_only",
        "ratio",
        TEXT_ONLY_SHARE_OF_ORACLE,
    ),
    Claim(
        "Adding 2–5 % speech improves on text-only",
        lambda row: row["question"] == VS_TEXT_ONLY and _monolingual(row) and is_scarce(row["compared_budget"]),
        "difference",
    ),
    Claim(
        "Curriculum beats direct mixing under scarce speech",
        lambda row: row["question"] == SCHEME_PAIR
        and _monolingual(row)
        and (row["reference_scheme"], row["compared_scheme"]) == ("direct_mixing", "curriculum")
        and is_scarce(row["compared_budget"]),
        "difference",
    ),
    Claim(
        "Cross-lingual: target-language text plus a few target clips improve on target text alone",
        lambda row: row["question"] == VS_NO_TARGET_SPEECH
        and yes_no(row["compared_target_text"]) == "yes"
        and is_scarce(row["compared_budget"]),
        "difference",
    ),
)


def finding(low: float, high: float, boundary: float) -> str:
    """Shown when the interval lies above the boundary, reversed when below, not shown when it straddles it."""
    if pd.isna(low) or pd.isna(high):
        return NOT_SHOWN
    if low > boundary:
        return SHOWN
    if high < boundary:
        return REVERSED
    return NOT_SHOWN


def build_findings(comparisons: pd.DataFrame, metrics) -> pd.DataFrame:
    """One row per claim and comparison it rests on, with each metric's number, interval and finding."""
    comparisons = comparisons[comparisons["compared_modality"] == FINDINGS_MODALITY]
    rows = []
    for claim in CLAIMS:
        selected = comparisons[comparisons.apply(claim.selects, axis=1)] if len(comparisons) else comparisons
        for (compared, reference), group in selected.groupby(["compared_label", "reference_label"], sort=False):
            row = {
                "claim": claim.text,
                "compared": compared,
                "reference": reference,
                "testset": group["compared_testset"].iloc[0],
                "measure": claim.measure,
                "boundary": claim.boundary,
            }
            for metric in metrics:
                values = group[group["metric"] == metric]
                if values.empty:
                    continue
                value = values.iloc[0]
                prefix = "ratio_" if claim.measure == "ratio" else ""
                low, high = value[f"{prefix}ci_low"], value[f"{prefix}ci_high"]
                row.update(
                    {
                        f"{metric}_value": value[claim.measure],
                        f"{metric}_ci_low": low,
                        f"{metric}_ci_high": high,
                        f"{metric}_finding": finding(low, high, claim.boundary),
                    }
                )
            rows.append(row)
    return pd.DataFrame(rows)


def findings_table(comparisons: pd.DataFrame, metrics) -> Table:
    numbers = build_findings(comparisons, metrics)
    cells = []
    for row in numbers.to_dict("records"):
        cell = {
            "Paper's claim": row["claim"],
            "Test set": row["testset"],
            "Demo comparison": f"{row['compared']} vs {row['reference']}",
        }
        for metric in metrics:
            label = metric_label(metric)
            if f"{metric}_value" not in row or pd.isna(row.get(f"{metric}_finding")):
                cell[label], cell[f"{label}: finding"] = "", ""
                continue
            cell[label] = format_measure(row, metric)
            cell[f"{label}: finding"] = row[f"{metric}_finding"]
        cells.append(cell)
    title = "The paper's claims, tested on this grid's speech input"
    note = "95 % paired-bootstrap intervals over test utterances, seeds averaged; from results/comparisons.csv"
    columns = ["Paper's claim", "Test set", "Demo comparison"]
    for label in map(metric_label, metrics):
        columns += [label, f"{label}: finding"]
    return Table("findings", title, numbers, pd.DataFrame(cells, columns=columns), note=note)


def format_measure(row: dict, metric: str) -> str:
    """A ratio as "% of oracle", a difference in points, each with its 95 % interval."""
    value, low, high = (100 * row[f"{metric}_{part}"] for part in ("value", "ci_low", "ci_high"))
    if row["measure"] == "ratio":
        return f"{value:.1f} % of oracle [{low:.1f}, {high:.1f}]"
    return f"{value:+.1f} points [{low:+.1f}, {high:+.1f}]"
