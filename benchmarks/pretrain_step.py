"""Seconds per demo-model pretraining step (batch 16, speech → transcript with the alignment losses, the first
stage's heaviest step), with the audio tower run at every step and with its frames cached
(`PretrainConfig.cache_encoder_frames`, encoded once before the first step); both for a frozen tower and for one
whose top two layers train (then the frozen lower layers' states are cached). Every run uses `pretrain()` itself
on the same clips and steps; its summary times the optimizer steps alone.

No target: the speed-up decides whether a longer pretraining fits a CPU session. Writes
benchmarks/results/pretrain_step.json.
"""

from __future__ import annotations

import argparse
import logging
import time

from _common import model_path, scratch_dir, set_threads, slurp_sentences, with_speech, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--clips", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = set_threads(args.threads)

    from lalm_slu.demo_model.pretrain import Clip, PretrainConfig, pretrain

    work = scratch_dir()
    path, model_kind = model_path(work)
    clips = [Clip(u.text, "en", u.audio) for u in with_speech(slurp_sentences(args.clips), work)]
    measured = {}
    towers = {"frozen_tower": [], "top_two_layers_trained": ["audio_tower.layers.2", "audio_tower.layers.3",
                                                             "audio_tower.layer_norm"]}
    for tower_name, tower_parts in towers.items():
        runs = {}
        for cached in (False, True):
            cfg = PretrainConfig(
                steps=args.steps, batch_size=args.batch_size, text_fraction=0.0, alignment_start_step=0,
                checkpoint_every=10**6, eval_every=10**6, threads=threads, cache_encoder_frames=cached,
                trainable=PretrainConfig().trainable + tower_parts,
            )
            name = "cached_frames" if cached else "encoder_every_step"
            started = time.perf_counter()
            out = work / f"{tower_name}_{name}"
            summary = pretrain(path, out / "out", out / "work", clips, [c.text for c in clips], {"en": clips[:1]}, cfg)
            runs[name] = {
                "mean_step_s": summary["mean_step_s_this_session"],
                "run_s_with_setup_and_encoding": round(time.perf_counter() - started, 1),
            }
        runs["speed_up"] = round(runs["encoder_every_step"]["mean_step_s"] / runs["cached_frames"]["mean_step_s"], 2)
        measured[tower_name] = runs
    write_result(
        "pretrain_step",
        {"model": model_kind, "batch_size": args.batch_size, "steps": args.steps, "clips": args.clips,
         "threads": threads, "task": "speech → transcript, CTC + norm alignment losses, no text steps"},
        measured,
        {},
    )


if __name__ == "__main__":
    main()
