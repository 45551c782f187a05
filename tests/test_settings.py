"""The typed settings views: their fields are the schema's keys, their defaults the schema's defaults, and a key
or value the schema does not allow is an error naming it."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from lalm_slu.settings import (
    AudioFrameSettings,
    DecodingSettings,
    GenerationSettings,
    LoraSettings,
    TrainingSettings,
)

SCHEMA = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())


def block(name: str) -> dict:
    return SCHEMA["properties"][name]["properties"]


def field_names(view) -> set[str]:
    return {field.name for field in dataclasses.fields(view)}


def test_each_view_has_a_field_for_every_key_of_its_schema_block():
    # A key added to the schema fails here until its view has a field for it.
    assert field_names(TrainingSettings) == set(block("training")) | {"seed"}
    assert field_names(GenerationSettings) == set(block("decode")) - {"modalities"}
    assert field_names(DecodingSettings) == field_names(GenerationSettings) | {"instruction"}
    assert field_names(AudioFrameSettings) == {"batch_size", "length_aware", "device", "precision"}
    lora = next(o for o in block("model")["lora"]["oneOf"] if o.get("type") == "object")["properties"]
    assert field_names(LoraSettings) == set(lora)
    assert LoraSettings.from_dict({"rank": 4}, "test").to_dict() == {**{k: p["default"] for k, p in lora.items()},
                                                                     "rank": 4}


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
    ],
)
def test_a_value_the_schema_does_not_allow_is_an_error_naming_its_key(view, settings, message):
    with pytest.raises(ValueError, match=f"test: {message}"):
        view.from_dict(settings, "test")
