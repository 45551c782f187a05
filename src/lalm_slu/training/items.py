"""What a fine-tuning run trains on, step by step: the mixture's items, their seeded length-grouped order, and
the collated micro-batches of each optimizer step, built by DataLoader workers ahead of the step that needs them
(pinned, copied without blocking), so the device never waits for audio loading, templating or tokenization.

Everything the step needs to know about a micro-batch's shape is computed here, on the host: its answer tokens
and their positions, its audio slots and frame positions, whether it is right-padded. The training step then
synchronises with the device once (training.step.accumulate_gradients), not several times per micro-batch."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lalm_slu.config.settings import TrainingSettings
from lalm_slu.core.stages import STAGES
from lalm_slu.model.audio_encoding import audio_slot_index, encoder_padding, frame_index
from lalm_slu.data.interleaving import span_audio
from lalm_slu.model.batches import ChatItem, Collator, audio_token_count, token_counts
from lalm_slu.model.loss import answer_positions, is_right_padded
from lalm_slu.config.vocabulary import ITEM_MODALITIES
from lalm_slu.data.mixtures import MIXTURE_COLUMNS
from lalm_slu.data.records import DataError
from lalm_slu.data.audio import load_audio


@dataclass
class TrainItem:
    id: str
    modality: str  # text, speech or interleaved
    text: str  # interleaved: the transcript with its spoken span replaced by AUDIO_SPAN
    target: str
    audio_path: str | None
    duration_s: float | None  # speech items: the clip's; interleaved: the span's
    instruction: str | None = None  # the item's own instruction (imitation tasks); None: the prompt's
    span_s: tuple[float, float] | None = None  # interleaved: the spoken span of the clip

    @property
    def audio_key(self) -> str | None:
        """What identifies the item's audio (a frame cache key): the clip, or the clip's span."""
        return self.audio_path if self.span_s is None else f"{self.audio_path}#{self.span_s[0]}-{self.span_s[1]}"


def load_items(mixture_path: str | Path, phase: int) -> list[TrainItem]:
    """The mixture's items of one phase. A mixture carries everything an item needs (mixtures.MIXTURE_COLUMNS);
    only the audio files are checked here, since they may have gone since mixing."""
    mixture = pd.read_parquet(mixture_path)
    if missing := set(MIXTURE_COLUMNS) - set(mixture.columns):
        raise DataError(f"mixture lacks columns {sorted(missing)} (made by an older lalm-slu? re-run its mixing job)",
                        mixture_path)
    items = []
    for row in mixture[mixture["phase"] == phase].itertuples(index=False):
        if row.modality not in ITEM_MODALITIES:
            raise DataError(f"unknown modality {row.modality!r} for id {row.id!r}", mixture_path)
        instruction = None if pd.isna(row.instruction) else row.instruction
        if row.modality == "text":
            items.append(TrainItem(row.id, "text", row.text, row.target, None, None))
            continue
        if pd.isna(row.audio) or not os.path.isfile(row.audio):
            raise DataError(f"audio file {row.audio} of {row.modality} item {row.id!r} not found", mixture_path)
        span = None if row.modality == "speech" else (float(row.span_start_s), float(row.span_end_s))
        items.append(TrainItem(row.id, row.modality, row.text, row.target, row.audio, float(row.duration_s),
                               instruction, span))
    return items


def sequence_lengths(items: list[TrainItem], processor, instruction: str) -> list[int]:
    """Tokens of each item's training sequence as the Collator builds it: prompt, audio tokens (from the clip's
    duration) and answer. Grouping by this, not by transcript or clip length alone, also groups by answer length,
    which varies as much (1,000 demo text items: 217 → 184 padded tokens per item)."""
    no_audio = np.zeros(0, dtype=np.float32)
    chat = [
        ChatItem(it.instruction or instruction, answer=it.target, text=None if it.modality == "speech" else it.text,
                 audio=None if it.modality == "text" else no_audio)
        for it in items
    ]
    return token_counts(processor, chat, [it.duration_s for it in items])


def micro_batches(items: list[TrainItem], lengths: list[int] | None, batch_size: int, seed: int, phase: int,
                  epoch: int) -> list[list[int]]:
    """Seeded order for one epoch. With `lengths` (sequence_lengths), group by length: sort inside windows of 50
    batches, then shuffle the batches."""
    rng = np.random.default_rng([seed, phase, epoch])
    order = rng.permutation(len(items))
    if lengths is not None:
        window = batch_size * 50
        grouped = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            grouped += sorted(chunk.tolist(), key=lambda i: (items[i].modality, lengths[i]))
        order = np.array(grouped, dtype=np.int64)
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def to_chat_items(items: list[TrainItem], instruction: str) -> list[ChatItem]:
    return [
        ChatItem(it.instruction or instruction, it.target, text=None if it.modality == "speech" else it.text,
                 audio=None if it.modality == "text" else item_audio(it))
        for it in items
    ]


def item_audio(item: TrainItem) -> np.ndarray:
    """A speech item's clip, or an interleaved item's span of it."""
    audio = load_audio(item.audio_path)
    return audio if item.span_s is None else span_audio(audio, *item.span_s)



@dataclass
class MicroBatch:
    """One collated micro-batch (CPU tensors; pinned when bound for a GPU) and what the step needs to know about
    it without asking the device."""

    tensors: dict[str, torch.Tensor]
    right_padded: bool
    answer_tokens: int
    items: int
    padding: bool  # a round this process runs only to keep FSDP2's collectives paired: weight 0
    audio_padded: bool = False  # some clip has fewer encoder positions than the batch (encoder_padding)
    audio_keys: list[str] = field(default_factory=list)  # of its clips, in batch order (frame cache keys)
    waveforms: list[np.ndarray] = field(default_factory=list)  # the same clips (a cache miss encodes them)

    def pin_memory(self) -> MicroBatch:
        """Called by the DataLoader's pinning thread."""
        pinned = {name: tensor.pin_memory() for name, tensor in self.tensors.items()}
        return MicroBatch(pinned, self.right_padded, self.answer_tokens, self.items, self.padding,
                          self.audio_padded, self.audio_keys, self.waveforms)

    def to(self, device: torch.device, with_features: bool = True) -> dict:
        """The batch as the training forward takes it, on `device` (copies queued, not waited for).
        `with_features=False` leaves the audio features behind (frames come from a cache)."""
        skip = () if with_features else ("input_features", "feature_attention_mask", "audio_frames_at")
        batch = {name: tensor.to(device, non_blocking=True) for name, tensor in self.tensors.items()
                 if name not in skip}
        batch["right_padded"], batch["audio_padded"] = self.right_padded, self.audio_padded
        return batch


