"""Fake `score` results laid out as the workflow writes them, for the report tests.

Every metric of a run has the same value, so expected table cells can be worked out by hand:
value = BASE[scheme, budget] + 0.02 * seed + MODALITY_OFFSET[modality], CI = value ± 0.05.
"""

import json

from lalm_slu.evaluation.metrics import METRIC_NAMES

# (scheme, budget) -> value at seed 0, monolingual slurp/en runs (seeds 0 and 1).
MONOLINGUAL_BASE = {
    ("text_only", "0"): 0.50,
    ("direct_mixing", "1"): 0.60,
    ("curriculum", "1"): 0.62,
    ("direct_mixing", "10"): 0.70,
    ("curriculum", "10"): 0.74,
    ("oracle", "100"): 0.80,
}
# (scheme, budget, target_text) -> value, cross-lingual xsid en->de runs (seed 0 only).
CROSSLINGUAL_BASE = {
    ("curriculum", "0", True): 0.30,
    ("curriculum", "115shot", True): 0.40,
    ("curriculum", "10", True): 0.45,
    ("direct_mixing", "10", False): 0.35,
}
TARGET_ORACLE = 0.90  # xsid/de oracle, seed 0
# Each input scores differently, so a table that mixes them up shows it.
MODALITY_OFFSET = {"speech": 0.0, "text": 0.05, "cascade": -0.10}


def score_result(value, meta):
    metrics = {name: {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05} for name in METRIC_NAMES}
    counts = {
        "n_gold": 100,
        "n_gold_utterances": 100,
        "n_pred": 100,
        "n_missing": 0,
        "n_extra": 0,
        "n_bad_lines": 0,
        "n_parse_failures": 2,
        "parse_failure_rate": 0.02,
    }
    return {"meta": meta, "granularity": "utterance", "counts": counts, "metrics": metrics}


def write_result(root, meta, value, testset="test"):
    path = root / "runs" / meta["run"] / "metrics" / f"{testset}.{meta['modality']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(score_result(value, {**meta, "testset": testset})), encoding="utf-8")
    return path


def write_fake_results(root, modalities=("speech",)):
    """All fake runs under root/runs; returns the metric file paths."""
    paths = []
    for modality in modalities:
        for (scheme, budget), base in MONOLINGUAL_BASE.items():
            for seed in (0, 1):
                meta = {
                    "run": f"slurp-en_{scheme}_b{budget}_s{seed}",
                    "corpus": "slurp",
                    "lang": "en",
                    "scheme": scheme,
                    "budget": budget,
                    "seed": seed,
                    "modality": modality,
                    "wall_time_s": 1.5,
                }
                paths.append(write_result(root, meta, base + 0.02 * seed + MODALITY_OFFSET[modality]))
        for (scheme, budget, target_text), value in CROSSLINGUAL_BASE.items():
            text = "t" if target_text else "nt"
            meta = {
                "run": f"xsid-en2de_{scheme}_{text}_b{budget}_s0",
                "corpus": "xsid",
                "source": "en",
                "target": "de",
                "target_text": target_text,
                "scheme": scheme,
                "budget": budget,
                "seed": 0,
                "modality": modality,
            }
            paths.append(write_result(root, meta, value + MODALITY_OFFSET[modality]))
        meta = {
            "run": "xsid-de_oracle_b100_s0",
            "corpus": "xsid",
            "lang": "de",
            "scheme": "oracle",
            "budget": "100",
            "seed": 0,
            "modality": modality,
        }
        paths.append(write_result(root, meta, TARGET_ORACLE + MODALITY_OFFSET[modality]))
    return paths
