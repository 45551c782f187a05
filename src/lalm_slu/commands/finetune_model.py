"""Fine-tune the audio LLM on one mixture file (see lalm_slu/training/finetune.py)."""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--mixture", required=True, help="mixture parquet written by mix-training-set")
    parser.add_argument("--settings", required=True, help="JSON: {model, training, scheme, prompt}")
    parser.add_argument("--out-dir", required=True, help="final model directory (a Snakemake output)")
    parser.add_argument("--work-dir", required=True, help="checkpoints; kept across failures for resuming")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (a resource: it does not identify the run)")
    parser.add_argument("--audio-frames", nargs="*", default=[],
                        help="precomputed frames of the mixture's clips (encode-audio); frozen-audio schemes only")
    parser.add_argument("--start-from", default=None,
                        help="a checkpoint written by --output checkpoint at the end of this run's first phases")
    parser.add_argument("--dev-manifests", nargs="*", default=[], metavar="INPUTS=MANIFEST",
                        help="the dev split's manifests for training.dev_eval: text=PATH and/or speech=PATH")
    parser.add_argument("--output", choices=("model", "checkpoint"), default="model",
                        help="write the final model, or the final checkpoint (for other runs' --start-from)")


def run(args):
    from lalm_slu.config.settings import SettingsError, check_finetune_settings

    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as error:
        raise SettingsError(f"--settings: not JSON ({error})") from None
    check_finetune_settings(settings, "--settings")  # before minutes of loading the model

    from lalm_slu.model.loading import set_threads
    from lalm_slu.training.finetune import finetune

    dev_manifests = {}
    for argument in args.dev_manifests:
        inputs, _, path = argument.partition("=")
        if inputs not in ("text", "speech") or not path:
            raise SettingsError(f"--dev-manifests: {argument!r} is not text=PATH or speech=PATH")
        dev_manifests[inputs] = path
    set_threads(args.threads)
    summary = finetune(args.mixture, settings, args.out_dir, args.work_dir, args.audio_frames,
                       start_from=args.start_from, output=args.output, dev_manifests=dev_manifests)
    print(json.dumps(summary))
