import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from conftest import make_utterances, subprocess_env

from lalm_slu.data.budgets import (
    SpeechBudget,
    label_coverage,
    read_budget_ids,
    select_budget,
    stratified_order,
)
from lalm_slu.cli import main
from lalm_slu.config.budget_label import LABEL_PATTERN, budget_label
from lalm_slu.config.schemes import FIXED_BUDGETS
from lalm_slu.data.records import DataError


def skewed_pool(size=300, seed=1):
    """Ids with a skewed intent distribution (one frequent, several rare intents)."""
    rng = np.random.default_rng(seed)
    intents = rng.choice(["a", "b", "c", "d", "e", "f"], size=size, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    return [f"id{i:05d}" for i in range(size)], [str(x) for x in intents]


@pytest.mark.parametrize(
    "text, amount, unit, label",
    [("0", 0, "percent", "0"), (25, 25, "percent", "25"), ("100", 100, "percent", "100"), ("10shot", 10, "shot", "10shot")],
)
def test_budget_parses_percent_and_shots(text, amount, unit, label):
    budget = SpeechBudget.parse(text)
    assert (budget.amount, budget.unit, budget.label) == (amount, unit, label)


@pytest.mark.parametrize("text", ["101", "-1", "0shot", "5.5", "ten", "5 %", "shot"])
def test_budget_rejects_malformed_values(text):
    with pytest.raises(ValueError, match="speech budget"):
        SpeechBudget.parse(text)


@pytest.mark.parametrize("label", ["0", "7", "100", "10shot"])
def test_a_canonical_label_reads_back_as_the_budget_it_names(label):
    assert SpeechBudget.from_label(label).label == label


@pytest.mark.parametrize("text", ["05", "007shot", " 5", "5 ", "+5"])
def test_a_job_rejects_another_spelling_of_a_budget_naming_the_canonical_label(text):
    with pytest.raises(ValueError, match="canonical|speech budget"):
        SpeechBudget.from_label(text)


def test_the_wildcard_pattern_matches_exactly_the_labels_a_job_reads():
    texts = [str(n) for n in range(0, 130)] + [f"0{n}" for n in range(0, 12)]
    texts += [f"{n}shot" for n in range(0, 25)] + ["05shot", "shot", "5%", "1e2", ""]
    for text in texts:
        reads = True
        try:
            SpeechBudget.from_label(text)
        except ValueError:
            reads = False
        assert bool(re.fullmatch(LABEL_PATTERN, text)) == reads, text


def test_config_values_get_their_canonical_label():
    assert [budget_label(value) for value in (0, 25, 100, "10shot")] == ["0", "25", "100", "10shot"]
    assert all(SpeechBudget.from_label(label).label == label for label in FIXED_BUDGETS.values())


def test_budget_size_rounds_half_up_and_never_rounds_a_positive_percent_to_zero():
    assert SpeechBudget.parse(10).size(2000) == 200
    assert SpeechBudget.parse(1).size(150) == 2  # 1.5 rounds up
    assert SpeechBudget.parse(1).size(30) == 1  # 0.3 would be text-only
    assert SpeechBudget.parse(0).size(30) == 0
    assert SpeechBudget.parse(100).size(37) == 37
    assert SpeechBudget.parse("10shot").size(4) == 4


def test_budgets_are_nested_and_the_full_budget_is_the_whole_pool():
    ids, intents = skewed_pool()
    order = stratified_order(ids, intents, seed=3)
    selections = [set(select_budget(order, SpeechBudget.parse(b))) for b in [0, 1, 2, 5, 10, 25, 50, 100]]
    for smaller, larger in zip(selections, selections[1:]):
        assert smaller <= larger
    assert selections[-1] == set(ids)
    assert select_budget(order, SpeechBudget.parse("10shot")) == order[:10]


def test_every_prefix_is_stratified_by_intent():
    ids, intents = skewed_pool()
    order = stratified_order(ids, intents, seed=0)
    intent_of = dict(zip(ids, intents))
    totals = Counter(intents)
    counts = Counter()
    for k, uid in enumerate(order, start=1):
        counts[intent_of[uid]] += 1
        for intent, total in totals.items():
            # Random sampling would drift by ~sqrt(k); a stratified prefix stays within a constant.
            assert abs(counts[intent] - k * total / len(ids)) <= 2.0


def test_order_depends_on_seed_only_not_on_input_order():
    ids, intents = skewed_pool()
    order = stratified_order(ids, intents, seed=7)
    reversed_order = stratified_order(ids[::-1], intents[::-1], seed=7)
    assert order == reversed_order
    assert order != stratified_order(ids, intents, seed=8)


def test_order_is_the_same_under_any_python_hash_seed():
    script = (
        "from lalm_slu.data.budgets import stratified_order\n"
        "ids = [f'u{i}' for i in range(50)]\n"
        "intents = ['x', 'y', 'z', 'w', 'v'] * 10\n"
        "print(','.join(stratified_order(ids, intents, 5)))\n"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = subprocess_env() | {"PYTHONHASHSEED": hash_seed}
        outputs.add(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outputs) == 1


def test_stratified_order_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="not unique"):
        stratified_order(["a", "a"], ["x", "y"], 0)


def test_label_coverage_counts_intents_of_the_selection():
    intent_of = {"a": "x", "b": "x", "c": "y", "d": "z"}
    coverage = label_coverage(["a", "c"], intent_of)
    assert coverage == {
        "utterances": 2,
        "pool_utterances": 4,
        "intents_covered": 2,
        "intents_total": 3,
        "intent_coverage": round(2 / 3, 6),
    }


def test_subsample_budget_command_writes_nested_lists_and_coverage(tmp_path, manifest_file):
    manifest = manifest_file(make_utterances(40))
    out = tmp_path / "budgets"
    main(["subsample-budget", "--manifest", str(manifest), "--budgets", "5", "50", "3shot", "--seed", "0", "--out-dir", str(out)])
    five, fifty, shots = (read_budget_ids(out / f"{label}.txt") for label in ("5", "50", "3shot"))
    assert (len(five), len(fifty), len(shots)) == (2, 20, 3)
    assert set(five) <= set(shots) <= set(fifty)
    coverage = json.loads((out / "3shot.json").read_text())
    assert coverage["budget"] == "3shot" and coverage["intents_covered"] == 3 and coverage["intents_total"] == 5


def test_subsample_budget_command_rejects_a_bad_budget(tmp_path, manifest_file):
    manifest = manifest_file(make_utterances(5))
    with pytest.raises(SystemExit, match="--budgets"):
        main(["subsample-budget", "--manifest", str(manifest), "--budgets", "150", "--seed", "0", "--out-dir", str(tmp_path)])


def test_subsample_budget_command_takes_only_the_label_its_files_are_named_by(tmp_path, manifest_file):
    manifest = manifest_file(make_utterances(5))
    with pytest.raises(SystemExit, match="'05' is not a canonical label; it is written '5'"):
        main(["subsample-budget", "--manifest", str(manifest), "--budgets", "05", "--seed", "0", "--out-dir", str(tmp_path)])
    assert not list(tmp_path.glob("*.txt"))


def test_read_budget_ids_names_file_and_line_of_a_duplicate(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("a\nb\na\n")
    with pytest.raises(DataError, match=r"ids.txt:3: duplicate id 'a'"):
        read_budget_ids(path)


def test_write_budgets_lists_are_prefixes_of_one_another(tmp_path, manifest_file):
    from lalm_slu.data.budgets import write_budgets

    manifest = manifest_file(make_utterances(30))
    write_budgets(str(manifest), [SpeechBudget.from_label(label) for label in ("10", "2shot", "50")], 4, tmp_path)
    ten, shots, fifty = (read_budget_ids(tmp_path / f"{label}.txt") for label in ("10", "2shot", "50"))
    assert fifty[: len(ten)] == ten and len(fifty) == 15
    assert json.loads((tmp_path / "2shot.json").read_text())["seed"] == 4


def test_write_budgets_refuses_a_pool_with_a_repeated_id_naming_its_manifest(tmp_path, manifest_file):
    from lalm_slu.data.budgets import write_budgets

    utterances = make_utterances(4)
    manifest = manifest_file([*utterances, utterances[1]])
    with pytest.raises(DataError, match=rf"{re.escape(str(manifest))}: duplicate utterance id 'utt0001'"):
        write_budgets(str(manifest), [SpeechBudget.from_label("50")], 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()
