"""SLURP's SLU metrics (Bastianelli et al., EMNLP 2020), with bootstrap confidence intervals.

Definitions follow the official `slurp/scripts/evaluation` code (see docs/METRICS.md for the
few deliberate differences). Every metric is a function of per-example counts, so a bootstrap
resample only has to re-sum those counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import jiwer
import Levenshtein
import numpy as np

from lalm_slu.data.records import make_intent

# Per-example counts; every metric below is computed from their sums.
COUNT_FIELDS = (
    "scenario_correct",
    "action_correct",
    "intent_correct",
    "exact_tp",
    "exact_fp",
    "exact_fn",
    "word_tp",
    "word_fp",
    "word_fn",
    "char_tp",
    "char_fp",
    "char_fn",
)

# Reporting order (tables, CSV, text output).
METRIC_NAMES = (
    "scenario_accuracy",
    "action_accuracy",
    "intent_accuracy",
    "span_exact_precision",
    "span_exact_recall",
    "span_exact_f1",
    "span_word_f1",
    "span_char_f1",
    "slu_precision",
    "slu_recall",
    "slu_f1",
)


def normalize_for_wer(text: str) -> str:
    """Lower case, punctuation (but apostrophes) to spaces, single spaces."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text.lower())).strip()


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER after normalize_for_wer (an empty reference counts as one word, so it is never skipped)."""
    refs = [normalize_for_wer(r) or "<empty>" for r in references]
    hyps = [normalize_for_wer(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


@dataclass(frozen=True)
class LabelledExample:
    """Gold or predicted labels of one example. A prediction that could not be read has scenario=None."""

    scenario: str | None
    action: str | None
    entities: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_entities(cls, scenario: str | None, action: str | None, entities: Iterable[dict]) -> "LabelledExample":
        return cls(scenario, action, tuple((str(e["type"]), normalize_filler(e["filler"])) for e in entities))


def normalize_filler(filler: object) -> str:
    """Lower-case, single-spaced: SLURP's gold fillers are lower-cased, space-joined tokens."""
    return " ".join(str(filler).lower().split())


@lru_cache(maxsize=65536)
def word_distance(gold: str, predicted: str) -> float:
    """Word error rate of the predicted filler against the gold one (not capped: insertions can exceed 1)."""
    if not gold.split():
        return 0.0 if not predicted.split() else 1.0
    return float(jiwer.wer(reference=gold, hypothesis=predicted))


@lru_cache(maxsize=65536)
def char_distance(gold: str, predicted: str) -> float:
    """Levenshtein distance normalized by the longer string, in [0, 1]."""
    longest = max(len(gold), len(predicted))
    return Levenshtein.distance(gold, predicted) / longest if longest else 0.0


def exact_span_counts(gold: Sequence[tuple[str, str]], predicted: Sequence[tuple[str, str]]) -> tuple[int, int, int]:
    """(TP, FP, FN): a prediction is a TP iff an identical (type, filler) gold entity is still unconsumed."""
    remaining = list(gold)
    tp = fp = 0
    for entity in predicted:
        if entity in remaining:
            remaining.remove(entity)
            tp += 1
        else:
            fp += 1
    return tp, fp, len(remaining)


def distance_span_counts(
    gold: Sequence[tuple[str, str]],
    predicted: Sequence[tuple[str, str]],
    distance: Callable[[str, str], float],
) -> tuple[float, float, float]:
    """(TP, FP, FN) of SLURP's distance span-F1.

    Each predicted entity, in order, takes the closest unconsumed gold entity of its type (first one on
    ties): TP += 1 and its distance d is added to both FP and FN. No gold of that type left: FP += 1.
    Every gold entity left over: FN += 1.
    """
    remaining = list(gold)
    tp = fp = fn = 0.0
    for entity_type, filler in predicted:
        best_index, best_distance = None, float("inf")
        for index, (gold_type, gold_filler) in enumerate(remaining):
            if gold_type == entity_type:
                d = distance(gold_filler, filler)
                if d < best_distance:
                    best_index, best_distance = index, d
        if best_index is None:
            fp += 1
        else:
            remaining.pop(best_index)
            tp += 1
            fp += best_distance
            fn += best_distance
    return tp, fp, fn + len(remaining)


