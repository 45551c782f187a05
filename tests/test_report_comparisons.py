"""Paired comparisons: the bootstrap, which settings are compared, and the findings drawn from them."""

import json

import numpy as np
import pandas as pd
import pytest

from lalm_slu.cli import main
from lalm_slu.evaluation.metrics import LabelledExample, count_matrix
from lalm_slu.data.records import Utterance, write_manifest
from lalm_slu.report.aggregate import aggregate_metrics, write_metrics_csv
from lalm_slu.report.comparisons import (
    BETTER,
    MODALITY_PAIR,
    SCHEME_PAIR,
    UNCLEAR,
    VS_NO_TARGET_SPEECH,
    VS_ORACLE,
    VS_TEXT_ONLY,
    WORSE,
    Arm,
    arm_values,
    compare_arms,
    plan_comparisons,
)
from lalm_slu.report.findings import NOT_SHOWN, REVERSED, SHOWN, build_findings

METRICS = ("intent_accuracy", "slu_f1")
N_UTTERANCES = 200
GOLD = [
    LabelledExample.from_entities("alarm", "set", [{"type": "time", "filler": f"{i} am"}]) for i in range(N_UTTERANCES)
]
WRONG = LabelledExample("weather", "query", ())


def counts_right_on(right: set[int]) -> np.ndarray:
    """Per-utterance counts of a system that is right (labels and entity) exactly on `right`."""
    return count_matrix((gold, gold if i in right else WRONG) for i, gold in enumerate(GOLD))


# --- the paired bootstrap ------------------------------------------------------------------------


def test_the_bootstrap_finds_a_known_difference_and_calls_it_better_or_worse():
    half = counts_right_on(set(range(100)))
    most = counts_right_on(set(range(160)))  # right on every utterance `half` gets, and 60 more
    better = compare_arms({0: most}, {0: half}, METRICS, resamples=500)
    for metric in METRICS:
        assert better[metric]["ci_low"] > 0 and better[metric]["verdict"] == BETTER
    assert better["intent_accuracy"]["difference"] == pytest.approx(0.30)
    assert better["intent_accuracy"]["ci_low"] < 0.30 < better["intent_accuracy"]["ci_high"]
    worse = compare_arms({0: half}, {0: most}, METRICS, resamples=500)
    assert worse["intent_accuracy"]["ci_high"] < 0 and worse["intent_accuracy"]["verdict"] == WORSE


def test_identical_predictions_give_an_interval_of_width_zero_at_zero():
    counts = counts_right_on(set(range(0, N_UTTERANCES, 3)))
    same = compare_arms({0: counts, 1: counts}, {0: counts.copy()}, METRICS, resamples=500)
    for metric in METRICS:
        assert same[metric]["difference"] == same[metric]["ci_low"] == same[metric]["ci_high"] == 0
        assert same[metric]["verdict"] == UNCLEAR


def test_a_difference_within_the_noise_is_no_clear_difference():
    one = counts_right_on(set(range(0, N_UTTERANCES, 2)))
    other = counts_right_on(set(range(1, N_UTTERANCES, 2)) - {199} | {0})  # same accuracy, other utterances
    result = compare_arms({0: one}, {0: other}, METRICS, resamples=500)
    assert result["intent_accuracy"]["ci_low"] < 0 < result["intent_accuracy"]["ci_high"]
    assert result["intent_accuracy"]["verdict"] == UNCLEAR


def test_seeds_are_averaged_inside_each_resample():
    first_half, second_half = set(range(100)), set(range(100, N_UTTERANCES))
    _, rounds = arm_values({0: counts_right_on(first_half), 1: counts_right_on(second_half)}, METRICS, 200, seed=0)
    # Whichever utterances a resample draws, one seed gets them right and the other wrong: the mean is 1/2.
    assert np.allclose(rounds["intent_accuracy"], 0.5)


def test_the_bootstrap_is_reproducible_from_its_seed():
    half, most = counts_right_on(set(range(100))), counts_right_on(set(range(130)))
    first = compare_arms({0: most}, {0: half}, METRICS, resamples=300, seed=7)
    assert compare_arms({0: most}, {0: half}, METRICS, resamples=300, seed=7) == first
    assert compare_arms({0: most}, {0: half}, METRICS, resamples=300, seed=8) != first


