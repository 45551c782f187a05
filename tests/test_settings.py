"""The typed settings views: their fields are the schema's keys, their defaults the schema's defaults, and a key
or value the schema does not allow is an error naming it."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from lalm_slu.planning import job_arguments
from lalm_slu.config.layered import load_config
from lalm_slu.planning.grid import expand_grid
from lalm_slu.config.schemes import IMITATION_SCHEMES
from lalm_slu.config.files import schema_path
from lalm_slu.config.settings import (
    AlignmentSettings,
    AudioFrameSettings,
    CascadeSettings,
    DecodingSettings,
    DevEvalSettings,
    GenerationSettings,
    ImitationTask,
    InterleavingSettings,
    LoraSettings,
    PlanSettings,
    TrainingSettings,
)

REPO = Path(__file__).parents[1]
SCHEMA = yaml.safe_load(schema_path().read_text())
IMITATION_TASK = SCHEMA["$defs"]["imitation"]["properties"]["tasks"]["items"]["properties"]


def block(name: str) -> dict:
    return SCHEMA["properties"][name]["properties"]


def field_names(view) -> set[str]:
    return {field.name for field in dataclasses.fields(view)}


def test_each_view_has_a_field_for_every_key_of_its_schema_block():
    # A key added to the schema fails here until its view has a field for it.
    assert field_names(TrainingSettings) == set(block("training")) | {"seed"}
    assert field_names(PlanSettings) == set(block("plan"))
    assert field_names(GenerationSettings) == set(block("decode")) - {"modalities"}
    assert field_names(DecodingSettings) == field_names(GenerationSettings) | {"instruction"}
    assert field_names(AudioFrameSettings) == {"batch_size", "length_aware", "device", "precision"}
    lora = next(o for o in block("model")["lora"]["oneOf"] if o.get("type") == "object")["properties"]
    assert field_names(LoraSettings) == set(lora)
    assert LoraSettings.from_dict({"rank": 4}, "test").to_dict() == {**{k: p["default"] for k, p in lora.items()},
                                                                     "rank": 4}
    assert field_names(CascadeSettings) == field_names(GenerationSettings) | set(block("cascade"))
    assert field_names(ImitationTask) == set(IMITATION_TASK)
    assert field_names(AlignmentSettings) == set(block("alignment")["settings"]["properties"])
    assert field_names(InterleavingSettings) == set(SCHEMA["$defs"]["interleaving"]["properties"])
    dev_eval = next(o for o in block("training")["dev_eval"]["oneOf"] if o.get("type") == "object")["properties"]
    assert field_names(DevEvalSettings) == set(dev_eval)


def test_left_out_keys_take_the_schema_s_defaults():
    assert TrainingSettings.from_dict({}, "test").to_dict() == {
        **{key: prop["default"] for key, prop in block("training").items()},
        "seed": None,
    }
    decode = block("decode")
    assert GenerationSettings.from_dict({}, "test").to_dict() == {
        key: decode[key]["default"] for key in field_names(GenerationSettings)
    }
    assert AudioFrameSettings.from_dict({}, "test") == AudioFrameSettings(
        batch_size=block("audio_frames")["batch_size"]["default"],
        **{key: block("training")[key]["default"] for key in ("length_aware", "device", "precision")},
    )


def test_the_cascade_s_own_keys_replace_generation_s():
    cascade, decode = block("cascade"), block("decode")
    transcription = CascadeSettings.from_dict({"num_beams": 2}, "test")
    assert transcription.max_new_tokens == cascade["max_new_tokens"]["default"] != decode["max_new_tokens"]["default"]
    assert transcription.instruction == cascade["instruction"]["default"] and transcription.answer_pattern is None
    assert transcription.num_beams == 2


def test_an_imitation_task_needs_its_name_and_instruction_and_defaults_its_answering_model():
    task = ImitationTask.from_dict({"task": "slu", "instruction": "Answer."}, "test")
    assert task.model == IMITATION_TASK["model"]["default"]
    with pytest.raises(ValueError, match="test: missing setting instruction"):
        ImitationTask.from_dict({"task": "slu"}, "test")


def test_each_job_s_settings_json_is_accepted_by_its_view():
    # What job_arguments (and speech.smk's settings_json) hand the commands, from the demo's config.
    config = load_config(workdir=REPO)
    imitation_run = next(run for run in expand_grid(config).values() if run.scheme in IMITATION_SCHEMES)
    DecodingSettings.from_dict(json.loads(job_arguments.decode_settings(config)), "decode")
    AudioFrameSettings.from_dict(json.loads(job_arguments.audio_frames_settings(config)), "encode-audio")
    assert CascadeSettings.from_dict(json.loads(job_arguments.cascade_settings(config)), "transcribe").to_dict() == {
        **GenerationSettings.from_dict(job_arguments.decode_block(config), "decode").to_dict(), **config["cascade"]
    }
    GenerationSettings.from_dict(json.loads(job_arguments.imitation_decode_settings(config, imitation_run)), "imitate")
    for task in json.loads(job_arguments.imitation_tasks(config, imitation_run)):
        assert ImitationTask.from_dict(task, "imitate").to_dict() == task
    AlignmentSettings.from_dict(json.loads(job_arguments.settings_json(config, "alignment", "settings")), "align")


def test_given_keys_are_converted_to_the_schema_s_types():
    training = TrainingSettings.from_dict({"per_device_batch_size": 8.0, "weight_decay": 0, "seed": 2}, "test")
    assert (training.per_device_batch_size, training.weight_decay, training.seed) == (8, 0.0, 2)
    assert isinstance(training.per_device_batch_size, int) and isinstance(training.weight_decay, float)


def test_a_key_without_a_schema_default_is_required():
    with pytest.raises(ValueError, match="decode settings: missing setting instruction"):
        DecodingSettings.from_dict({"num_beams": 2}, "decode settings")
    assert DecodingSettings.from_dict({"instruction": "Answer."}, "decode settings").instruction == "Answer."


def test_an_unknown_key_is_an_error_naming_it_and_its_source():
    with pytest.raises(ValueError, match=r"job\.json: unknown setting per_device_batch_sise"):
        TrainingSettings.from_dict({"per_device_batch_sise": 8}, "job.json")
    with pytest.raises(ValueError, match="decode settings: unknown settings beams, modalities"):
        DecodingSettings.from_dict({"instruction": "x", "beams": 2, "modalities": ["speech"]}, "decode settings")


@pytest.mark.parametrize(
    ("view", "settings", "message"),
    [
        (TrainingSettings, {"precision": "fp16"}, "precision must be one of auto, fp32, bf16, not 'fp16'"),
        (GenerationSettings, {"device": "cuda"}, "device must be one of auto, cpu, not 'cuda'"),
        (TrainingSettings, {"per_device_batch_size": 2.5}, "per_device_batch_size must be of type integer"),
        (TrainingSettings, {"length_aware": "false"}, "length_aware must be of type boolean"),
        (ImitationTask, {"task": "slu", "instruction": "x", "model": "phase2"}, "model must be one of phase1, base"),
        (AlignmentSettings, {"device": "cuda"}, "device must be one of auto, cpu, not 'cuda'"),
    ],
)
def test_a_value_the_schema_does_not_allow_is_an_error_naming_its_key(view, settings, message):
    with pytest.raises(ValueError, match=f"test: {message}"):
        view.from_dict(settings, "test")


def test_a_key_s_default_is_what_the_schema_fills_into_a_config_that_leaves_it_out():
    from snakemake.utils import validate

    from lalm_slu.config.settings import schema_default

    config = {"corpora": {"demo": {"reader": "massive", "source": "raw", "languages": ["en"]}}, "grid": {},
              "model": {"path": "model"}, "prompt": {"instruction": "Answer."}}  # fmt: skip
    validate(config, str(schema_path()))
    # An enclosing block's default (resources.synthesize_speech: {threads: 2}) wins over the key's own (1).
    for keys in [("resources", "synthesize_speech", "threads"), ("resources", "light", "threads"),
                 ("speech", "tts", "chunk_size"), ("speech", "max_duration_s"), ("alignment", "settings", "device")]:
        value = config
        for key in keys:
            value = value[key]
        assert schema_default(*keys) == value, keys
    assert schema_default("resources", "synthesize_speech", "threads") == 2
    with pytest.raises(KeyError, match="model.path"):
        schema_default("model", "path")


def test_pretraining_s_defaults_are_the_schema_s_and_a_stage_names_only_what_it_changes():
    import jsonschema

    from lalm_slu.demo_model.pretrain import PretrainConfig

    stage = SCHEMA["$defs"]["pretrain_stage"]
    assert dataclasses.asdict(PretrainConfig()) == stage["default"]
    assert set(stage["default"]) == set(stage["properties"]) == field_names(PretrainConfig)
    jsonschema.validate(stage["default"], {**stage, "$defs": SCHEMA["$defs"]})
    assert PretrainConfig(steps=7).steps == 7 and PretrainConfig(steps=7).batch_size == stage["default"]["batch_size"]
    # Not filled in per key: the recipe's stages reach the job as written.
    config = load_config(workdir=REPO)
    assert config["demo_model"]["pretrain"] == yaml.safe_load(
        (REPO / "workflow/configs/demo_model.yaml").read_text())["demo_model"]["pretrain"]


def test_synthesize_speech_s_defaults_are_the_config_s():
    import argparse

    from lalm_slu.commands.synthesize_speech import add_arguments
    from lalm_slu.config.settings import schema_default

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--manifest", "m", "--out-manifest", "o", "--audio-dir", "a", "--voices-json", "[]",
                              "--seed", "0"])  # fmt: skip
    assert (args.threads, args.chunk_size, args.max_duration_s) == (
        schema_default("resources", "synthesize_speech", "threads"),
        schema_default("speech", "tts", "chunk_size"),
        schema_default("speech", "max_duration_s"),
    )


def test_pretraining_s_options_default_to_the_schema_s_and_are_not_filled_into_the_config():
    import argparse

    from lalm_slu.commands.pretrain_demo_model import add_arguments

    options = SCHEMA["$defs"]["pretrain_options"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model-dir", "m", "--train-manifests", "t", "--eval-manifests", "e", "--voices-json",
                              "{}", "--work-dir", "w", "--out-dir", "o"])  # fmt: skip
    assert {key: getattr(args, key) for key in options["properties"]} == options["default"]
    # Only the keys the recipe sets reach the job (demo_model.yaml leaves voices_per_sentence out).
    recipe = yaml.safe_load((REPO / "workflow/configs/demo_model.yaml").read_text())["demo_model"]["pretrain_options"]
    assert load_config(workdir=REPO)["demo_model"]["pretrain_options"] == recipe != options["default"]
