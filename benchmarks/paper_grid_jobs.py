"""The paper grid's jobs, from Snakemake's own dry run: jobs per rule, GPUs per job, where each rule runs, and
fine-tuning runs per scheme. docs/SLURM.md shows this block between its `<!-- dry run: paper.yaml -->` markers;
tests/test_docs_grid.py compares it with a fresh dry run, so the numbers cannot drift from the workflow.

    python benchmarks/paper_grid_jobs.py            # print the block
    python benchmarks/paper_grid_jobs.py --write    # replace it in docs/SLURM.md

The dry run is of a scratch copy of the workflow (a fresh checkout: no results, no downloads), as
`snakemake --dry-run --forceall --configfile workflow/configs/paper.yaml` plans it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from planning_time import PAPER_CONFIG, REPO, DryRunError, dry_run_output, parse_job_stats, scratch_workflow

DOC = REPO / "docs" / "SLURM.md"
START, END = "<!-- dry run: paper.yaml -->", "<!-- /dry run -->"
RUN_SCHEME = re.compile(r"^[^_]+_(\w+)_b[^_]+_s\d+$")  # grid.run_name: {data}_{scheme}_b{budget}_s{seed}

# Which rules run on the submit host (`localrule: True`, or no shell at all): the dry run's printout does not say,
# and Snakemake's API has no public accessor, hence its workflow object (`is_local` is true of every rule when
# Snakemake executes locally, as here).
LOCAL_RULES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"),
        config_settings=ConfigSettings(configfiles=[Path(sys.argv[1])]),
    )._workflow
    print(json.dumps(sorted(rule.name for rule in workflow.rules if rule.name in workflow._localrules or rule.norun)))
"""


@dataclass
class GridJobs:
    jobs: dict[str, int]  # per rule, in the dry run's order
    gpus: dict[str, set[int]]  # per rule: the GPUs its jobs ask
    local: set[str]  # rules run on the submit host
    trained: Counter  # finetune_model jobs per scheme
    decoded: Counter  # decode_test_set jobs (run × test set) per scheme


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, {wildcards, resources, ...}) of every job in a dry run's printout."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        if rule := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line):
            jobs.append((rule.group(1), {}))
        elif jobs and (field := re.match(r"    (\w+): (.*)$", line)):
            jobs[-1][1][field.group(1)] = field.group(2)
    return jobs


def grid_jobs(workdir: Path, configfile: Path = PAPER_CONFIG) -> GridJobs:
    output, _seconds = dry_run_output(configfile, cwd=workdir, quiet=False)
    counts = parse_job_stats(output)
    jobs = planned_jobs(output)
    if Counter(rule for rule, _ in jobs) != Counter(counts):
        raise DryRunError("the jobs printed do not match the dry run's job stats")
    gpus: dict[str, set[int]] = defaultdict(set)
    trained, decoded = Counter(), Counter()
    for rule, fields in jobs:
        asked = re.search(r"\bgpu=(\d+)", fields.get("resources", ""))
        gpus[rule].add(int(asked.group(1)) if asked else 0)
        run = re.search(r"\brun=([^,]+)", fields.get("wildcards", ""))
        if rule in ("finetune_model", "decode_test_set") and run:
            scheme = RUN_SCHEME.match(run.group(1)).group(1)
            (trained if rule == "finetune_model" else decoded)[scheme] += 1
    result = subprocess.run(
        [sys.executable, "-c", LOCAL_RULES, str(configfile)], cwd=workdir, capture_output=True, text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(workdir / "src")),
    )
    if result.returncode != 0:
        raise DryRunError(f"listing the local rules failed:\n{result.stderr[-3000:]}")
    local = set(json.loads(result.stdout.strip().splitlines()[-1]))
    return GridJobs(counts, dict(gpus), local, trained, decoded)


def _gpus(asked: set[int]) -> str:
    return "–".join(str(n) for n in sorted({min(asked), max(asked)}))


def render(grid: GridJobs) -> str:
    total = sum(grid.jobs.values())
    submitted = sum(n for rule, n in grid.jobs.items() if rule not in grid.local)
    on_gpus = sum(n for rule, n in grid.jobs.items() if max(grid.gpus[rule]) > 0)
    lines = ["| rule | jobs | GPUs per job | runs as |", "|---|---:|---|---|"]
    for rule, n in grid.jobs.items():
        where = "login node (`localrule`)" if rule in grid.local else "Slurm job"
        lines.append(f"| `{rule}` | {n:,} | {_gpus(grid.gpus[rule])} | {where} |")
    lines.append(f"| total | {total:,} | | {submitted:,} Slurm jobs |")
    lines += ["", "| scheme | fine-tuning runs (`finetune_model`) | decodes (`decode_test_set`: run × test set) |",
              "|---|---:|---:|"]
    for scheme in sorted(grid.trained, key=lambda s: (-grid.trained[s], s)):
        lines.append(f"| {scheme} | {grid.trained[scheme]:,} | {grid.decoded[scheme]:,} |")
    lines.append(f"| total | {sum(grid.trained.values()):,} | {sum(grid.decoded.values()):,} |")
    lines += ["", f"{total:,} jobs over {len(grid.trained)} schemes; {submitted:,} are submitted to Slurm, of them "
              f"{on_gpus:,} on GPUs; the other {total - submitted:,} run on the login node. A run trained but not "
              "scored is the text-only phase 1 that behaviour imitation and MTBI start from where the grid has no "
              "text-only run of the same data (cross-lingual)."]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"{DOC}: markers {START} … {END} not found")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    return pattern.sub(lambda _: f"{START}\n{block}\n{END}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"replace the block in {DOC.relative_to(REPO)}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="paper-grid-") as scratch:
        block = render(grid_jobs(scratch_workflow(Path(scratch))))
    if args.write:
        DOC.write_text(replace_block(DOC.read_text(encoding="utf-8"), block), encoding="utf-8")
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
