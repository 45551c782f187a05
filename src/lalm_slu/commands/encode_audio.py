"""Encode a speech manifest's clips once with the frozen audio tower and projector (see lalm_slu/model/audio_frames.py)."""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="model directory or hub id (the base model runs use)")
    parser.add_argument("--manifest", required=True, help="speech manifest")
    parser.add_argument("--settings", required=True, help="JSON: batch_size, length_aware, device, precision")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (a resource: it does not identify the run)")
    parser.add_argument("--out", required=True, help="frames file (safetensors)")


def run(args):
    from lalm_slu.model.audio_frames import encode_manifest
    from lalm_slu.model.loading import set_threads

    set_threads(args.threads)
    print(json.dumps(encode_manifest(args.model, args.manifest, args.out, json.loads(args.settings))))
