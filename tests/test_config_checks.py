"""Cross-field config rules the schema cannot express: each is refused with a message naming its key."""

import copy

import pytest

from lalm_slu.planning.config_checks import ConfigError, check_config

PHASE = {"phase": 1, "epochs": 1, "learning_rate": 1e-3, "warmup_ratio": 0.0}
VOICES = {lang: {"train": [{"name": f"{lang}+f1"}], "test": [{"name": f"{lang}+m1"}]} for lang in ("en", "de")}


def corpus(reader="massive", languages=("en",), **fields):
    return {"reader": reader, "source": "data/x", "languages": list(languages), "options": {}, "locales": {},
            "download": None, "download_release_text": False, "speech": "tts", "audio_root": None, **fields}  # fmt: skip


def valid_config():
    """A small valid config, as the schema leaves it (defaults filled)."""
    schemes = {name: {"trainable_modules": ["lm_head"], "phases": [PHASE]} for name in
               ("text_only", "direct_mixing", "oracle", "interleaving")}  # fmt: skip
    schemes["curriculum"] = {"trainable_modules": ["lm_head"], "phases": [PHASE, {**PHASE, "phase": 2}]}
    schemes["mtbi"] = {"trainable_modules": ["lm_head"], "phases": [{**PHASE, "phase": 2}]}
    return {
        "corpora": {"slurp": corpus(), "xsid": corpus("xsid", ["en", "de"])},
        "grid": {
            "seeds": [0],
            "monolingual": [{"corpus": "slurp", "lang": "en", "train_split": "train", "budgets": [5],
                             "schemes": ["text_only", "curriculum", "interleaving"], "scheme_settings": {}}],
            "crosslingual": [{"corpus": "xsid", "source": "en", "targets": ["de"], "schemes": ["direct_mixing"],
                              "target_speech_budgets": [0], "target_text": [True], "target_text_split": "dev",
                              "scheme_settings": {}}],
        },  # fmt: skip
        "demo_model": {"train_data": [{"corpus": "slurp", "lang": "en"}], "eval_data": []},
        "alignment": {"models": {}},
        "schemes": schemes,
        "decode": {"modalities": ["speech", "text"]},
        "cascade": {"instruction": "Write down what is said.", "answer_pattern": None, "max_new_tokens": 64},
        "comparisons": {"bootstrap": 1, "seed": 0, "scheme_pairs": [["direct_mixing", "curriculum"]],
                        "modality_pairs": []},
    }


def refused(edit, voices=VOICES):
    config = valid_config()
    edit(config)
    with pytest.raises(ConfigError) as error:
        check_config(config, copy.deepcopy(voices))
    return str(error.value)


def test_the_valid_config_passes():
    check_config(valid_config(), VOICES)


def test_a_grid_language_must_be_one_of_its_corpus():
    message = refused(lambda c: c["grid"]["monolingual"][0].update(lang="fr"))
    assert message.startswith("grid.monolingual[0].lang: 'fr' is not a language of corpus 'slurp'")


def test_a_grid_corpus_must_be_in_corpora():
    message = refused(lambda c: c["grid"]["monolingual"][0].update(corpus="snips"))
    assert message.startswith("grid.monolingual[0].lang: unknown corpus 'snips'")


def test_crosslingual_targets_are_languages_of_the_corpus_other_than_the_source():
    message = refused(lambda c: c["grid"]["crosslingual"][0].update(targets=["de", "nl"]))
    assert message.startswith("grid.crosslingual[0].targets: 'nl' is not a language of corpus 'xsid'")
    message = refused(lambda c: c["grid"]["crosslingual"][0].update(targets=["en"]))
    assert message == "grid.crosslingual[0].targets: 'en' is also the source language"


def test_a_demo_model_data_language_must_be_one_of_its_corpus():
    message = refused(lambda c: c["demo_model"]["train_data"][0].update(lang="de"))
    assert message.startswith("demo_model.train_data[0].lang: 'de' is not a language of corpus 'slurp'")


def test_scheme_settings_only_for_the_entry_s_schemes():
    message = refused(lambda c: c["grid"]["monolingual"][0]["scheme_settings"].update(oracle={}))
    assert message.startswith("grid.monolingual[0].scheme_settings: ['oracle'] not among the entry's schemes")


def test_schemes_with_speech_need_a_budget():
    message = refused(lambda c: c["grid"]["monolingual"][0].update(budgets=[]))
    assert message == "grid.monolingual[0].budgets: schemes ['curriculum', 'interleaving'] need at least one budget"


