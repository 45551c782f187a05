"""Loading the audio LLM and turning items into model inputs — one path for the demo model and the 7B model.

Length-aware audio: the stock `Qwen2AudioProcessor` pads every clip to the feature extractor's full window
(30 s for Qwen2-Audio) and `Qwen2AudioEncoder.forward` refuses anything else. We pad features only to the
longest clip of the batch plus the few frames of silence its last positions see (keeping the feature attention
mask) and swap the encoder's class for a subclass whose forward slices the positional table to the actual
length; the encoding then equals the stock one up to float summation order. Audio-token expansion uses the processor's
own formula, so prompts are token-for-token what the stock processor renders.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch import nn
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from lalm_slu.records import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
SAMPLE_RATE = 16_000
# Mel frames per encoder position pair: conv2 has stride 2, then the pooler halves again.
MEL_FRAMES_MULTIPLE = 2


class ModelNotAvailableError(RuntimeError):
    pass


def device_and_dtype(settings: dict) -> tuple[str, torch.dtype]:
    """The device and dtype that `settings` (device, precision: auto/fp32/bf16/fp16) ask for on this machine."""
    device = "cuda" if torch.cuda.is_available() and settings.get("device", "auto") != "cpu" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = f"cuda:{torch.cuda.current_device()}"
    precision = settings.get("precision", "auto")
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return device, dtype


def set_threads(threads: int | None) -> None:
    """CPU threads of this process's torch operations (None: torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))


def load_audio(path: str) -> np.ndarray:
    """A 16 kHz mono clip as float32; anything else is an error naming the file."""
    try:
        audio, rate = soundfile.read(path, dtype="float32")
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise DataError(f"cannot read audio: {error}", path) from error
    if rate != 16_000 or audio.ndim != 1:
        raise DataError(f"expected 16 kHz mono audio, got {rate} Hz with shape {audio.shape}", path)
    return audio


