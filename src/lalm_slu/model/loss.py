"""The training loss: cross-entropy over a batch's answer tokens."""

from __future__ import annotations

import torch
from torch import nn

from lalm_slu.model.batches import IGNORE_INDEX
from lalm_slu.model.loading import base_model


# What a batch may carry for the loss itself, not for the model's forward.
HOST_KEYS = frozenset({"labels", "answer_positions", "answer_targets", "right_padded"})


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat positions (row × width + column) of the hidden states that predict an answer token, ascending, and
    those tokens. Computed where the labels are (the collating process, for training batches), so that the loss
    gathers with an index instead of a boolean mask, which would wait for the device to count it."""
    targets = labels[:, 1:]
    rows, columns = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows * labels.shape[1] + columns, targets[rows, columns]


def answer_loss(model, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the labelled (answer) tokens — with "mean", the value `model(**batch).loss` returns; with
    "sum", their sum, for a caller that divides by the tokens of a whole optimizer step — with the vocabulary
    projection computed only at those positions. The stock forward projects every prompt position too, on logits
    the loss never reads: a quarter of a demo text step (0.66 → 0.50 s).

    `batch` holds the model's inputs (`input_ids` or `inputs_embeds`, `attention_mask`, audio features), and either
    `labels` or the host-computed `answer_positions`/`answer_targets` (`answer_positions`) plus `right_padded`, which
    keep the device from synchronising with the host."""
    inner = base_model(model)
    if "answer_positions" in batch:
        positions, targets = batch["answer_positions"], batch["answer_targets"]
    else:
        positions, targets = answer_positions(batch["labels"])
    right_padded = batch.get("right_padded")
    if right_padded is None:
        right_padded = is_right_padded(batch.get("attention_mask"))
    inputs = {key: value for key, value in batch.items() if key not in HOST_KEYS}
    if right_padded:
        # Causal attention already hides a right-padded row's padding from its real tokens, and padded
        # positions carry no label: without the mask, attention takes its faster causal-only path.
        inputs["attention_mask"] = causal_only(inner)
    hidden = inner.model(**inputs, use_cache=False).last_hidden_state
    chosen = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions.to(hidden.device))
    logits = inner.lm_head(chosen)
    return nn.functional.cross_entropy(logits.float(), targets.to(hidden.device), reduction=reduction)


def causal_only(model):
    """The LLM's attention masks when every row needs only causal attention: no mask for each layer type, given
    already made (as `generate` gives them), so that the LLM does not look for packed sequences in its position
    ids, a check that waits for the device. None (the LLM makes them) when some layers attend to a window."""
    layer_types = set(getattr(model.config.text_config, "layer_types", None) or ["full_attention"])
    return {"full_attention": None} if layer_types == {"full_attention"} else None


def is_right_padded(attention_mask: torch.Tensor | None) -> bool:
    """Every row is ones then zeros (padding only at the end)."""
    return attention_mask is not None and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
