"""The training loss: cross-entropy over a batch's answer tokens."""

from __future__ import annotations

import torch
from torch import nn

from lalm_slu.batches import IGNORE_INDEX
from lalm_slu.model_loading import base_model


def answer_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the labelled (answer) tokens — the value `model(**batch).loss` returns — with the
    vocabulary projection computed only at those positions. The stock forward projects every prompt position
    too, on logits the loss never reads: a quarter of a demo text step (0.66 → 0.50 s)."""
    inner = base_model(model)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    if is_right_padded(inputs.get("attention_mask")):
        # Causal attention already hides a right-padded row's padding from its real tokens, and padded
        # positions carry no label: without the mask, attention takes its faster causal-only path.
        inputs["attention_mask"] = None
    hidden = inner.model(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:].to(hidden.device)
    answer = targets != IGNORE_INDEX
    logits = inner.lm_head(hidden[:, :-1][answer])
    return nn.functional.cross_entropy(logits.float(), targets[answer])


def is_right_padded(attention_mask: torch.Tensor | None) -> bool:
    """Every row is ones then zeros (padding only at the end)."""
    return attention_mask is not None and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
