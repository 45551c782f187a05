"""The training forward as one module: audio frames, merged into the token embeddings, then the answer loss."""

from __future__ import annotations

import torch
from torch import nn

from lalm_slu.model.audio_encoding import merge_audio, projected_audio
from lalm_slu.model.loading import base_model
from lalm_slu.model.loss import answer_loss


class AnswerLoss(nn.Module):
    """The training forward as one module call, so that FSDP2 gathers every unit inside it (the root first).
    Audio frames are computed before the token embeddings, as Qwen2AudioModel.forward does."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, audio_frames: torch.Tensor | None = None, touch_audio: bool = False,
                reduction: str = "mean") -> torch.Tensor:
        """`batch`: a Collator batch, or a MicroBatch's (host-computed positions: no device synchronisation).
        `audio_frames`: the batch's frames, precomputed (else from its features, if it has speech).
        `touch_audio`: run the audio path even without speech (see `silent_audio_frames`). `reduction`: the
        answer tokens' cross-entropy "mean" or "sum"."""
        frames = audio_frames
        if frames is None and "input_features" in batch:
            frames = projected_audio(self.model, batch["input_features"], batch["feature_attention_mask"],
                                     batch.get("audio_frames_at"), batch.get("audio_padded"))
        silent = silent_audio_frames(self.model) if frames is None and touch_audio else None
        embeddings = merge_audio(self.model, batch["input_ids"], frames, batch.get("audio_slots"))
        if silent is not None:
            embeddings = embeddings + 0.0 * silent.sum()
        inputs = {"inputs_embeds": embeddings, "attention_mask": batch["attention_mask"]}
        inputs.update({key: batch[key] for key in ("labels", "answer_positions", "answer_targets", "right_padded")
                       if key in batch})
        return answer_loss(self.model, inputs, reduction)


def silent_audio_frames(model) -> torch.Tensor:
    """Projected frames of the shortest input the audio tower takes (4 mel frames of zeros: one frame). A
    trainable audio path is sharded, so every process must run it, at the same point of the forward, in every
    micro-batch of a step that has speech on any process, or their gathers and reductions no longer pair up.
    Added with zero weight: no gradient."""
    mel_bins = base_model(model).config.audio_config.num_mel_bins
    device = next(base_model(model).model.multi_modal_projector.parameters()).device
    # Its one frame is at position 0: given, so that selecting it waits for nothing.
    return projected_audio(model, torch.zeros(1, mel_bins, 4, device=device),
                           torch.ones(1, 4, dtype=torch.long, device=device),
                           frames_at=torch.zeros(1, dtype=torch.long, device=device), padded=False)

