import numpy as np
import pytest

from lalm_slu.evaluation.metrics import (
    COUNT_FIELDS,
    METRIC_NAMES,
    LabelledExample,
    char_distance,
    distance_span_counts,
    example_counts,
    exact_span_counts,
    normalize_filler,
    precision_recall_f1,
    score_counts,
    score_examples,
    word_distance,
)


def example(scenario, action, *entities):
    return LabelledExample.from_entities(scenario, action, [{"type": t, "filler": f} for t, f in entities])


def counts_of(gold, predicted):
    return dict(zip(COUNT_FIELDS, example_counts(gold, predicted)))


# --- labels ---------------------------------------------------------------------------------------


def test_scenario_action_and_intent_accuracy():
    gold = example("alarm", "set")
    pairs = [
        (gold, example("alarm", "set")),  # all right
        (gold, example("alarm", "query")),  # scenario right
        (gold, example("weather", "set")),  # action right
        (gold, example("weather", "query")),  # all wrong
    ]
    scores = score_examples(pairs, bootstrap_resamples=0)
    assert scores.values["scenario_accuracy"] == 0.5
    assert scores.values["action_accuracy"] == 0.5
    assert scores.values["intent_accuracy"] == 0.25


def test_intent_compares_joined_scenario_action_strings_as_slurp_does():
    counts = counts_of(example("iot", "hue_lightoff"), example("iot_hue", "lightoff"))
    assert (counts["scenario_correct"], counts["action_correct"], counts["intent_correct"]) == (0, 0, 1)


def test_unreadable_prediction_gets_no_label_credit():
    counts = counts_of(example("alarm", "set"), LabelledExample(None, None))
    assert (counts["scenario_correct"], counts["action_correct"], counts["intent_correct"]) == (0, 0, 0)


# --- distances ------------------------------------------------------------------------------------


def test_fillers_are_compared_lower_cased_and_single_spaced():
    assert normalize_filler("  Six   AM ") == "six am"
    assert example("a", "b", ("time", "Six AM")).entities == (("time", "six am"),)


def test_word_distance_is_word_error_rate_against_the_gold_filler():
    assert word_distance("six am", "six am") == 0.0
    assert word_distance("six am", "six pm") == 0.5  # 1 substitution / 2 gold words
    assert word_distance("monday", "next monday") == 1.0  # 1 insertion / 1 gold word
    assert word_distance("six am", "") == 1.0  # 2 deletions / 2


def test_word_distance_is_not_capped_at_one():
    assert word_distance("home", "my sweet home town") == 3.0  # 3 insertions / 1 gold word


def test_word_distance_with_an_empty_gold_filler():
    assert word_distance("", "") == 0.0
    assert word_distance("", "six") == 1.0


def test_char_distance_is_levenshtein_over_the_longer_length():
    assert char_distance("six am", "six pm") == pytest.approx(1 / 6)
    assert char_distance("monday", "next monday") == pytest.approx(5 / 11)
    assert char_distance("abc", "") == 1.0
    assert char_distance("", "") == 0.0


# --- entity span counts ---------------------------------------------------------------------------


def test_exact_span_consumes_each_gold_entity_once():
    gold = [("time", "six am"), ("date", "monday"), ("date", "monday")]
    predicted = [("date", "monday"), ("date", "monday"), ("date", "monday"), ("time", "seven am")]
    assert exact_span_counts(gold, predicted) == (2, 2, 1)


def test_exact_span_needs_the_same_type():
    assert exact_span_counts([("date", "monday")], [("time", "monday")]) == (0, 1, 1)


def test_exact_span_f1_from_counts():
    gold = example("a", "b", ("time", "six am"), ("date", "monday"), ("date", "monday"))
    predicted = example("a", "b", ("date", "Monday"), ("date", "monday"), ("date", "monday"), ("time", "seven am"))
    scores = score_examples([(gold, predicted)], bootstrap_resamples=0)
    assert scores.values["span_exact_precision"] == 0.5
    assert scores.values["span_exact_recall"] == pytest.approx(2 / 3)
    assert scores.values["span_exact_f1"] == pytest.approx(4 / 7)


def test_distance_span_partial_filler_wrong_type_and_leftover_gold():
    gold = [("time", "six am"), ("date", "monday")]
    predicted = [("time", "six pm"), ("place", "paris")]
    # time: hit at distance d -> TP 1, FP d, FN d; place: no gold of that type -> FP 1; date left -> FN 1.
    assert distance_span_counts(gold, predicted, word_distance) == (1, 1.5, 1.5)
    tp, fp, fn = distance_span_counts(gold, predicted, char_distance)
    assert (tp, fp, fn) == (1, pytest.approx(1 + 1 / 6), pytest.approx(1 + 1 / 6))


def test_distance_span_takes_the_closest_gold_of_the_type():
    gold = [("date", "monday"), ("date", "next friday")]
    # "friday" is 1.0 from "monday" and 0.5 from "next friday".
    assert distance_span_counts(gold, [("date", "friday")], word_distance) == (1, 0.5, 1.5)


def test_distance_span_breaks_ties_by_gold_order():
    gold = [("date", "monday"), ("date", "sunday")]
    # "friday" is 3/6 from both: it takes "monday"; "mondays" is then 3/7 from "sunday" (not 1/7 from "monday").
    tp, fp, fn = distance_span_counts(gold, [("date", "friday"), ("date", "mondays")], char_distance)
    assert tp == 2
    assert fp == pytest.approx(0.5 + 3 / 7)
    assert fn == pytest.approx(0.5 + 3 / 7)


