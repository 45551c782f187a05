"""Paper tables (CSV, Markdown, LaTeX) from the aggregate metrics CSV.

Monolingual: one table per corpus/language × test set; rows are text-only, every speech budget × mixing
scheme, and the oracle; each metric has a column per input (speech end to end, gold text, cascade) side by
side, and the first input's "% of oracle". Cross-lingual: one table per corpus × test set; rows are
source → target × target text × scheme × target-speech budget, with the same columns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.report.summary import (
    CROSSLINGUAL_KEYS,
    MONOLINGUAL_KEYS,
    REFERENCE_SCHEMES,
    SCHEME_LABELS,
    budget_label,
    budget_sort_key,
    is_crosslingual,
    metric_label,
    modality_sort_key,
    same_value,
    scheme_sort_key,
    seed_summary,
    yes_no,
)

DEFAULT_TABLE_METRICS = ("intent_accuracy", "slu_f1")
NOTE = "metrics in %, mean ± sd over seeds; % of oracle: of the oracle on the same input"


@dataclass
class Table:
    """A table in three renderings: `numbers` for CSV, `cells` (formatted text) for Markdown/LaTeX."""

    name: str
    title: str
    numbers: pd.DataFrame
    cells: pd.DataFrame
    rules_before: tuple[int, ...] = ()  # row positions that start a new block (a rule in LaTeX)
    note: str = "metrics in %, mean ± sd over seeds"  # after the title


def build_tables(frame: pd.DataFrame, metrics=DEFAULT_TABLE_METRICS, cascade_wer: dict | None = None) -> list[Table]:
    """`cascade_wer`: test set -> the WER of the transcripts the cascade rows read (shown in the note)."""
    frame = frame[frame["metric"].isin(metrics)]
    crosslingual = is_crosslingual(frame)
    tables = []
    mono = seed_summary(frame[~crosslingual], MONOLINGUAL_KEYS)
    by = [k for k in MONOLINGUAL_KEYS if k != "modality"]
    for keys, group in mono.groupby(by, sort=False, dropna=False):
        tables.append(_monolingual_table(dict(zip(by, keys)), group, metrics, cascade_wer or {}))
    cross_frame = frame[crosslingual].copy()
    if len(cross_frame):
        cross_frame["target_text"] = cross_frame.get("target_text", pd.Series(pd.NA, index=cross_frame.index))
        cross = seed_summary(cross_frame, (*CROSSLINGUAL_KEYS, "target_text"))
        by = ["corpus", "testset"]
        for keys, group in cross.groupby(by, sort=False, dropna=False):
            tables.append(_crosslingual_table(dict(zip(by, keys)), group, metrics, mono, cascade_wer or {}))
    return tables


def _row_order(group: pd.DataFrame, leading: list[str]) -> list[tuple]:
    """Text-only first, then budgets in increasing size with the schemes side by side, oracle last."""

    def key(row):
        scheme, budget = row[-2], row[-1]
        block = 0 if scheme == "text_only" else 2 if scheme == "oracle" else 1
        return (*[str(v) for v in row[:-2]], block, budget_sort_key(budget), scheme_sort_key(scheme))

    rows = group[[*leading, "scheme", "budget"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(rows, key=key)


def _modalities(group: pd.DataFrame) -> list[str]:
    return sorted(group["modality"].dropna().unique(), key=modality_sort_key)


def _note(modalities: list[str], testset: str, cascade_wer: dict) -> str:
    if "cascade" not in modalities:
        return NOTE
    wer = cascade_wer.get(testset)
    transcripts = "the base model's transcripts of the speech" + ("" if wer is None else f", WER {100 * wer:.1f} %")
    return f"{NOTE}; cascade: the run reads {transcripts}"


def _metric_columns(number: dict, cell: dict, rows, metric, modalities, oracle, pct_name, pct_label) -> None:
    """One value per input side by side; "% of oracle" in full in the numbers, for the first input in the cells."""
    for position, modality in enumerate(modalities):
        stats = _stats(rows[rows["modality"] == modality], metric)
        ratio = _percent_of(stats[0], oracle.get(modality))
        number.update(
            {f"{metric}_{modality}_mean": stats[0], f"{metric}_{modality}_sd": stats[1], f"{metric}_{modality}_{pct_name}": ratio}
        )
        cell[f"{metric_label(metric)} {modality}"] = _format_mean_sd(*stats)
        if position == 0:
            cell[f"{metric_label(metric)} {modality} {pct_label}"] = "" if ratio is None else f"{ratio:.1f}"


def _monolingual_table(keys: dict, group: pd.DataFrame, metrics, cascade_wer: dict) -> Table:
    modalities = _modalities(group)
    oracle = {m: {x: _mean(group[group["modality"] == x], scheme="oracle", metric=m) for x in modalities} for m in metrics}
    numbers, cells, rules = [], [], []
    previous_block = None
    for position, (scheme, budget) in enumerate(_row_order(group, [])):
        block = scheme if scheme in REFERENCE_SCHEMES else "budget"
        if previous_block is not None and block != previous_block:
            rules.append(position)
        previous_block = block
        rows = group[(group["scheme"] == scheme) & (group["budget"] == budget)]
        number = {"scheme": scheme, "budget": budget, "n_seeds": int(rows["n_seeds"].max())}
        cell = {"Scheme": SCHEME_LABELS.get(scheme, scheme), "Speech budget": budget_label(budget)}
        for metric in metrics:
            _metric_columns(number, cell, rows, metric, modalities, oracle[metric], "pct_of_oracle", "% of oracle")
        numbers.append(number)
        cells.append(cell)
    name = f"{keys['corpus']}-{keys['lang']}.{keys['testset']}"
    return _table(name, f"{keys['corpus']} ({keys['lang']})", keys["testset"], modalities, numbers, cells, rules,
                  cascade_wer)


def _crosslingual_table(keys: dict, group: pd.DataFrame, metrics, mono: pd.DataFrame, cascade_wer: dict) -> Table:
    modalities = _modalities(group)
    numbers, cells, rules = [], [], []
    previous_pair = None
    for position, (source, target, target_text, scheme, budget) in enumerate(
        _row_order(group, ["source", "target", "target_text"])
    ):
        if previous_pair is not None and (source, target) != previous_pair:
            rules.append(position)
        previous_pair = (source, target)
        rows = group[
            (group["source"] == source)
            & (group["target"] == target)
            & (same_value(group["target_text"], target_text))
            & (group["scheme"] == scheme)
            & (group["budget"] == budget)
        ]
        number = {
            "source": source,
            "target": target,
            "target_text": yes_no(target_text),
            "scheme": scheme,
            "target_speech_budget": budget,
            "n_seeds": int(rows["n_seeds"].max()),
        }
        cell = {
            "Source": source,
            "Target": target,
            "Target text": yes_no(target_text),
            "Scheme": SCHEME_LABELS.get(scheme, scheme),
            "Target speech": budget_label(budget),
        }
        target_mono = mono[
            (mono["corpus"] == keys["corpus"]) & (mono["lang"] == target) & (mono["testset"] == keys["testset"])
        ]
        for metric in metrics:
            oracle = {x: _mean(target_mono[target_mono["modality"] == x], "oracle", metric) for x in modalities}
            _metric_columns(number, cell, rows, metric, modalities, oracle, "pct_of_target_oracle", "% of target oracle")
        numbers.append(number)
        cells.append(cell)
    name = f"{keys['corpus']}-crosslingual.{keys['testset']}"
    return _table(name, f"{keys['corpus']} cross-lingual", keys["testset"], modalities, numbers, cells, rules,
                  cascade_wer)


def _table(name: str, subject: str, testset: str, modalities, numbers, cells, rules, cascade_wer: dict) -> Table:
    """A metrics table: each row's seeds in the last column, a title naming the test set and its inputs."""
    for number, cell in zip(numbers, cells):
        cell["Seeds"] = str(number["n_seeds"])
    title = f"{subject}, {testset} set, {', '.join(modalities)} input"
    note = _note(modalities, testset, cascade_wer)
    return Table(name, title, pd.DataFrame(numbers), pd.DataFrame(cells), tuple(rules), note)


