"""Paired comparisons of the study's settings: differences with 95 % intervals from a paired bootstrap.

An *arm* is one setting of the grid (corpus, language or language pair, scheme, speech budget) on one test set
and input modality, over its training seeds. A comparison resamples the test utterances once per bootstrap
round and scores both arms on that same resample (paired), each as the mean over its seeds; the interval is
the percentile range of the compared arm's metric minus the reference arm's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from lalm_slu.data.records import DataError
from lalm_slu.evaluation.metrics import count_matrix, metrics_from_totals
from lalm_slu.evaluation.scoring import matched_examples, read_gold, read_predictions
from lalm_slu.report.aggregate import read_metrics_csv
from lalm_slu.report.summary import (
    REFERENCE_SCHEMES,
    SCHEME_LABELS,
    budget_label,
    budget_sort_key,
    metric_label,
    scheme_sort_key,
    yes_no,
)
from lalm_slu.report.tables import Table

CONFIDENCE = 0.95
BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"
# The questions, in reporting order. Pairs of schemes and of modalities come from the configuration.
VS_TEXT_ONLY = "vs text-only"
VS_ORACLE = "vs oracle"
SCHEME_PAIR = "scheme vs scheme"
VS_NO_TARGET_SPEECH = "vs no target speech"
VS_NO_TARGET_TEXT = "vs no target text"
MODALITY_PAIR = "input vs input"
QUESTIONS = (VS_TEXT_ONLY, VS_ORACLE, SCHEME_PAIR, VS_NO_TARGET_SPEECH, VS_NO_TARGET_TEXT, MODALITY_PAIR)
ARM_FIELDS = ("corpus", "lang", "source", "target", "target_text", "scheme", "budget", "testset", "modality")


@dataclass(frozen=True)
class Arm:
    """One setting on one test set and input modality; `lang` for monolingual runs, `source`/`target` else."""

    corpus: str
    lang: str | None
    source: str | None
    target: str | None
    target_text: bool | None
    scheme: str
    budget: str
    testset: str
    modality: str

    @property
    def crosslingual(self) -> bool:
        return self.source is not None and self.target is not None

    def label(self) -> str:
        """The setting, as a reader tells it from the other arm of its comparison (test set and input aside)."""
        scheme = SCHEME_LABELS.get(self.scheme, self.scheme)
        if self.crosslingual:
            text = "with" if self.target_text else "without"
            speech = "no" if self.budget == "0" else budget_label(self.budget)
            return f"{self.source}→{self.target} {scheme}, {text} target text, {speech} target speech"
        if self.scheme in REFERENCE_SCHEMES:
            return f"{self.lang} {scheme}"
        return f"{self.lang} {scheme} {budget_label(self.budget)}"


@dataclass(frozen=True)
class Comparison:
    question: str
    compared: Arm
    reference: Arm


@dataclass
class ArmScores:
    """An arm's per-utterance counts, one (utterances × COUNT_FIELDS) matrix per seed, in gold order."""

    arm: Arm
    counts_by_seed: dict[int, np.ndarray]


# --- which comparisons ---------------------------------------------------------------------------


def plan_comparisons(
    arms: Iterable[Arm],
    scheme_pairs: Sequence[tuple[str, str]] = (),
    modality_pairs: Sequence[tuple[str, str]] = (),
) -> list[Comparison]:
    """Every comparison the grid's arms allow; pairs are (reference, compared)."""
    arms = sorted(set(arms), key=_arm_sort_key)
    found = [
        *_vs_reference_scheme(arms, "text_only", VS_TEXT_ONLY),
        *_vs_reference_scheme(arms, "oracle", VS_ORACLE),
        *_pairs_differing_in(arms, "scheme", scheme_pairs, SCHEME_PAIR),
        *_crosslingual_without(arms),
        *_pairs_differing_in(arms, "modality", modality_pairs, MODALITY_PAIR),
    ]
    return sorted(found, key=lambda c: (QUESTIONS.index(c.question), _arm_sort_key(c.compared)))


def _vs_reference_scheme(arms: list[Arm], reference_scheme: str, question: str) -> Iterator[Comparison]:
    """Each other arm against the reference scheme's arm of its language (cross-lingual: the target's oracle)."""
    for arm in arms:
        if arm.scheme == reference_scheme or (arm.scheme == "oracle" and reference_scheme == "text_only"):
            continue
        if arm.crosslingual and reference_scheme != "oracle":
            continue  # cross-lingual runs have no text-only counterpart in the target language
        lang = arm.target if arm.crosslingual else arm.lang
        reference = Arm(arm.corpus, lang, None, None, None, reference_scheme, "", arm.testset, arm.modality)
        reference = _find(arms, reference, ignore_budget=True)
        if reference is not None:
            yield Comparison(question, arm, reference)