def test_distance_span_consumes_duplicate_gold_once():
    gold = [("date", "monday")]
    assert distance_span_counts(gold, [("date", "monday"), ("date", "monday")], word_distance) == (1, 1, 0)


def test_slu_f1_pools_word_and_char_confusion_counts():
    gold = example("a", "b", ("time", "six am"), ("date", "monday"))
    predicted = example("a", "b", ("time", "six pm"), ("place", "paris"))
    scores = score_examples([(gold, predicted)], bootstrap_resamples=0)
    # word (1, 1.5, 1.5) + char (1, 7/6, 7/6) = (2, 8/3, 8/3): P = R = F1 = 3/7.
    assert scores.values["span_word_f1"] == pytest.approx(0.4)
    assert scores.values["span_char_f1"] == pytest.approx(6 / 13)
    assert scores.values["slu_precision"] == pytest.approx(3 / 7)
    assert scores.values["slu_recall"] == pytest.approx(3 / 7)
    assert scores.values["slu_f1"] == pytest.approx(3 / 7)


def test_entity_f1_is_micro_over_examples():
    one_right = (example("a", "b", ("time", "six")), example("a", "b", ("time", "six")))
    three_missed = (example("a", "b", ("time", "x"), ("time", "y"), ("date", "z")), example("a", "b"))
    scores = score_examples([one_right, three_missed], bootstrap_resamples=0)
    # TP 1, FP 0, FN 3: P 1, R 1/4, F1 0.4 (an average of per-example F1s would be 0.5).
    assert scores.values["span_exact_f1"] == pytest.approx(0.4)
    assert scores.values["slu_f1"] == pytest.approx(0.4)


def test_empty_gold_and_empty_prediction_add_nothing():
    counts = counts_of(example("a", "b"), example("a", "b"))
    assert [counts[f"{variant}_{part}"] for variant in ("exact", "word", "char") for part in ("tp", "fp", "fn")] == [
        0
    ] * 9


def test_entities_predicted_for_empty_gold_are_false_positives():
    counts = counts_of(example("a", "b"), example("a", "b", ("time", "six"), ("date", "today")))
    assert (counts["exact_fp"], counts["word_fp"], counts["char_fp"]) == (2, 2, 2)
    assert (counts["exact_tp"], counts["word_fn"]) == (0, 0)


def test_no_entities_anywhere_scores_zero_f1_as_slurp_does():
    scores = score_examples([(example("a", "b"), example("a", "b"))], bootstrap_resamples=0)
    assert scores.values["slu_f1"] == 0.0
    assert scores.values["intent_accuracy"] == 1.0


def test_missing_prediction_is_a_miss_with_every_gold_entity_a_false_negative():
    counts = counts_of(example("alarm", "set", ("time", "six"), ("date", "today")), None)
    assert counts["intent_correct"] == 0
    assert (counts["exact_fn"], counts["word_fn"], counts["char_fn"]) == (2, 2, 2)
    assert (counts["exact_fp"], counts["word_fp"], counts["word_tp"]) == (0, 0, 0)


def test_precision_recall_f1_use_zero_for_empty_denominators():
    assert precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(0, 0, 2) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(3, 1, 0) == (0.75, 1.0, pytest.approx(6 / 7))


# --- bootstrap ------------------------------------------------------------------------------------


def _mixed_counts(n=40):
    rng = np.random.default_rng(123)
    return rng.integers(0, 3, size=(n, len(COUNT_FIELDS))).astype(float)


def test_bootstrap_is_deterministic_for_a_seed():
    first = score_counts(_mixed_counts(), bootstrap_resamples=200, seed=7)
    second = score_counts(_mixed_counts(), bootstrap_resamples=200, seed=7)
    other = score_counts(_mixed_counts(), bootstrap_resamples=200, seed=8)
    assert first.ci_low == second.ci_low and first.ci_high == second.ci_high
    assert first.ci_low != other.ci_low or first.ci_high != other.ci_high


def test_bootstrap_interval_brackets_the_point_estimate():
    scores = score_counts(_mixed_counts(), bootstrap_resamples=300, seed=0)
    for name in METRIC_NAMES:
        assert scores.ci_low[name] <= scores.values[name] <= scores.ci_high[name], name
        assert scores.ci_low[name] < scores.ci_high[name], name


def test_bootstrap_of_identical_examples_has_no_spread():
    row = counts_of(example("a", "b", ("time", "six am")), example("a", "c", ("time", "six pm")))
    scores = score_counts(np.tile(list(row.values()), (5, 1)), bootstrap_resamples=50, seed=0)
    for name in METRIC_NAMES:
        assert scores.ci_low[name] == pytest.approx(scores.values[name])
        assert scores.ci_high[name] == pytest.approx(scores.values[name])


def test_bootstrap_recomputes_f1_from_resampled_counts():
    right = (example("a", "b", ("t", "x")), example("a", "b", ("t", "x")))
    missed = (example("a", "b", ("t", "x")), None)
    scores = score_examples([right, missed], bootstrap_resamples=2000, seed=0)
    # Resamples of two examples: {right, right} F1 1, mixed 2/3, {missed, missed} 0 (each at least 2.5 %).
    assert scores.values["span_exact_f1"] == pytest.approx(2 / 3)
    assert scores.ci_low["span_exact_f1"] == 0.0
    assert scores.ci_high["span_exact_f1"] == 1.0


def test_no_bootstrap_gives_no_intervals():
    scores = score_counts(_mixed_counts(), bootstrap_resamples=0)
    assert scores.ci_low == {} and scores.metrics_dict()["slu_f1"]["ci_low"] is None
