"""Which parts of the model train: freezing all but the named sub-modules, LoRA adapters, and parameter counts."""

from __future__ import annotations

import logging

from torch import nn
from transformers import Qwen2AudioForConditionalGeneration

from lalm_slu.config.settings import LoraSettings

log = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def top_level(module_name: str) -> str:
    """The model part (audio_tower, multi_modal_projector, language_model, lm_head) a dotted name lies in."""
    return module_name.split(".")[0]


def set_trainable(model: Qwen2AudioForConditionalGeneration, modules: list[str],
                  freeze_token_embeddings: bool = False) -> dict:
    """Freeze everything, then unfreeze the named sub-modules (audio_tower, multi_modal_projector,
    language_model, lm_head, or a part of one by dotted path, e.g. `audio_tower.layers.3`), keeping the LLM's
    input token embeddings frozen if asked. Returns trainable-parameter counts per top-level module."""
    parts = {
        "audio_tower": model.model.audio_tower,
        "multi_modal_projector": model.model.multi_modal_projector,
        "language_model": model.model.language_model,
        "lm_head": model.lm_head,
    }
    chosen = []
    for name in modules:
        top, rest = top_level(name), name.partition(".")[2]
        if top not in parts:
            raise ValueError(f"unknown trainable module {name!r}; choose from {sorted(parts)} or a dotted part of one")
        try:
            chosen.append(parts[top].get_submodule(rest) if rest else parts[top])
        except AttributeError as error:
            raise ValueError(f"unknown trainable module {name!r}: {error}") from None
    model.requires_grad_(False)
    for module in chosen:
        module.requires_grad_(True)
    # The positional table is a fixed sinusoid table, never trained.
    model.model.audio_tower.embed_positions.requires_grad_(False)
    if freeze_token_embeddings:
        model.model.language_model.embed_tokens.requires_grad_(False)
    counts = {name: sum(p.numel() for p in part.parameters() if p.requires_grad) for name, part in parts.items()}
    log.info("trainable parameters: %s", counts)
    return counts


# The parts that turn audio into LLM inputs: training either invalidates cached audio frames.
AUDIO_PARTS = ("audio_tower", "multi_modal_projector")



def apply_lora(model, lora: dict, trainable_modules: list[str]):
    """LoRA adapters on the LLM; the audio tower and projector, if trainable, train fully beside them
    (peft would otherwise freeze everything but the adapters)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraSettings.from_dict(lora, "fine-tuning settings: model.lora")
    targets = "|".join(lora.target_modules)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # Only the LLM: the audio tower has q/k/v projections with the same names.
        target_modules=rf".*language_model.*\.({targets})",
        modules_to_save=[m for m in trainable_modules if top_level(m) in AUDIO_PARTS] or None,
    )
    model = get_peft_model(model, config)
    for name, param in model.named_parameters():
        if "embed_positions" in name:  # the sinusoid table never trains
            param.requires_grad_(False)
    return model

