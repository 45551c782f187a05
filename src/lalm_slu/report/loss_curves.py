"""Loss curves: every run's training loss per optimizer step (its model directory's loss.csv) and, where the run
evaluated on a dev set, its dev loss (dev.csv); one panel per corpus/language × scheme × budget, seeds overlaid.
A run is identified by the aggregate metrics CSV (its `run` column is the model directory's run name)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lalm_slu.data.records import DataError
from lalm_slu.report.summary import SCHEME_LABELS, budget_label, budget_sort_key, scheme_sort_key

RUN_KEYS = ("corpus", "lang", "source", "target", "target_text", "scheme", "budget", "seed")
SEED_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
DEV_STYLES = {"text": "--", "speech": ":"}


def read_loss_curves(model_dirs: list[Path], metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run and step: the run's keys, `curve` (train, or dev_<inputs>) and `loss`."""
    runs = metrics.drop_duplicates("run").set_index("run")
    frames = []
    for model_dir in map(Path, model_dirs):
        name = model_dir.parent.name
        if name not in runs.index:
            raise DataError(f"run {name!r} is not in the metrics CSV", model_dir)
        keys = {key: runs.at[name, key] for key in RUN_KEYS if key in runs}
        frames.append(_curve(model_dir / "loss.csv", {**keys, "run": name, "curve": "train"}))
        dev = model_dir / "dev.csv"
        if dev.exists():
            table = _read(dev, ("step", "inputs", "loss"))
            for inputs, rows in table.groupby("inputs", sort=True):
                frames.append(rows[["step", "loss"]].assign(**keys, run=name, curve=f"dev_{inputs}"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "curve", "step", "loss"])


def _curve(path: Path, keys: dict) -> pd.DataFrame:
    return _read(path, ("step", "loss"))[["step", "loss"]].assign(**keys)


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise DataError("not found", path)
    table = pd.read_csv(path)
    missing = [c for c in columns if c not in table]
    if missing:
        raise DataError(f"missing columns {missing}", path)
    return table


def _where(keys: dict) -> str:
    if pd.notna(keys.get("target")):
        text = "" if keys.get("target_text") in (True, "True", "true") else ", no target text"
        return f"{keys['corpus']} {keys['source']}→{keys['target']}{text}"
    return f"{keys['corpus']} ({keys.get('lang')})"


def loss_curves_figure(curves: pd.DataFrame) -> Figure:
    """Rows: corpus/language × scheme; columns: budgets; in a panel one colour per seed, training loss solid,
    dev loss dashed (transcripts) or dotted (speech) with markers at its evaluations."""
    if curves.empty:
        figure = Figure(figsize=(5, 1.5))
        axes = figure.add_subplot()
        axes.axis("off")
        axes.text(0.5, 0.5, "no loss curves given", ha="center", va="center")
        return figure
    curves = curves.assign(where=[_where(row) for row in curves.to_dict("records")])
    rows = sorted({(w, s) for w, s in zip(curves["where"], curves["scheme"])},
                  key=lambda ws: (ws[0], scheme_sort_key(ws[1])))
    budgets = sorted(curves["budget"].astype(str).unique(), key=budget_sort_key)
    figure = Figure(figsize=(2.8 * len(budgets) + 0.6, 2.2 * len(rows) + 0.9), layout="constrained")
    grid = figure.subplots(len(rows), len(budgets), squeeze=False)
    figure.supylabel("loss (answer tokens)", fontsize=9)
    seeds = sorted(curves["seed"].unique())
    for r, (where, scheme) in enumerate(rows):
        for c, budget in enumerate(budgets):
            axes = grid[r][c]
            panel = curves[(curves["where"] == where) & (curves["scheme"] == scheme)
                           & (curves["budget"].astype(str) == budget)]
            if panel.empty:
                axes.axis("off")
                continue
            axes.set_title(f"{where}\n{SCHEME_LABELS.get(scheme, scheme)}, {budget_label(budget)}", fontsize=8)
            axes.set_xlabel("optimizer step", fontsize=8)
            for (seed, curve), line in panel.groupby(["seed", "curve"], sort=True):
                color = SEED_COLORS[seeds.index(seed) % len(SEED_COLORS)]
                if curve == "train":
                    axes.plot(line["step"], line["loss"], color=color, linewidth=0.8, label=f"seed {seed}")
                else:
                    inputs = curve.removeprefix("dev_")
                    axes.plot(line["step"], line["loss"], color=color, linestyle=DEV_STYLES.get(inputs, "-."),
                              marker="o", markersize=3, label=f"seed {seed}, dev ({inputs})")
    labels: dict[str, object] = {}
    for axes in grid.flat:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    figure.legend(list(labels.values()), list(labels), loc="outside lower center", ncols=min(len(labels), 4),
                  frameon=False)
    return figure
