"""Typed views of the settings a job reads from JSON: training (a fine-tuning job's `training`, or the config's
block), generation and decoding (the decode job's --settings), audio frames (encode-audio's --settings), the
cascade's transcription (transcribe-test-set's --settings), imitation tasks (imitation-targets' --tasks) and
alignment (align-words' --settings), interleaving (mix-training-set's --interleave); and the check of a fine-tuning
job's whole --settings (check_finetune_settings).

The schema (lalm_slu/config/schemas/config.schema.yaml, package data) is the one source of their defaults: a key
that a mapping leaves out takes the schema's default, and is an error where the schema has none. A key the schema
does not know is an error naming it, so a misspelt setting never falls back to a default unseen. Plain Python (yaml)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import jsonschema
import yaml

from lalm_slu.config.files import schema_path


class SettingsError(ValueError):
    """Settings a job cannot run with; the message names their source and the key."""


@functools.cache
def config_schema() -> dict:
    return yaml.safe_load(schema_path().read_text(encoding="utf-8"))


def resolved(schema: dict) -> dict:
    """A schema node with its local `$ref` ("#/$defs/name") followed, its own keys over the target's."""
    if "$ref" not in schema:
        return schema
    target = config_schema()
    for part in schema["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**resolved(target), **{key: value for key, value in schema.items() if key != "$ref"}}


def schema_default(*keys: str):
    """The value config key keys[0].keys[1]... takes when no config file sets it, as the schema's defaults fill
    it in (an enclosing block's default first, then the key's own): e.g. ("speech", "tts", "chunk_size")."""
    node, value = config_schema(), {}
    for key in keys:
        prop = resolved(node)["properties"][key]
        if key in value:
            value = value[key]
        elif "default" in prop:
            value = prop["default"]
        else:
            raise KeyError(f"the schema gives config {'.'.join(keys)} no default")
        node = prop
    return copy.deepcopy(value)


def whole_default(block: str) -> dict:
    """The default a $defs block keeps whole (a pretraining stage's settings, pretraining's options): what a key
    the config leaves out takes. Kept whole, not per key, so that Snakemake fills nothing in and the keys set
    reach the job as written."""
    return copy.deepcopy(config_schema()["$defs"][block]["default"])


def block_properties(block: str) -> dict[str, dict]:
    """The schema's properties of one top-level config block."""
    return config_schema()["properties"][block]["properties"]


def typed_value(value, prop: dict, key: str, source: str):
    """`value` as the schema's type of `key` (JSON may carry 16.0 for an integer), checked against its enum."""
    kinds = prop.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not kinds or (value is None and "null" in kinds):
        typed = value
    elif "integer" in kinds and number and float(value).is_integer():
        typed = int(value)
    elif "number" in kinds and number:
        typed = float(value)
    elif ("boolean" in kinds and isinstance(value, bool)) or ("string" in kinds and isinstance(value, str)):
        typed = value
    elif "array" in kinds and isinstance(value, (list, tuple)):
        typed = list(value)
    elif "object" in kinds and isinstance(value, Mapping):
        typed = dict(value)
    else:
        raise SettingsError(f"{source}: {key} must be of type {' or '.join(kinds)}, not {value!r}")
    if "enum" in prop and typed not in prop["enum"]:
        raise SettingsError(f"{source}: {key} must be one of {', '.join(map(str, prop['enum']))}, not {typed!r}")
    return typed


class SchemaView:
    """A frozen dataclass whose fields are schema properties (`properties()`); `OPTIONAL` keys may be left out,
    as None, though the schema gives them no default."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def properties(cls) -> dict[str, dict]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, mapping: Mapping, source: str):
        """The view of `mapping`; `source` (a file, a config block, a job's settings) names it in errors."""
        if not isinstance(mapping, Mapping):
            raise SettingsError(f"{source}: expected a mapping of settings, not {mapping!r}")
        properties = cls.properties()
        unknown = sorted(set(mapping) - set(properties))
        if unknown:
            raise SettingsError(f"{source}: unknown setting{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(properties))})")
        values, missing = {}, []
        for key, prop in properties.items():
            if key in mapping:
                values[key] = typed_value(mapping[key], prop, key, source)
            elif "default" in prop:
                values[key] = typed_value(prop["default"], prop, key, "the schema's default")
            elif key in cls.OPTIONAL:
                values[key] = None
            else:
                missing.append(key)
        if missing:
            raise SettingsError(f"{source}: missing setting{'s' * (len(missing) > 1)} {', '.join(missing)}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str, source: str):
        """The view of a JSON object given as text (a job's argument)."""
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{source}: not JSON ({error})") from None
        return cls.from_dict(mapping, source)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainingSettings(SchemaView):
    """The config's `training` block, and `seed`: the run's seed, which job_arguments.run_settings adds to a fine-tuning
    job's training settings (None in the config's block, which belongs to no run)."""

    per_device_batch_size: int
    global_batch_size: int
    precision: str
    device: str
    length_aware: bool
    group_by_length: bool
    freeze_token_embeddings: bool
    cache_frozen_audio: bool
    weight_decay: float
    data_workers: int | None
    optimizer: str
    max_grad_norm: float
    gradient_checkpointing: bool
    checkpoint_every_steps: int
    log_every_steps: int
    dev_eval: dict | None
    checkpoint_every_minutes: float | None
    keep_checkpoint: bool
    time_limit_margin_minutes: float
    collective_timeout_minutes: float
    output_dtype: str
    seed: int | None

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"seed"})

    @classmethod
    def properties(cls) -> dict[str, dict]:
        # A run's seed is one of the grid's seeds: their schema types it.
        seed = config_schema()["properties"]["grid"]["properties"]["seeds"]["items"]
        return {**block_properties("training"), "seed": seed}


@dataclass(frozen=True)
class GenerationSettings(SchemaView):
    """How a model generates: the config's `decode` block less its modalities (which inputs a run decodes, not
    how). Transcription and imitation targets generate with these too."""

    num_beams: int
    batch_size: int
    max_batch_tokens: int | None
    max_new_tokens: int
    precision: str
    device: str

    @classmethod
    def properties(cls) -> dict[str, dict]:
        return {key: prop for key, prop in block_properties("decode").items() if key != "modalities"}


@dataclass(frozen=True)
class DecodingSettings(GenerationSettings):
    """The decode job's settings: generation's and the prompt's instruction."""

    instruction: str

    @classmethod
    def properties(cls) -> dict[str, dict]:
        return {**super().properties(), "instruction": block_properties("prompt")["instruction"]}


@dataclass(frozen=True)
class CascadeSettings(GenerationSettings):
    """The transcribe-test-set job's settings: the config's `cascade` block over generation's (its own
    max_new_tokens replaces decode's)."""

    instruction: str
    answer_pattern: str | None

    @classmethod
    def properties(cls) -> dict[str, dict]:
        return {**super().properties(), **block_properties("cascade")}


@dataclass(frozen=True)
class ImitationTask(SchemaView):
    """One item of a scheme's `imitation.tasks`, as the imitation-targets job receives it (a null instruction is
    already the prompt's)."""

    task: str
    instruction: str | None
    model: str

    @classmethod
    def properties(cls) -> dict[str, dict]:
        return config_schema()["$defs"]["imitation"]["properties"]["tasks"]["items"]["properties"]


@dataclass(frozen=True)
class AlignmentSettings(SchemaView):
    """The align-words job's settings: the config's `alignment.settings` block."""

    device: str

    @classmethod
    def properties(cls) -> dict[str, dict]:
        return block_properties("alignment")["settings"]["properties"]


@dataclass(frozen=True)
class AudioFrameSettings(SchemaView):
    """The encode-audio job's settings: its batch size, and training's audio length handling, device and
    precision (frames are computed as training would compute them)."""

    batch_size: int
    length_aware: bool
    device: str
    precision: str

    @classmethod
    def properties(cls) -> dict[str, dict]:
        training = block_properties("training")
        return {
            "batch_size": block_properties("audio_frames")["batch_size"],
            **{key: training[key] for key in ("length_aware", "device", "precision")},
        }


@dataclass(frozen=True)
class LoraSettings(SchemaView):
    """The config's `model.lora` block: adapters on the language model."""

    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]

    @classmethod
    def properties(cls) -> dict[str, dict]:
        lora = block_properties("model")["lora"]
        return next(option["properties"] for option in lora["oneOf"] if option.get("type") == "object")


