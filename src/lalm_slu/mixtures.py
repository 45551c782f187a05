"""Training mixtures: which utterance is seen as text or as speech, in which phase.

A mixture has one row per training item: `id`, `lang`, `modality` (text|speech), `phase`
(1, or 2 for the curriculum's second phase) and `manifest` (the manifest the item is read
from). Training reads nothing else.

The data of a run come in parts, one per language. A part knows all its training ids and
the ids whose speech may be used; a *scarce* part's speech is the budgeted resource.

- text_only: every utterance as text (phase 1); no speech allowed.
- direct_mixing: every utterance as text plus the allowed speech, shuffled together (phase 1).
- curriculum: phase 1 = everything except the scarce speech; phase 2 = phase 1 plus the
  scarce speech, shuffled together. Monolingually, phase 1 is text only.
- oracle: every utterance as speech (phase 1); every part must allow all of its speech.

Cross-lingual runs follow the paper's setting: the source language contributes all of its
text and all of its speech (not scarce), the target language all of its text (unless a run
leaves target text out) and its speech budget (scarce). Within each phase the order is a
seeded shuffle of a fixed listing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from lalm_slu.schemes import MIXTURE_PHASES

SCHEMES = tuple(MIXTURE_PHASES)
MIXTURE_COLUMNS = ("id", "lang", "modality", "phase", "manifest")


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


def build_mixture(scheme: str, parts: list[MixturePart], seed: int) -> pd.DataFrame:
    """The training items of one run, as a frame with MIXTURE_COLUMNS."""
    if scheme not in SCHEMES:
        raise MixtureError(f"unknown scheme {scheme!r} (expected one of {SCHEMES})")
    if not parts:
        raise MixtureError("a mixture needs at least one part")
    for part in parts:
        _check_part(part)
    texts = [item for part in parts for item in part.text_items()]
    if scheme == "text_only":
        with_speech = [part.lang for part in parts if part.speech_ids]
        if with_speech:
            raise MixtureError(f"text_only allows no speech, but speech ids were given for {with_speech}")
        phases = [texts]
    elif scheme == "direct_mixing":
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
    mixture = pd.concat(frames, ignore_index=True)[list(MIXTURE_COLUMNS)]
    return mixture.astype({"id": str, "lang": str, "modality": str, "phase": "int64", "manifest": str})


def _check_part(part: MixturePart) -> None:
    if len(set(part.ids)) != len(part.ids):
        raise MixtureError(f"duplicate utterance ids in {part.text_manifest}")
    unknown = sorted(set(part.speech_ids) - set(part.ids))
    if unknown:
        raise MixtureError(
            f"{len(unknown)} speech ids are not training utterances of {part.text_manifest} "
            f"(first: {unknown[0]!r})"
        )