def collate_micro_batch(items: list[TrainItem], ids: list[int], instruction: str, collator: Collator,
                        audio_token_id: int, padding: bool = False) -> MicroBatch:
    batch_items = [items[i] for i in ids]
    chats = to_chat_items(batch_items, instruction)
    batch = collator(chats)
    labels = batch.pop("labels")
    positions, targets = answer_positions(labels)
    tensors = {**batch, "answer_positions": positions, "answer_targets": targets}
    clips = [(item.audio_key, chat.audio) for item, chat in zip(batch_items, chats) if chat.audio is not None]
    audio_padded = False
    if clips:
        tensors["audio_slots"] = audio_slot_index(batch["input_ids"], audio_token_id)
        lengths = batch["feature_attention_mask"].sum(-1).tolist()
        width = batch["input_features"].shape[-1]
        tensors["audio_frames_at"] = frame_index([audio_token_count(n) for n in lengths], width)
        audio_padded = encoder_padding(lengths, width)
    return MicroBatch(tensors, is_right_padded(batch["attention_mask"]), len(positions), len(ids), padding,
                      audio_padded, [key for key, _ in clips], [waveform for _, waveform in clips])


def step_rounds(step_batches: list[list[int]], rank: int, world_size: int) -> list[tuple[list[int], bool]]:
    """This process's micro-batches of one optimizer step. Every process runs the same number of forward/backward
    passes (FSDP2 gathers and reduces in each): one short of a batch repeats the step's first as padding."""
    mine = step_batches[rank::world_size]
    rounds = math.ceil(len(step_batches) / world_size)
    return [(mine[i], False) if i < len(mine) else (step_batches[0], True) for i in range(rounds)]


