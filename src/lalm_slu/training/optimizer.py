"""The optimizer a fine-tuning job builds: AdamW, its implementation chosen for the device."""

from __future__ import annotations

import torch

from lalm_slu.config.settings import TrainingSettings


def optimizer_implementation(training: TrainingSettings, device: torch.device) -> str:
    """The AdamW implementation a job uses: `training.optimizer`, with auto = fused on a GPU (no scratch copy of
    the shard, one kernel per step) and the for-loop on CPU (the implementation every demo result was made with)."""
    if training.optimizer != "auto":
        return training.optimizer
    return "fused" if device.type == "cuda" else "forloop"


def build_optimizer(params, learning_rate: float, training: TrainingSettings, device: torch.device):
    implementation = optimizer_implementation(training, device)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=training.weight_decay, betas=(0.9, 0.999),
                             fused=implementation == "fused", foreach=implementation == "foreach")

