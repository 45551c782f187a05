"""Decoding throughput (utterances/s): the decode stage's batched decoding vs one utterance at a time, greedy and
beam search, speech and text input; checks that all give identical outputs.

Two one-at-a-time baselines: stock `generate(**batch)` per utterance (what a script without the decode stage
does: it encodes each clip and computes each prompt once per beam), which the target is measured against, and
the decode stage's own path at batch size 1 (clip encoded and prompt computed once), which isolates the gain
of batching alone.

The decode stage only ever sees fine-tuned models, which answer with a line of SLU JSON (~70 tokens); the
shipped model is pretrained, not fine-tuned, and answers the SLU instruction with a few words, which would
leave only the prompt pass to measure. So the model first takes a short text-only fine-tune
(`--finetune-steps`, on sentences disjoint from the measured ones) and is then measured as the stage uses it.

Target: batched ≥ 3× one-at-a-time stock `generate`. Writes benchmarks/results/decode_throughput.json; exits 1
if any output differs among the three.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from _common import (
    DEMO_CONFIG,
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

from lalm_slu.settings import GenerationSettings

TARGET_SPEEDUP = 3.0


def timed_decode(model, processor, manifest, modality: str, settings: GenerationSettings) -> tuple[list[str], float]:
    from lalm_slu.decode import decode_manifest

    started = time.perf_counter()
    predictions = decode_manifest(model, processor, manifest, modality, settings, INSTRUCTION)
    return [p["raw"] for p in predictions], time.perf_counter() - started


def timed_stock_generate(model, processor, manifest, modality: str,
                         settings: GenerationSettings) -> tuple[list[str], float]:
    """One `generate(**batch)` call per utterance, as transformers documents it."""
    import torch

    from lalm_slu.batches import ChatItem, Collator
    from lalm_slu.speech.audio import load_audio

    collator = Collator(processor, for_generation=True)
    beams = settings.num_beams
    outputs = []
    started = time.perf_counter()
    for row in manifest.itertuples():
        item = ChatItem(INSTRUCTION, audio=load_audio(row.audio)) if modality == "speech" else ChatItem(INSTRUCTION, text=row.text)
        batch = collator([item])
        with torch.no_grad():
            generated = model.generate(
                **batch,
                max_new_tokens=settings.max_new_tokens,
                num_beams=beams,
                do_sample=False,
                length_penalty=1.0,
                early_stopping=beams > 1,
            )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs.append(processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)[0].strip())
    return outputs, time.perf_counter() - started


def finetune_briefly(model, processor, utterances, batch_size: int = 16) -> None:
    """Text-only SLU fine-tuning as the trainer does it, on sentences the measurement does not use."""
    import torch

    from lalm_slu.batches import Collator
    from lalm_slu.trainable import set_trainable

    set_trainable(model, ["language_model", "lm_head"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    items = chat_items(utterances, "text")
    collator = Collator(processor)
    for step in range(len(items) // batch_size):
        optimizer_step(model, optimizer, collator(items[step * batch_size : (step + 1) * batch_size]), params, True)
    model.requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=DEMO_CONFIG["decode"]["batch_size"])
    parser.add_argument("--max-new-tokens", type=int, default=DEMO_CONFIG["decode"]["max_new_tokens"])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--modalities", nargs="+", default=["speech", "text"], choices=["speech", "text"])
    parser.add_argument("--finetune-steps", type=int, default=60, help="text-only steps before measuring")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)

    from lalm_slu.model_loading import load_model_and_processor
    from lalm_slu.records import manifest_frame

    work = scratch_dir()
    path, model_kind = model_path(work)
    model, processor = load_model_and_processor(path)
    sentences = slurp_sentences(args.utterances + args.finetune_steps * 16)
    finetune_briefly(model, processor, sentences[args.utterances :])
    manifest = manifest_frame(with_speech(sentences[: args.utterances], work))
    measured, all_identical = {}, True
    for modality in args.modalities:
        for beams in args.beams:
            settings = GenerationSettings.from_dict(
                {"num_beams": beams, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size},
                "decode_throughput arguments",
            )
            batched, batched_s = timed_decode(model, processor, manifest, modality, settings)
            single, single_s = timed_decode(
                model, processor, manifest, modality, dataclasses.replace(settings, batch_size=1)
            )
            stock, stock_s = timed_stock_generate(model, processor, manifest, modality, settings)
            differing = sum(a != b or a != c for a, b, c in zip(batched, single, stock))
            answer_tokens = [len(processor.tokenizer(text)["input_ids"]) for text in batched]
            all_identical &= differing == 0
            measured[f"{modality}_beams{beams}"] = {
                "batched_utterances_per_s": round(len(batched) / batched_s, 3),
                "stock_generate_one_at_a_time_utterances_per_s": round(len(stock) / stock_s, 3),
                "speedup": round(stock_s / batched_s, 2),
                "own_path_one_at_a_time_utterances_per_s": round(len(single) / single_s, 3),
                "speedup_of_batching_alone": round(single_s / batched_s, 2),
                "outputs_differing": differing,
                "mean_answer_tokens": round(sum(answer_tokens) / len(answer_tokens), 1),
            }
    write_result(
        "decode_throughput",
        {
            "model": f"{model_kind}, after {args.finetune_steps} text-only fine-tuning steps (batch 16, lr 1e-3)",
            "utterances": args.utterances,
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "threads": threads,
        },
        measured | {"all_outputs_identical": all_identical},
        {
            "speedup_at_least": TARGET_SPEEDUP,
            "met": all_identical and all(m["speedup"] >= TARGET_SPEEDUP for m in measured.values()),
        },
    )
    if not all_identical:
        sys.exit("batched and one-at-a-time decoding disagree (see the result file)")


if __name__ == "__main__":
    main()
