"""Training mixtures: which utterance is seen as text or as speech, in which phase, and what training needs of it.

A mixture has one row per training item, in training order within each phase (MIXTURE_COLUMNS): `id`, `lang`,
`modality` (text|speech|interleaved), `phase` (the scheme's phase numbers, schemes.MIXTURE_PHASES) and `manifest`
(the manifest the item came from, for provenance), then the item itself, taken from its manifest row when the
mixture is made: `text` (the transcript; interleaved: with its spoken span replaced by interleaving.AUDIO_SPAN),
`target` (an imitation item's own, else the utterance's SLU label as slu_json.format_target writes it),
`instruction` (an imitation item's own, else null: the prompt's), `audio` and `duration_s` (the clip and its
length; interleaved: the span's length in whole samples; null for text), `span_start_s`/`span_end_s` (an
interleaved item's spoken span of the clip, by the manifest's word times) and `span_start`/`span_end` (the same
span as word indices). Training reads nothing else: it opens no manifest.

The data of a run come in parts, one per language. A part knows all its training ids and
the ids whose speech may be used; a *scarce* part's speech is the budgeted resource.

- text_only: every utterance as text (phase 1); no speech allowed.
- direct_mixing: every utterance as text plus the allowed speech, shuffled together (phase 1).
- curriculum: phase 1 = everything except the scarce speech; phase 2 = phase 1 plus the
  scarce speech, shuffled together. Monolingually, phase 1 is text only.
- oracle: every utterance as speech (phase 1); every part must allow all of its speech.
- interleaving: direct mixing in which a seeded fraction of the speech items is *interleaved*: the transcript with
  a contiguous span of words spoken instead of written (the span's audio, cut by the manifest's word times), same
  target as the text item. A span's audio lasts at least the scheme's min_span_s.
- behaviour_imitation: phase 2 only (phase 1 is the text_only run it continues from): one speech item per pool
  utterance × imitation task, whose instruction and target come from the imitation targets (the phase-1 model's
  text-path answers); no SLU label is read.
- mtbi: behaviour_imitation with a seeded fraction of its items interleaved.

Cross-lingual runs follow the paper's setting: the source language contributes all of its
text and all of its speech (not scarce), the target language all of its text (unless a run
leaves target text out) and its speech budget (scarce). Within each phase the order is a
seeded shuffle of a fixed listing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from lalm_slu.data.records import DataError, read_manifest
from lalm_slu.config.schemes import IMITATION_SCHEMES, INTERLEAVING_SCHEMES, MIXTURE_PHASES
from lalm_slu.config.settings import InterleavingSettings
from lalm_slu.config.vocabulary import ITEM_MODALITIES
from lalm_slu.data.audio import TARGET_RATE
from lalm_slu.data.interleaving import interleaved_text, span_samples
from lalm_slu.data.slu_json import format_target

log = logging.getLogger(__name__)

SCHEMES = tuple(MIXTURE_PHASES)
# Which item, seen how, when, and from which manifest: what build_mixture lists.
LISTING_COLUMNS = ("id", "lang", "modality", "phase", "manifest")
# The item itself (with_item_data), null where it does not apply; a listing already holds an imitation item's
# instruction and target and an interleaved item's span_start/span_end.
ITEM_COLUMNS = ("text", "target", "instruction", "audio", "duration_s", "span_start_s", "span_end_s", "span_start",
                "span_end")
MIXTURE_COLUMNS = LISTING_COLUMNS + ITEM_COLUMNS
ITEM_DTYPES = {"duration_s": "float64", "span_start_s": "float64", "span_end_s": "float64", "span_start": "Int64",
               "span_end": "Int64"}


@dataclass(frozen=True)
class MixturePart:
    """One language's training data for a run."""

    lang: str
    text_manifest: str
    speech_manifest: str
    ids: tuple[str, ...]  # every training utterance, in manifest order
    speech_ids: tuple[str, ...]  # those whose speech may be used
    scarce: bool  # True: this part's speech is the budgeted resource
    use_text: bool = True  # False: only the allowed speech (cross-lingual runs without target text)

    def text_items(self) -> list[tuple[str, str, str, str]]:
        if not self.use_text:
            return []
        return [(uid, self.lang, "text", self.text_manifest) for uid in self.ids]

    def speech_items(self) -> list[tuple[str, str, str, str]]:
        return [(uid, self.lang, "speech", self.speech_manifest) for uid in self.speech_ids]


class MixtureError(ValueError):
    """A scheme and its data do not fit together."""


