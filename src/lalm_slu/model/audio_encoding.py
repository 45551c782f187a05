"""Audio frames: clips through the audio tower and projector, and frames merged into the LLM's input embeddings
(computed per batch, or kept per clip while the audio parts are frozen)."""

from __future__ import annotations

import hashlib

import numpy as np
import soundfile
import torch
from tqdm import tqdm
from transformers import Qwen2AudioForConditionalGeneration

from lalm_slu.model.batches import audio_features, audio_token_count
from lalm_slu.model.loading import base_model
from lalm_slu.data.audio import load_audio


def _encoder_attention_mask(tower, lengths: torch.Tensor, positions: int, batch_size: int,
                            padded: bool | None = None) -> torch.Tensor | None:
    """`padded`: whether some clip is shorter than the batch, when the caller knows it on the host; None leaves
    it to transformers, which asks the device (it then skips the mask when nothing is padded, as here)."""
    from transformers.masking_utils import create_bidirectional_mask

    if padded is False:
        return None
    valid = torch.arange(positions, device=lengths.device)[None, :] < lengths[:, None]
    return create_bidirectional_mask(
        config=tower.config,
        inputs_embeds=torch.zeros(batch_size, positions, 1, dtype=tower.dtype, device=lengths.device),
        attention_mask=valid.long(),
        allow_is_bidirectional_skip=padded is None,
    )