# --- which settings are compared -----------------------------------------------------------------


def mono(scheme, budget, modality="speech", lang="en"):
    return Arm("slurp", lang, None, None, None, scheme, budget, f"slurp-{lang}", modality)


def cross(scheme, budget, target_text=True, modality="speech"):
    return Arm("xsid", None, "en", "de", target_text, scheme, budget, "xsid-de", modality)


DEMO_ARMS = [
    mono("text_only", "0"),
    *(mono(scheme, budget) for scheme in ("direct_mixing", "curriculum") for budget in ("1", "5")),
    mono("oracle", "100"),
    cross("direct_mixing", "0"),
    cross("direct_mixing", "10shot"),
    Arm("xsid", "de", None, None, None, "oracle", "100", "xsid-de", "speech"),
]


def planned(arms, **pairs):
    return {(c.question, c.compared, c.reference) for c in plan_comparisons(arms, **pairs)}


def test_each_scheme_is_compared_with_text_only_and_the_oracle_at_each_budget():
    comparisons = planned(DEMO_ARMS, scheme_pairs=[("direct_mixing", "curriculum")])
    mixing = [mono(scheme, budget) for scheme in ("direct_mixing", "curriculum") for budget in ("1", "5")]
    assert {(c, r) for q, c, r in comparisons if q == VS_TEXT_ONLY} == {(arm, mono("text_only", "0")) for arm in mixing}
    assert {(c, r) for q, c, r in comparisons if q == VS_ORACLE and c.corpus == "slurp"} == {
        (arm, mono("oracle", "100")) for arm in [*mixing, mono("text_only", "0")]
    }
    assert {(c, r) for q, c, r in comparisons if q == SCHEME_PAIR} == {
        (mono("curriculum", b), mono("direct_mixing", b)) for b in ("1", "5")
    }


def test_cross_lingual_runs_are_compared_with_no_target_speech_and_the_target_oracle():
    comparisons = planned(DEMO_ARMS)
    target_oracle = DEMO_ARMS[-1]
    assert (VS_NO_TARGET_SPEECH, cross("direct_mixing", "10shot"), cross("direct_mixing", "0")) in comparisons
    assert (VS_ORACLE, cross("direct_mixing", "10shot"), target_oracle) in comparisons
    assert not {c for q, c, r in comparisons if q == VS_TEXT_ONLY and c.crosslingual}


def test_comparisons_pair_arms_of_the_same_test_set_and_input_only():
    arms = [mono("text_only", "0", "speech"), mono("direct_mixing", "5", "text"), mono("oracle", "100", "text")]
    assert planned(arms) == {(VS_ORACLE, mono("direct_mixing", "5", "text"), mono("oracle", "100", "text"))}


def test_new_schemes_and_a_cascade_input_slot_in_by_configuration():
    arms = [*DEMO_ARMS, mono("behaviour_imitation", "5"), mono("text_only", "0", "cascade")]
    comparisons = planned(arms, scheme_pairs=[("curriculum", "behaviour_imitation")],
                          modality_pairs=[("cascade", "speech")])  # fmt: skip
    assert (VS_TEXT_ONLY, mono("behaviour_imitation", "5"), mono("text_only", "0")) in comparisons
    assert (SCHEME_PAIR, mono("behaviour_imitation", "5"), mono("curriculum", "5")) in comparisons
    assert (MODALITY_PAIR, mono("text_only", "0"), mono("text_only", "0", "cascade")) in comparisons


# --- findings --------------------------------------------------------------------------------------


def comparison_row(question, compared, reference, difference, ci, ratio=np.nan, ratio_ci=(np.nan, np.nan)):
    rows = []
    for metric in METRICS:
        row = {"question": question, "metric": metric, "difference": difference, "ci_low": ci[0], "ci_high": ci[1],
               "ratio": ratio, "ratio_ci_low": ratio_ci[0], "ratio_ci_high": ratio_ci[1],
               "compared_label": compared.label(), "reference_label": reference.label()}  # fmt: skip
        for side, arm in (("compared", compared), ("reference", reference)):
            row.update({f"{side}_{name}": getattr(arm, name) for name in vars(arm)})
        rows.append(row)
    return rows


def findings_of(*rows):
    frame = pd.DataFrame([row for group in rows for row in group])
    return {
        (f["compared"], f["reference"]): f["slu_f1_finding"] for f in build_findings(frame, METRICS).to_dict("records")
    }


