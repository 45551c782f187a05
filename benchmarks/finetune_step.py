"""Seconds per fine-tuning optimizer step at batch 16: text items, and speech items with encoder and projector
frozen (the language model trains), on the demo model with the trainer's length-aware step and answer-only
loss. Batches are drawn as the trainer draws them (`training_data.micro_batches`, grouped by sequence length), and also at
random for comparison. Speech is measured as the demo grid trains it, from frames the frozen encoder computed once
per split (`audio_frames.precompute`; the encoding's own cost is timed beside it), and with the encoder run in
every step (precomputing off, or a scheme that trains the audio path).

Each is timed in fp32 and under bf16 autocast (the paper's precision); the targets are judged at the precision the
demo config trains in (training.precision), speech as the grid trains it. Targets: ≤ 0.3 s (text), ≤ 0.6 s
(speech).
Writes benchmarks/results/finetune_step.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from _common import (
    DEMO_TRAINING,
    INSTRUCTION,
    chat_items,
    model_path,
    optimizer_step,
    scratch_dir,
    set_threads,
    slurp_sentences,
    with_speech,
    write_result,
)

TARGET_SECONDS = {"text": 0.3, "speech": 0.6}
TRAINABLE = ["language_model", "lm_head"]
PRECISIONS = ("fp32", "bf16")


def configured_precision() -> str:
    """The precision the demo config trains in on a CPU, resolved as the trainer resolves it."""
    import torch

    from lalm_slu.model.loading import device_and_dtype

    _, dtype = device_and_dtype(dataclasses.replace(DEMO_TRAINING, device="cpu"))
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def instruction_tokens(path: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(path)(INSTRUCTION).input_ids)


def seconds_per_step(path: str, items, batches: list[list[int]], warmup: int, precision: str,
                     precomputed_audio: bool = False) -> dict:
    """With `precomputed_audio`, every clip's frames are computed before timing, in the trainer's batches (as
    rule encode_audio computes them once per split); the seconds that took per batch of clips are reported
    too. Without it, each step runs the encoder on its clips."""
    import torch

    from lalm_slu.model.audio_encoding import FrozenAudioCache, clip_frames
    from lalm_slu.model.batches import Collator
    from lalm_slu.model.loading import device_and_dtype, load_model_and_processor
    from lalm_slu.config.settings import TrainingSettings
    from lalm_slu.model.trainable import set_trainable

    model, processor = load_model_and_processor(path)
    set_trainable(model, TRAINABLE, DEMO_TRAINING.freeze_token_embeddings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    collator = Collator(processor)
    cache = FrozenAudioCache(processor) if precomputed_audio else None
    _, dtype = device_and_dtype(TrainingSettings.from_dict({"device": "cpu", "precision": precision}, "finetune_step"))

    def make_batch(indices):
        batch = collator([items[i] for i in indices])
        if cache is None:
            return batch
        return cache.input_embeddings(model, batch, [(str(i), items[i].audio) for i in indices])

    encoding_times = []
    if cache is not None:
        model.eval()
        for indices in batches:
            started = time.perf_counter()
            frames = clip_frames(model, processor, [items[i].audio for i in indices])
            encoding_times.append(time.perf_counter() - started)
            cache.add({str(i): clip for i, clip in zip(indices, frames)})
    times, tokens = [], []
    for step, indices in enumerate(batches):
        started = time.perf_counter()
        batch = make_batch(indices)
        optimizer_step(model, optimizer, batch, params, True, dtype)
        if step >= warmup:
            times.append(time.perf_counter() - started)
            tokens.append(batch["attention_mask"].shape[1])
    result = {
        "median_s": round(statistics.median(times), 4),
        "mean_s": round(statistics.fmean(times), 4),
        "max_s": round(max(times), 4),
        "mean_padded_tokens_per_item": round(statistics.fmean(tokens), 1),
    }
    if encoding_times:
        result["encoding_median_s_per_batch_of_clips"] = round(statistics.median(encoding_times[warmup:]), 4)
    return result


def trainer_batches(utterances, modality: str, batch_size: int, path: str) -> list[list[int]]:
    """The trainer's own batching of these utterances for one epoch (seeded, grouped by sequence length)."""
    from lalm_slu.model.loading import load_model_and_processor
    from lalm_slu.data.slu_json import format_target
    from lalm_slu.training.items import TrainItem, micro_batches, sequence_lengths

    items = [
        TrainItem(u.id, modality, u.text, format_target(u.scenario, u.action, u.entities), u.audio,
                  u.duration_s if modality == "speech" else None)
        for u in utterances
    ]
    _, processor = load_model_and_processor(path)
    lengths = sequence_lengths(items, processor, INSTRUCTION)
    return micro_batches(items, lengths, batch_size, seed=0, phase=1, epoch=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per modality")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    work = scratch_dir()
    path, model_kind = model_path(work)
    count = args.batch_size * (args.steps + args.warmup_steps)
    utterances = with_speech(slurp_sentences(count), work)
    sequential = [list(range(b * args.batch_size, (b + 1) * args.batch_size)) for b in range(args.steps + args.warmup_steps)]
    demo_precision = configured_precision()
    measured = {}
    for modality in ("text", "speech"):
        items = chat_items(utterances, modality)
        batches = trainer_batches(utterances, modality, args.batch_size, path)
        for precision in PRECISIONS:
            if modality == "speech":
                measured[f"speech_{precision}"] = seconds_per_step(
                    path, items, batches, args.warmup_steps, precision, precomputed_audio=True)
                measured[f"speech_encoder_in_step_{precision}"] = seconds_per_step(
                    path, items, batches, args.warmup_steps, precision)
            else:
                measured[f"text_{precision}"] = seconds_per_step(path, items, batches, args.warmup_steps, precision)
        measured[f"{modality}_random_batches_{demo_precision}"] = seconds_per_step(
            path, items, sequential, args.warmup_steps, demo_precision)
    at_demo = {m: measured[f"{m}_{demo_precision}"]["median_s"] for m in TARGET_SECONDS}
    write_result(
        "finetune_step",
        {
            "model": model_kind,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "batching": "text / speech: the trainer's (training_data.micro_batches, grouped by sequence length); "
            "*_random_batches: utterances in drawn order",
            "speech": "the trainer's batches, from frames the frozen encoder and projector computed beforehand "
            "(audio_frames.precompute, as the demo grid trains); encoding_median_s_per_batch_of_clips: what "
            "computing them took, once per clip for the whole grid",
            "speech_encoder_in_step": "the trainer's batches, each step running the encoder on its clips",
            "warmup_steps": args.warmup_steps,
            "precisions": "each measurement is named <what>_<precision>; bf16 = torch.autocast(cpu, bfloat16), "
            "weights and optimizer state in fp32, as the trainer does",
            "demo_precision": demo_precision,
            "instruction_tokens": instruction_tokens(path),
            "trainable": TRAINABLE,
            "freeze_token_embeddings": DEMO_TRAINING.freeze_token_embeddings,
            "threads": threads,
        },
        measured,
        {f"{m}_median_s_at_most": limit for m, limit in TARGET_SECONDS.items()}
        | {"judged_at_precision": demo_precision,
           "met": all(at_demo[m] <= limit for m, limit in TARGET_SECONDS.items()),
           "speech_met_with_encoder_in_step":
               measured[f"speech_encoder_in_step_{demo_precision}"]["median_s"] <= TARGET_SECONDS["speech"]},
    )


if __name__ == "__main__":
    main()
