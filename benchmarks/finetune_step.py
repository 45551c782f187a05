"""Seconds per fine-tuning optimizer step at batch 16: text items, and speech items with encoder and projector
frozen (the language model trains), on the demo model with the trainer's length-aware step.

Targets: ≤ 0.3 s (text), ≤ 0.6 s (speech). Writes benchmarks/results/finetune_step.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import (
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


def seconds_per_step(path: str, items, batch_size: int, steps: int, warmup: int) -> dict:
    import torch

    from lalm_slu.modeling import Collator, load_model_and_processor, set_trainable

    model, processor = load_model_and_processor(path)
    set_trainable(model, TRAINABLE)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    collator = Collator(processor)
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        optimizer_step(model, optimizer, collator(items[step * batch_size : (step + 1) * batch_size]), params, True)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    return {
        "median_s": round(statistics.median(times), 4),
        "mean_s": round(statistics.fmean(times), 4),
        "max_s": round(max(times), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per modality")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    work = scratch_dir()
    path, model_kind = model_path(work)
    count = args.batch_size * (args.steps + args.warmup_steps)
    utterances = with_speech(slurp_sentences(count), work)
    measured = {
        modality: seconds_per_step(
            path, chat_items(utterances, modality), args.batch_size, args.steps, args.warmup_steps
        )
        for modality in ("text", "speech")
    }
    write_result(
        "finetune_step",
        {
            "model": model_kind,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "trainable": TRAINABLE,
            "threads": threads,
        },
        measured,
        {f"{m}_median_s_at_most": limit for m, limit in TARGET_SECONDS.items()}
        | {"met": all(measured[m]["median_s"] <= limit for m, limit in TARGET_SECONDS.items())},
    )


if __name__ == "__main__":
    main()
