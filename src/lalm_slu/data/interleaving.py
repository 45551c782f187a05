"""Interleaved items: a transcript with a span of words spoken instead of written, and that span's samples.
No torch: mixtures are made with it, and batches built with it."""

from __future__ import annotations

import numpy as np

from lalm_slu.data.audio import TARGET_RATE

# Where an interleaved item's spoken span stands in its transcript: Qwen2-Audio's audio markers, inline.
AUDIO_SPAN = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def interleaved_text(words: list[str], start: int, end: int) -> str:
    """The transcript with words [start, end) replaced by AUDIO_SPAN (their audio goes there)."""
    return " ".join([*words[:start], AUDIO_SPAN, *words[end:]])


def span_samples(start_s: float, end_s: float) -> tuple[int, int]:
    """The first and past-the-last sample of a clip's span from start_s to end_s (whole samples from each end)."""
    return int(round(start_s * TARGET_RATE)), int(round(end_s * TARGET_RATE))


def span_audio(audio: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The samples of a clip from start_s to end_s."""
    first, last = span_samples(start_s, end_s)
    return audio[first:last]
