"""The length-aware audio encoder: Qwen2-Audio's encoder on clips shorter than its window.

`Qwen2AudioEncoder.forward` refuses anything but the feature extractor's full window (30 s for Qwen2-Audio). We
swap the encoder's class for a subclass whose forward slices the positional table to the actual length (same
weights, same maths); with features padded as `batches.audio_features` pads them, the encoding equals the stock
one up to float summation order.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2AudioForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

# Mel frames per encoder position pair: conv2 has stride 2, then the pooler halves again.
MEL_FRAMES_MULTIPLE = 2


class LengthAwareQwen2AudioEncoder(Qwen2AudioEncoder):
    """Qwen2AudioEncoder that accepts any even mel length up to its window (same weights, same maths). Its
    forward is split in three (embed, layers, pool) so that pretraining can cache the frozen lower layers."""

    def forward(self, input_features, attention_mask=None, **kwargs):
        hidden = self.run_layers(self.embed_features(input_features), attention_mask)
        return BaseModelOutput(last_hidden_state=self.pool(hidden))

    def embed_features(self, input_features: torch.Tensor) -> torch.Tensor:
        """Convolutions and positions: one hidden state per encoder position."""
        mel_length = input_features.shape[-1]
        window = self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]
        if mel_length > window or mel_length % MEL_FRAMES_MULTIPLE:
            raise ValueError(f"mel length {mel_length} must be even and at most the encoder window {window}")
        input_features = input_features.to(dtype=self.conv1.weight.dtype, device=self.conv1.weight.device)
        hidden = nn.functional.gelu(self.conv1(input_features))
        hidden = nn.functional.gelu(self.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + self.embed_positions.weight[: hidden.shape[1]]
        return nn.functional.dropout(hidden, p=self.dropout, training=self.training)

    def run_layers(self, hidden: torch.Tensor, attention_mask, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for layer in self.layers[start:stop]:
            hidden = layer(hidden, attention_mask)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return hidden

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Average pairs of positions (one frame per `<|AUDIO|>` token), then the final layer norm."""
        return self.layer_norm(self.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1))


def make_encoder_length_aware(model: Qwen2AudioForConditionalGeneration) -> None:
    tower = model.model.audio_tower
    if not isinstance(tower, LengthAwareQwen2AudioEncoder):
        tower.__class__ = LengthAwareQwen2AudioEncoder
