"""Corpus readers and `read_corpus`, the one way a raw corpus becomes per-split utterance lists.

Each reader is `read(source, corpus, lang, policy, **options) -> list[Utterance]`; its keyword
options (e.g. SLURP's `recording`, the hub readers' `cache_dir`/`audio_dir`) come from config.
`read_corpus` then removes train utterances that also occur in an evaluation split and caps
each split with a seeded sample stratified by intent.
"""

from __future__ import annotations

import inspect
import logging
import random
import re
from collections import defaultdict
from typing import Callable

from lalm_slu.data.corpora import hub
from lalm_slu.data.corpora.common import BAD_RECORD_MODES, BadRecordPolicy, utterance_key
from lalm_slu.data.corpora.massive import read_massive
from lalm_slu.data.corpora.slurp import read_slurp_release
from lalm_slu.data.corpora.xsid import read_xsid
from lalm_slu.data.records import SPLITS, DataError, Utterance

log = logging.getLogger(__name__)

READERS: dict[str, Callable[..., list[Utterance]]] = {
    "massive": read_massive,
    "slurp_release": read_slurp_release,
    "xsid": read_xsid,
    "slurp_hub": hub.read_slurp_hub,
    "italic_hub": hub.read_italic,
    "speech_massive_hub": hub.read_speech_massive,
}

# Named id lists a corpus defines for its train split (written next to the manifests).
SUBSETS: dict[str, dict[str, Callable[..., list[str]]]] = {
    "speech_massive_hub": {"train_115": hub.speech_massive_shot_ids},
}

EVAL_SPLITS = ("dev", "test")


def reader_options(reader: str) -> list[str]:
    """The keyword options a reader accepts beyond (source, corpus, lang, policy)."""
    parameters = list(inspect.signature(READERS[reader]).parameters)
    return parameters[4:]


def read_corpus(
    reader: str,
    source: str,
    corpus: str,
    lang: str,
    on_bad_record: str = "error",
    max_utterances: dict[str, int | None] | None = None,
    seed: int = 0,
    **options,
) -> dict[str, list[Utterance]]:
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; choose one of {sorted(READERS)}")
    unknown = sorted(set(options) - set(reader_options(reader)))
    if unknown:
        raise ValueError(f"reader {reader!r} has no option(s) {unknown}; it accepts {reader_options(reader)}")
    max_utterances = max_utterances or {}
    bad_split_keys = sorted(set(max_utterances) - set(SPLITS))
    if bad_split_keys:
        raise ValueError(f"max_utterances keys {bad_split_keys} are not splits {SPLITS}")
    policy = BadRecordPolicy(on_bad_record)
    utterances = READERS[reader](source, corpus, lang, policy, **options)
    if policy.dropped:
        log.warning("%s/%s: dropped %d bad record(s) from %s", corpus, lang, len(policy.dropped), source)
    if not utterances:
        # Three empty manifests would pass every later stage and train on nothing.
        reason = f"all {len(policy.dropped)} records were bad" if policy.dropped else "the source holds no records"
        raise DataError(f"no utterances for {corpus}/{lang}: {reason}", source)
    splits = {split: [u for u in utterances if u.split == split] for split in SPLITS}
    log.info("%s/%s read: %s", corpus, lang, counts_text(splits))
    evaluation = [u for split in EVAL_SPLITS for u in splits[split]]
    splits["train"], removed = remove_eval_overlap(splits["train"], evaluation)
    log.info("%s/%s: removed %d train utterance(s) whose text occurs in dev/test", corpus, lang, removed)
    for split in SPLITS:
        limit = max_utterances.get(split)
        if limit is not None and len(splits[split]) > limit:
            splits[split] = cap_stratified(splits[split], limit, seed=seed, salt=f"{corpus}/{lang}/{split}")
    log.info("%s/%s kept: %s", corpus, lang, counts_text(splits))
    return splits


def counts_text(splits: dict[str, list[Utterance]]) -> str:
    return ", ".join(f"{split} {len(items)}" for split, items in splits.items())


def overlap_key(text: str) -> str:
    """Lower-cased words and punctuation marks, single-spaced: `Is it hot?` and `is it hot ?` match."""
    return " ".join(re.findall(r"\w+|[^\w\s]", text.lower()))


def remove_eval_overlap(train: list[Utterance], evaluation: list[Utterance]) -> tuple[list[Utterance], int]:
    """Drop train utterances whose text (see overlap_key) equals an evaluation utterance's text."""
    held_out = {overlap_key(u.text) for u in evaluation}
    kept = [u for u in train if overlap_key(u.text) not in held_out]
    return kept, len(train) - len(kept)


def cap_stratified(utterances: list[Utterance], limit: int, seed: int, salt: str = "") -> list[Utterance]:
    """Keep `limit` utterances, each intent in proportion to its share (largest remainder), order kept.

    Records of one utterance (SLURP `all` recordings) are kept or dropped together, so the
    limit counts utterances. The same seed and salt give the same subset.
    """
    if limit < 0:
        raise ValueError(f"utterance limit must be >= 0, got {limit}")
    groups: dict[str, list[int]] = defaultdict(list)
    for index, utt in enumerate(utterances):
        groups[utterance_key(utt.id)].append(index)
    if limit >= len(groups):
        return list(utterances)
    by_intent: dict[str, list[str]] = defaultdict(list)
    for key, indices in groups.items():
        by_intent[utterances[indices[0]].intent].append(key)
    quotas = proportional_quotas({intent: len(keys) for intent, keys in by_intent.items()}, limit)
    chosen: set[str] = set()
    for intent in sorted(by_intent):
        rng = random.Random(f"{seed}:{salt}:{intent}")
        chosen.update(rng.sample(by_intent[intent], quotas[intent]))
    return [utt for utt in utterances if utterance_key(utt.id) in chosen]


def proportional_quotas(sizes: dict[str, int], limit: int) -> dict[str, int]:
    """Split `limit` over groups in proportion to size; leftovers go to the largest remainders."""
    total = sum(sizes.values())
    exact = {name: limit * size / total for name, size in sizes.items()}
    quotas = {name: int(value) for name, value in exact.items()}
    leftover = limit - sum(quotas.values())
    by_remainder = sorted(sizes, key=lambda name: (-(exact[name] - quotas[name]), -sizes[name], name))
    for name in by_remainder[:leftover]:
        quotas[name] += 1
    return quotas


def read_subsets(reader: str, source: str, lang: str, train_ids: set[str], **options) -> dict[str, list[str]]:
    """The reader's named train subsets, restricted to the train ids that were kept."""
    subsets = {}
    for name, function in SUBSETS.get(reader, {}).items():
        ids = function(source, lang, **options)
        kept = [i for i in ids if i in train_ids]
        if len(kept) < len(ids):
            log.warning("subset %s: %d of %d ids are not in the kept train split", name, len(ids) - len(kept), len(ids))
        subsets[name] = kept
    return subsets


__all__ = [
    "BAD_RECORD_MODES",
    "READERS",
    "SUBSETS",
    "BadRecordPolicy",
    "cap_stratified",
    "overlap_key",
    "read_corpus",
    "read_subsets",
    "reader_options",
    "remove_eval_overlap",
]
