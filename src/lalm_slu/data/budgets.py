"""Speech budgets: which training utterances may be used as speech.

A budget is either a percentage of the pool (`25` = 25 % of the split's utterances) or a
number of utterances (`10shot`). Budgets are counted in *utterances*: when a corpus holds
several recordings of one utterance (SLURP), choosing the utterance makes all of its
recordings available, and they still count as one.

One seeded, intent-stratified ordering of the pool is drawn per (pool, seed); budget k is
a prefix of that ordering. Hence every smaller budget is a subset of every larger one
(nested by construction), and any prefix is an intent-stratified sample. Only numpy's
PCG64 generator and sha256 are used (never Python's `hash()`), so the lists are the same
on every machine and Python version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.data.records import DataError, read_manifest
from lalm_slu.config.budget_label import SpeechBudget

log = logging.getLogger(__name__)

def stable_seed(*parts: object) -> int:
    """A 64-bit seed from any values, identical on every machine."""
    text = ":".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def stratified_order(ids: Sequence[str], intents: Sequence[str], seed: int) -> list[str]:
    """Order the pool so that every prefix is (nearly) proportionally stratified by intent.

    Each intent's utterances get their own seeded shuffle; the j-th of n_i utterances of
    intent i is placed at position key (j + u_i) / n_i, with a seeded offset u_i in [0, 1).
    Sorting by that key interleaves the intents systematically: a prefix of length k holds
    k * n_i / N utterances of intent i, give or take one.
    """
    if len(ids) != len(intents):
        raise ValueError(f"{len(ids)} ids but {len(intents)} intents")
    if len(set(ids)) != len(ids):
        raise ValueError("utterance ids in the budget pool are not unique")
    by_intent: dict[str, list[str]] = defaultdict(list)
    for utterance_id, intent in zip(ids, intents):
        by_intent[intent].append(utterance_id)
    keyed: list[tuple[float, str, str]] = []
    for intent in sorted(by_intent):
        members = sorted(by_intent[intent])
        rng = np.random.default_rng(stable_seed(seed, intent))
        offset = rng.random()
        shuffled = [members[index] for index in rng.permutation(len(members))]
        keyed.extend(((j + offset) / len(members), intent, uid) for j, uid in enumerate(shuffled))
    keyed.sort()
    return [uid for _, _, uid in keyed]


def select_budget(order: Sequence[str], budget: SpeechBudget) -> list[str]:
    """The prefix of a stratified order that `budget` allows."""
    return list(order[: budget.size(len(order))])


def label_coverage(selected: Sequence[str], intent_of: dict[str, str]) -> dict:
    """How many of the pool's intents the selection covers (a small budget may miss rare ones)."""
    pool_intents = set(intent_of.values())
    covered = {intent_of[uid] for uid in selected}
    return {
        "utterances": len(selected),
        "pool_utterances": len(intent_of),
        "intents_covered": len(covered),
        "intents_total": len(pool_intents),
        "intent_coverage": round(len(covered) / len(pool_intents), 6) if pool_intents else 0.0,
    }


def write_budget_ids(ids: Sequence[str], path) -> None:
    write_text_atomic(path, "".join(f"{uid}\n" for uid in ids))


def read_budget_ids(path) -> list[str]:
    """Read an id list written by `subsample-budget` (one id per line)."""
    path = Path(path)
    if not path.exists():
        raise DataError("speech-budget id list not found", path)
    ids = [line.strip() for line in path.read_text().splitlines()]
    seen: set[str] = set()
    for number, uid in enumerate(ids, start=1):
        if not uid:
            raise DataError("blank line in id list", path, number)
        if uid in seen:
            raise DataError(f"duplicate id {uid!r}", path, number)
        seen.add(uid)
    return ids


def write_budgets(manifest: str, budgets: Sequence[SpeechBudget], seed: int, out_dir: str | Path) -> None:
    """For each budget B, OUT_DIR/B.txt (the ids, in selection order) and OUT_DIR/B.json (sizes and intent
    coverage), nested: every budget's ids start with the smaller budgets' ids."""
    frame = read_manifest(manifest)
    if frame.empty:
        log.warning("%s: empty pool; every budget is empty", manifest)
    if frame["id"].duplicated().any():
        duplicate = frame.loc[frame["id"].duplicated(), "id"].iloc[0]
        raise DataError(f"duplicate utterance id {duplicate!r}", manifest)
    ids = frame["id"].astype(str).tolist()
    intents = frame["intent"].astype(str).tolist()
    order = stratified_order(ids, intents, seed)
    intent_of = dict(zip(ids, intents))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for budget in budgets:
        selected = select_budget(order, budget)
        coverage = label_coverage(selected, intent_of)
        summary = {"budget": budget.label, "unit": budget.unit, "seed": seed, **coverage}
        if budget.unit == "shot" and budget.amount > len(order):
            summary["capped_from"] = budget.amount
            log.warning("budget %s exceeds the pool of %d utterances: using all", budget.label, len(order))
        write_budget_ids(selected, out_dir / f"{budget.label}.txt")
        write_text_atomic(out_dir / f"{budget.label}.json", json.dumps(summary, indent=2) + "\n")
        log.info(
            "budget %s: %d/%d utterances, intents covered %d/%d",
            budget.label,
            coverage["utterances"],
            coverage["pool_utterances"],
            coverage["intents_covered"],
            coverage["intents_total"],
        )
