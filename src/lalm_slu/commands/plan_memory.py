"""`lalm-slu plan-memory`: per-GPU memory of a fine-tuning job, before anything runs.

    lalm-slu plan-memory --configfile workflow/configs/paper.yaml --gpus 1 4 8 --gpu-memory-gb 80

The configfiles are read as the Snakefile reads them (lalm_slu.config.layered): ./config.yaml over the demo model's
recipe, each --configfile on top (mappings merged key by key, everything else replaced); training keys they leave
out take the schema's defaults, as a fine-tuning job's do. The model's shape comes from --config-json, else the downloaded
model's config.json, else the config's model.architecture (a packaged architecture's name, or a copy's path). The formulas are in lalm_slu.model.memory_plan.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from lalm_slu.commands.plan import read_config
from lalm_slu.config.files import shown_path
from lalm_slu.planning.cost_plan import PlanError, read_plan_config
from lalm_slu.model.memory_plan import memory_table, scheme_modules, training_shape


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", nargs="+", type=Path, default=[], help="config files laid over ./config.yaml")
    parser.add_argument(
        "--config-json", type=Path, help="the model's config.json (default: from the config's model block)"
    )
    parser.add_argument("--trainable-modules", nargs="+", help="default: every set the config's grid trains")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"])
    parser.add_argument(
        "--gpus", nargs="+", type=positive, help="one column per GPU count (default: resources.finetune.gpu)"
    )
    parser.add_argument("--gpu-memory-gb", type=float, help="default: resources.finetune.gpu_memory_gb")
    parser.add_argument("--per-device-batch-size", type=positive)
    parser.add_argument("--sequence-tokens", type=positive)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction)
    parser.add_argument("--freeze-token-embeddings", action=argparse.BooleanOptionalAction)


def run(args: argparse.Namespace) -> int:
    try:
        config = read_config(args.configfile)
        if args.config_json:
            config = {**config, "model": {"path": "", "architecture": str(args.config_json)}}
        arch, config_json = read_plan_config(config)
    except PlanError as error:
        raise SystemExit(f"lalm-slu plan-memory: error: {error}") from None
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
            f"{'on' if shape.gradient_checkpointing else 'off'}; model shape from {shown_path(config_json)}\n"
        )
        print(memory_table(arch, shapes, card) + "\n")
    return 0