@dataclass(frozen=True)
class DevEvalSettings(SchemaView):
    """The `training.dev_eval` block: evaluation on the dev split while training (lalm_slu.training.dev_evaluation)."""

    every_steps: int | None
    at_phase_end: bool
    max_examples: int
    inputs: list[str]
    batch_size: int
    max_new_tokens: int

    @classmethod
    def properties(cls) -> dict[str, dict]:
        dev_eval = block_properties("training")["dev_eval"]
        return next(option["properties"] for option in dev_eval["oneOf"] if option.get("type") == "object")


@dataclass(frozen=True)
class InterleavingSettings(SchemaView):
    """An interleaving scheme's `interleaving` block (mix-training-set's --interleave)."""

    fraction: float
    min_span_words: int
    max_span_words: int
    min_span_s: float

    @classmethod
    def properties(cls) -> dict[str, dict]:
        return config_schema()["$defs"]["interleaving"]["properties"]


FINETUNE_BLOCKS = ("model", "training", "scheme", "prompt")


@functools.cache
def finetune_settings_schema() -> dict:
    """The schema of a fine-tuning job's --settings (job_arguments.run_settings), from the config schema's blocks."""
    schema = config_schema()
    blocks = schema["properties"]
    model = blocks["model"]["properties"]
    scheme_block = schema["$defs"]["scheme_block"]
    return {
        "$defs": schema["$defs"],
        "type": "object",
        "additionalProperties": False,
        "required": list(FINETUNE_BLOCKS),
        "properties": {
            "model": {"type": "object", "additionalProperties": False, "required": ["path"],
                      "properties": {key: model[key] for key in ("path", "lora")}},
            "training": {**blocks["training"], "required": ["seed"],
                         "properties": TrainingSettings.properties()},
            "scheme": {**scheme_block, "required": ["name", *scheme_block["required"]],
                       "properties": {"name": {"$ref": "#/$defs/scheme"}, **scheme_block["properties"]}},
            "prompt": blocks["prompt"],
        },
    }  # fmt: skip


