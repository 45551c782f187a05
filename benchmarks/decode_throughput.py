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

`--demo-job MANIFEST`: one demo decode job before and after a change of the decoder: the shipped base model
decodes MANIFEST (the demo's slurp-en test speech manifest) from speech and text with the demo's decode settings,
by decode.py as of `--before` (a commit) and as checked out, alternately, `--repeats` times each; the fastest
time of each counts. Its results go to the same file's `demo_job` entries (the rest is kept); exits 1 if any
prediction differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import time

from _common import (
    DEMO_CONFIG,
    DEMO_MODEL,
    INSTRUCTION,
    REPO,
    RESULTS,
    chat_items,
    model_path,
    optimizer_step,
    scratch_dir,
    set_threads,
    slurp_sentences,
    with_speech,
    write_result,
)

from lalm_slu.config.settings import GenerationSettings

TARGET_SPEEDUP = 3.0


def timed_decode(model, processor, manifest, modality: str, settings: GenerationSettings) -> tuple[list[str], float]:
    from lalm_slu.evaluation.decode import decode_manifest

    started = time.perf_counter()
    predictions = decode_manifest(model, processor, manifest, modality, settings, INSTRUCTION)
    return [p["raw"] for p in predictions], time.perf_counter() - started


def timed_stock_generate(model, processor, manifest, modality: str,
                         settings: GenerationSettings) -> tuple[list[str], float]:
    """One `generate(**batch)` call per utterance, as transformers documents it."""
    import torch

    from lalm_slu.model.batches import ChatItem, Collator
    from lalm_slu.data.audio import load_audio

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

    from lalm_slu.model.batches import Collator
    from lalm_slu.model.trainable import set_trainable

    set_trainable(model, ["language_model", "lm_head"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    items = chat_items(utterances, "text")
    collator = Collator(processor)
    for step in range(len(items) // batch_size):
        optimizer_step(model, optimizer, collator(items[step * batch_size : (step + 1) * batch_size]), params, True)
    model.requires_grad_(False)


def decoder_at(commit: str, work):
    """decode.py as of `commit`, imported as a module of its own (over today's other modules)."""
    source = subprocess.run(["git", "show", f"{commit}:src/lalm_slu/evaluation/decode.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = work / f"decode_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"decode_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_job(manifest_path: str, before: str, repeats: int, batch_sizes: list[int], threads: int) -> None:
    """The demo's decode job by the decoder as of `before` and as checked out (module docstring)."""
    from lalm_slu.evaluation import decode
    from lalm_slu.model.loading import load_model_and_processor
    from lalm_slu.data.records import read_manifest

    old = decoder_at(before, scratch_dir())
    model, processor = load_model_and_processor(str(DEMO_MODEL))
    manifest = read_manifest(manifest_path)
    demo = {key: value for key, value in DEMO_CONFIG["decode"].items() if key != "modalities"}
    measured, identical = {}, True
    for modality in ("speech", "text"):
        times: dict[str, list[float]] = {}
        outputs: dict[str, list[dict]] = {}
        variants = {"before": (old, demo)} | {
            f"after_batch_size_{size}": (decode, {**demo, "batch_size": size}) for size in batch_sizes
        }
        for _ in range(repeats):
            for name, (module, settings) in variants.items():
                started = time.perf_counter()
                outputs[name] = module.decode_manifest(model, processor, manifest, modality,
                                                       GenerationSettings.from_dict(settings, "demo decode"),
                                                       INSTRUCTION)
                times.setdefault(name, []).append(time.perf_counter() - started)
        differing = {
            name: sum(a != b for a, b in zip(outputs["before"], out)) for name, out in outputs.items() if name != "before"
        }
        identical &= not any(differing.values())
        measured[modality] = {f"{name}_s": round(min(seconds), 2) for name, seconds in times.items()} | {
            "predictions_differing_from_before": differing
        }
    parameters = {
        "model": "shipped demo model (base, not fine-tuned)",
        "manifest": manifest_path,
        "utterances": len(manifest),
        "settings": demo,
        "before": before,
        "after": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip(),
        "repeats": repeats,
        "threads": threads,
    }
    merge_result({"demo_job": parameters}, {"demo_job": measured | {"all_predictions_identical": identical}},
                 {"demo_job_predictions_identical": identical})
    if not identical:
        sys.exit("the decoders disagree on the demo job (see the result file)")


def merge_result(parameters: dict, measurements: dict, targets: dict) -> None:
    """Replace only these entries of the result file, keeping the rest."""
    path = RESULTS / "decode_throughput.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    write_result(
        "decode_throughput",
        previous.get("parameters", {}) | parameters,
        previous.get("measurements", {}) | measurements,
        previous.get("targets", {}) | targets,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-job", metavar="MANIFEST", help="measure the demo decode job instead (see above)")
    parser.add_argument("--before", default="093b7df", help="--demo-job: the commit of the decoder to compare with")
    parser.add_argument("--repeats", type=int, default=2, help="--demo-job: runs of each decoder")
    parser.add_argument("--demo-batch-sizes", type=int, nargs="+", default=[DEMO_CONFIG["decode"]["batch_size"]],
                        help="--demo-job: batch_size values of the decoder as checked out")
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=DEMO_CONFIG["decode"]["batch_size"])
    parser.add_argument("--max-new-tokens", type=int, default=DEMO_CONFIG["decode"]["max_new_tokens"])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--modalities", nargs="+", default=["speech", "text"], choices=["speech", "text"])
    parser.add_argument("--finetune-steps", type=int, default=60, help="text-only steps before measuring")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    if args.demo_job:
        demo_job(args.demo_job, args.before, args.repeats, args.demo_batch_sizes, threads)
        return

    from lalm_slu.model.loading import load_model_and_processor
    from lalm_slu.data.records import manifest_frame

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
    merge_result(
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