class StepMicroBatches(torch.utils.data.Dataset):
    """The micro-batches of consecutive optimizer steps, flattened, in the order this process runs them."""

    def __init__(self, items: list[TrainItem], rounds: list[tuple[list[int], bool]], instruction: str,
                 collator: Collator, audio_token_id: int):
        self.items, self.rounds, self.instruction = items, rounds, instruction
        self.collator, self.audio_token_id = collator, audio_token_id

    def __len__(self) -> int:
        return len(self.rounds)

    def __getitem__(self, index: int) -> MicroBatch:
        ids, padding = self.rounds[index]
        return collate_micro_batch(self.items, ids, self.instruction, self.collator, self.audio_token_id, padding)


class StepLoader:
    """Micro-batches of an epoch's optimizer steps from a given step on, collated ahead by `workers` processes (0:
    in this process, when asked). `next_step(step)` returns that step's micro-batches; steps must come in order."""

    def __init__(self, items: list[TrainItem], epoch_batches: list[list[int]], steps: range, span: int, rank: int,
                 world_size: int, instruction: str, collator: Collator, audio_token_id: int, workers: int,
                 pin_memory: bool):
        self.per_step = [step_rounds(epoch_batches[step * span : (step + 1) * span], rank, world_size)
                         for step in steps]
        self.first, self.next = steps.start, steps.start
        if workers:
            # Workers are forked after the tokenizer has run here: its own threads would be unsafe in them.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        dataset = StepMicroBatches(items, [r for rounds in self.per_step for r in rounds], instruction, collator,
                                   audio_token_id)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                             pin_memory=pin_memory, prefetch_factor=4 if workers else None)
        self.batches = iter(loader)

    def next_step(self, step: int) -> list[MicroBatch]:
        if step != self.next:
            raise RuntimeError(f"step {step} asked of a loader at step {self.next}")
        self.next += 1
        return [next(self.batches) for _ in self.per_step[step - self.first]]


def data_workers(training: TrainingSettings, device: torch.device) -> int:
    """Processes collating micro-batches ahead of the step (`training.data_workers`; auto: 4 beside a GPU, none on
    CPU, where they would take the cores the step computes on)."""
    if training.data_workers is not None:
        return training.data_workers
    return 4 if device.type == "cuda" else 0



@dataclass
class PhaseBatches:
    """One phase's micro-batches, step by step: the items' lengths (computed once, for grouping), each epoch's
    seeded length-grouped order, and a loader collating ahead from the step asked for (a resumed run starts
    mid-epoch). `span`: micro-batches per optimizer step over all processes. `lengths_of`: None = no grouping."""

    items: list[TrainItem]
    phase: int
    steps_per_epoch: int
    per_device: int
    span: int
    seed: int
    lengths_of: Callable[[list[TrainItem]], list[int]] | None
    loader_for: Callable[[list[TrainItem], list[list[int]], range], StepLoader]
    lengths: list[int] | None = None
    epoch: int | None = None
    batches: list[list[int]] | None = None
    loader: StepLoader | None = None

    def step(self, step: int) -> tuple[int, int, list[MicroBatch], dict]:
        """The phase's `step`: its epoch, its step within the epoch, this process's micro-batches, and the step's
        item counts over all processes."""
        if self.lengths is None and self.lengths_of is not None:
            with STAGES.stage("tokenization"):
                self.lengths = self.lengths_of(self.items)
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        if self.epoch != epoch or self.loader.next != step_in_epoch:
            if self.epoch != epoch:
                self.epoch = epoch
                self.batches = micro_batches(self.items, self.lengths, self.per_device, self.seed, self.phase, epoch)
            self.loader = self.loader_for(self.items, self.batches, range(step_in_epoch, self.steps_per_epoch))
        step_batches = self.batches[step_in_epoch * self.span : (step_in_epoch + 1) * self.span]
        modalities = [self.items[i].modality for batch in step_batches for i in batch]
        counts = {"items": len(modalities), "speech_items": modalities.count("speech"),
                  "audio_items": sum(modality != "text" for modality in modalities)}
        with STAGES.stage("collation"):  # waiting for the loader: audio, chat template, tokenization, features
            mine = self.loader.next_step(step_in_epoch)
        return epoch, step_in_epoch, mine, counts