def _stats(rows: pd.DataFrame, metric: str) -> tuple[float | None, float | None, int]:
    row = rows[rows["metric"] == metric]
    if row.empty:
        return None, None, 0
    mean, sd, n = row.iloc[0][["mean", "sd", "n_seeds"]]
    return float(mean), (None if pd.isna(sd) else float(sd)), int(n)


def _mean(summary: pd.DataFrame, scheme: str, metric: str) -> float | None:
    rows = summary[(summary["scheme"] == scheme) & (summary["metric"] == metric)]
    return None if rows.empty else float(rows["mean"].iloc[0])


def _percent_of(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return 100 * value / reference


def _format_mean_sd(mean: float | None, sd: float | None, n_seeds: int) -> str:
    """Percent with one decimal; "± sd" only when several seeds were run."""
    if mean is None:
        return ""
    if n_seeds > 1 and sd is not None:
        return f"{100 * mean:.1f} ± {100 * sd:.1f}"
    return f"{100 * mean:.1f}"


# --- renderings -----------------------------------------------------------------------------------


def to_markdown(table: Table) -> str:
    header = list(table.cells.columns)
    numeric = [_is_numeric_column(table.cells[c]) for c in header]
    lines = [f"**{table.title}** ({table.note})", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if right else ":---" for right in numeric) + "|")
    for row in table.cells.itertuples(index=False):
        lines.append("| " + " | ".join(str(value).replace("|", "\\|") for value in row) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: Table) -> str:
    header = list(table.cells.columns)
    align = "".join("r" if _is_numeric_column(table.cells[c]) else "l" for c in header)
    lines = [
        f"% {table.title} ({table.note}); needs \\usepackage{{booktabs}}",
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(_latex_escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    for position, row in enumerate(table.cells.itertuples(index=False)):
        if position in table.rules_before:
            lines.append("\\midrule")
        lines.append(" & ".join(_latex_escape(str(value)) for value in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _is_numeric_column(column: pd.Series) -> bool:
    values = [v for v in column.astype(str) if v and v != "–"]
    return bool(values) and all(v.split(" ± ")[0].replace(".", "", 1).lstrip("+-").isdigit() for v in values)


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def write_tables(tables: list[Table], out_dir: str | os.PathLike) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        renderings = {
            ".csv": table.numbers.to_csv(index=False, lineterminator="\n", float_format="%.6f"),
            ".md": to_markdown(table),
            ".tex": to_latex(table),
        }
        for suffix, text in renderings.items():
            path = out_dir / f"{table.name}{suffix}"
            written.append(write_text_atomic(path, text))
    return written
