"""`lalm-slu <command>` / `python -m lalm_slu <command>`: one entry point for every stage.

Commands are looked up lazily so that `lalm-slu score` never imports torch. Each command module
exposes `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lalm_slu.core.stages import STAGES  # first: the job's clock starts before any import  # isort: skip
from lalm_slu.data.records import DataError
from lalm_slu.config.settings import SettingsError

COMMANDS = {
    # name: (module, one-line help)
    "prepare-corpus": ("lalm_slu.commands.prepare_corpus", "read a raw corpus into manifests"),
    "synthesize-speech": ("lalm_slu.commands.synthesize_speech", "synthesize demo speech for a manifest"),
    "ingest-audio": ("lalm_slu.commands.ingest_audio", "resample/check recorded audio for a manifest"),
    "align-words": ("lalm_slu.commands.align_words", "word times of recorded speech (CTC forced alignment)"),
    "subsample-budget": ("lalm_slu.commands.subsample_budget", "nested, seeded speech-budget id lists"),
    "mix-training-set": ("lalm_slu.commands.mix_training_set", "write one run's training mixture"),
    "build-demo-model": ("lalm_slu.commands.build_demo_model", "build the small demo Qwen2-Audio model"),
    "pretrain-demo-model": ("lalm_slu.commands.pretrain_demo_model", "speech-text alignment pretraining"),
    "encode-audio": ("lalm_slu.commands.encode_audio", "frames of a speech manifest's clips, once for the grid"),
    "imitation-targets": ("lalm_slu.commands.imitation_targets", "phase-1 text-path answers for behaviour imitation"),
    "finetune": ("lalm_slu.commands.finetune_model", "fine-tune on a mixture file"),
    "decode": ("lalm_slu.commands.decode_test_set", "batched decoding of a test set"),
    "transcribe-test-set": ("lalm_slu.commands.transcribe_test_set", "base-model transcripts for the cascade"),
    "score": ("lalm_slu.commands.score", "SLURP metrics for predictions against gold"),
    "export-slurp": ("lalm_slu.commands.export_slurp", "a run's predictions in SLURP's format, for its own scorer"),
    "aggregate": ("lalm_slu.commands.aggregate_metrics", "collect run metrics into one long CSV"),
    "tables": ("lalm_slu.commands.make_tables", "paper tables from the metrics CSV"),
    "figures": ("lalm_slu.commands.make_figures", "paper figures from the metrics CSV"),
    "compare-schemes": ("lalm_slu.commands.compare_schemes", "paired-bootstrap comparisons from the predictions"),
    "update-readme": ("lalm_slu.commands.update_readme", "show a demo table and figure in the README"),
    "download": ("lalm_slu.commands.download", "fetch hub corpora into the cache (login node)"),
    "download-slurp-release": ("lalm_slu.commands.download_slurp_release", "fetch SLURP's release text (login node)"),
    "download-model": ("lalm_slu.commands.download_model", "fetch the model from the hub into model.path (login node)"),
    "plan": ("lalm_slu.commands.plan", "the grid's GPUs, memory, FLOPs and GPU-hours, before anything runs"),
    "plan-memory": ("lalm_slu.commands.plan_memory", "per-GPU memory of a fine-tuning job, before it runs"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lalm-slu", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    top, rest = parser.parse_known_args(argv)
    module_name, help_text = COMMANDS[top.command]
    module = importlib.import_module(module_name)
    command_parser = argparse.ArgumentParser(prog=f"lalm-slu {top.command}", description=help_text)
    module.add_arguments(command_parser)
    args = command_parser.parse_args(rest)
    logging.basicConfig(
        level=top.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        result = module.run(args)
    except (DataError, SettingsError, OSError) as error:
        # Bad input or an unwritable output is the user's to fix: the message names the file and line (or
        # key); a traceback would bury it. Exit status 1, as for any failed command.
        print(f"lalm-slu {top.command}: error: {error}", file=sys.stderr)
        return 1
    logging.getLogger(__name__).info(STAGES.line())
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