def encoder_padding(feature_lengths: list[int], mel_frames: int) -> bool:
    """Whether some clip of a batch `mel_frames` wide has fewer encoder positions than the batch (host lengths)."""
    positions = (mel_frames - 2) // 2 + 1
    return any((length - 1) // 2 + 1 < positions for length in feature_lengths)


def _clip_frames(hidden: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The first `counts[i]` frames of each batch row, concatenated in batch order."""
    return hidden[torch.arange(hidden.shape[1], device=hidden.device)[None, :] < counts[:, None]]


def frame_index(token_counts: list[int], mel_frames: int) -> torch.Tensor:
    """Flat positions (row × frames per row + frame) of each clip's own tower frames in a batch whose features
    are `mel_frames` wide: what `_clip_frames` selects, computed on the host from the clips' token counts."""
    width = audio_token_count(mel_frames)
    return torch.cat([row * width + torch.arange(count) for row, count in enumerate(token_counts)])


def encoded_audio(model: Qwen2AudioForConditionalGeneration, features: torch.Tensor,
                  feature_mask: torch.Tensor, before_layer: int | None = None,
                  frames_at: torch.Tensor | None = None, padded: bool | None = None) -> torch.Tensor:
    """Audio-tower frames of every clip of a batch, each clip's own frames only, concatenated in batch order
    (one frame per `<|AUDIO|>` token). With `before_layer`: the hidden states entering that encoder layer
    instead, one per encoder position of each clip (twice as many, before pooling). `frames_at` (the clips'
    frame positions, `frame_index`) and `padded` (`encoder_padding`), made with the batch on the host, let the
    encoder run without waiting for the device."""
    tower = base_model(model).model.audio_tower
    encoder_lengths, token_counts = tower._get_feat_extract_output_lengths(feature_mask.sum(-1))
    positions = (features.shape[-1] - 2) // 2 + 1
    mask = _encoder_attention_mask(tower, encoder_lengths.to(features.device), positions, features.shape[0], padded)
    if before_layer is None:
        hidden = tower(features, attention_mask=mask).last_hidden_state
        if frames_at is None:
            return _clip_frames(hidden, token_counts)
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, frames_at.to(hidden.device))
    hidden = tower.run_layers(tower.embed_features(features), mask, stop=before_layer)
    return _clip_frames(hidden, encoder_lengths)


def encoded_audio_from_layer(model: Qwen2AudioForConditionalGeneration, clip_states: list[torch.Tensor],
                             start_layer: int) -> torch.Tensor:
    """The audio tower's frames from the hidden states entering layer `start_layer` (one tensor per clip, as
    `encoded_audio(..., before_layer=start_layer)` splits them): the upper layers, pooling and layer norm. A
    clip's frames depend only on its own positions, so they equal the full tower's."""
    tower = base_model(model).model.audio_tower
    lengths = torch.tensor([len(states) for states in clip_states], device=clip_states[0].device)
    hidden = torch.nn.utils.rnn.pad_sequence(clip_states, batch_first=True)
    mask = _encoder_attention_mask(tower, lengths, hidden.shape[1], hidden.shape[0])
    hidden = tower.pool(tower.run_layers(hidden, mask, start=start_layer))
    return _clip_frames(hidden, (lengths - 2) // 2 + 1)


def projected_audio(model: Qwen2AudioForConditionalGeneration, features: torch.Tensor,
                    feature_mask: torch.Tensor, frames_at: torch.Tensor | None = None,
                    padded: bool | None = None) -> torch.Tensor:
    """Projected audio frames of every clip of a batch, concatenated in batch order: what
    Qwen2AudioModel.forward scatters into the `<|AUDIO|>` slots (the projector acts frame by frame)."""
    return base_model(model).model.multi_modal_projector(
        encoded_audio(model, features, feature_mask, frames_at=frames_at, padded=padded))


def clip_frames(model: Qwen2AudioForConditionalGeneration, processor, waveforms: list[np.ndarray],
                length_aware: bool = True) -> list[torch.Tensor]:
    """Projected audio frames of each clip, one tensor per clip (one row per `<|AUDIO|>` token), the clips
    encoded together as one batch."""
    features, mask = audio_features(processor, waveforms, length_aware)
    device = base_model(model).device
    with torch.no_grad():
        frames = projected_audio(model, features.to(device), mask.to(device))
    return list(frames.detach().split([audio_token_count(int(n)) for n in mask.sum(-1)]))


def audio_parts_fingerprint(model) -> str:
    """sha256 of the audio tower's and the projector's weights (as float32, whatever the loading dtype): frames
    computed by one model stand for another's only if these agree."""
    inner = base_model(model).model
    digest = hashlib.sha256()
    for part in (inner.audio_tower, inner.multi_modal_projector):
        for name, tensor in sorted(part.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def merge_audio(model, input_ids: torch.Tensor, audio: torch.Tensor | None,
                slots_at: torch.Tensor | None = None) -> torch.Tensor:
    """Token embeddings of `input_ids` with the `<|AUDIO|>` slots filled by `audio` frames, in order. `slots_at`:
    the slots' flat positions, ascending, made with the batch (`audio_slot_index`): filling them waits for
    nothing, where counting the slots on the device would."""
    embeddings = base_model(model).model.get_input_embeddings()(input_ids)
    if audio is None:
        return embeddings
    if slots_at is not None:
        if slots_at.shape[0] != audio.shape[0]:  # both sizes are known on the host
            raise ValueError(f"{audio.shape[0]} audio frames for {slots_at.shape[0]} <|AUDIO|> tokens in the batch")
        flat = embeddings.reshape(-1, embeddings.shape[-1])
        filled = flat.index_copy(0, slots_at.to(flat.device), audio.to(flat.device, flat.dtype))
        return filled.reshape(embeddings.shape)
    audio_slots = (input_ids == base_model(model).config.audio_token_id).unsqueeze(-1)
    slots = int(audio_slots.sum())
    if slots != audio.shape[0]:
        # masked_scatter would silently fill the slots from the wrong frames.
        raise ValueError(f"{audio.shape[0]} audio frames for {slots} <|AUDIO|> tokens in the batch")
    return embeddings.masked_scatter(audio_slots, audio.to(embeddings.device, embeddings.dtype))


def audio_slot_index(input_ids: torch.Tensor, audio_token_id: int) -> torch.Tensor:
    """Flat positions of the `<|AUDIO|>` tokens of a (host) batch, ascending: `merge_audio`'s `slots_at`."""
    return (input_ids.reshape(-1) == audio_token_id).nonzero(as_tuple=True)[0]


def prompt_embeddings(model: Qwen2AudioForConditionalGeneration, batch: dict,
                      audio: torch.Tensor | None = None) -> torch.Tensor:
    """The LLM's input embeddings of a prompt batch with its audio features merged in, exactly as
    Qwen2AudioModel.forward merges them (or with `audio`, the batch's frames already computed, in order).
    Generating from these encodes each clip once: `generate(**batch)` copies the audio features to every beam
    and runs the encoder num_beams times per clip."""
    if audio is None and "input_features" in batch:
        audio = projected_audio(model, batch["input_features"], batch["feature_attention_mask"])
    return merge_audio(model, batch["input_ids"], audio)


class FrozenAudioCache:
    """Per clip, the output of the audio path's frozen lower part, kept for a training run. Valid only while that
    part is frozen: then a clip's output is the same at every step. `trained_from` says where training starts:
    None (nothing in the audio path trains: projected frames are kept), "projector" (the tower's frames are kept)
    or a tower layer index k (the hidden states entering layer k are kept; the layers from k, pooling and the
    projector run per batch, with gradients). Entries come precomputed (`add`, from `audio_frames.load_frames`;
    `precompute`) or, for a clip without one, from encoding it alone at its first visit, so that its entry never
    depends on the batch it came in and a resumed run computes exactly what the uninterrupted one did."""

    def __init__(self, processor, length_aware: bool = True, trained_from: str | int | None = None):
        self.processor = processor
        self.length_aware = length_aware
        self.trained_from = trained_from
        self.frames: dict[str, torch.Tensor] = {}

    def add(self, frames: dict[str, torch.Tensor]) -> None:
        self.frames.update(frames)

    def precompute(self, model, clips: list[tuple[str, str]], batch_size: int = 16) -> None:
        """Encode every (key, audio file) clip not kept yet, in batches of similar length: one pass before the
        first step instead of one clip at a time during training."""
        todo = {key: path for key, path in clips if key not in self.frames}
        order = sorted(todo, key=lambda key: soundfile.info(todo[key]).frames)
        for start in tqdm(range(0, len(order), batch_size), desc="encoding clips", mininterval=30):
            keys = order[start : start + batch_size]
            self.frames.update(zip(keys, self._frozen_outputs(model, [load_audio(todo[key]) for key in keys])))

    def _frozen_outputs(self, model, waveforms: list[np.ndarray]) -> list[torch.Tensor]:
        if self.trained_from is None:
            return clip_frames(model, self.processor, waveforms, self.length_aware)
        features, mask = audio_features(self.processor, waveforms, self.length_aware)
        device = base_model(model).device
        features, mask = features.to(device), mask.to(device)
        encoder_lengths, token_counts = base_model(model).model.audio_tower._get_feat_extract_output_lengths(mask.sum(-1))
        with torch.no_grad():
            if self.trained_from == "projector":
                states, counts = encoded_audio(model, features, mask), token_counts
            else:
                states, counts = encoded_audio(model, features, mask, before_layer=self.trained_from), encoder_lengths
        return [clip.clone() for clip in states.split(counts.tolist())]

    def batch_frames(self, model, clips: list[tuple[str, np.ndarray]]) -> torch.Tensor | None:
        """The projected frames of a batch's clips, in order (None for a batch without speech). `clips` are the
        (key, waveform) of the batch's speech items. The frozen part must be plain (unsharded) modules: a clip seen
        for the first time is encoded outside the training forward, by this process alone."""
        for key, waveform in clips:
            if key not in self.frames:
                self.frames[key] = self._frozen_outputs(model, [waveform])[0]
        if not clips:
            return None
        kept = [self.frames[key] for key, _ in clips]
        if self.trained_from is None:
            return torch.cat(kept)
        projector = base_model(model).model.multi_modal_projector
        if self.trained_from == "projector":
            return projector(torch.cat(kept))
        return projector(encoded_audio_from_layer(model, kept, self.trained_from))

    def input_embeddings(self, model, batch: dict, clips: list[tuple[str, np.ndarray]]) -> dict:
        """`batch` (from Collator) with its audio replaced by cached frames: inputs_embeds instead of
        input_ids and features."""
        return with_audio_frames(model, batch, self.batch_frames(model, clips))


def with_audio_frames(model, batch: dict, frames: torch.Tensor | None) -> dict:
    """`batch` with its audio given as frames already computed: inputs_embeds instead of input_ids and features."""
    out = {k: v for k, v in batch.items() if k not in ("input_ids", "input_features", "feature_attention_mask")}
    out["inputs_embeds"] = merge_audio(model, batch["input_ids"], frames)
    return out
