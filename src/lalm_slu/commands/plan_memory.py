"""`lalm-slu plan-memory`: per-GPU memory of a fine-tuning job, before anything runs.

    lalm-slu plan-memory --configfile workflow/configs/paper.yaml --gpus 1 4 8 --gpu-memory-gb 80

The configfiles are read as Snakemake reads them: ./config.yaml first, each --configfile on top
(mappings merged key by key, everything else replaced); training keys they leave out take the schema's
defaults, as a fine-tuning job's do. The model's shape comes from --config-json, else the downloaded
model's config.json, else the config's model.architecture copy. The formulas are in lalm_slu.memory_plan.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import yaml

from lalm_slu.memory_plan import memory_table, model_config_json, read_architecture, scheme_modules, training_shape

BASE_CONFIG = Path("config.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", nargs="+", type=Path, default=[], help="config files laid over ./config.yaml")
    parser.add_argument(
        "--config-json", type=Path, help="the model's config.json (default: from the config's model block)"
    )
    parser.add_argument("--trainable-modules", nargs="+", help="default: every set the config's grid trains")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"])
    parser.add_argument(
        "--gpus", nargs="+", type=int, help="one column per GPU count (default: resources.finetune.gpu)"
    )
    parser.add_argument("--gpu-memory-gb", type=float, help="default: resources.finetune.gpu_memory_gb")
    parser.add_argument("--per-device-batch-size", type=int)
    parser.add_argument("--sequence-tokens", type=int)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction)
    parser.add_argument("--freeze-token-embeddings", action=argparse.BooleanOptionalAction)


def merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config(configfiles: list[Path]) -> dict:
    config: dict = {}
    for path in ([BASE_CONFIG] if BASE_CONFIG.is_file() else []) + configfiles:
        config = merged(config, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return config


def run(args: argparse.Namespace) -> int:
    config = read_config(args.configfile)
    config_json = args.config_json or (model_config_json(config["model"]) if "model" in config else None)
    if config_json is None:
        raise SystemExit("plan-memory: no model shape: give --config-json, or a config with model.architecture")
    arch = read_architecture(config_json)
    if args.trainable_modules:
        module_sets = {tuple(args.trainable_modules): ["--trainable-modules"]}
    else:
        module_sets = scheme_modules(config)
    if not module_sets:
        raise SystemExit("plan-memory: nothing trains: give --trainable-modules, or a config whose grid names schemes")
    card = args.gpu_memory_gb or config.get("resources", {}).get("finetune", {}).get("gpu_memory_gb")
    for modules, schemes in module_sets.items():
        shape = training_shape(
            config,
            modules,
            precision=args.precision,
            per_device_batch_size=args.per_device_batch_size,
            sequence_tokens=args.sequence_tokens,
            gradient_checkpointing=args.gradient_checkpointing,
            freeze_token_embeddings=args.freeze_token_embeddings,
        )
        shapes = [replace(shape, gpus=gpus) for gpus in args.gpus or [shape.gpus]]
        print(
            f"{', '.join(schemes)}: trains {', '.join(modules)}"
            f"{' (token embeddings frozen)' if shape.freeze_token_embeddings else ''}; {shape.precision}, "
            f"per-device batch {shape.per_device_batch_size} × {shape.sequence_tokens} tokens, gradient checkpointing "
            f"{'on' if shape.gradient_checkpointing else 'off'}; model shape from {config_json}\n"
        )
        print(memory_table(arch, shapes, card) + "\n")
    return 0
