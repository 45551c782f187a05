"""Fine-tune the audio LLM on one mixture file (see lalm_slu/train.py)."""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--mixture", required=True, help="mixture parquet written by mix-training-set")
    parser.add_argument("--settings", required=True, help="JSON: {model, training, scheme, prompt}")
    parser.add_argument("--out-dir", required=True, help="final model directory (a Snakemake output)")
    parser.add_argument("--work-dir", required=True, help="checkpoints; kept across failures for resuming")


def run(args):
    from lalm_slu.train import finetune

    summary = finetune(args.mixture, json.loads(args.settings), args.out_dir, args.work_dir)
    print(json.dumps(summary))
