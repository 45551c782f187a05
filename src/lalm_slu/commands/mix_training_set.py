"""Write one run's training mixture (see lalm_slu.data.mixtures for the schemes and the columns): its items listed, then
each item's data taken from its manifest, so that training reads the mixture alone.

Monolingual: --text-manifest/--speech-manifest/--speech-ids describe the one (scarce) part.
Cross-lingual: those describe the source language, whose speech ids are all its utterances,
and --target-* describe the target language, whose speech is the budgeted resource.
"""

from __future__ import annotations

import logging

import pandas as pd

from lalm_slu.data.budgets import read_budget_ids
from lalm_slu.data.mixtures import (
    SCHEMES,
    ManifestCache,
    MixtureError,
    MixturePart,
    build_mixture,
    with_item_data,
)
from lalm_slu.data.records import DataError, write_manifest
from lalm_slu.config.settings import InterleavingSettings

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
    crosslingual = all(target_args)
    if args.no_target_text and not crosslingual:
        raise SystemExit("--no-target-text needs the --target-* arguments")
    interleave = InterleavingSettings.from_json(args.interleave, "--interleave") if args.interleave else None
    imitation = None
    if args.imitation_targets:
        from lalm_slu.training.imitation import read_imitation_targets  # imports torch: only imitation mixtures pay for it

        imitation = read_imitation_targets(args.imitation_targets)
    manifests = ManifestCache()
    parts = [load_part(manifests, args.text_manifest, args.speech_manifest, args.speech_ids, scarce=not crosslingual)]
    if crosslingual:
        parts.append(load_part(manifests, *target_args, scarce=True, use_text=not args.no_target_text))
    if args.label_free_speech:
        manifest, ids = args.label_free_speech
        parts.append(load_part(manifests, manifest, manifest, ids, scarce=False, use_text=False))
    word_times = timed_words(manifests, {part.speech_manifest for part in parts}) if interleave else None
    try:
        listing = build_mixture(args.scheme, parts, args.seed, interleave, word_times, imitation)
    except MixtureError as error:
        raise DataError(str(error), args.out) from None
    mixture = with_item_data(listing, manifests)
    if args.phases is not None:
        mixture = mixture[mixture["phase"].isin(sorted(mixture["phase"].unique())[: args.phases])]
    write_manifest(mixture, args.out)  # atomic parquet, like every manifest
    counts = mixture.groupby(["phase", "lang", "modality"]).size()
    for (phase, lang, modality), count in counts.items():
        log.info("phase %d: %d %s %s items", phase, count, lang, modality)
    log.info("wrote %d items (%s) to %s", len(mixture), args.scheme, args.out)


def timed_words(manifests: ManifestCache, speech_manifests) -> dict[tuple[str, str], list]:
    """(manifest, id) -> [[word, start_s, end_s], ...], for every utterance that has word times."""
    times = {}
    for path in speech_manifests:
        manifest = manifests[path]
        for uid, words in zip(manifest["id"].astype(str), manifest["word_times"]):
            if words:
                times[(str(path), uid)] = words
    return times


def load_part(
    manifests: ManifestCache, text_manifest: str, speech_manifest: str, speech_ids_path: str, scarce: bool,
    use_text: bool = True,
) -> MixturePart:
    text = manifests[str(text_manifest)]
    speech = manifests[str(speech_manifest)]
    speech_ids = read_budget_ids(speech_ids_path)
    langs = sorted(set(text["lang"]))
    if len(langs) > 1:
        raise DataError(f"a manifest part must hold one language, found {langs}", text_manifest)
    audio_of = dict(zip(speech["id"].astype(str), speech["audio"]))
    for uid in speech_ids:
        if pd.isna(audio_of.get(uid)):
            raise DataError(f"utterance {uid!r} (from {speech_ids_path}) has no audio", speech_manifest)
    return MixturePart(
        lang=langs[0] if langs else "",
        text_manifest=str(text_manifest),
        speech_manifest=str(speech_manifest),
        ids=tuple(text["id"].astype(str)),
        speech_ids=tuple(speech_ids),
        scarce=scarce,
        use_text=use_text,
    )
