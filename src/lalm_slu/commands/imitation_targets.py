"""Behaviour imitation's targets: the phase-1 (or base) model's text-path answers for the paired-speech pool
(see lalm_slu/training/imitation.py)."""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="the phase-1 (text-only) fine-tuned model")
    parser.add_argument("--base-model", help='the model before SLU fine-tuning, for tasks with "model": "base"')
    parser.add_argument("--pool", nargs=2, action="append", required=True, metavar=("MANIFEST", "IDS"),
                        help="a manifest and the id list of its utterances in the paired-speech pool (repeatable)")
    parser.add_argument("--tasks", required=True,
                        help='JSON list of {"task": name, "instruction": text, "model": "phase1" or "base"}')
    parser.add_argument("--settings", required=True, help="JSON: num_beams, batch_size, max_new_tokens, device")
    parser.add_argument("--out", required=True, help="targets parquet")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (a resource: it does not identify the output)")


def run(args):
    from lalm_slu.training.imitation import read_paired_speech_pool, write_imitation_targets
    from lalm_slu.model.loading import set_threads

    pools = read_paired_speech_pool(args.pool)
    set_threads(args.threads)
    models = {"phase1": args.model, **({"base": args.base_model} if args.base_model else {})}
    print(json.dumps(write_imitation_targets(models, pools, json.loads(args.tasks), json.loads(args.settings),
                                             args.out)))
