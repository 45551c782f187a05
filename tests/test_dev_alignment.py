"""benchmarks/dev_alignment.py: the alignment figures it reports, from the three inputs' scores."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import dev_alignment  # noqa: E402


def scores(speech, text, cascade):
    return {name: {"intent_accuracy": value[0], "slu_f1": value[1]}
            for name, value in (("speech", speech), ("text", text), ("cascade", cascade))}


def test_speech_text_ratio_divides_speech_by_text_per_metric():
    summary = dev_alignment.alignment_summary(scores((0.45, 0.30), (0.75, 0.60), (0.5, 0.4)))
    assert summary["speech_text_ratio_intent_accuracy"] == pytest.approx(0.6)
    assert summary["speech_text_ratio_slu_f1"] == pytest.approx(0.5)


def test_end_to_end_minus_cascade_is_in_points_and_negative_when_the_cascade_wins():
    summary = dev_alignment.alignment_summary(scores((0.45, 0.30), (0.75, 0.60), (0.5, 0.25)))
    assert summary["end_to_end_minus_cascade_intent_accuracy_points"] == pytest.approx(-5.0)
    assert summary["end_to_end_minus_cascade_slu_f1_points"] == pytest.approx(5.0)


def test_ratio_is_undefined_when_text_scores_zero():
    summary = dev_alignment.alignment_summary(scores((0.1, 0.1), (0.0, 0.2), (0.1, 0.1)))
    assert summary["speech_text_ratio_intent_accuracy"] is None
    assert summary["speech_text_ratio_slu_f1"] == pytest.approx(0.5)
