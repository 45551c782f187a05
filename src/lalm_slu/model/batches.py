"""How a batch is built: chat prompts in Qwen2-Audio's template, audio features, audio-token expansion and
answer-only labels, for text, speech and interleaved items.

Audio features are padded only to the longest clip of the batch plus the few frames of silence its last positions
see (keeping the feature mask), not to the extractor's full window; the length-aware encoder reads them. Audio-token
expansion uses the processor's own formula, so prompts are token-for-token what the stock processor renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lalm_slu.data.audio import TARGET_RATE
from lalm_slu.data.interleaving import AUDIO_SPAN
from lalm_slu.model.length_aware_encoder import MEL_FRAMES_MULTIPLE

IGNORE_INDEX = -100


def audio_token_count(mel_frames: int) -> int:
    """Number of `<|AUDIO|>` tokens for a clip of `mel_frames` frames (Qwen2AudioProcessor's formula)."""
    return (((mel_frames - 1) // 2 + 1) - 2) // 2 + 1


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


def token_counts(processor, items: list[ChatItem], durations_s: list[float | None]) -> list[int]:
    """Tokens of each item as the Collator renders it (its prompt, and its answer if it has one), without loading
    audio: an item with audio (any waveform, e.g. an empty one) counts, in place of its audio placeholder, the audio
    tokens of a clip of `durations_s[i]` seconds."""
    sequences = [render_prompt(processor, it) + ("" if it.answer is None else answer_turn(it.answer)) for it in items]
    lengths = [len(ids) for ids in processor.tokenizer(sequences, add_special_tokens=False)["input_ids"]]
    hop = processor.feature_extractor.hop_length
    # The audio placeholder (one token) becomes one token per encoder frame pair.
    return [
        n - 1 + audio_token_count(math.ceil(duration * TARGET_RATE / hop)) if it.audio is not None else n
        for n, it, duration in zip(lengths, items, durations_s)
    ]


def audio_features(processor, waveforms: list[np.ndarray], length_aware: bool = True):
    """Log-mel features padded to the longest clip (or to the full window), with the feature mask."""
    extractor = processor.feature_extractor
    kwargs = dict(sampling_rate=TARGET_RATE, return_attention_mask=True, return_tensors="pt")
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