def _crosslingual_without(arms: list[Arm]) -> Iterator[Comparison]:
    """Cross-lingual: each target speech budget against none, and target text against none."""
    for arm in arms:
        if not arm.crosslingual:
            continue
        if arm.budget != "0":
            reference = _find(arms, replace(arm, budget="0"))
            if reference is not None:
                yield Comparison(VS_NO_TARGET_SPEECH, arm, reference)
        if arm.target_text:
            reference = _find(arms, replace(arm, target_text=False))
            if reference is not None:
                yield Comparison(VS_NO_TARGET_TEXT, arm, reference)


def _pairs_differing_in(arms: list[Arm], field: str, pairs, question: str) -> Iterator[Comparison]:
    """For each (reference, compared) pair of values of `field` (a scheme, a decode input): every arm with the
    compared value against the arm that differs from it only there."""
    for reference_value, compared_value in pairs:
        for arm in arms:
            if getattr(arm, field) == compared_value:
                reference = _find(arms, replace(arm, **{field: reference_value}))
                if reference is not None:
                    yield Comparison(question, arm, reference)


def _find(arms: list[Arm], wanted: Arm, ignore_budget: bool = False) -> Arm | None:
    for arm in arms:
        if arm == wanted or (ignore_budget and arm == replace(wanted, budget=arm.budget)):
            return arm
    return None


def _arm_sort_key(arm: Arm) -> tuple:
    block = 0 if arm.scheme == "text_only" else 2 if arm.scheme == "oracle" else 1
    return (
        arm.corpus,
        arm.testset,
        arm.modality,
        arm.crosslingual,
        str(arm.lang or arm.source),
        str(arm.target_text),
        block,
        budget_sort_key(arm.budget),
        scheme_sort_key(arm.scheme),
    )


# --- the paired bootstrap ------------------------------------------------------------------------


def arm_values(
    counts_by_seed: dict[int, np.ndarray], metrics: Sequence[str], resamples: int, seed: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """An arm's metrics (mean over seeds) on all test utterances, and on each of `resamples` resamples.

    The resamples depend only on (number of utterances, resamples, seed), so two arms on the same test set
    are scored on the same utterances in every round: the bootstrap is paired.
    """
    matrices = list(counts_by_seed.values())
    n = len(matrices[0])
    if any(len(m) != n for m in matrices):
        raise ValueError("every seed of an arm must be scored on the same test utterances")
    point = _seed_mean([metrics_from_totals(m.sum(axis=0), n) for m in matrices], metrics)
    rounds = {metric: np.empty(resamples) for metric in metrics}
    rng = np.random.default_rng(seed)
    for round_index in range(resamples):
        # How often each utterance is drawn; a weighted sum re-totals a seed's counts on the resample.
        weights = np.bincount(rng.integers(0, n, size=n), minlength=n)
        values = _seed_mean([metrics_from_totals(weights @ m, n) for m in matrices], metrics)
        for metric in metrics:
            rounds[metric][round_index] = values[metric]
    return point, rounds


def _seed_mean(per_seed: list[dict[str, float]], metrics: Sequence[str]) -> dict[str, float]:
    return {metric: float(np.mean([values[metric] for values in per_seed])) for metric in metrics}


def compare_arms(
    compared: dict[int, np.ndarray],
    reference: dict[int, np.ndarray],
    metrics: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float | str]]:
    """Per metric: both arms' values, the difference (compared − reference) and ratio with 95 % intervals, verdict."""
    _check_paired(compared, reference)
    return _compare(arm_values(compared, metrics, resamples, seed), arm_values(reference, metrics, resamples, seed))


def _check_paired(compared: dict[int, np.ndarray], reference: dict[int, np.ndarray]) -> None:
    if len(next(iter(compared.values()))) != len(next(iter(reference.values()))):
        raise ValueError("paired arms must be scored on the same test utterances")


def _compare(compared_values, reference_values) -> dict[str, dict[str, float | str]]:
    (compared_point, compared_rounds), (reference_point, reference_rounds) = compared_values, reference_values
    return {
        metric: _difference(
            compared_point[metric], reference_point[metric], compared_rounds[metric], reference_rounds[metric]
        )
        for metric in compared_point
    }