def build_mixture(scheme: str, parts: list[MixturePart], seed: int, interleave: InterleavingSettings | None = None,
                  word_times: dict[tuple[str, str], list] | None = None,
                  imitation: pd.DataFrame | None = None) -> pd.DataFrame:
    """The training items of one run, listed: a frame with LISTING_COLUMNS (and the instruction and target, or
    span_start/span_end, of the schemes that give them), to be completed by with_item_data. `interleave` and
    `word_times` ((manifest, id) -> [[word, start_s, end_s], ...]) for interleaving schemes; `imitation`: the
    imitation targets (lalm_slu.training.imitation.TARGET_COLUMNS) for imitation schemes."""
    if scheme not in SCHEMES:
        raise MixtureError(f"unknown scheme {scheme!r} (expected one of {SCHEMES})")
    if not parts:
        raise MixtureError("a mixture needs at least one part")
    for part in parts:
        _check_part(part)
    if (interleave is not None) != (scheme in INTERLEAVING_SCHEMES):
        raise MixtureError(f"interleaving settings are for schemes {INTERLEAVING_SCHEMES}, not {scheme!r}")
    if (imitation is not None) != (scheme in IMITATION_SCHEMES):
        raise MixtureError(f"imitation targets are for schemes {IMITATION_SCHEMES}, not {scheme!r}")
    if scheme in IMITATION_SCHEMES:
        mixture = _imitation_items(parts, imitation, seed)
    else:
        mixture = _label_items(scheme, parts, seed)
    if interleave is not None:
        mixture = _interleave(mixture, interleave, word_times or {}, seed)
    return mixture


def _label_items(scheme: str, parts: list[MixturePart], seed: int) -> pd.DataFrame:
    texts = [item for part in parts for item in part.text_items()]
    if scheme == "text_only":
        with_speech = [part.lang for part in parts if part.speech_ids]
        if with_speech:
            raise MixtureError(f"text_only allows no speech, but speech ids were given for {with_speech}")
        phases = [texts]
    elif scheme in ("direct_mixing", "interleaving"):
        phases = [texts + [item for part in parts for item in part.speech_items()]]
    elif scheme == "curriculum":
        abundant = [item for part in parts if not part.scarce for item in part.speech_items()]
        scarce = [item for part in parts if part.scarce for item in part.speech_items()]
        phases = [texts + abundant, texts + abundant + scarce]
    else:  # oracle
        partial = [part.lang for part in parts if len(part.speech_ids) != len(part.ids)]
        if partial:
            raise MixtureError(f"oracle uses all speech, but only part of it is allowed for {partial}")
        phases = [[item for part in parts for item in part.speech_items()]]
    assert len(phases) == len(MIXTURE_PHASES[scheme])
    rng = np.random.default_rng(seed)
    frames = []
    for phase, items in enumerate(phases, start=1):
        order = rng.permutation(len(items))
        frame = pd.DataFrame([items[index] for index in order], columns=["id", "lang", "modality", "manifest"])
        frame.insert(3, "phase", phase)
        frames.append(frame)
    mixture = pd.concat(frames, ignore_index=True)[list(LISTING_COLUMNS)]
    return mixture.astype({"id": str, "lang": str, "modality": str, "phase": "int64", "manifest": str})


