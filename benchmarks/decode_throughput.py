"""Decoding throughput (utterances/s): batched vs one utterance at a time, greedy and beam search, speech and
text input, through the decoder's own code path; checks that both give identical outputs.

Target: batched ≥ 3× one-at-a-time. Writes benchmarks/results/decode_throughput.json; exits 1 if any output
differs between the two.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import INSTRUCTION, model_path, scratch_dir, set_threads, slurp_sentences, with_speech, write_result

TARGET_SPEEDUP = 3.0


def timed_decode(model, processor, manifest, modality: str, settings: dict) -> tuple[list[str], float]:
    from lalm_slu.decode import decode_manifest

    started = time.perf_counter()
    predictions = decode_manifest(model, processor, manifest, modality, settings, INSTRUCTION)
    return [p["raw"] for p in predictions], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--modalities", nargs="+", default=["speech", "text"], choices=["speech", "text"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)

    from lalm_slu.modeling import load_model_and_processor
    from lalm_slu.records import manifest_frame

    work = scratch_dir()
    path, model_kind = model_path(work)
    model, processor = load_model_and_processor(path)
    manifest = manifest_frame(with_speech(slurp_sentences(args.utterances), work))
    measured, all_identical = {}, True
    for modality in args.modalities:
        for beams in args.beams:
            settings = {"num_beams": beams, "max_new_tokens": args.max_new_tokens}
            batched, batched_s = timed_decode(
                model, processor, manifest, modality, {**settings, "batch_size": args.batch_size}
            )
            single, single_s = timed_decode(model, processor, manifest, modality, {**settings, "batch_size": 1})
            differing = sum(a != b for a, b in zip(batched, single))
            all_identical &= differing == 0
            measured[f"{modality}_beams{beams}"] = {
                "batched_utterances_per_s": round(len(batched) / batched_s, 3),
                "one_at_a_time_utterances_per_s": round(len(single) / single_s, 3),
                "speedup": round(single_s / batched_s, 2),
                "outputs_differing": differing,
            }
    write_result(
        "decode_throughput",
        {
            "model": model_kind,
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
