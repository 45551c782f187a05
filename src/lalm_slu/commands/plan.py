"""`lalm-slu plan`: the grid's GPU jobs, GPUs, memory, FLOPs, checkpoint bytes and GPU-hours, before anything runs.

    lalm-slu plan --configfile workflow/configs/paper.yaml [--json]

The configfiles are read as the Snakefile reads them (lalm_slu.config.layered: ./config.yaml over the demo model's
recipe, each --configfile on top, the schema's defaults filled in). The formulas and assumptions are in
lalm_slu.planning.cost_plan; every GPU job of the workflow asks for the GPUs and time limit printed here. `lalm-slu plan-memory` prints one job's memory table.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from lalm_slu.config.files import shown_path
from lalm_slu.config.layered import load_config
from lalm_slu.planning.cost_plan import PlanError, check_plan_inputs, grid_costs, plan_settings, read_plan_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", nargs="+", type=Path, default=[], help="config files laid over ./config.yaml")
    parser.add_argument("--config-data", help="the workflow's own (validated) config as JSON, instead of files")
    parser.add_argument("--json", action="store_true", help="the plan as JSON (jobs, totals, assumptions)")
    parser.add_argument("--out", type=Path, help="also write the plan as JSON here")
    parser.add_argument("--figure", type=Path, help="also draw GPU-hours by scheme and rule into this PNG")


def read_config(configfiles: list[Path]) -> dict:
    """The config `snakemake --configfile <configfiles>` runs with here; its errors name the file or key."""
    from snakemake.exceptions import WorkflowError

    try:
        return load_config(configfiles)
    except WorkflowError as error:
        raise PlanError(f"config ({', '.join(map(str, configfiles)) or 'config.yaml'}): {error}") from None


def plan(config: dict) -> dict:
    check_plan_inputs(config)
    arch, config_json = read_plan_config(config)
    settings, sources = plan_settings(config)
    costs = grid_costs(config, arch, settings)
    return {"model_shape": shown_path(config_json), "assumptions": {**settings.to_dict(), "sources": sources},
            "jobs": [{**asdict(cost), "gpu_hours": cost.gpu_hours, "runtime_minutes": cost.runtime_minutes(settings)}
                     for cost in costs],
            "by_rule": totals(costs, lambda c: c.rule), "by_scheme": totals(costs, lambda c: c.scheme),
            "total": totals(costs, lambda c: "total")["total"]}


def totals(costs, key) -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "gpu_hours": 0.0, "pflops": 0.0, "max_gpus": 0,
                                                "max_memory_gb": 0.0, "checkpoint_gb": 0.0, "io_tb": 0.0})
    for cost in costs:
        row = out[key(cost)]
        row["jobs"] += 1
        row["gpu_hours"] += cost.gpu_hours
        row["pflops"] += cost.flops / 1e15
        row["max_gpus"] = max(row["max_gpus"], cost.gpus)
        row["max_memory_gb"] = max(row["max_memory_gb"], cost.memory_gb)
        row["checkpoint_gb"] = max(row["checkpoint_gb"], cost.checkpoint_bytes / 1e9)
        row["io_tb"] += cost.io_bytes / 1e12
    return dict(out)


def table(title: str, rows: dict[str, dict]) -> str:
    lines = [f"| {title} | jobs | GPUs per job (most) | memory per GPU (GB) | checkpoint (GB) | I/O (TB) | PFLOP "
             "| GPU-hours |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['jobs']:,} | {row['max_gpus']} | {row['max_memory_gb']:.1f} "
                     f"| {row['checkpoint_gb']:.0f} | {row['io_tb']:.1f} | {row['pflops']:,.0f} "
                     f"| {row['gpu_hours']:,.0f} |")
    return "\n".join(lines)


def render(result: dict) -> str:
    assumptions = result["assumptions"]
    sources = assumptions["sources"]
    lines = [table("rule", {**result["by_rule"], "total": result["total"]}), "",
             table("scheme", result["by_scheme"]), "",
             f"Model shape from {result['model_shape']}. Assumptions (config `plan`): peak "
             f"{assumptions['gpu_peak_tflops']:g} TFLOP/s per GPU, MFU {assumptions['mfu']:g} ({sources['mfu']}), "
             f"decoding {assumptions['decode_tokens_per_second']:g} tokens/s per GPU "
             f"({sources['decode_tokens_per_second']}), filesystem {assumptions['filesystem_gb_per_second']:g} GB/s, "
             f"checkpoint staging {assumptions['staging_gb_per_second']:g} GB/s per GPU (asynchronous saves), "
             f"time limits = planned time × {assumptions['runtime_margin']:g}."]
    return "\n".join(lines)


def draw(result: dict, path: Path) -> None:
    """GPU-hours per scheme, stacked by rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = list(result["by_scheme"])
    rules = list(result["by_rule"])
    hours = {(job["scheme"], job["rule"]): 0.0 for job in result["jobs"]}
    for job in result["jobs"]:
        hours[(job["scheme"], job["rule"])] += job["gpu_hours"]
    figure, axes = plt.subplots(figsize=(8, 4))
    bottom = [0.0] * len(schemes)
    for rule in rules:
        values = [hours.get((scheme, rule), 0.0) for scheme in schemes]
        axes.bar(schemes, values, bottom=bottom, label=rule)
        bottom = [b + v for b, v in zip(bottom, values)]
    axes.set_ylabel("GPU-hours (planned)")
    axes.set_title(f"Planned GPU-hours: {result['total']['gpu_hours']:,.0f} in all")
    axes.legend(fontsize=8)
    plt.setp(axes.get_xticklabels(), rotation=30, ha="right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    try:
        config = json.loads(args.config_data) if args.config_data else read_config(args.configfile)
        result = plan(config)
    except (PlanError, ValueError) as error:
        raise SystemExit(f"lalm-slu plan: error: {error}") from None
    print(json.dumps(result, indent=1) if args.json else render(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.figure:
        draw(result, args.figure)
    return 0
