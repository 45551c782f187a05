"""The demo's wall time on more cores than it ran on, estimated from what a finished run left behind: every job,
its inputs, outputs and threads from Snakemake's own logs (`.snakemake/log/*.snakemake.log`, or the output of
`make demo`), and its duration on a core of its own: the CPU seconds of its benchmark file
(`results/benchmarks/<rule>/<job>.tsv`, `cpu_time`) where the rule keeps one, else its wall seconds in the log.
Jobs are then scheduled as Snakemake's local scheduler would on N cores (a job as soon as its inputs exist and its
threads are free; longest remaining chain first). The critical path (infinitely many cores) bounds every N.

    python benchmarks/demo_cores.py RUN_DIR LOG [LOG ...] [--plan DRY_RUN] [--out benchmarks/results/demo_cores.json]

With `--plan` (the output of `snakemake -n --forceall`), the whole planned demo is scheduled: jobs the logs do not
show (a run still going, or outputs kept from an earlier run) take their rule's median measured work.

The CPU seconds leave out what a loaded machine adds (waiting for a core), so a run on a quiet machine is the check:
the estimate for the cores it ran on is printed beside its measured wall time when `logs/demo_wall_time.log` has it.
Plain Python: it imports nothing heavy.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

CORES = (1, 2, 4, 8, 16, 32)
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
FINISHED = re.compile(r"^Finished jobid: (\d+)")


@dataclass
class Job:
    rule: str
    jobid: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    benchmark: str | None = None
    threads: int = 1
    started: datetime | None = None
    finished: datetime | None = None


def read_jobs(log: Path, finished_only: bool = True) -> list[Job]:
    """The jobs a Snakemake log shows as finished (`finished_only=False`: every job it lists, as a dry run does)."""
    jobs, stamp, current = {}, None, None
    for line in log.read_text(errors="replace").splitlines():
        if match := STAMP.match(line.strip()):
            stamp = datetime.strptime(match.group(1), "%a %b %d %H:%M:%S %Y")
            current = None
        elif match := RULE.match(line.strip()):
            current = Job(match.group(1), "", started=stamp)
        elif current is not None and ":" in line and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key in ("input", "output"):
                setattr(current, key + "s", [v.strip() for v in value.split(",") if v.strip()])
            elif key == "benchmark":
                current.benchmark = value.strip()
            elif key == "threads":
                current.threads = int(value)
            elif key == "jobid":
                current.jobid = value.strip()
                jobs[current.jobid] = current
        elif match := FINISHED.match(line.strip()):
            if match.group(1) in jobs:
                jobs[match.group(1)].finished = stamp
    return [job for job in jobs.values() if job.outputs and (job.finished is not None or not finished_only)]


def cpu_seconds(run_dir: Path, job: Job) -> float:
    """The job's work in core-seconds: its benchmark's CPU seconds, else its wall time on each of its threads."""
    if job.benchmark and (run_dir / job.benchmark).is_file():
        with open(run_dir / job.benchmark) as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        return float(row["cpu_time"])
    return (job.finished - job.started).total_seconds() * job.threads


def planned_work(planned: list[Job], measured: dict[tuple, float], rules: dict[str, Job]) -> list[float]:
    """Each planned job's work: its own measurement, else the median of its rule's measured jobs."""
    by_rule: dict[str, list[float]] = {}
    for outputs, work in measured.items():
        by_rule.setdefault(rules[outputs].rule, []).append(work)
    work = []
    for job in planned:
        if tuple(job.outputs) in measured:
            work.append(measured[tuple(job.outputs)])
        elif job.rule in by_rule:
            work.append(statistics.median(by_rule[job.rule]))
        else:
            work.append(0.0)  # a rule with no measured job: `all`, or one that ran in no log given
    return work


def schedule(jobs: list[Job], work: list[float], depends: list[set[int]], cores: int | None) -> float:
    """Makespan on `cores` (None: unlimited): ready jobs start longest-remaining-chain first; a job's work is spread
    over its threads, at most `cores` of them."""
    durations = [w / min(job.threads, cores or job.threads) for w, job in zip(work, jobs)]
    dependents = [set() for _ in jobs]
    for job, needs in enumerate(depends):
        for need in needs:
            dependents[need].add(job)
    chain = [0.0] * len(jobs)
    for job in reversed(topological_order(depends)):
        chain[job] = durations[job] + max((chain[d] for d in dependents[job]), default=0.0)
    if cores is None:
        return max(chain, default=0.0)
    waiting = [len(needs) for needs in depends]
    ready = [(-chain[j], j) for j in range(len(jobs)) if not waiting[j]]
    heapq.heapify(ready)
    running, now, free = [], 0.0, cores
    while ready or running:
        blocked = []
        while ready:
            priority, job = heapq.heappop(ready)
            threads = min(jobs[job].threads, cores)
            if threads <= free:
                free -= threads
                heapq.heappush(running, (now + durations[job], job, threads))
            else:
                blocked.append((priority, job))
        for item in blocked:
            heapq.heappush(ready, item)
        now, job, threads = heapq.heappop(running)
        free += threads
        for dependent in dependents[job]:
            waiting[dependent] -= 1
            if not waiting[dependent]:
                heapq.heappush(ready, (-chain[dependent], dependent))
    return now


def topological_order(depends: list[set[int]]) -> list[int]:
    order, done = [], set()
    for start in range(len(depends)):
        stack = [(start, False)]
        while stack:
            job, expanded = stack.pop()
            if job in done:
                continue
            if expanded:
                done.add(job)
                order.append(job)
                continue
            stack.append((job, True))
            stack.extend((need, False) for need in depends[job] if need not in done)
    return order


def dependencies(jobs: list[Job]) -> list[set[int]]:
    """A job needs the job that made any of its inputs (a file, or a file inside a directory output)."""
    maker = {output.rstrip("/"): index for index, job in enumerate(jobs) for output in job.outputs}
    needs = []
    for job in jobs:
        found = set()
        for path in job.inputs:
            parts = Path(path).parts
            for depth in range(len(parts), 0, -1):
                made_by = maker.get(str(Path(*parts[:depth])))
                if made_by is not None:
                    found.add(made_by)
                    break
        needs.append(found)
    return needs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("logs", type=Path, nargs="+", help="Snakemake logs of the run (a re-run's jobs win)")
    parser.add_argument("--plan", type=Path, help="a dry run's output (`snakemake -n --forceall`): its jobs are "
                        "scheduled, the unmeasured ones at their rule's median")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    by_output = {}
    for log in args.logs:  # a later log's job replaces an earlier one's with the same outputs
        for job in read_jobs(log):
            by_output[tuple(job.outputs)] = job
    measured = {outputs: cpu_seconds(args.run_dir, job) for outputs, job in by_output.items()}
    if args.plan:
        jobs = read_jobs(args.plan, finished_only=False)
        work = planned_work(jobs, measured, by_output)
    else:
        jobs, work = list(by_output.values()), list(measured.values())
    depends = dependencies(jobs)
    estimates = {str(cores): round(schedule(jobs, work, depends, cores)) for cores in CORES}
    estimates["unlimited"] = round(schedule(jobs, work, depends, None))
    result = {"jobs": len(jobs), "measured_jobs": sum(tuple(j.outputs) in measured for j in jobs),
              "job_seconds": round(sum(work)), "wall_seconds_by_cores": estimates}
    wall_log = args.run_dir / "logs" / "demo_wall_time.log"
    if wall_log.is_file():
        result["measured_wall"] = wall_log.read_text().strip().splitlines()[-1]
    print(f"{len(jobs)} jobs ({result['measured_jobs']} measured), {result['job_seconds']} s of work on cores of "
          "their own")
    print("| cores | estimated wall time |\n|---|---|")
    for cores, seconds in estimates.items():
        print(f"| {cores} | {seconds} s ({seconds / 60:.0f} min) |")
    if "measured_wall" in result:
        print("measured:", result["measured_wall"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
