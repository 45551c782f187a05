"""Seeds → mean ± sd, and the orderings and labels every table and figure shares."""

from __future__ import annotations

import re

import pandas as pd

from lalm_slu.config.vocabulary import TEST_INPUTS
from lalm_slu.evaluation.metrics import METRIC_NAMES

SCHEME_ORDER = ("text_only", "direct_mixing", "curriculum", "interleaving", "behaviour_imitation", "mtbi", "oracle")
SCHEME_LABELS = {
    "text_only": "text only",
    "direct_mixing": "direct mixing",
    "curriculum": "curriculum",
    "interleaving": "interleaving",
    "behaviour_imitation": "behaviour imitation",
    "mtbi": "MTBI (imitation + interleaving)",
    "oracle": "oracle (all speech)",
}
# Reference schemes are drawn as horizontal lines / separate rows, not as budget curves.
REFERENCE_SCHEMES = ("text_only", "oracle")
METRIC_LABELS = {
    "scenario_accuracy": "Scenario acc.",
    "action_accuracy": "Action acc.",
    "intent_accuracy": "Intent acc.",
    "span_exact_precision": "Entity P (exact)",
    "span_exact_recall": "Entity R (exact)",
    "span_exact_f1": "Entity F1 (exact)",
    "span_word_f1": "Entity F1 (word)",
    "span_char_f1": "Entity F1 (char)",
    "slu_precision": "SLU-P",
    "slu_recall": "SLU-R",
    "slu_f1": "SLU-F1",
}
MONOLINGUAL_KEYS = ("corpus", "lang", "testset", "modality")
CROSSLINGUAL_KEYS = ("corpus", "source", "target", "testset", "modality")
_SHOTS = re.compile(r"^(\d+)shot$")


def budget_sort_key(budget: str) -> tuple[int, float]:
    """0 first, then k-shot budgets, then percentages, each in increasing size."""
    budget = str(budget)
    shots = _SHOTS.match(budget)
    if shots:
        return (1, float(shots.group(1)))
    value = float(budget)
    return (0, 0.0) if value == 0 else (2, value)


def budget_percent(budget: str) -> float | None:
    """Speech budget as a percentage of training utterances; None for k-shot budgets."""
    return None if _SHOTS.match(str(budget)) else float(budget)


def budget_label(budget: str) -> str:
    shots = _SHOTS.match(str(budget))
    if shots:
        return f"{shots.group(1)}-shot"
    return f"{float(budget):g} %"


def scheme_sort_key(scheme: str) -> tuple[int, str]:
    return (SCHEME_ORDER.index(scheme), "") if scheme in SCHEME_ORDER else (len(SCHEME_ORDER), scheme)


def modality_sort_key(modality: str) -> tuple[int, str]:
    return (TEST_INPUTS.index(modality), "") if modality in TEST_INPUTS else (len(TEST_INPUTS), modality)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def yes_no(value) -> str:
    """A target-text flag as shown in tables and legends ("–" when the run did not say)."""
    if value is None or pd.isna(value):
        return "–"
    return "yes" if str(value).strip().lower() in ("true", "yes", "1") else "no"


def same_value(column: pd.Series, value) -> pd.Series:
    """Element-wise equality that treats a missing value as equal to missing."""
    return column.isna() if value is None or pd.isna(value) else column == value


def is_crosslingual(frame: pd.DataFrame) -> pd.Series:
    if "source" not in frame or "target" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["source"].notna() & frame["target"].notna()


def seed_summary(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Mean, sd (n-1; NaN for one seed) and mean bootstrap bounds over seeds, per keys × scheme × budget × metric."""
    by = [*keys, "scheme", "budget", "metric"]
    frame = frame.copy()
    for key in keys:
        if key not in frame:
            frame[key] = pd.NA
    for bound in ("ci_low", "ci_high"):
        frame[bound] = pd.to_numeric(frame.get(bound), errors="coerce")
    grouped = frame.groupby(by, dropna=False, sort=False)
    summary = grouped.agg(
        mean=("value", "mean"),
        sd=("value", "std"),
        n_seeds=("seed", "nunique"),
        ci_low=("ci_low", "mean"),
        ci_high=("ci_high", "mean"),
    ).reset_index()
    return sort_summary(summary, keys)


def sort_summary(summary: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    metric_rank = {name: rank for rank, name in enumerate(METRIC_NAMES)}
    order = sorted(
        summary.index,
        key=lambda i: (
            *[str(summary.at[i, k]) for k in keys],
            scheme_sort_key(summary.at[i, "scheme"]),
            budget_sort_key(summary.at[i, "budget"]),
            metric_rank.get(summary.at[i, "metric"], len(metric_rank)),
        ),
    )
    return summary.loc[order].reset_index(drop=True)
