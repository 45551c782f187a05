"""One run's training mixture from files: its parts read from manifests and id lists, the mixture built
(lalm_slu.data.mixtures) and written as a parquet manifest, so that training reads the mixture alone."""

from __future__ import annotations

import logging

import pandas as pd

from lalm_slu.config.settings import InterleavingSettings
from lalm_slu.data.budgets import read_budget_ids
from lalm_slu.data.mixtures import ManifestCache, MixtureError, MixturePart, build_mixture, with_item_data
from lalm_slu.data.records import DataError, write_manifest

log = logging.getLogger(__name__)


def write_training_mixture(
    scheme: str,
    source: tuple[str, str, str],
    seed: int,
    out: str,
    target: tuple[str, str, str] | None = None,
    target_text: bool = True,
    label_free_speech: tuple[str, str] | None = None,
    interleave: InterleavingSettings | None = None,
    imitation: pd.DataFrame | None = None,
    phases: int | None = None,
) -> pd.DataFrame:
    """Write the mixture to `out` and return it. `source` and `target`: (text manifest, speech manifest, speech id
    list); without a target the source is the scarce part, with one the target is; `label_free_speech`: (manifest,
    id list) of paired speech without SLU labels; `phases`: keep only the first N phases."""
    manifests = ManifestCache()
    parts = [load_part(manifests, *source, scarce=target is None)]
    if target is not None:
        parts.append(load_part(manifests, *target, scarce=True, use_text=target_text))
    if label_free_speech:
        manifest, ids = label_free_speech
        parts.append(load_part(manifests, manifest, manifest, ids, scarce=False, use_text=False))
    word_times = timed_words(manifests, {part.speech_manifest for part in parts}) if interleave else None
    try:
        listing = build_mixture(scheme, parts, seed, interleave, word_times, imitation)
    except MixtureError as error:
        raise DataError(str(error), out) from None
    mixture = with_item_data(listing, manifests)
    if phases is not None:
        mixture = mixture[mixture["phase"].isin(sorted(mixture["phase"].unique())[:phases])]
    write_manifest(mixture, out)  # atomic parquet, like every manifest
    counts = mixture.groupby(["phase", "lang", "modality"]).size()
    for (phase, lang, modality), count in counts.items():
        log.info("phase %d: %d %s %s items", phase, count, lang, modality)
    return mixture


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
