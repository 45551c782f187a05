"""Time planning the paper grid: `snakemake --dry-run` with workflow/configs/paper.yaml.

    python benchmarks/planning_time.py [--repeats 3] [--configfile workflow/configs/paper.yaml]

Planning needs neither network nor GPU: it validates the config, checks that fine-tuning fits the
configured GPUs, expands the grid and builds the DAG of every job, downloads included. It runs in a
scratch copy of the workflow, as a fresh checkout, so neither results nor downloads of this checkout
are needed or touched. Writes wall times and the number of jobs per rule to
benchmarks/results/planning_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO / "workflow" / "configs" / "paper.yaml"
RESULT = REPO / "benchmarks" / "results" / "planning_time.json"
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "envs", "src")


class DryRunError(RuntimeError):
    pass


def parse_job_stats(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table ({rule: jobs}, without the total)."""
    lines = output.splitlines()
    try:
        start = lines.index("Job stats:")
    except ValueError:
        raise DryRunError(f"no 'Job stats:' table in the dry-run output:\n{output[-3000:]}") from None
    counts: dict[str, int] = {}
    for line in lines[start + 3 :]:  # skip the title, the header and the dashes
        name, _, count = line.rpartition(" ")
        if not name.strip() or not count.isdigit():
            break
        if name.strip() == "total":
            if sum(counts.values()) != int(count):
                raise DryRunError(f"job stats do not add up to their total:\n{output[-3000:]}")
            return counts
        counts[name.strip()] = int(count)
    raise DryRunError(f"job stats table without a total:\n{output[-3000:]}")


def scratch_workflow(directory: Path, configfile: Path = PAPER_CONFIG) -> Path:
    """The workflow's files copied to `directory`: a fresh checkout, without data or model."""
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, directory / name)
    return directory


def dry_run(configfile: Path = PAPER_CONFIG, cwd: Path = REPO) -> tuple[dict[str, int], float]:
    """Plan every job of the grid once in `cwd` (forced: existing results do not shrink the plan);
    return ({rule: jobs}, wall seconds)."""
    output, seconds = dry_run_output(configfile, cwd)
    return parse_job_stats(output), seconds


def dry_run_output(configfile: Path = PAPER_CONFIG, cwd: Path = REPO, quiet: bool = True) -> tuple[str, float]:
    """The forced dry run's printed output (only the job stats when `quiet`, else every job too) and its wall
    seconds."""
    cmd = [sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--cores", "1", "--configfile", str(configfile)]
    if quiet:
        cmd += ["--quiet", "rules", "host"]
    # Planning must not touch the network: the hub libraries read only their cache, if at all.
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(cwd / "src"), os.environ.get("PYTHONPATH")])),
    )
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise DryRunError(f"{' '.join(cmd)} exited {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout + result.stderr, seconds


def snakemake_version() -> str:
    result = subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True, text=True)
    return result.stdout.strip()


def git_commit() -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=PAPER_CONFIG)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    configfile = args.configfile.resolve()
    timings, counts = [], {}
    with tempfile.TemporaryDirectory(prefix="planning-") as scratch:
        workdir = scratch_workflow(Path(scratch), configfile)
        for _ in range(args.repeats):
            counts, seconds = dry_run(configfile, cwd=workdir)
            timings.append(round(seconds, 3))
    shown = configfile.relative_to(REPO) if configfile.is_relative_to(REPO) else configfile
    result = {
        "command": f"snakemake --dry-run --forceall --cores 1 --configfile {shown}",
        "wall_seconds": timings,
        "median_seconds": round(statistics.median(timings), 3),
        "jobs_total": sum(counts.values()),
        "jobs_per_rule": dict(sorted(counts.items())),
        "snakemake": snakemake_version(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        # Other work on the machine stretches wall times; this says how busy it was.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "commit": git_commit(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['jobs_total']} jobs planned in {result['median_seconds']} s (median of {args.repeats}); "
        f"wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