def test_text_only_and_oracle_need_no_budget():
    config = valid_config()
    config["grid"]["monolingual"][0].update(schemes=["text_only", "oracle"], budgets=[])
    check_config(config, VOICES)


def test_a_source_per_language_covers_every_language():
    message = refused(lambda c: c["corpora"]["xsid"].update(source={"en": "data/en"}))
    assert message == "corpora.xsid.source: no path for languages ['de']"


def test_option_templates_only_use_known_placeholders():
    message = refused(lambda c: c["corpora"]["slurp"]["options"].update(audio_dir="audio/{language}"))
    assert message.startswith("corpora.slurp.options.audio_dir: 'audio/{language}' is not a valid template")


def test_locales_are_of_the_corpus_languages():
    message = refused(lambda c: c["corpora"]["slurp"].update(locales={"fr": "fr-FR"}))
    assert message == "corpora.slurp.locales: ['fr'] are not in corpora.slurp.languages"


def test_speech_massive_hub_needs_a_locale_per_language_unless_a_config_is_given():
    edit = lambda c: c["corpora"]["xsid"].update(reader="speech_massive_hub", locales={"en": "en-US"})  # noqa: E731
    assert refused(edit).startswith("corpora.xsid.locales: no hub locale for languages ['de']")
    config = valid_config()
    edit(config)
    config["corpora"]["xsid"]["options"]["config"] = "{locale}"
    check_config(config, VOICES)


def test_an_audio_dir_shared_by_several_languages_must_name_the_language():
    message = refused(lambda c: c["corpora"]["xsid"]["options"].update(audio_dir="audio/xsid"))
    assert message.startswith("corpora.xsid.options.audio_dir: 'audio/xsid' would be shared by languages")
    config = valid_config()
    config["corpora"]["xsid"]["options"]["audio_dir"] = "audio/xsid/{lang}"
    check_config(config, VOICES)


def test_release_text_only_for_slurp_readers_with_one_folder():
    message = refused(lambda c: c["corpora"]["slurp"].update(download_release_text=True))
    assert message.startswith("corpora.slurp.download_release_text: only the SLURP readers")
    message = refused(
        lambda c: c["corpora"]["slurp"].update(download_release_text=True, reader="slurp_release", source={"en": "x"})
    )
    assert message.startswith("corpora.slurp.source: one folder (not one per language)")


def test_synthesized_corpora_need_voices_per_language_with_test_voices_held_out():
    voices = {"en": VOICES["en"]}
    assert refused(lambda c: None, voices).startswith("speech.tts.voices: no voices for language 'de'")
    voices = copy.deepcopy(VOICES)
    voices["de"]["test"].append({"name": "de+f1"})
    message = refused(lambda c: None, voices)
    assert message.startswith("speech.tts.voices.de: train and test share voices ['de+f1']")


def test_recorded_speech_needs_no_voices():
    config = valid_config()
    for name in ("slurp", "xsid"):
        config["corpora"][name].update(speech="recorded", audio_root="audio")
    config["grid"]["monolingual"][0]["schemes"] = ["curriculum"]
    check_config(config, {})


def test_interleaved_recorded_speech_needs_an_alignment_model():
    def recorded(config):
        config["corpora"]["slurp"].update(speech="recorded", audio_root="audio")

    message = refused(recorded)
    assert message.startswith("alignment.models: no CTC model for 'en', whose recorded speech grid.monolingual[0]")
    config = valid_config()
    recorded(config)
    config["alignment"]["models"]["en"] = "ctc/en"
    check_config(config, VOICES)


def test_every_scheme_the_grid_runs_has_a_block():
    message = refused(lambda c: c["schemes"].pop("curriculum"))
    assert message.startswith("schemes.curriculum: missing (grid.monolingual[0] runs it)")


def test_scheme_phases_are_the_mixture_s_in_schemes_and_in_scheme_settings():
    message = refused(lambda c: c["schemes"]["curriculum"].update(phases=[PHASE]))
    assert message == "schemes.curriculum.phases: phases [1], but a curriculum mixture has phases [1, 2]"
    override = {"curriculum": {"phases": [{**PHASE, "phase": 2}]}}
    message = refused(lambda c: c["grid"]["monolingual"][0].update(scheme_settings=override))
    assert message.startswith("grid.monolingual[0].scheme_settings.curriculum.phases: phases [2]")