def _imitation_items(parts: list[MixturePart], imitation: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Phase 2 of behaviour imitation: each target row as a speech item with its own instruction and target, in a
    seeded order. Its utterances must be speech the run may use."""
    allowed = {(part.speech_manifest, uid) for part in parts for uid in part.speech_ids}
    rows = imitation.astype({"id": str, "manifest": str})
    outside = [uid for uid, path in zip(rows["id"], rows["manifest"]) if (path, uid) not in allowed]
    if outside:
        raise MixtureError(f"{len(outside)} imitation targets are for speech the run may not use (first: "
                           f"{outside[0]!r})")
    order = np.random.default_rng(seed).permutation(len(rows))
    mixture = rows.iloc[order].reset_index(drop=True)
    mixture = mixture.assign(modality="speech", phase=MIXTURE_PHASES["behaviour_imitation"][0])
    mixture = mixture[[*LISTING_COLUMNS, "instruction", "target"]]
    return mixture.astype({"lang": str, "phase": "int64", "instruction": str, "target": str})


def _interleave(mixture: pd.DataFrame, interleave: InterleavingSettings, word_times: dict, seed: int) -> pd.DataFrame:
    """A seeded `fraction` of the speech items whose words have times become interleaved, each speaking a seeded
    span of min..max_span_words words (at most all but one word: some text stays written). A span whose audio is
    shorter than min_span_s is drawn again among the item's long enough spans (from a second generator, so that
    every other item keeps its span); an item without one stays a speech item. Both are counted in the log."""
    if not 0 <= interleave.fraction <= 1 or not 1 <= interleave.min_span_words <= interleave.max_span_words:
        raise MixtureError(f"bad interleaving settings {interleave}")
    rng, redraw = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    mixture = mixture.assign(span_start=pd.NA, span_end=pd.NA).astype({"span_start": "Int64", "span_end": "Int64"})
    candidates = [
        index for index, row in enumerate(mixture.itertuples(index=False))
        if row.modality == "speech" and len(word_times.get((row.manifest, row.id)) or ()) >= 2
    ]
    speech = int((mixture["modality"] == "speech").sum())
    if interleave.fraction > 0 and speech and not candidates:
        raise MixtureError(f"none of the {speech} speech items has word times to interleave (recorded speech: "
                           "align its words first, rule align_words)")
    chosen = sorted(rng.permutation(candidates)[: round(interleave.fraction * len(candidates))].tolist())
    redrawn = kept = 0
    for index in chosen:
        times = word_times[(mixture.at[index, "manifest"], mixture.at[index, "id"])]
        words = len(times)
        length = int(rng.integers(interleave.min_span_words, interleave.max_span_words + 1))
        length = min(length, words - 1)
        start = int(rng.integers(0, words - length + 1))
        if span_seconds(times, start, start + length) < interleave.min_span_s:
            spans = long_enough_spans(times, interleave)
            if not spans:
                kept += 1
                continue
            start, end = spans[int(redraw.integers(len(spans)))]
            length, redrawn = end - start, redrawn + 1
        mixture.loc[index, ["modality", "span_start", "span_end"]] = ["interleaved", start, start + length]
    if chosen:
        log.info("interleaving: %d of %d spans drawn again (audio shorter than min_span_s=%g s), %d items left as "
                 "speech (no span that long)", redrawn, len(chosen), interleave.min_span_s, kept)
    return mixture


def span_seconds(times: list, start: int, end: int) -> float:
    """The audio length of words [start, end) by their times."""
    return float(times[end - 1][2]) - float(times[start][1])


def long_enough_spans(times: list, interleave: InterleavingSettings) -> list[tuple[int, int]]:
    """Every span [start, end) of allowed length (all but one word at most) whose audio lasts min_span_s."""
    longest = min(interleave.max_span_words, len(times) - 1)
    return [(start, start + length) for length in range(min(interleave.min_span_words, longest), longest + 1)
            for start in range(len(times) - length + 1)
            if span_seconds(times, start, start + length) >= interleave.min_span_s]


class ManifestCache(dict):
    """Manifest frames by path, each read (read_manifest) once, when first asked for."""

    def __missing__(self, path: str) -> pd.DataFrame:
        self[path] = read_manifest(path)
        return self[path]


def with_item_data(listing: pd.DataFrame, manifests: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The mixture of a listing (build_mixture): its rows, in order, with MIXTURE_COLUMNS, each item's data taken
    from its row of `manifests[manifest]` (e.g. a ManifestCache). Raises DataError naming the manifest for an item
    that cannot be trained on."""
    utterances: dict[str, dict[str, dict]] = {}
    data = []
    for row in listing.itertuples(index=False):
        if row.manifest not in utterances:
            frame = manifests[row.manifest]
            utterances[row.manifest] = dict(zip(frame["id"].astype(str), frame.to_dict("records")))
        utt = utterances[row.manifest].get(row.id)
        if utt is None:
            raise DataError(f"id {row.id!r} of a mixture item not found", row.manifest)
        data.append(_item_data(row, utt))
    items = pd.DataFrame(data, columns=list(ITEM_COLUMNS)).astype(ITEM_DTYPES)
    return pd.concat([listing[list(LISTING_COLUMNS)].reset_index(drop=True), items], axis=1)


def _item_data(row, utt: dict) -> tuple:
    """ITEM_COLUMNS of one listed item, from its manifest row `utt`."""
    given = getattr(row, "target", None)
    # An imitation item learns its own target (the phase-1 model's answer); others the utterance's SLU label.
    target = format_target(utt["scenario"], utt["action"], utt["entities"]) if _absent(given) else given
    instruction = getattr(row, "instruction", None)
    instruction = None if _absent(instruction) else instruction
    if row.modality == "text":
        return utt["text"], target, instruction, None, None, None, None, None, None
    if row.modality not in ITEM_MODALITIES:
        raise DataError(f"unknown modality {row.modality!r} for id {row.id!r}", row.manifest)
    audio = utt["audio"]
    if _absent(audio) or not audio:
        raise DataError(f"speech item {row.id!r} has no audio", row.manifest)
    if row.modality == "speech":
        if _absent(utt["duration_s"]):
            raise DataError(f"speech item {row.id!r} has audio but no duration_s", row.manifest)
        return utt["text"], target, instruction, audio, float(utt["duration_s"]), None, None, None, None
    times = utt["word_times"]
    start, end = getattr(row, "span_start", None), getattr(row, "span_end", None)
    if _absent(start) or _absent(end) or not times or not 0 <= start < end <= len(times):
        raise DataError(f"interleaved item {row.id!r}: span [{start}, {end}) outside its {len(times or [])} timed "
                        "words", row.manifest)
    start, end = int(start), int(end)
    begin_s, end_s = float(times[start][1]), float(times[end - 1][2])
    text = interleaved_text([word for word, _, _ in times], start, end)
    # The span's length as its audio is cut.
    first, last = span_samples(begin_s, end_s)
    return text, target, instruction, audio, (last - first) / TARGET_RATE, begin_s, end_s, start, end


def _absent(value) -> bool:
    return value is None or (not isinstance(value, str) and pd.isna(value))


def _check_part(part: MixturePart) -> None:
    if len(set(part.ids)) != len(part.ids):
        raise MixtureError(f"duplicate utterance ids in {part.text_manifest}")
    unknown = sorted(set(part.speech_ids) - set(part.ids))
    if unknown:
        raise MixtureError(
            f"{len(unknown)} speech ids are not training utterances of {part.text_manifest} "
            f"(first: {unknown[0]!r})"
        )
