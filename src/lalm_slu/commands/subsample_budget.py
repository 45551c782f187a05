"""Write nested, seeded speech-budget id lists for one training pool.

For each budget B: OUT_DIR/B.txt (one utterance id per line, in selection order) and
OUT_DIR/B.json (sizes and intent coverage).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lalm_slu.data.budgets import SpeechBudget, label_coverage, select_budget, stratified_order, write_budget_ids
from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.data.records import DataError, read_manifest

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument("--manifest", required=True, help="manifest of the pool (e.g. a train split)")
    parser.add_argument("--budgets", required=True, nargs="+", help="budget labels, as in the file names: percentages 0-100 and/or <N>shot")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out-dir", required=True)


def run(args):
    try:
        budgets = [SpeechBudget.from_label(text) for text in args.budgets]
    except ValueError as error:
        raise SystemExit(f"--budgets: {error}") from None
    frame = read_manifest(args.manifest)
    if frame.empty:
        log.warning("%s: empty pool; every budget is empty", args.manifest)
    if frame["id"].duplicated().any():
        duplicate = frame.loc[frame["id"].duplicated(), "id"].iloc[0]
        raise DataError(f"duplicate utterance id {duplicate!r}", args.manifest)
    ids = frame["id"].astype(str).tolist()
    intents = frame["intent"].astype(str).tolist()
    order = stratified_order(ids, intents, args.seed)
    intent_of = dict(zip(ids, intents))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for budget in budgets:
        selected = select_budget(order, budget)
        coverage = label_coverage(selected, intent_of)
        summary = {"budget": budget.label, "unit": budget.unit, "seed": args.seed, **coverage}
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