def test_a_claim_is_shown_when_its_interval_lies_on_the_papers_side():
    text_only, oracle = mono("text_only", "0"), mono("oracle", "100")
    found = findings_of(
        comparison_row(VS_ORACLE, text_only, oracle, -0.02, (-0.05, 0.0), ratio=0.9, ratio_ci=(0.86, 0.97)),
        comparison_row(VS_TEXT_ONLY, mono("direct_mixing", "5"), text_only, 0.05, (0.01, 0.09)),
        comparison_row(SCHEME_PAIR, mono("curriculum", "5"), mono("direct_mixing", "5"), 0.04, (0.02, 0.06)),
        comparison_row(
            VS_NO_TARGET_SPEECH, cross("direct_mixing", "10shot"), cross("direct_mixing", "0"), 0.1, (0.05, 0.2)
        ),
    )
    assert list(found.values()) == [SHOWN] * 4


def test_a_claim_is_not_shown_when_its_interval_straddles_the_boundary():
    text_only, oracle = mono("text_only", "0"), mono("oracle", "100")
    found = findings_of(
        comparison_row(VS_ORACLE, text_only, oracle, -0.2, (-0.3, -0.1), ratio=0.8, ratio_ci=(0.7, 0.9)),
        comparison_row(VS_TEXT_ONLY, mono("direct_mixing", "1"), text_only, 0.01, (-0.03, 0.05)),
    )
    assert list(found.values()) == [NOT_SHOWN, NOT_SHOWN]


def test_a_claim_is_reversed_when_its_interval_lies_on_the_other_side():
    text_only, oracle = mono("text_only", "0"), mono("oracle", "100")
    found = findings_of(
        comparison_row(VS_ORACLE, text_only, oracle, -0.3, (-0.4, -0.2), ratio=0.5, ratio_ci=(0.4, 0.6)),
        comparison_row(SCHEME_PAIR, mono("curriculum", "1"), mono("direct_mixing", "1"), -0.06, (-0.1, -0.02)),
    )
    assert list(found.values()) == [REVERSED, REVERSED]


def test_findings_leave_out_large_budgets_and_text_input():
    text_only = mono("text_only", "0")
    found = findings_of(
        comparison_row(VS_TEXT_ONLY, mono("direct_mixing", "25"), text_only, 0.1, (0.05, 0.15)),
        comparison_row(
            VS_TEXT_ONLY, mono("direct_mixing", "5", "text"), mono("text_only", "0", "text"), 0.1, (0.05, 0.15)
        ),
    )
    assert found == {}


# --- the command and the tables ------------------------------------------------------------------

# (scheme, budget) -> utterances (of 40) the fake run gets right, per seed.
RIGHT = {("text_only", "0"): (20, 22), ("direct_mixing", "5"): (30, 32), ("oracle", "100"): (36, 38)}


def write_fake_grid(root):
    """Gold, predictions and score files of a tiny two-seed grid, laid out as the workflow writes them."""
    gold = [Utterance(id=f"u{i}", corpus="slurp", lang="en", split="test", text=f"wake me at {i}", scenario="alarm",
                      action="set", entities=[{"type": "time", "filler": str(i)}]) for i in range(40)]  # fmt: skip
    manifest = write_manifest(gold, root / "manifests/slurp/en/test.parquet")
    predictions, metric_files = [], []
    for (scheme, budget), right_per_seed in RIGHT.items():
        for seed, right in enumerate(right_per_seed):
            run = f"slurp-en_{scheme}_b{budget}_s{seed}"
            path = root / f"runs/{run}/predictions/slurp-en.speech.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [{"id": u.id, "raw": "", "scenario": "alarm" if i < right else "play", "action": "set",
                      "entities": u.entities if i < right else [], "parsed": True} for i, u in enumerate(gold)]  # fmt: skip
            path.write_text("".join(json.dumps(line) + "\n" for line in lines))
            predictions.append(path)
            meta = {"run": run, "corpus": "slurp", "lang": "en", "scheme": scheme, "budget": budget, "seed": seed,
                    "testset": "slurp-en", "modality": "speech"}  # fmt: skip
            metric_files.append(root / f"runs/{run}/metrics/slurp-en.speech.json")
            main(["score", "--gold", str(manifest), "--pred", str(path), "--bootstrap", "0", "--json",
                  "--meta", json.dumps(meta), "--out", str(metric_files[-1])])  # fmt: skip
    metrics_csv = write_metrics_csv(aggregate_metrics(metric_files), root / "metrics.csv")
    return manifest, predictions, metrics_csv


