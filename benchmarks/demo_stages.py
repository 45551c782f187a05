"""Where a finished demo run's time went, per rule and per stage, from what the run itself left behind: Snakemake's
per-job benchmark files (`results/benchmarks/<rule>/<job>.tsv`: the job's wall seconds) and the `stage seconds: {...}`
line each `lalm-slu` command logs (`logs/<rule>/<job>.log`: start-up, model load, data, tokenization, collation,
training steps, checkpoints, output, decoding). What a job's wall time holds beyond its process's own total is the
interpreter start and the shell (`outside`). `make demo` appends its own wall time to `logs/demo_wall_time.log`.

    python benchmarks/demo_stages.py [RUN_DIR] [--out benchmarks/results/demo_stages.json]

Prints a Markdown table (seconds summed over jobs: core-seconds at one thread per job) and writes the JSON.
Plain Python: it imports nothing heavy and can run while the demo does.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

PREFIX = "stage seconds: "  # lalm_slu.core.stages.PREFIX, repeated: this script must not import the package
STAGE_ORDER = ("outside", "start_up", "model_load", "data", "tokenization", "collation", "steps", "checkpoints",
               "decoding", "output")


def job_stages(log: Path) -> dict[str, float] | None:
    """The last `stage seconds` line of a job log (a re-run appends a new one), or None."""
    if not log.is_file():
        return None
    found = None
    for line in log.read_text(errors="replace").splitlines():
        if PREFIX in line:
            found = json.loads(line.split(PREFIX, 1)[1])
    return found


def collect(run_dir: Path) -> dict:
    rules: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "wall_s": 0.0, "stages": defaultdict(float)})
    for tsv in sorted((run_dir / "results" / "benchmarks").rglob("*.tsv")):
        relative = tsv.relative_to(run_dir / "results" / "benchmarks")
        rule = relative.parts[0]
        with open(tsv, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            continue
        wall = float(rows[-1]["s"])
        entry = rules[rule]
        entry["jobs"] += 1
        entry["wall_s"] += wall
        stages = job_stages(run_dir / "logs" / relative.with_suffix(".log"))
        if stages:
            total = stages.pop("total")
            entry["stages"]["outside"] += max(0.0, wall - total)
            for name, seconds in stages.items():
                entry["stages"][name] += seconds
    wall_log = run_dir / "logs" / "demo_wall_time.log"
    return {
        "rules": {rule: {"jobs": e["jobs"], "wall_s": round(e["wall_s"], 1),
                         "stages": {k: round(v, 1) for k, v in e["stages"].items()}} for rule, e in rules.items()},
        "demo_wall_time": wall_log.read_text().strip().splitlines()[-1] if wall_log.is_file() else None,
    }


def markdown(result: dict) -> str:
    stages = [s for s in STAGE_ORDER if any(s in r["stages"] for r in result["rules"].values())]
    lines = ["| rule | jobs | wall s | " + " | ".join(stages) + " |", "|---|---:|---:|" + "---:|" * len(stages)]
    for rule, entry in sorted(result["rules"].items(), key=lambda item: -item[1]["wall_s"]):
        cells = [f"{entry['stages'][s]:.0f}" if s in entry["stages"] else "" for s in stages]
        lines.append(f"| {rule} | {entry['jobs']} | {entry['wall_s']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=".", help="the checkout the demo ran in")
    parser.add_argument("--out", help="JSON file to write (default: print only)")
    args = parser.parse_args()
    result = collect(Path(args.run_dir))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    if result["demo_wall_time"]:
        print(f"\nmake demo: {result['demo_wall_time']}")


if __name__ == "__main__":
    main()
