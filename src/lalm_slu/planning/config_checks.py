"""Cross-field rules of the workflow config that its JSON schema cannot express; each error names its key.

Plain Python: the workflow runs these at planning time, after the schema has filled defaults, and reports a
ConfigError as a WorkflowError ("config " + the message)."""

from __future__ import annotations

import re

from lalm_slu.config.schemes import IMITATION_SCHEMES, INTERLEAVING_SCHEMES, phase_mismatch

# What a string in corpora.*.options may contain, filled in per language.
OPTION_PLACEHOLDERS = ("lang", "locale")
# The readers of SLURP's release text, and where each is told its folder.
RELEASE_TEXT_FOLDER = {"slurp_release": "source", "slurp_hub": "options.annotations"}
# Schemes that train on budgeted speech, so a grid entry running them needs a budget.
BUDGETED_SCHEMES = {"direct_mixing", "curriculum", *INTERLEAVING_SCHEMES, *IMITATION_SCHEMES}


class ConfigError(ValueError):
    """A config the workflow cannot run; the message starts with the offending key."""


def check_config(config: dict, voices: dict) -> None:
    """Every check below, in the order a reader meets the config's blocks. `voices`: the TTS voice table as
    {lang: {"train": [records], "test": [records]}}."""
    check_grid(config)
    for key in ("train_data", "eval_data"):
        for index, ref in enumerate(config["demo_model"][key]):
            check_language(config, f"demo_model.{key}[{index}].lang", ref["corpus"], ref["lang"])
    for name, corpus in config["corpora"].items():
        check_corpus(config, name, corpus, voices)
    check_alignment_models(config)
    check_scheme_phases(config)
    check_imitation_tasks(config)
    check_cascade(config)
    check_comparisons(config)


def check_language(config: dict, key: str, corpus: str, lang: str) -> None:
    corpora = config["corpora"]
    if corpus not in corpora:
        raise ConfigError(f"{key}: unknown corpus {corpus!r} (corpora: {sorted(corpora)})")
    if lang not in corpora[corpus]["languages"]:
        raise ConfigError(
            f"{key}: {lang!r} is not a language of corpus {corpus!r} "
            f"(corpora.{corpus}.languages: {corpora[corpus]['languages']})"
        )


def check_scheme_settings(key: str, entry: dict) -> None:
    unused = set(entry["scheme_settings"]) - set(entry["schemes"])
    if unused:
        raise ConfigError(f"{key}.scheme_settings: {sorted(unused)} not among the entry's schemes {entry['schemes']}")


def check_grid(config: dict) -> None:
    for index, entry in enumerate(config["grid"]["monolingual"]):
        key = f"grid.monolingual[{index}]"
        check_language(config, f"{key}.lang", entry["corpus"], entry["lang"])
        check_scheme_settings(key, entry)
        budgeted = BUDGETED_SCHEMES & set(entry["schemes"])
        if budgeted and not entry["budgets"]:
            raise ConfigError(f"{key}.budgets: schemes {sorted(budgeted)} need at least one budget")
    for index, entry in enumerate(config["grid"]["crosslingual"]):
        key = f"grid.crosslingual[{index}]"
        check_language(config, f"{key}.source", entry["corpus"], entry["source"])
        check_scheme_settings(key, entry)
        for target in entry["targets"]:
            check_language(config, f"{key}.targets", entry["corpus"], target)
            if target == entry["source"]:
                raise ConfigError(f"{key}.targets: {target!r} is also the source language")


def check_alignment_models(config: dict) -> None:
    """Recorded speech an interleaving scheme trains on needs a CTC model for its word times."""
    models = config["alignment"]["models"]
    for kind, language_keys in (("monolingual", ("lang",)), ("crosslingual", ("source", "targets"))):
        for index, entry in enumerate(config["grid"][kind]):
            if not set(entry["schemes"]) & set(INTERLEAVING_SCHEMES):
                continue
            if config["corpora"][entry["corpus"]]["speech"] != "recorded":
                continue
            values = [entry[key] for key in language_keys]
            for lang in (lang for value in values for lang in (value if isinstance(value, list) else [value])):
                if lang not in models:
                    raise ConfigError(
                        f"alignment.models: no CTC model for {lang!r}, whose recorded speech "
                        f"grid.{kind}[{index}] interleaves (word times by forced alignment)"
                    )


def check_release_text_folder(key: str, corpus: dict) -> None:
    if corpus["reader"] not in RELEASE_TEXT_FOLDER:
        raise ConfigError(
            f"{key}.download_release_text: only the SLURP readers "
            f"{sorted(RELEASE_TEXT_FOLDER)} read release text (reader {corpus['reader']!r})"
        )
    if not isinstance(corpus["source"], str) and corpus["reader"] == "slurp_release":
        raise ConfigError(f"{key}.source: one folder (not one per language) to download the release text into")


def check_option_templates(key: str, corpus: dict) -> None:
    for option, value in corpus["options"].items():
        if not isinstance(value, str):
            continue
        try:
            value.format(**{name: "" for name in OPTION_PLACEHOLDERS})
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(
                f"{key}.options.{option}: {value!r} is not a valid template "
                f"(placeholders: {', '.join(f'{{{p}}}' for p in OPTION_PLACEHOLDERS)}): {error}"
            ) from None


