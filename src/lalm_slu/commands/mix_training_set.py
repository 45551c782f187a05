"""Write one run's training mixture (see lalm_slu.data.mixtures for the schemes and the columns): its items listed, then
each item's data taken from its manifest, so that training reads the mixture alone.

Monolingual: --text-manifest/--speech-manifest/--speech-ids describe the one (scarce) part.
Cross-lingual: those describe the source language, whose speech ids are all its utterances,
and --target-* describe the target language, whose speech is the budgeted resource.
"""

from __future__ import annotations

import logging

from lalm_slu.config.settings import InterleavingSettings
from lalm_slu.data.mixture_files import write_training_mixture
from lalm_slu.data.mixtures import SCHEMES

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument("--scheme", required=True, choices=SCHEMES)
    parser.add_argument("--text-manifest", required=True, help="training text (all utterances)")
    parser.add_argument("--speech-manifest", required=True, help="the same utterances with audio")
    parser.add_argument("--speech-ids", required=True, help="id list of utterances whose speech may be used")
    parser.add_argument("--target-text-manifest")
    parser.add_argument("--target-speech-manifest")
    parser.add_argument("--target-speech-ids")
    parser.add_argument("--no-target-text", action="store_true", help="leave the target-language text out")
    parser.add_argument("--imitation-targets", help="behaviour imitation's targets (imitation-targets command)")
    parser.add_argument("--label-free-speech", nargs=2, metavar=("MANIFEST", "IDS"),
                        help="paired speech without SLU labels beyond the budget (imitation schemes)")
    parser.add_argument("--interleave", help="JSON {fraction, min_span_words, max_span_words}: interleaving schemes")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--phases", type=int, default=None,
                        help="keep only the first N phases (the items of runs' shared first phases)")
    parser.add_argument("--out", required=True, help="mixture parquet file")


def run(args):
    target_args = [args.target_text_manifest, args.target_speech_manifest, args.target_speech_ids]
    if any(target_args) and not all(target_args):
        raise SystemExit("--target-text-manifest, --target-speech-manifest and --target-speech-ids go together")
    if args.no_target_text and not all(target_args):
        raise SystemExit("--no-target-text needs the --target-* arguments")
    interleave = InterleavingSettings.from_json(args.interleave, "--interleave") if args.interleave else None
    imitation = None
    if args.imitation_targets:
        from lalm_slu.training.imitation import read_imitation_targets  # imports torch: only imitation mixtures pay for it

        imitation = read_imitation_targets(args.imitation_targets)
    mixture = write_training_mixture(
        args.scheme, (args.text_manifest, args.speech_manifest, args.speech_ids), args.seed, args.out,
        target=tuple(target_args) if all(target_args) else None, target_text=not args.no_target_text,
        label_free_speech=args.label_free_speech, interleave=interleave, imitation=imitation, phases=args.phases,
    )
    log.info("wrote %d items (%s) to %s", len(mixture), args.scheme, args.out)
