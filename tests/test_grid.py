"""The grid as runs: names, expansion, behaviour imitation's phase-1 runs and curriculum's shared first phases."""

import pytest

from lalm_slu.planning.config_checks import ConfigError
from lalm_slu.planning.grid import (
    Run,
    expand_grid,
    expand_prefixes,
    parse_testset,
    phase_one_run,
    prefix_of,
    run_name,
    run_testsets,
    scheme_budgets,
)
from lalm_slu.planning.job_arguments import run_settings
from lalm_slu.planning.paths import start_model

PHASE = {"phase": 1, "epochs": 1, "learning_rate": 1e-3, "warmup_ratio": 0.0}


def monolingual(schemes, budgets=(5,), **entry):
    return {"corpus": "slurp", "lang": "en", "train_split": "train", "schemes": list(schemes),
            "budgets": list(budgets), "scheme_settings": {}, **entry}  # fmt: skip


def crosslingual(schemes, budgets=(0,), target_text=(True,), **entry):
    return {"corpus": "xsid", "source": "en", "targets": ["de"], "schemes": list(schemes),
            "target_speech_budgets": list(budgets), "target_text": list(target_text),
            "target_text_split": "dev", "scheme_settings": {}, **entry}  # fmt: skip


def grid_config(mono=(), cross=(), seeds=(0,)):
    schemes = {name: {"trainable_modules": ["lm_head"], "phases": [PHASE]} for name in
               ("text_only", "direct_mixing", "oracle", "interleaving", "behaviour_imitation", "mtbi")}  # fmt: skip
    schemes["curriculum"] = {"trainable_modules": ["lm_head"], "phases": [PHASE, {**PHASE, "phase": 2}]}
    return {
        "grid": {"seeds": list(seeds), "monolingual": list(mono), "crosslingual": list(cross)},
        "schemes": schemes,
        "model": {"path": "models/base", "lora": None, "hub_id": "org/model"},
        "training": {"epochs_scale": 1},
        "prompt": {"instruction": "Answer."},
    }


def test_run_names_say_corpus_languages_scheme_budget_and_seed():
    assert run_name("slurp", "en", None, "curriculum", "5", 0) == "slurp-en_curriculum_b5_s0"
    assert run_name("xsid", "en", "de", "direct_mixing", "10shot", 1) == "xsid-en2de_direct_mixing_b10shot_s1"
    assert run_name("xsid", "en", "de", "curriculum", "0", 0, target_text=False) == "xsid-en2de-notext_curriculum_b0_s0"
    assert Run("xsid", "en", "de", "oracle", "100", 2).name == "xsid-en2de_oracle_b100_s2"


def test_text_only_and_oracle_have_fixed_budgets_and_other_schemes_the_entry_s():
    assert scheme_budgets("text_only", [1, 5]) == ["0"]
    assert scheme_budgets("oracle", [1, 5]) == ["100"]
    assert scheme_budgets("direct_mixing", [1, 25, "10shot"]) == ["1", "25", "10shot"]


def test_a_bad_budget_is_refused_where_budgets_are_parsed():
    with pytest.raises(ValueError, match="above 100"):
        scheme_budgets("curriculum", [101])


def test_monolingual_grid_has_one_run_per_seed_scheme_and_budget():
    config = grid_config([monolingual(["text_only", "direct_mixing", "oracle"], budgets=[1, 5])], seeds=[0, 1])
    assert set(expand_grid(config)) == {
        f"slurp-en_{scheme}_b{budget}_s{seed}"
        for seed in (0, 1)
        for scheme, budget in [("text_only", 0), ("direct_mixing", 1), ("direct_mixing", 5), ("oracle", 100)]
    }


def test_monolingual_runs_keep_their_split_and_scheme_settings():
    settings = {"oracle": {"phases": [{**PHASE, "epochs": 10}]}}
    config = grid_config([monolingual(["oracle"], lang="de", train_split="dev", scheme_settings=settings)])
    (run,) = expand_grid(config).values()
    assert (run.source, run.target, run.source_split, run.test_lang) == ("de", None, "dev", "de")
    assert run.scheme_settings == settings["oracle"]


def test_crosslingual_grid_has_runs_per_target_with_and_without_target_text():
    entry = crosslingual(["direct_mixing"], budgets=[0, "10shot"], target_text=[True, False], targets=["de", "it"])
    runs = expand_grid(grid_config(cross=[entry]))
    assert set(runs) == {
        f"xsid-en2{target}{text}_direct_mixing_b{budget}_s0"
        for target in ("de", "it")
        for text in ("", "-notext")
        for budget in ("0", "10shot")
    }
    run = runs["xsid-en2it-notext_direct_mixing_b10shot_s0"]
    assert (run.target, run.target_split, run.target_text, run.test_lang) == ("it", "dev", False, "it")


