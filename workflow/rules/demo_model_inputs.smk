# Input and params functions of the demo model's rules (demo_model.smk), apart from the rules as --lint asks.
def data_manifests(key):
    """The demo model's own text manifests named by a demo_model list of {corpus, lang, split}."""
    return [
        paths.demo_model_manifest_path(ref["corpus"], ref["lang"], ref["split"])
        for ref in config["demo_model"][key]
    ]


def demo_max_utterance_arguments(wildcards):
    caps = config["demo_model"]["max_utterances"].get(wildcards.corpus, {})
    return arguments.max_utterance_arguments(caps)


def pretrain_voices_json(wildcards):
    """Voice records per language of the pretraining data: training voices speak, test voices evaluate."""
    languages = {ref["lang"] for ref in config["demo_model"]["train_data"]}
    voices = tts_voice_table()
    return json.dumps(
        {lang: voices[lang] for lang in sorted(languages)}, sort_keys=True
    )


def pretrain_options(wildcards):
    options = config["demo_model"]["pretrain_options"]
    return [
        argument
        for key, value in sorted(options.items())
        for argument in (f"--{key.replace('_', '-')}", str(value))
    ]