def example_counts(gold: LabelledExample, predicted: LabelledExample | None) -> np.ndarray:
    """Counts (in COUNT_FIELDS order) for one example; no prediction = every label wrong, every entity missed."""
    if predicted is None:
        predicted = LabelledExample(None, None, ())
    complete = predicted.scenario is not None and predicted.action is not None
    return np.array(
        [
            predicted.scenario is not None and predicted.scenario == gold.scenario,
            predicted.action is not None and predicted.action == gold.action,
            # SLURP compares the joined "scenario_action" strings.
            complete and make_intent(predicted.scenario, predicted.action) == make_intent(gold.scenario, gold.action),
            *exact_span_counts(gold.entities, predicted.entities),
            *distance_span_counts(gold.entities, predicted.entities, word_distance),
            *distance_span_counts(gold.entities, predicted.entities, char_distance),
        ],
        dtype=float,
    )


def precision_recall_f1(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """SLURP's conventions: 0 (not undefined) when a denominator is 0."""
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def metrics_from_totals(totals: np.ndarray, n_examples: int) -> dict[str, float]:
    """All METRIC_NAMES from summed counts. SLU-F1 pools the word and char confusion counts."""
    t = dict(zip(COUNT_FIELDS, totals))
    exact = precision_recall_f1(t["exact_tp"], t["exact_fp"], t["exact_fn"])
    slu = precision_recall_f1(t["word_tp"] + t["char_tp"], t["word_fp"] + t["char_fp"], t["word_fn"] + t["char_fn"])
    per_example = max(n_examples, 1)
    return {
        "scenario_accuracy": t["scenario_correct"] / per_example,
        "action_accuracy": t["action_correct"] / per_example,
        "intent_accuracy": t["intent_correct"] / per_example,
        "span_exact_precision": exact[0],
        "span_exact_recall": exact[1],
        "span_exact_f1": exact[2],
        "span_word_f1": precision_recall_f1(t["word_tp"], t["word_fp"], t["word_fn"])[2],
        "span_char_f1": precision_recall_f1(t["char_tp"], t["char_fp"], t["char_fn"])[2],
        "slu_precision": slu[0],
        "slu_recall": slu[1],
        "slu_f1": slu[2],
    }


@dataclass
class Scores:
    """Point estimates, bootstrap intervals and the pooled confusion counts of one scored set."""

    n_examples: int
    values: dict[str, float]
    ci_low: dict[str, float] = field(default_factory=dict)
    ci_high: dict[str, float] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    def metrics_dict(self) -> dict[str, dict[str, float | None]]:
        return {
            name: {"value": self.values[name], "ci_low": self.ci_low.get(name), "ci_high": self.ci_high.get(name)}
            for name in METRIC_NAMES
        }


def score_counts(
    counts: np.ndarray, bootstrap_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Scores:
    """Metrics of an (examples × COUNT_FIELDS) count matrix, with percentile bootstrap CIs over examples."""
    counts = np.asarray(counts, dtype=float).reshape(-1, len(COUNT_FIELDS))
    n = len(counts)
    totals = counts.sum(axis=0)
    scores = Scores(n, metrics_from_totals(totals, n), totals=dict(zip(COUNT_FIELDS, totals.tolist())))
    if bootstrap_resamples <= 0 or n == 0:
        return scores
    rng = np.random.default_rng(seed)
    resampled = np.empty((bootstrap_resamples, len(METRIC_NAMES)))
    for row in range(bootstrap_resamples):
        # How often each example is drawn; a weighted sum re-totals the counts of the resample.
        weights = np.bincount(rng.integers(0, n, size=n), minlength=n)
        values = metrics_from_totals(weights @ counts, n)
        resampled[row] = [values[name] for name in METRIC_NAMES]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(resampled, [alpha, 1 - alpha], axis=0)
    scores.ci_low = dict(zip(METRIC_NAMES, low.tolist()))
    scores.ci_high = dict(zip(METRIC_NAMES, high.tolist()))
    return scores


def score_examples(
    pairs: Iterable[tuple[LabelledExample, LabelledExample | None]],
    bootstrap_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Scores:
    """Score (gold, prediction-or-None) pairs."""
    return score_counts(count_matrix(pairs), bootstrap_resamples, seed, confidence)


def count_matrix(pairs: Iterable[tuple[LabelledExample, LabelledExample | None]]) -> np.ndarray:
    """(examples × COUNT_FIELDS) counts of (gold, prediction-or-None) pairs, one row per pair in order."""
    rows = [example_counts(gold, predicted) for gold, predicted in pairs]
    return np.array(rows) if rows else np.zeros((0, len(COUNT_FIELDS)))