def test_compare_schemes_scores_the_predictions_and_tables_write_comparisons_and_findings(tmp_path):
    manifest, predictions, metrics_csv = write_fake_grid(tmp_path)
    out = tmp_path / "comparisons.csv"
    arguments = ["compare-schemes", "--metrics", str(metrics_csv), "--predictions", *map(str, predictions),
                 "--gold", f"slurp-en={manifest}", "--bootstrap", "200", "--out", str(out)]  # fmt: skip
    assert main(arguments) == 0
    frame = pd.read_csv(out)
    intent = frame[frame["metric"] == "intent_accuracy"].set_index(["question", "compared_scheme"])
    # Seeds averaged: direct mixing (30 + 32) / 2 of 40 against text-only (20 + 22) / 2 of 40.
    assert intent.loc[(VS_TEXT_ONLY, "direct_mixing"), "difference"] == pytest.approx(10 / 40)
    assert intent.loc[(VS_ORACLE, "text_only"), "ratio"] == pytest.approx(21 / 37)
    assert main(["tables", "--metrics", str(metrics_csv), "--out-dir", str(tmp_path / "tables"),
                 "--comparisons", str(out)]) == 0  # fmt: skip
    for name in ("comparisons", "findings"):
        for suffix in (".csv", ".md", ".tex"):
            assert (tmp_path / "tables" / f"{name}{suffix}").exists()
    findings = (tmp_path / "tables/findings.md").read_text()
    assert "Adding 2–5 % speech improves on text-only" in findings and "| shown |" in findings
    assert "56.8 % of oracle" in findings  # 21 / 37


def test_compare_schemes_names_the_run_whose_predictions_are_missing(tmp_path, capsys):
    manifest, predictions, metrics_csv = write_fake_grid(tmp_path)
    given = [str(path) for path in predictions if "text_only_b0_s1" not in str(path)]
    arguments = ["compare-schemes", "--metrics", str(metrics_csv), "--predictions", *given,
                 "--gold", f"slurp-en={manifest}", "--bootstrap", "10", "--out", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert "no predictions of run 'slurp-en_text_only_b0_s1' on slurp-en.speech" in error
    assert "runs/slurp-en_text_only_b0_s1/predictions/slurp-en.speech.jsonl" in error


def test_a_grid_without_comparable_settings_writes_empty_tables_with_headers(tmp_path):
    from lalm_slu.report.comparisons import COMPARISON_COLUMNS, comparisons_table
    from lalm_slu.report.findings import findings_table
    from lalm_slu.report.tables import to_markdown

    assert plan_comparisons([mono("direct_mixing", "5")]) == []
    empty = pd.DataFrame(columns=COMPARISON_COLUMNS)
    assert "| Question | Test set |" in to_markdown(comparisons_table(empty, METRICS))
    assert "| Paper's claim | Test set |" in to_markdown(findings_table(empty, METRICS))


def test_compare_predictions_gives_a_row_per_comparison_and_metric(tmp_path):
    from lalm_slu.report.comparisons import compare_predictions

    manifest, predictions, metrics_csv = write_fake_grid(tmp_path)
    metrics = ["intent_accuracy", "slu_f1"]
    frame = compare_predictions(metrics_csv, predictions, [("slurp-en", manifest)], [], [], metrics, 20, 0)
    per_comparison = frame.groupby(["question", "compared_label", "reference_label"])["metric"].apply(list)
    assert len(per_comparison) > 0 and all(listed == metrics for listed in per_comparison)


def test_compare_predictions_refuses_a_test_set_without_its_gold_manifest(tmp_path):
    from lalm_slu.data.records import DataError
    from lalm_slu.report.comparisons import compare_predictions

    _, predictions, metrics_csv = write_fake_grid(tmp_path)
    with pytest.raises(DataError, match="no --gold manifest for test set 'slurp-en'"):
        compare_predictions(metrics_csv, predictions, [], [], [], ["intent_accuracy"], 10, 0)
