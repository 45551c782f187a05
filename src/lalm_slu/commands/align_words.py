"""Word times of a recorded speech manifest by CTC forced alignment (see lalm_slu/speech/alignment.py)."""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="a CTC acoustic model directory (*ForCTC and its processor)")
    parser.add_argument("--manifest", required=True, help="speech manifest")
    parser.add_argument("--settings", required=True, help="JSON: device")
    parser.add_argument("--out", required=True, help="the manifest with word_times")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (a resource)")


def run(args):
    from lalm_slu.model.loading import set_threads
    from lalm_slu.speech.alignment import align_manifest

    set_threads(args.threads)
    print(json.dumps(align_manifest(args.model, args.manifest, args.out, json.loads(args.settings))))