def check_corpus(config: dict, name: str, corpus: dict, voices: dict) -> None:
    key = f"corpora.{name}"
    if isinstance(corpus["source"], dict):
        missing = [lang for lang in corpus["languages"] if lang not in corpus["source"]]
        if missing:
            raise ConfigError(f"{key}.source: no path for languages {missing}")
    check_option_templates(key, corpus)
    unknown = sorted(set(corpus["locales"]) - set(corpus["languages"]))
    if unknown:
        raise ConfigError(f"{key}.locales: {unknown} are not in {key}.languages")
    if corpus["reader"] == "speech_massive_hub":
        # The hub names its configs by locale (fr-FR), not by language code.
        missing = [lang for lang in corpus["languages"] if lang not in corpus["locales"]]
        if missing and "config" not in corpus["options"]:
            raise ConfigError(f"{key}.locales: no hub locale for languages {missing} (e.g. fr: fr-FR)")
    audio_dir = corpus["options"].get("audio_dir")
    if isinstance(audio_dir, str) and len(corpus["languages"]) > 1 and "{lang}" not in audio_dir:
        # Corpora such as Speech-MASSIVE reuse utterance ids across languages.
        raise ConfigError(
            f"{key}.options.audio_dir: {audio_dir!r} would be shared by languages "
            f"{corpus['languages']}; put {{lang}} in the path"
        )
    if corpus["download_release_text"]:
        check_release_text_folder(key, corpus)
    if corpus["speech"] == "tts":
        check_tts_voices(voices, key, corpus)


def check_tts_voices(voices: dict, key: str, corpus: dict) -> None:
    """A synthesized corpus needs voices for each of its languages, with the test voices held out."""
    for lang in corpus["languages"]:
        if lang not in voices:
            raise ConfigError(
                f"speech.tts.voices: no voices for language {lang!r} (needed by {key}, which is synthesized)"
            )
        shared = {v["name"] for v in voices[lang]["train"]} & {v["name"] for v in voices[lang]["test"]}
        if shared:
            raise ConfigError(
                f"speech.tts.voices.{lang}: train and test share voices {sorted(shared)}; "
                "test speakers must be held out"
            )


def check_scheme_phases(config: dict) -> None:
    """Every scheme the grid runs has its block, and a scheme's phases are its mixture's, in every place a
    scheme block is given."""
    blocks = [(f"schemes.{name}", name, block) for name, block in config["schemes"].items()]
    for kind in ("monolingual", "crosslingual"):
        for index, entry in enumerate(config["grid"][kind]):
            for name in entry["schemes"]:
                if name not in config["schemes"]:
                    raise ConfigError(
                        f"schemes.{name}: missing (grid.{kind}[{index}] runs it); give its "
                        "trainable_modules and phases"
                    )
            for name, override in entry.get("scheme_settings", {}).items():
                if "phases" in override:
                    blocks.append((f"grid.{kind}[{index}].scheme_settings.{name}", name, override))
    for key, name, block in blocks:
        problem = phase_mismatch(name, block["phases"])
        if problem:
            raise ConfigError(f"{key}.phases: {problem}")


def scheme_blocks(config: dict) -> list[tuple[str, dict]]:
    """Every scheme block with its key: the `schemes` blocks and every grid entry's scheme_settings."""
    blocks = [(f"schemes.{name}", block) for name, block in config["schemes"].items()]
    for kind in ("monolingual", "crosslingual"):
        for index, entry in enumerate(config["grid"][kind]):
            for name, override in entry.get("scheme_settings", {}).items():
                blocks.append((f"grid.{kind}[{index}].scheme_settings.{name}", override))
    return blocks


def check_imitation_tasks(config: dict) -> None:
    """A task's name names its targets: two tasks of one scheme may not share it."""
    for key, block in scheme_blocks(config):
        names = [task["task"] for task in (block.get("imitation") or {}).get("tasks", [])]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"{key}.imitation.tasks: task names {repeated} given more than once")


def check_cascade(config: dict) -> None:
    """The cascade's answer pattern compiles and has the group that holds the transcript."""
    pattern = config["cascade"]["answer_pattern"]
    if pattern is None:
        return
    try:
        groups = re.compile(pattern).groups
    except re.error as error:
        raise ConfigError(f"cascade.answer_pattern: {pattern!r} is not a regular expression ({error})") from None
    if groups < 1:
        raise ConfigError(f"cascade.answer_pattern: {pattern!r} has no group; group 1 is the transcript")


def check_comparisons(config: dict) -> None:
    """A compared input is one the runs decode (the schema names the schemes), and a pair compares two things."""
    modalities = config["decode"]["modalities"]
    for index, pair in enumerate(config["comparisons"]["modality_pairs"]):
        unknown = [name for name in pair if name not in modalities]
        if unknown:
            raise ConfigError(f"comparisons.modality_pairs[{index}]: {unknown} not decoded (decode.modalities: "
                              f"{modalities})")
    for key in ("scheme_pairs", "modality_pairs"):
        for index, (reference, compared) in enumerate(config["comparisons"][key]):
            if reference == compared:
                raise ConfigError(f"comparisons.{key}[{index}]: compares {reference!r} with itself")