def check_finetune_settings(settings, source: str = "fine-tuning settings") -> None:
    """A fine-tuning job's settings {model, training, scheme, prompt} as the schema allows them; else a
    SettingsError naming the block and key (a missing or unknown block, a value of the wrong type)."""
    if not isinstance(settings, Mapping):
        raise SettingsError(f"{source}: expected an object with blocks {', '.join(FINETUNE_BLOCKS)}, not {settings!r}")
    missing = [block for block in FINETUNE_BLOCKS if block not in settings]
    unknown = sorted(set(settings) - set(FINETUNE_BLOCKS))
    problems = [f"{what} {', '.join(blocks)}" for what, blocks in (("missing", missing), ("unknown", unknown)) if blocks]
    if problems:
        raise SettingsError(f"{source}: {'; '.join(problems)} (expected the blocks {', '.join(FINETUNE_BLOCKS)})")
    validator = jsonschema.Draft202012Validator(finetune_settings_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(settings))
    if error is not None:
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
        raise SettingsError(f"{source}: {where.lstrip('.')}: {error.message}")


@dataclass(frozen=True)
class PlanSettings(SchemaView):
    """The config's `plan` block: the cost plan's assumptions (lalm_slu.planning.cost_plan)."""

    gpu_peak_tflops: float
    mfu: float
    decode_tokens_per_second: float
    filesystem_gb_per_second: float
    staging_gb_per_second: float
    runtime_margin: float
    min_runtime_minutes: int
    max_runtime_minutes: int
    mean_sequence_tokens: int
    mean_answer_tokens: int
    mean_transcript_tokens: int
    mean_audio_seconds: float
    corpus_sizes: dict

    @classmethod
    def properties(cls) -> dict[str, dict]:
        return block_properties("plan")
