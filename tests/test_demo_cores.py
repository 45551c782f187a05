"""benchmarks/demo_cores.py: the demo's wall time on N cores from a run's Snakemake log and benchmark files."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import demo_cores  # noqa: E402

# Two jobs after a first, one of them with two threads; a last after both (a diamond), in Snakemake's log format.
LOG = """
[Mon Dec  7 09:00:00 2026]
localrule prepare:
    input: data/a.jsonl
    output: results/a.parquet
    jobid: 1
[Mon Dec  7 09:00:10 2026]
Finished jobid: 1 (Rule: prepare)
[Mon Dec  7 09:00:10 2026]
rule train:
    input: results/a.parquet
    output: results/runs/x/model
    jobid: 2
    benchmark: results/benchmarks/train/x.tsv
    threads: 2
[Mon Dec  7 09:00:10 2026]
rule decode:
    input: results/a.parquet
    output: results/b.jsonl
    jobid: 3
[Mon Dec  7 09:00:40 2026]
Finished jobid: 3 (Rule: decode)
[Mon Dec  7 09:05:00 2026]
Finished jobid: 2 (Rule: train)
[Mon Dec  7 09:05:00 2026]
localrule report:
    input: results/runs/x/model/loss.csv, results/b.jsonl
    output: results/report.csv
    jobid: 4
[Mon Dec  7 09:05:05 2026]
Finished jobid: 4 (Rule: report)
"""


def test_jobs_durations_and_dependencies_come_from_the_log_and_benchmarks(tmp_path):
    (tmp_path / "snakemake.log").write_text(LOG)
    benchmark = tmp_path / "results/benchmarks/train/x.tsv"
    benchmark.parent.mkdir(parents=True)
    benchmark.write_text("s\tcpu_time\n290\t200\n")  # 200 CPU seconds over 2 threads
    jobs = demo_cores.read_jobs(tmp_path / "snakemake.log")
    assert [job.rule for job in jobs] == ["prepare", "train", "decode", "report"]
    work = [demo_cores.cpu_seconds(tmp_path, job) for job in jobs]
    assert work == [10, 200, 30, 5]  # the benchmark's CPU seconds, else the log's wall time
    depends = demo_cores.dependencies(jobs)
    assert depends == [set(), {0}, {0}, {1, 2}]  # a file inside a directory output counts
    assert demo_cores.schedule(jobs, work, depends, None) == 115  # the critical path: train on its 2 threads
    assert demo_cores.schedule(jobs, work, depends, 3) == 115  # train's 2 threads beside decode's 1
    assert demo_cores.schedule(jobs, work, depends, 2) == 145  # decode waits for train's two cores
    assert demo_cores.schedule(jobs, work, depends, 1) == 245  # every core-second one after another


def test_a_planned_job_without_a_measurement_takes_its_rule_s_median(tmp_path):
    (tmp_path / "snakemake.log").write_text(LOG)  # train without its benchmark file: 290 s wall on 2 threads
    jobs = demo_cores.read_jobs(tmp_path / "snakemake.log")
    measured = {tuple(job.outputs): demo_cores.cpu_seconds(tmp_path, job) for job in jobs}
    rules = {tuple(job.outputs): job for job in jobs}
    # The dry run of a bigger grid: a second decode the log does not show, and the `all` rule (no output: left out).
    plan = LOG.replace("Finished jobid", "Done jobid") + """
[Mon Dec  7 09:00:00 2026]
rule decode:
    input: results/a.parquet
    output: results/c.jsonl
    jobid: 5
[Mon Dec  7 09:00:00 2026]
localrule all:
    input: results/report.csv, results/c.jsonl
    jobid: 0
"""
    (tmp_path / "plan.log").write_text(plan)
    planned = demo_cores.read_jobs(tmp_path / "plan.log", finished_only=False)
    assert [job.rule for job in planned] == ["prepare", "train", "decode", "report", "decode"]
    assert demo_cores.planned_work(planned, measured, rules) == [10, 580, 30, 5, 30]
