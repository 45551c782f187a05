"""Transcribe a test set's speech with the base model, once for every run's cascade decode (lalm_slu/evaluation/cascade.py)."""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="the base model (before SLU fine-tuning)")
    parser.add_argument("--manifest", required=True, help="test speech manifest")
    parser.add_argument("--settings", required=True,
                        help="JSON: instruction, answer_pattern, num_beams, batch_size, max_new_tokens")
    parser.add_argument("--out", required=True, help="cascade manifest (the transcripts as text)")
    parser.add_argument("--wer", required=True, help="JSON summary with the transcripts' WER")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (a resource: it does not identify the output)")


def run(args):
    from lalm_slu.evaluation.cascade import transcribe_test_set
    from lalm_slu.model.loading import set_threads

    set_threads(args.threads)
    print(json.dumps(transcribe_test_set(args.model, args.manifest, json.loads(args.settings), args.out, args.wer)))
