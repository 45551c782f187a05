"""Paper figures (PNG and PDF) from the aggregate metrics CSV, byte-identical when re-run.

budget_curves: metric vs speech budget, one line per mixing scheme with its bootstrap band (mean bounds
over seeds), text-only and oracle as horizontal lines; one panel per corpus/language × test set × modality,
a test set's inputs (speech, text, cascade) side by side on one y scale, so end to end meets cascade.
crosslingual: metric vs target-speech budget, one line per scheme × target-text setting, per language pair.
loss_curves (when given the runs' model directories): training and dev loss per step (report.loss_curves).
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from lalm_slu.core.outputs import atomic_output, write_text_atomic
from lalm_slu.report.loss_curves import loss_curves_figure, read_loss_curves
from lalm_slu.report.summary import (
    CROSSLINGUAL_KEYS,
    MONOLINGUAL_KEYS,
    REFERENCE_SCHEMES,
    SCHEME_LABELS,
    budget_label,
    budget_percent,
    budget_sort_key,
    is_crosslingual,
    metric_label,
    modality_sort_key,
    same_value,
    scheme_sort_key,
    seed_summary,
    yes_no,
)

# PDF font subsetting logs every glyph at INFO level.
logging.getLogger("fontTools").setLevel(logging.WARNING)

FIGURE_METRICS = ("slu_f1", "intent_accuracy")
FIGURE_NAMES = ("budget_curves", "crosslingual")
# Fixed style and metadata: no dates, versions or random ids end up in the files.
DETERMINISTIC_RC = {
    "svg.hashsalt": "lalm-slu",
    "pdf.fonttype": 42,
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": 150,
}
SAVE_METADATA = {
    ".png": {"Software": None},
    ".pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}
SCHEME_COLORS = {"direct_mixing": "#1f77b4", "curriculum": "#ff7f0e", "text_only": "#7f7f7f", "oracle": "#000000"}
_OTHER_COLORS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def write_figures(frame: pd.DataFrame, out_dir: str | os.PathLike, metrics=FIGURE_METRICS,
                  model_dirs: list[Path] | None = None) -> list[Path]:
    """Both figures as PNG and PDF, plus index.html showing the PNGs; with `model_dirs` (runs' model
    directories) the loss curves too."""
    figures = list(FIGURE_NAMES)
    curves = None
    if model_dirs is not None:
        curves = read_loss_curves(model_dirs, frame)  # the runs as the full CSV names them
        figures.append("loss_curves")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = frame[frame["metric"].isin(metrics)]
    crosslingual = is_crosslingual(frame)
    mono = seed_summary(frame[~crosslingual], MONOLINGUAL_KEYS)
    cross_frame = frame[crosslingual].copy()
    if "target_text" not in cross_frame:
        cross_frame["target_text"] = pd.NA
    cross = seed_summary(cross_frame, (*CROSSLINGUAL_KEYS, "target_text"))
    written = []
    with matplotlib.rc_context(DETERMINISTIC_RC):
        for name, figure in (
            ("budget_curves", budget_curves_figure(mono, metrics)),
            ("crosslingual", crosslingual_figure(cross, mono, metrics)),
            *([("loss_curves", loss_curves_figure(curves))] if curves is not None else []),
        ):
            for suffix, metadata in SAVE_METADATA.items():
                path = out_dir / f"{name}{suffix}"
                with atomic_output(path, suffix=suffix) as tmp:  # savefig picks the format by the suffix
                    figure.savefig(tmp, metadata=metadata)
                written.append(path)
    written.append(write_index_html(out_dir, [f"{name}.png" for name in figures]))
    return written


def _scheme_color(scheme: str, others: list[str]) -> str:
    if scheme in SCHEME_COLORS:
        return SCHEME_COLORS[scheme]
    if scheme not in others:
        others.append(scheme)
    return _OTHER_COLORS[others.index(scheme) % len(_OTHER_COLORS)]


def _empty_figure(message: str) -> Figure:
    figure = Figure(figsize=(5, 1.5))
    axes = figure.add_subplot()
    axes.axis("off")
    axes.text(0.5, 0.5, message, ha="center", va="center")
    return figure


def _panel_title(keys: dict) -> str:
    where = (
        f"{keys['corpus']} ({keys['lang']})"
        if "lang" in keys
        else f"{keys['corpus']} {keys['source']}→{keys['target']}"
    )
    return f"{where}\n{keys['testset']} set, {keys['modality']} input"


def budget_curves_figure(summary: pd.DataFrame, metrics=FIGURE_METRICS) -> Figure:
    summary = summary[summary["budget"].map(budget_percent).notna()]
    # A panel needs a curve: reference-only runs (e.g. an oracle kept as a cross-lingual target) stay in the tables.
    panels = [
        (keys, panel)
        for keys, panel in summary.groupby(list(MONOLINGUAL_KEYS), sort=False, dropna=False)
        if not set(panel["scheme"]) <= set(REFERENCE_SCHEMES)
    ]
    if not panels:
        return _empty_figure("no monolingual budget curves in the metrics CSV")
    panels.sort(key=lambda item: (*map(str, item[0][:-1]), modality_sort_key(item[0][-1])))
    percents = sorted({budget_percent(b) for b in summary["budget"]})
    figure = Figure(figsize=(3.4 * len(panels) + 0.4, 2.7 * len(metrics) + 0.9), layout="constrained")
    grid = figure.subplots(len(metrics), len(panels), squeeze=False, sharex=True, sharey="row")
    others: list[str] = []
    for column, (keys, panel) in enumerate(panels):
        for row, metric in enumerate(metrics):
            axes = grid[row][column]
            data = panel[panel["metric"] == metric]
            for scheme in sorted(data["scheme"].unique(), key=scheme_sort_key):
                rows = data[data["scheme"] == scheme]
                color = _scheme_color(scheme, others)
                label = SCHEME_LABELS.get(scheme, scheme)
                if scheme in REFERENCE_SCHEMES:
                    style = "--" if scheme == "text_only" else ":"
                    axes.axhline(100 * rows["mean"].mean(), color=color, linestyle=style, linewidth=1.2, label=label)
                    continue
                x = rows["budget"].map(budget_percent)
                axes.fill_between(x, 100 * rows["ci_low"], 100 * rows["ci_high"], color=color, alpha=0.18, linewidth=0)
                axes.plot(x, 100 * rows["mean"], marker="o", markersize=3.5, color=color, label=label)
            axes.margins(y=0.08)
            axes.set_xscale("symlog", linthresh=1, linscale=0.6)
            axes.set_xlim(-0.3, max(percents) * 1.3 if percents else 1)
            axes.set_xticks(percents, [f"{p:g}" for p in percents])
            axes.minorticks_off()
            _label_panel(axes, row, column, metrics, _panel_title(dict(zip(MONOLINGUAL_KEYS, keys))),
                         "speech budget (% of training utterances)")
    _figure_legend(figure, grid)
    return figure


def crosslingual_figure(summary: pd.DataFrame, mono: pd.DataFrame, metrics=FIGURE_METRICS) -> Figure:
    panels = list(summary.groupby(list(CROSSLINGUAL_KEYS), sort=False, dropna=False))
    if not panels:
        return _empty_figure("no cross-lingual runs in the metrics CSV")
    panels.sort(key=lambda item: (*map(str, item[0][:-1]), modality_sort_key(item[0][-1])))
    figure = Figure(figsize=(3.4 * len(panels) + 0.4, 2.7 * len(metrics) + 0.9), layout="constrained")
    grid = figure.subplots(len(metrics), len(panels), squeeze=False, sharey="row")
    others: list[str] = []
    for column, (keys, panel) in enumerate(panels):
        keys = dict(zip(CROSSLINGUAL_KEYS, keys))
        budgets = sorted(panel["budget"].unique(), key=budget_sort_key)
        position = {budget: index for index, budget in enumerate(budgets)}
        settings = sorted(
            panel[["scheme", "target_text"]].drop_duplicates().itertuples(index=False, name=None),
            key=lambda s: (scheme_sort_key(s[0]), str(s[1])),
        )
        for row, metric in enumerate(metrics):
            axes = grid[row][column]
            data = panel[panel["metric"] == metric]
            for scheme, target_text in settings:
                rows = data[(data["scheme"] == scheme) & same_value(data["target_text"], target_text)]
                x = rows["budget"].map(position).astype(int)
                rows, x = rows.loc[x.sort_values().index], x.sort_values()
                low = (100 * (rows["mean"] - rows["ci_low"])).clip(lower=0).fillna(0)
                high = (100 * (rows["ci_high"] - rows["mean"])).clip(lower=0).fillna(0)
                text = {"yes": ", target text", "no": ", no target text"}.get(yes_no(target_text), "")
                axes.errorbar(
                    x,
                    100 * rows["mean"],
                    yerr=[low, high],
                    marker="o",
                    markersize=3.5,
                    capsize=2,
                    color=_scheme_color(scheme, others),
                    linestyle="-" if text != ", no target text" else "--",
                    label=SCHEME_LABELS.get(scheme, scheme) + text,
                )
            oracle = mono[
                (mono["corpus"] == keys["corpus"])
                & (mono["lang"] == keys["target"])
                & (mono["testset"] == keys["testset"])
                & (mono["modality"] == keys["modality"])
                & (mono["scheme"] == "oracle")
                & (mono["metric"] == metric)
            ]
            if len(oracle):
                axes.axhline(
                    100 * oracle["mean"].mean(),
                    color="#000000",
                    linestyle=":",
                    linewidth=1.2,
                    label=f"target oracle ({keys['target']}, all speech)",
                )
            axes.set_xticks(range(len(budgets)), [budget_label(b) for b in budgets])
            axes.set_xlim(-0.5, len(budgets) - 0.5)
            _label_panel(axes, row, column, metrics, _panel_title(keys), "target-language speech budget")
    _figure_legend(figure, grid)
    return figure


def _label_panel(axes, row: int, column: int, metrics, title: str, budget_axis: str) -> None:
    """A grid's labels: the test set atop each column, the budget axis under the last row, the metric left of
    the first column (one metric a row)."""
    if row == 0:
        axes.set_title(title, fontsize=9)
    if row == len(metrics) - 1:
        axes.set_xlabel(budget_axis)
    if column == 0:
        axes.set_ylabel(f"{metric_label(metrics[row])} (%)")


def _figure_legend(figure: Figure, grid) -> None:
    """One legend for the figure, each label once, in drawing order."""
    labels: dict[str, object] = {}
    for axes in grid.flat:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    figure.legend(
        list(labels.values()), list(labels), loc="outside lower center", ncols=min(len(labels), 4), frameon=False
    )


def write_index_html(out_dir: Path, images: list[str]) -> Path:
    body = "\n".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}" style="max-width:100%">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name in images
    )
    return write_text_atomic(
        out_dir / "index.html",
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>lalm-slu figures</title></head>\n'
        f'<body style="background:#fff">\n{body}\n</body></html>\n',
    )


def find_chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


def screenshot_html(html_path: str | os.PathLike, png_path: str | os.PathLike, window=(1400, 1800)) -> Path:
    """Render a page in headless chromium and save a screenshot: checks that the figures load in a browser."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("chromium is not installed (Debian: apt-get install -y chromium)")
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
            f"--screenshot={png_path}",
            Path(html_path).resolve().as_uri(),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if completed.returncode != 0 or not png_path.exists():
        raise RuntimeError(f"chromium failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return png_path