def test_two_entries_naming_the_same_run_differently_are_refused():
    config = grid_config([monolingual(["oracle"]), monolingual(["oracle"], train_split="dev")])
    with pytest.raises(ConfigError, match="grid: two different runs would both be named 'slurp-en_oracle_b100_s0'"):
        expand_grid(config)


def test_imitation_runs_bring_their_text_only_phase_one_run_trained_not_evaluated():
    runs = expand_grid(grid_config([monolingual(["behaviour_imitation", "mtbi"], budgets=[5])]))
    first = runs["slurp-en_text_only_b0_s0"]
    assert not first.evaluated
    assert {name for name, run in runs.items() if run.evaluated} == {
        "slurp-en_behaviour_imitation_b5_s0",
        "slurp-en_mtbi_b5_s0",
    }


def test_the_grid_s_own_text_only_run_is_evaluated_and_is_the_phase_one_run():
    runs = expand_grid(grid_config([monolingual(["text_only", "behaviour_imitation"])]))
    assert len(runs) == 2 and runs["slurp-en_text_only_b0_s0"].evaluated


def test_phase_one_run_keeps_data_and_seed_and_imitation_starts_from_its_model():
    run = Run("xsid", "en", "de", "mtbi", "10shot", 3, target_split="dev", target_text=False)
    assert phase_one_run(run).name == "xsid-en2de-notext_text_only_b0_s3"
    assert phase_one_run(run).target_split == "dev"
    config = grid_config()
    assert start_model(config, run) == "results/runs/xsid-en2de-notext_text_only_b0_s3/model"
    assert start_model(config, Run("slurp", "en", None, "curriculum", "5", 0)) == "models/base"


def test_curriculum_runs_share_their_first_phase_per_data_and_seed():
    assert prefix_of(Run("slurp", "en", None, "curriculum", "5", 0)) == "slurp-en_curriculum_phase1_s0"
    assert prefix_of(Run("xsid", "en", "de", "curriculum", "0", 1, target_text=False)) == (
        "xsid-en2de-notext_curriculum_phase1_s1"
    )
    assert prefix_of(Run("slurp", "en", None, "direct_mixing", "5", 0)) is None
    config = grid_config([monolingual(["curriculum", "direct_mixing"], budgets=[1, 5])], seeds=[0, 1])
    prefixes = expand_prefixes(config, expand_grid(config))
    assert set(prefixes) == {"slurp-en_curriculum_phase1_s0", "slurp-en_curriculum_phase1_s1"}
    assert prefixes["slurp-en_curriculum_phase1_s1"].budget == "0"


def test_runs_sharing_first_phases_with_different_settings_are_refused():
    other = {"curriculum": {"trainable_modules": ["language_model"]}}
    config = grid_config(
        [monolingual(["curriculum"], budgets=[1]), monolingual(["curriculum"], budgets=[5], scheme_settings=other)]
    )
    with pytest.raises(ConfigError, match="runs sharing first phases 'slurp-en_curriculum_phase1_s0'"):
        expand_prefixes(config, expand_grid(config))


def test_run_settings_hold_the_start_model_seed_and_the_scheme_s_first_phases_for_a_prefix():
    config = grid_config()
    run = Run("slurp", "en", None, "curriculum", "5", 2, scheme_settings={"trainable_modules": ["language_model"]})
    settings = run_settings(config, run)
    assert settings["model"] == {"path": "models/base", "lora": None}
    assert settings["training"] == {"epochs_scale": 1, "seed": 2}
    assert settings["scheme"]["name"] == "curriculum"
    assert settings["scheme"]["trainable_modules"] == ["language_model"]
    assert [phase["phase"] for phase in settings["scheme"]["phases"]] == [1, 2]
    assert [phase["phase"] for phase in run_settings(config, run, phases=1)["scheme"]["phases"]] == [1]


def test_a_run_is_tested_on_its_target_language_s_test_set():
    assert run_testsets(Run("xsid", "en", "de-st", "oracle", "100", 0)) == ["xsid-de-st"]
    assert run_testsets(Run("slurp", "en", None, "oracle", "100", 0)) == ["slurp-en"]
    assert parse_testset("xsid-de-st") == ("xsid", "de-st")
