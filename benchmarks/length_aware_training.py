"""Training throughput (utterances/s) of the length-aware audio path vs the stock 30-s-padded one.

Both paths train the same model on the same speech batches (SLURP test sentences, demo eSpeak voices) with the
trainer's step; the stock path pads every clip's features to the full window and runs the stock encoder class.
Target: length-aware ≥ 4× the stock throughput. Writes benchmarks/results/length_aware_training.json.
"""

from __future__ import annotations

import argparse
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

TARGET_SPEEDUP = 4.0


def throughput(
    path: str, items, batch_size: int, steps: int, warmup: int, length_aware: bool, trainable: list[str]
) -> dict:
    import torch
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    from lalm_slu.model.batches import Collator
    from lalm_slu.model.loading import load_model_and_processor
    from lalm_slu.model.trainable import set_trainable

    model, processor = load_model_and_processor(path)
    if not length_aware:
        model.model.audio_tower.__class__ = Qwen2AudioEncoder
    set_trainable(model, trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    collator = Collator(processor, length_aware=length_aware)
    batches = [items[i * batch_size : (i + 1) * batch_size] for i in range(warmup + steps)]
    for batch_items in batches[:warmup]:
        optimizer_step(model, optimizer, collator(batch_items), params, "audio_tower" not in trainable)
    started = time.perf_counter()
    for batch_items in batches[warmup:]:  # collation (feature extraction) is part of each path's cost
        optimizer_step(model, optimizer, collator(batch_items), params, "audio_tower" not in trainable)
    seconds = time.perf_counter() - started
    return {"utterances_per_s": round(steps * batch_size / seconds, 3), "seconds_per_step": round(seconds / steps, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per path")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument(
        "--trainable",
        nargs="+",
        default=["multi_modal_projector", "language_model", "lm_head"],
        help="modules trained (default: the demo's, encoder frozen)",
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    work = scratch_dir()
    path, model_kind = model_path(work)
    count = args.batch_size * (args.steps + args.warmup_steps)
    utterances = with_speech(slurp_sentences(count), work)
    items = chat_items(utterances, "speech")
    paths = {
        name: throughput(
            path, items, args.batch_size, args.steps, args.warmup_steps, name == "length_aware", args.trainable
        )
        for name in ("length_aware", "stock_30s_window")
    }
    speedup = paths["length_aware"]["utterances_per_s"] / paths["stock_30s_window"]["utterances_per_s"]
    durations = sorted(u.duration_s for u in utterances)
    write_result(
        "length_aware_training",
        {
            "model": model_kind,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "trainable": args.trainable,
            "threads": threads,
            "utterances": count,
            "clip_seconds": {"median": round(durations[len(durations) // 2], 2), "max": round(durations[-1], 2)},
        },
        {**paths, "speedup": round(speedup, 2)},
        {"speedup_at_least": TARGET_SPEEDUP, "met": speedup >= TARGET_SPEEDUP},
    )


if __name__ == "__main__":
    main()
