"""Word times of recorded speech by CTC forced alignment, for interleaved training (the demo's synthesized speech has
eSpeak NG's own word times instead).

A CTC acoustic model (a `*ForCTC` checkpoint fetched by the download stage) gives per-frame log-probabilities over
its characters; the Viterbi path through the transcript's characters (blanks allowed between and around them,
required between repeats) gives each character's frames, and a word spans its characters' frames.

torchaudio's `forced_align` is the usual tool, but no torchaudio release matches the project's torch==2.13.0 (the
newest, 2.11.1, requires torch 2.11), so the same dynamic programme is written here in torch.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping

import torch

log = logging.getLogger(__name__)


def forced_align(log_probs: torch.Tensor, targets: list[int], blank: int = 0) -> list[int]:
    """The most likely CTC path of `targets` through `log_probs` (frames × classes): for each frame, the index of
    the target it emits, or -1 for a blank. Raises ValueError when the targets cannot fit the frames."""
    frames, length = log_probs.shape[0], len(targets)
    repeats = sum(a == b for a, b in zip(targets, targets[1:]))
    if length + repeats > frames:
        raise ValueError(f"{length} targets ({repeats} repeats) cannot be aligned to {frames} frames")
    # Extended states: blank, t1, blank, t2, ..., tL, blank.
    states = torch.full((2 * length + 1,), blank, dtype=torch.long)
    states[1::2] = torch.tensor(targets, dtype=torch.long)
    can_skip = torch.zeros(len(states), dtype=torch.bool)  # from s-2: a target unlike the one before it
    can_skip[3::2] = states[3::2] != states[1:-2:2]
    emissions = log_probs[:, states].float()
    score = torch.full((len(states),), -torch.inf)
    score[:2] = emissions[0, :2]
    back = torch.zeros((frames, len(states)), dtype=torch.long)  # 0: stay, 1: from s-1, 2: from s-2
    for t in range(1, frames):
        stay, step = score, torch.cat([torch.tensor([-torch.inf]), score[:-1]])
        skip = torch.cat([torch.tensor([-torch.inf, -torch.inf]), score[:-2]]).masked_fill(~can_skip, -torch.inf)
        best, choice = torch.stack([stay, step, skip]).max(dim=0)
        back[t] = choice
        score = best + emissions[t]
    state = len(states) - 1 if length == 0 or score[-1] >= score[-2] else len(states) - 2
    path = []
    for t in range(frames - 1, -1, -1):
        path.append(state)
        state -= int(back[t, state])
    return [(state - 1) // 2 if state % 2 else -1 for state in reversed(path)]


def target_frames(path: list[int], count: int) -> list[tuple[int, int]]:
    """[first, last + 1) frames of each of `count` targets on a forced_align path."""
    spans: list[list[int]] = [[-1, -1] for _ in range(count)]
    for frame, target in enumerate(path):
        if target >= 0:
            if spans[target][0] < 0:
                spans[target][0] = frame
            spans[target][1] = frame + 1
    return [(first, end) for first, end in spans]


def transcript_targets(text: str, vocabulary: dict[str, int], delimiter: str = "|") -> tuple[list[int], list[int]]:
    """The CTC targets of a transcript (its characters, words separated by the delimiter token) and, per target,
    the whitespace word it belongs to (-1 for a delimiter). Characters the model lacks are skipped; letters are
    matched in the vocabulary's case."""
    upper = sum(key.isupper() for key in vocabulary) > sum(key.islower() for key in vocabulary)
    targets, owners = [], []
    for index, word in enumerate(text.split()):
        characters = [vocabulary[c] for c in (word.upper() if upper else word.lower()) if c in vocabulary]
        if targets and characters and delimiter in vocabulary:
            targets.append(vocabulary[delimiter])
            owners.append(-1)
        targets += characters
        owners += [index] * len(characters)
    return targets, owners


def word_times_from_path(text: str, owners: list[int], path: list[int], frame_s: float, duration_s: float) -> list:
    """[word, start_s, end_s] per whitespace word: from its first character's first frame to its last character's
    last frame. A word the model could not spell (no character in its vocabulary) sits at the next word's start."""
    spans = target_frames(path, len(owners))
    words = text.split()
    times: list[list] = []
    for index, word in enumerate(words):
        frames = [span for span, owner in zip(spans, owners) if owner == index]
        times.append([word, frames[0][0] * frame_s, frames[-1][1] * frame_s] if frames else [word, None, None])
    following = duration_s
    for entry in reversed(times):
        if entry[1] is None:
            entry[1] = entry[2] = following
        following = entry[1]
    return [[word, round(min(start, duration_s), 4), round(min(end, duration_s), 4)] for word, start, end in times]


def ctc_frames(config, samples: int) -> int | None:
    """How many frames a wav2vec2-style convolutional front end makes of `samples` (None: not such a model)."""
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if kernels is None or strides is None:
        return None
    for kernel, stride in zip(kernels, strides):
        samples = (samples - kernel) // stride + 1 if samples >= kernel else 0
    return samples


def align_manifest(model_dir: str, manifest_path: str, out_path: str, settings: Mapping) -> dict:
    """A speech manifest with `word_times` filled by forced alignment with the CTC model at `model_dir`.
    `settings`: the job's --settings JSON (lalm_slu.config.settings.AlignmentSettings)."""
    from transformers import AutoModelForCTC, AutoProcessor

    from lalm_slu.model.loading import resolve_device
    from lalm_slu.data.records import read_manifest, utterances_from_frame, write_manifest
    from lalm_slu.config.settings import AlignmentSettings
    from lalm_slu.data.audio import load_audio

    started = time.time()
    device = resolve_device(AlignmentSettings.from_dict(settings, "align-words --settings").device)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForCTC.from_pretrained(model_dir).to(device).eval()
    vocabulary = processor.tokenizer.get_vocab()
    blank = processor.tokenizer.pad_token_id
    delimiter = getattr(processor.tokenizer, "word_delimiter_token", "|")
    utterances = utterances_from_frame(read_manifest(manifest_path))
    failed = too_short = 0
    for utt in utterances:
        audio = load_audio(utt.audio)
        if ctc_frames(model.config, len(audio)) == 0:  # shorter than the model's window: no frame at all
            log.warning("%s: %s lasts %.3f s, shorter than the CTC model's window; not aligned", utt.id, utt.audio,
                        len(audio) / 16_000)
            too_short += 1
            continue
        inputs = processor(audio, sampling_rate=16_000, return_tensors="pt").input_values.to(device)
        with torch.no_grad():
            log_probs = model(inputs).logits[0].log_softmax(-1).cpu()
        targets, owners = transcript_targets(re.sub(r"\s+", " ", utt.text), vocabulary, delimiter)
        try:
            path = forced_align(log_probs, targets, blank)
        except ValueError as error:  # too short for its transcript: no times, never interleaved
            log.warning("%s: %s", utt.id, error)
            failed += 1
            continue
        duration = len(audio) / 16_000
        utt.word_times = word_times_from_path(utt.text, owners, path, duration / log_probs.shape[0], duration)
    write_manifest(utterances, out_path)
    summary = {"utterances": len(utterances), "not_aligned": failed, "shorter_than_window": too_short,
               "wall_time_s": round(time.time() - started, 2)}
    log.info("aligned %s: %s", manifest_path, summary)
    return summary
