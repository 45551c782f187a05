"""Write nested, seeded speech-budget id lists for one training pool.

For each budget B: OUT_DIR/B.txt (one utterance id per line, in selection order) and
OUT_DIR/B.json (sizes and intent coverage).
"""

from __future__ import annotations

from lalm_slu.data.budgets import SpeechBudget, write_budgets


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
    write_budgets(args.manifest, budgets, args.seed, args.out_dir)