def _difference(compared: float, reference: float, compared_rounds: np.ndarray, reference_rounds: np.ndarray) -> dict:
    alpha = (1 - CONFIDENCE) / 2
    row = {"compared": compared, "reference": reference, "difference": compared - reference}
    row["ci_low"], row["ci_high"] = _interval(compared_rounds - reference_rounds, alpha)
    row["ratio"] = compared / reference if reference else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        # A resample where the reference scores 0 has no ratio; the interval is over the others.
        ratios = compared_rounds / reference_rounds
    row["ratio_ci_low"], row["ratio_ci_high"] = _interval(ratios[np.isfinite(ratios)], alpha)
    row["verdict"] = verdict(row["ci_low"], row["ci_high"])
    return row


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    if len(values) == 0:
        return np.nan, np.nan
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def verdict(ci_low: float, ci_high: float) -> str:
    """Better or worse only when the whole 95 % interval of the difference lies on one side of 0."""
    if ci_low > 0:
        return BETTER
    if ci_high < 0:
        return WORSE
    return UNCLEAR


# --- the comparisons table (long CSV, one row per comparison × metric) ---------------------------


def compare_all(
    comparisons: Iterable[Comparison],
    scores: dict[Arm, ArmScores],
    metrics: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    rows, values = [], {}

    def arm_values_once(arm: Arm):
        # An arm is in several comparisons; its resamples are the same in each.
        if arm not in values:
            values[arm] = arm_values(scores[arm].counts_by_seed, metrics, resamples, seed)
        return values[arm]

    for comparison in comparisons:
        compared, reference = scores[comparison.compared], scores[comparison.reference]
        _check_paired(compared.counts_by_seed, reference.counts_by_seed)
        results = _compare(arm_values_once(comparison.compared), arm_values_once(comparison.reference))
        shared = {
            "question": comparison.question,
            **{f"compared_{name}": getattr(comparison.compared, name) for name in ARM_FIELDS},
            **{f"reference_{name}": getattr(comparison.reference, name) for name in ARM_FIELDS},
            "compared_label": comparison.compared.label(),
            "reference_label": comparison.reference.label(),
            "compared_seeds": len(compared.counts_by_seed),
            "reference_seeds": len(reference.counts_by_seed),
            "n_utterances": len(next(iter(compared.counts_by_seed.values()))),
            "resamples": resamples,
            "bootstrap_seed": seed,
        }
        rows.extend({**shared, "metric": metric, **results[metric]} for metric in metrics)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def compare_predictions(
    metrics_csv: Path,
    prediction_paths: Iterable[Path],
    gold_manifests: Iterable[tuple[str, Path]],
    scheme_pairs: Sequence[Sequence[str]],
    modality_pairs: Sequence[Sequence[str]],
    metrics: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every comparison the aggregate CSV's arms allow, re-scored per utterance from the runs' predictions.

    A run's predictions are the path among `prediction_paths` ending in runs/{run}/predictions/{testset}.{modality}.jsonl;
    `gold_manifests` holds (testset, manifest) pairs."""
    arms = arms_from_metrics(read_metrics_csv(metrics_csv))
    comparisons = plan_comparisons(arms, scheme_pairs, modality_pairs)
    needed = {arm for comparison in comparisons for arm in (comparison.compared, comparison.reference)}
    predictions = {Path(path).parts[-4:]: Path(path) for path in prediction_paths}
    gold = {testset: read_gold(path) for testset, path in gold_manifests}
    scores = {}
    for arm in needed:
        if arm.testset not in gold:
            raise DataError(f"no --gold manifest for test set {arm.testset!r}")
        counts = {}
        for run_seed, run_name in arms[arm].items():
            layout = ("runs", run_name, "predictions", f"{arm.testset}.{arm.modality}.jsonl")
            if layout not in predictions:
                raise DataError(f"no predictions of run {run_name!r} on {arm.testset}.{arm.modality} "
                                f"(no --predictions path ends in {'/'.join(layout)})")
            pairs, _ = matched_examples(gold[arm.testset], read_predictions(predictions[layout]))
            counts[run_seed] = count_matrix(pairs)
        scores[arm] = ArmScores(arm, counts)
    return compare_all(comparisons, scores, metrics, resamples, seed)


COMPARISON_COLUMNS = (
    "question",
    *(f"compared_{name}" for name in ARM_FIELDS),
    *(f"reference_{name}" for name in ARM_FIELDS),
    "compared_label",
    "reference_label",
    "compared_seeds",
    "reference_seeds",
    "n_utterances",
    "resamples",
    "bootstrap_seed",
    "metric",
    "compared",
    "reference",
    "difference",
    "ci_low",
    "ci_high",
    "ratio",
    "ratio_ci_low",
    "ratio_ci_high",
    "verdict",
)


def read_comparisons_csv(path) -> pd.DataFrame:
    """The comparisons CSV with budgets as text and the target-text flags as booleans (or missing)."""
    text_columns = {f"{side}_{name}": str for side in ("compared", "reference") for name in ARM_FIELDS}
    frame = pd.read_csv(path, dtype=text_columns, keep_default_na=False, na_values=[""])
    for side in ("compared", "reference"):
        column = f"{side}_target_text"
        frame[column] = frame[column].map(lambda value: None if pd.isna(value) else yes_no(value) == "yes")
    return frame


def arms_from_metrics(frame: pd.DataFrame) -> dict[Arm, dict[int, str]]:
    """Arm → {seed: run} from the aggregate metrics CSV's settings columns."""
    frame = frame.copy()
    for name in ARM_FIELDS:
        if name not in frame:
            frame[name] = None
    runs = frame.drop_duplicates(["run", "testset", "modality"])
    arms: dict[Arm, dict[int, str]] = {}
    for row in runs.itertuples(index=False):
        target_text = None if pd.isna(row.target_text) else yes_no(row.target_text) == "yes"
        arm = Arm(
            str(row.corpus),
            _text_or_none(row.lang),
            _text_or_none(row.source),
            _text_or_none(row.target),
            target_text,
            str(row.scheme),
            str(row.budget),
            str(row.testset),
            str(row.modality),
        )
        arms.setdefault(arm, {})[int(row.seed)] = str(row.run)
    return arms


def _text_or_none(value) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


# --- the comparisons table (wide, one row per comparison) ----------------------------------------


def comparisons_table(frame: pd.DataFrame, metrics: Sequence[str]) -> Table:
    numbers, cells, rules = [], [], []
    previous_question = None
    keys = [
        "question",
        "compared_testset",
        "compared_modality",
        "reference_modality",
        "compared_label",
        "reference_label",
    ]
    for position, (key, group) in enumerate(frame.groupby(keys, sort=False)):
        question, testset, compared_modality, reference_modality, compared, reference = key
        modality = (
            compared_modality
            if compared_modality == reference_modality
            else f"{compared_modality} vs {reference_modality}"
        )
        if previous_question is not None and question != previous_question:
            rules.append(position)
        previous_question = question
        first = group.iloc[0]
        number = {
            "question": question,
            "testset": testset,
            "modality": modality,
            "compared": compared,
            "reference": reference,
            "compared_seeds": int(first["compared_seeds"]),
            "reference_seeds": int(first["reference_seeds"]),
            "n_utterances": int(first["n_utterances"]),
        }
        cell = {
            "Question": question,
            "Test set": testset,
            "Input": modality,
            "Compared": compared,
            "Reference": reference,
        }
        for metric in metrics:
            values = group[group["metric"] == metric]
            label = metric_label(metric)
            if values.empty:
                cell.update({f"{label} Δ": "", f"{label} 95 % CI": "", f"{label} verdict": ""})
                continue
            value = values.iloc[0]
            for part in ("compared", "reference", "difference", "ci_low", "ci_high", "ratio", "verdict"):
                number[f"{metric}_{part}"] = value[part]
            cell[f"{label} Δ"] = f"{100 * value['difference']:+.1f}"
            cell[f"{label} 95 % CI"] = f"[{100 * value['ci_low']:+.1f}, {100 * value['ci_high']:+.1f}]"
            cell[f"{label} verdict"] = value["verdict"]
        cell["Seeds"] = f"{number['compared_seeds']} / {number['reference_seeds']}"
        numbers.append(number)
        cells.append(cell)
    note = "Δ = compared − reference in points, 95 % paired-bootstrap interval over test utterances, seeds averaged"
    title = "Paired comparisons"
    columns = ["Question", "Test set", "Input", "Compared", "Reference"]
    for label in map(metric_label, metrics):
        columns += [f"{label} Δ", f"{label} 95 % CI", f"{label} verdict"]
    # Named columns keep an empty table's header (a grid without comparable settings).
    cells = pd.DataFrame(cells, columns=[*columns, "Seeds"])
    return Table("comparisons", title, pd.DataFrame(numbers), cells, tuple(rules), note)
