"""The sbatch and srun lines the pinned Slurm executor (2.8) and its jobstep (0.6.1) build for our GPU jobs, made
by the plugins' own functions from the resources the rules declare (lalm_slu.planning.job_arguments): one node gets G GPUs
and G × c CPUs as one task that torchrun splits; N nodes get one task per node running the rule's own srun
launcher, with no step around it; a 1-GPU job one GPU and its threads."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("snakemake_executor_plugin_slurm")
from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402
from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting  # noqa: E402

from lalm_slu.planning.job_arguments import finetune_launcher, finetune_processes, finetune_slurm_resources  # noqa: E402

PARAMS = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": "rule", "account": "", "partition": "",
          "workdir": "/work"}


class Resources(dict):
    """Snakemake's job resources as the plugins read them: .get() and attribute access."""

    def __getattr__(self, name):
        return self[name]


class Job:
    def __init__(self, resources: dict, threads: int):
        self.resources = Resources({k: v for k, v in resources.items() if v is not None})  # None: not declared
        self.threads = threads


def finetune_job(nodes: int, gpus: int, threads_per_process: int = 8) -> tuple[Job, dict]:
    config = {"resources": {"finetune": {"nodes": nodes, "threads": threads_per_process, "gpu": gpus}}}
    threads = finetune_processes(config, gpus) * threads_per_process
    return Job({**finetune_slurm_resources(config, gpus), "mem_mb": 128000, "runtime": 60}, threads), config


def sbatch(job: Job) -> str:
    return get_submit_command(job, PARAMS) + set_gres_string(job)


def jobstep_srun(job: Job) -> str | None:
    """The jobstep's srun around the rule (None: an mpi job, whose shell runs in the batch step)."""
    if "mpi" in job.resources:
        return None
    return f"srun -n1 {get_cpu_setting(job, bool(job.resources.get('gpu')))} {get_gpu_setting(job)} {get_node_setting(job)}"


def options(line: str) -> set[str]:
    return set(re.findall(r"--[a-z-]+=\S+|--[a-z-]+ \S+", line))


def test_one_node_job_gets_g_gpus_and_g_times_c_cpus_as_one_task_for_torchrun():
    job, config = finetune_job(nodes=1, gpus=4)
    line = sbatch(job)
    assert {"--nodes=1", "--cpus-per-task=32", "--gpus=4"} <= options(line)
    # No --signal: it would reach the step's Snakemake process and torchrun agent, which exit on SIGUSR1; the
    # trainer reads its time left from squeue instead.
    assert "--signal" not in line
    assert "--ntasks-per-gpu" not in line and "--ntasks=" not in line  # one task (sbatch's default)
    assert options(jobstep_srun(job)) >= {"--cpus-per-task=32", "--gpus=4", "--nodes=1"}
    assert finetune_launcher(config, 4) == "python -m torch.distributed.run --standalone --nproc-per-node 4"


def test_two_node_job_runs_one_torchrun_per_node_from_the_batch_step_on_a_port_of_its_own():
    job, config = finetune_job(nodes=2, gpus=4)
    line = sbatch(job)
    assert {"--nodes=2", "--ntasks=2", "--cpus-per-task=32", "--gres=gpu:4"} <= options(line)
    assert "--gpus=" not in line and "--ntasks-per-gpu" not in line  # GPUs per node, not per job
    assert jobstep_srun(job) is None  # no step wraps the rule: its srun is not nested in one
    launch = finetune_launcher(config, 4)
    assert launch.startswith("srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --cpus-per-task 32")
    assert "--nnodes 2 --nproc-per-node 4 --rdzv-backend c10d" in launch
    assert ":29500" not in launch and "$((20000 + SLURM_JOB_ID % 20000))" in launch


def test_a_one_gpu_job_asks_one_gpu_and_its_threads():
    job = Job({"gpu": 1, "mem_mb": 32000, "runtime": 117}, threads=4)
    line = sbatch(job)
    assert {"--gpus=1", "--cpus-per-task=4"} <= options(line) and "-t 117" in line
    assert "--ntasks-per-gpu" not in line
    assert options(jobstep_srun(job)) >= {"--cpus-per-task=4", "--gpus=1", "--nodes=1"}


def test_cpu_fine_tuning_asks_no_gpu():
    job, _ = finetune_job(nodes=1, gpus=0, threads_per_process=1)
    line = sbatch(job)
    assert "--gpus" not in line and "--signal" not in line and "--ntasks=1" in line