def resolve_model_source(name_or_path: str) -> str:
    """A local directory, or a hub id that must already be cached when running offline."""
    if os.path.isdir(name_or_path):
        return str(Path(name_or_path).resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if not isinstance(cached, str):
            raise ModelNotAvailableError(
                f"model {name_or_path!r} is not a local directory and is not in the Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); this node is offline "
                "(HF_HUB_OFFLINE=1): download it on a login node first (see docs/SLURM.md)."
            )
    return name_or_path


def load_model_and_processor(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The same calls a user makes for `Qwen/Qwen2-Audio-7B-Instruct`, plus the length-aware encoder.

    A directory holding a peft adapter (a LoRA fine-tuning output) loads its base model, then the adapter
    merged in, so decoding is the same code for full and LoRA fine-tuning."""
    source = resolve_model_source(name_or_path)
    adapter_config = Path(source) / "adapter_config.json"
    if adapter_config.exists():
        import json

        from peft import PeftModel

        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        model, _ = load_model_and_processor(base, dtype=dtype, device="cpu")
        model = PeftModel.from_pretrained(model, source).merge_and_unload()
        return model.to(device), AutoProcessor.from_pretrained(source)
    processor = AutoProcessor.from_pretrained(source)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(source, dtype=dtype)
    make_encoder_length_aware(model)
    return model.to(device), processor


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


def _encoder_attention_mask(tower, lengths: torch.Tensor, positions: int, batch_size: int) -> torch.Tensor:
    from transformers.masking_utils import create_bidirectional_mask

    valid = torch.arange(positions, device=lengths.device)[None, :] < lengths[:, None]
    return create_bidirectional_mask(
        config=tower.config,
        inputs_embeds=torch.zeros(batch_size, positions, 1, dtype=tower.dtype, device=lengths.device),
        attention_mask=valid.long(),
    )


def _clip_frames(hidden: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The first `counts[i]` frames of each batch row, concatenated in batch order."""
    return hidden[torch.arange(hidden.shape[1], device=hidden.device)[None, :] < counts[:, None]]


def encoded_audio(model: Qwen2AudioForConditionalGeneration, features: torch.Tensor,
                  feature_mask: torch.Tensor, before_layer: int | None = None) -> torch.Tensor:
    """Audio-tower frames of every clip of a batch, each clip's own frames only, concatenated in batch order
    (one frame per `<|AUDIO|>` token). With `before_layer`: the hidden states entering that encoder layer
    instead, one per encoder position of each clip (twice as many, before pooling)."""
    tower = base_model(model).model.audio_tower
    encoder_lengths, token_counts = tower._get_feat_extract_output_lengths(feature_mask.sum(-1))
    positions = (features.shape[-1] - 2) // 2 + 1
    mask = _encoder_attention_mask(tower, encoder_lengths.to(features.device), positions, features.shape[0])
    if before_layer is None:
        return _clip_frames(tower(features, attention_mask=mask).last_hidden_state, token_counts)
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
                    feature_mask: torch.Tensor) -> torch.Tensor:
    """Projected audio frames of every clip of a batch, concatenated in batch order: what
    Qwen2AudioModel.forward scatters into the `<|AUDIO|>` slots (the projector acts frame by frame)."""
    return base_model(model).model.multi_modal_projector(encoded_audio(model, features, feature_mask))


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


def merge_audio(model, input_ids: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings of `input_ids` with the `<|AUDIO|>` slots filled by `audio` frames, in order."""
    embeddings = base_model(model).model.get_input_embeddings()(input_ids)
    if audio is None:
        return embeddings
    audio_slots = (input_ids == base_model(model).config.audio_token_id).unsqueeze(-1)
    slots = int(audio_slots.sum())
    if slots != audio.shape[0]:
        # masked_scatter would silently fill the slots from the wrong frames.
        raise ValueError(f"{audio.shape[0]} audio frames for {slots} <|AUDIO|> tokens in the batch")
    return embeddings.masked_scatter(audio_slots, audio.to(embeddings.device, embeddings.dtype))


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
    """Projected audio frames per clip, kept for a training run. Valid only while the audio tower and the
    projector are frozen: then a clip's frames are the same at every epoch. Frames come precomputed for the
    whole grid (`add`, from `audio_frames.load_frames`) or, for a clip without them, from encoding it alone at
    its first visit, so that its frames never depend on the batch it came in and a resumed run computes
    exactly what the uninterrupted one did."""

    def __init__(self, processor, length_aware: bool = True):
        self.processor = processor
        self.length_aware = length_aware
        self.frames: dict[str, torch.Tensor] = {}

    def add(self, frames: dict[str, torch.Tensor]) -> None:
        self.frames.update(frames)

    def batch_frames(self, model, clips: list[tuple[str, np.ndarray]]) -> torch.Tensor | None:
        """The frames of a batch's clips, in order (None for a batch without speech). `clips` are the (key,
        waveform) of the batch's speech items. The audio parts must be plain (unsharded) modules: a clip seen
        for the first time is encoded outside the training forward, by this process alone."""
        for key, waveform in clips:
            if key not in self.frames:
                self.frames[key] = clip_frames(model, self.processor, [waveform], self.length_aware)[0]
        return torch.cat([self.frames[key] for key, _ in clips]) if clips else None

    def input_embeddings(self, model, batch: dict, clips: list[tuple[str, np.ndarray]]) -> dict:
        """`batch` (from Collator) with its audio replaced by cached frames: inputs_embeds instead of
        input_ids and features."""
        return with_audio_frames(model, batch, self.batch_frames(model, clips))


def with_audio_frames(model, batch: dict, frames: torch.Tensor | None) -> dict:
    """`batch` with its audio given as frames already computed: inputs_embeds instead of input_ids and features."""
    out = {k: v for k, v in batch.items() if k not in ("input_ids", "input_features", "feature_attention_mask")}
    out["inputs_embeds"] = merge_audio(model, batch["input_ids"], frames)
    return out


def base_model(model) -> Qwen2AudioForConditionalGeneration:
    """The Qwen2AudioForConditionalGeneration under a peft wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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


def audio_token_count(mel_frames: int) -> int:
    """Number of `<|AUDIO|>` tokens for a clip of `mel_frames` frames (Qwen2AudioProcessor's formula)."""
    return (((mel_frames - 1) // 2 + 1) - 2) // 2 + 1


# Where an interleaved item's spoken span stands in its transcript: Qwen2-Audio's audio markers, inline.
AUDIO_SPAN = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def interleaved_text(words: list[str], start: int, end: int) -> str:
    """The transcript with words [start, end) replaced by AUDIO_SPAN (their audio goes there)."""
    return " ".join([*words[:start], AUDIO_SPAN, *words[end:]])


def span_audio(audio: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The samples of a clip from start_s to end_s."""
    return audio[int(round(start_s * SAMPLE_RATE)) : int(round(end_s * SAMPLE_RATE))]


@dataclass
class ChatItem:
    """One prompt/answer pair. `audio` is a 16 kHz waveform for speech items, None for text items; an item with both
    `text` and `audio` is interleaved: `text` holds AUDIO_SPAN where the audio is spoken."""

    instruction: str
    answer: str | None = None
    text: str | None = None
    audio: np.ndarray | None = None


def answer_turn(answer: str) -> str:
    """A training answer as Qwen2-Audio's template closes the assistant's turn (the newline is not learned)."""
    return f"{answer}<|im_end|>\n"


def render_prompt(processor, item: ChatItem) -> str:
    """Qwen2-Audio chat template: speech → audio placeholder then instruction; text → transcript then instruction;
    interleaved → the transcript with its audio markers inline (as the text item, a span spoken), then instruction."""
    if item.audio is not None and item.text is not None:
        if item.text.count(AUDIO_SPAN) != 1:
            raise ValueError(f"an interleaved item's text must hold {AUDIO_SPAN} once: {item.text!r}")
        content = [{"type": "text", "text": f"{item.text}\n{item.instruction}"}]
    elif item.audio is not None:
        content = [{"type": "audio", "audio_url": "input"}, {"type": "text", "text": item.instruction}]
    else:
        content = [{"type": "text", "text": f"{item.text}\n{item.instruction}"}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def audio_features(processor, waveforms: list[np.ndarray], length_aware: bool = True):
    """Log-mel features padded to the longest clip (or to the full window), with the feature mask."""
    extractor = processor.feature_extractor
    kwargs = dict(sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="pt")
    if length_aware:
        # The last encoder positions of a clip see two mel frames past its end (conv1, then conv2 with stride 2),
        # and those frames' STFT windows reach n_fft/2 further. Padding with real silence past all of them gives
        # every position the input it has in the full window, so the encoding is the stock one and does not
        # depend on which clips share the batch.
        margin = extractor.n_fft + MEL_FRAMES_MULTIPLE * extractor.hop_length
        longest = max(len(w) for w in waveforms) + margin
        multiple = extractor.hop_length * MEL_FRAMES_MULTIPLE
        target = min(-(-longest // multiple) * multiple, extractor.n_samples)
        kwargs.update(padding="max_length", max_length=target, truncation=True)
    else:
        kwargs.update(padding="max_length", truncation=True)
    features = extractor(waveforms, **kwargs)
    return features["input_features"], features["attention_mask"]


class Collator:
    """Builds a batch (mixed text/speech allowed): chat prompts, audio expansion, answer-only labels.

    Training pads right and labels only the answer and the end token; generation pads left.
    """

    def __init__(self, processor, length_aware: bool = True, for_generation: bool = False, max_length: int = 1024):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.length_aware = length_aware
        self.for_generation = for_generation
        self.max_length = max_length
        self.audio_token = processor.audio_token

    def __call__(self, items: list[ChatItem]) -> dict:
        waveforms = [it.audio for it in items if it.audio is not None]
        batch: dict = {}
        counts: list[int] = []
        if waveforms:
            feats, feat_mask = audio_features(self.processor, waveforms, self.length_aware)
            batch["input_features"], batch["feature_attention_mask"] = feats, feat_mask
            counts = [audio_token_count(int(n)) for n in feat_mask.sum(-1)]
        prompts, answers = [], []
        audio_index = 0
        for item in items:
            prompt = render_prompt(self.processor, item)
            if item.audio is not None:
                prompt = prompt.replace(self.audio_token, self.audio_token * counts[audio_index], 1)
                audio_index += 1
            prompts.append(prompt)
            answers.append(None if self.for_generation else answer_turn(item.answer))
        batch.update(self._tokenize(prompts, answers))
        return batch

    def _tokenize(self, prompts: list[str], answers: list[str | None]) -> dict:
        ids, labels = [], []
        for prompt, answer in zip(prompts, answers):
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = [] if answer is None else self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            # The trailing newline after <|im_end|> is part of the template but not learned.
            answer_labels = answer_ids[:-1] + [IGNORE_INDEX] if answer_ids else []
            sequence = (prompt_ids + answer_ids)[: self.max_length]
            ids.append(sequence)
            labels.append(([IGNORE_INDEX] * len(prompt_ids) + answer_labels)[: self.max_length])
        width = max(len(s) for s in ids)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        label_tensor = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        for row, (sequence, label) in enumerate(zip(ids, labels)):
            span = slice(width - len(sequence), width) if self.for_generation else slice(0, len(sequence))
            input_ids[row, span] = torch.tensor(sequence)
            attention[row, span] = 1
            label_tensor[row, span] = torch.tensor(label)
        out = {"input_ids": input_ids, "attention_mask": attention}
        if not self.for_generation:
            out["labels"] = label_tensor
        return out


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
