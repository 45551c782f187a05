"""Decode a test manifest with a fine-tuned model (see lalm_slu/decode.py)."""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="fine-tuned model directory (full weights or a LoRA adapter)")
    parser.add_argument("--manifest", required=True, help="test manifest (with audio for speech input)")
    parser.add_argument("--modality", required=True, choices=["speech", "text", "cascade"],
                        help="cascade: text input from a cascade manifest (transcribe-test-set)")
    parser.add_argument("--settings", required=True, help="JSON: num_beams, batch_size, max_new_tokens, instruction")
    parser.add_argument("--out", required=True, help="predictions jsonl")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (a resource: it does not identify the run)")
    parser.add_argument("--audio-frames", help="the manifest's precomputed frames (encode-audio); speech only, "
                        "for a model whose audio tower and projector stayed frozen")


def run(args):
    from lalm_slu.decode import decode
    from lalm_slu.modeling import set_threads

    set_threads(args.threads)

    print(json.dumps(decode(args.model, args.manifest, args.modality, json.loads(args.settings), args.out,
                            args.audio_frames)))
