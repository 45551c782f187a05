"""Decode a test set's inputs with a fine-tuned model (see lalm_slu/decode.py)."""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="fine-tuned model directory (full weights or a LoRA adapter)")
    parser.add_argument("--input", required=True, action="append", nargs=3, metavar=("MODALITY", "MANIFEST", "OUT"),
                        help="decode MANIFEST's MODALITY (speech, text, or cascade: text input from a cascade "
                        "manifest, see transcribe-test-set) into the predictions jsonl OUT; repeat for each input, "
                        "all with the one loaded model")
    parser.add_argument("--settings", required=True, help="JSON: num_beams, batch_size, max_new_tokens, instruction")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (a resource: it does not identify the run)")
    parser.add_argument("--audio-frames", help="the speech manifest's precomputed frames (encode-audio), for a "
                        "model whose audio tower and projector stayed frozen")


def run(args):
    from lalm_slu.decode import MODALITIES, decode
    from lalm_slu.model_loading import set_threads

    for modality, _, _ in args.input:
        if modality not in MODALITIES:
            raise SystemExit(f"--input: modality must be one of {', '.join(MODALITIES)}, not {modality!r}")
    set_threads(args.threads)
    print(json.dumps(decode(args.model, [tuple(i) for i in args.input], json.loads(args.settings),
                            args.audio_frames)))
