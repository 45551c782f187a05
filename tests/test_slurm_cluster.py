"""Workflows on a real Slurm: every job is a Slurm job, a cancelled training job resumes on retry, and
the project's smoke run gives the same results through Slurm as locally.

The cluster (one node on loopback) is installed and started by tests/slurm/cluster.py; it needs root.
Jobs are submitted with the user profile workflow/profiles/slurm plus tests/slurm/profile, which only
overrides what this small cluster without accounting database needs. Slurm's own tools (scontrol,
squeue) are the witnesses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm.cluster import SlurmCluster, slurm_cluster  # noqa: E402,F401  (fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
USER_PROFILE = REPO / "workflow" / "profiles" / "slurm"
TEST_PROFILE = REPO / "tests" / "slurm" / "profile"
TOY_WORKFLOW = REPO / "tests" / "slurm" / "toy_workflow"
TOY_RULES = ("prepare_data", "train_model", "summarize")
# Upper bounds: on an idle 2-core machine the toy workflow takes under a minute, the smoke run minutes.
WORKFLOW_TIMEOUT_S = 900
SMOKE_CONFIG = "workflow/configs/smoke.yaml"
# What a run of the project needs: the workflow and its default profile, the package, the vendored data and the
# shipped model.
PROJECT_FILES = ("Snakefile", "config.yaml", "profiles", "workflow", "envs", "src", "data", "models")
SMOKE_TIMEOUT_S = 1200


def slurm_job(cluster: SlurmCluster, job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay listed for MinJobAge)."""
    line = cluster.slurm("scontrol", "show", "job", "--oneliner", job_id)
    return dict(re.findall(r"(\S+?)=(\S*)", line))


def copy_toy_workflow(directory: Path) -> Path:
    shutil.copytree(TOY_WORKFLOW, directory, dirs_exist_ok=True)
    return directory


def project_env(project: Path, cluster: SlurmCluster) -> dict[str, str]:
    """Jobs run `python -m lalm_slu`: this interpreter first on PATH, the copy's package on PYTHONPATH."""
    env = cluster.env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(project / "src")
    env["OMP_NUM_THREADS"] = "1"
    return env


def copy_project(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, directory / name)
    return directory


def smoke_run_targets() -> list[str]:
    """The metrics of the smoke config's first direct-mixing run: every stage, from corpus to scores."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    smoke = yaml.safe_load((REPO / SMOKE_CONFIG).read_text())
    entry = smoke["grid"]["monolingual"][0]
    seed = smoke["grid"].get("seeds", base["grid"]["seeds"])[0]
    run = f"{entry['corpus']}-{entry['lang']}_direct_mixing_b{entry['budgets'][0]}_s{seed}"
    modalities = smoke.get("decode", {}).get("modalities", base["decode"]["modalities"])
    return [f"results/runs/{run}/metrics/{entry['corpus']}-{entry['lang']}.{m}.json" for m in modalities]


def run_project(project: Path, env: dict[str, str], targets: list[str], *profiles: Path) -> None:
    # Targets come first: --configfile takes every path that follows it.
    cmd = [sys.executable, "-m", "snakemake", *targets, "--configfile", SMOKE_CONFIG]
    for profile in profiles:
        cmd += ["--profile", str(profile)]
    with open(project / "snakemake.log", "w") as log:
        result = subprocess.run(
            cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=SMOKE_TIMEOUT_S
        )
    assert result.returncode == 0, f"snakemake exited {result.returncode}:\n{tail(project / 'snakemake.log')}"


def start_snakemake(cluster: SlurmCluster, workdir: Path, *config: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        str(USER_PROFILE),
        "--profile",
        str(TEST_PROFILE),
        "--config",
        f"python={sys.executable}",
        *config,
    ]
    log = open(workdir / "snakemake.log", "w")
    return subprocess.Popen(cmd, cwd=workdir, env=cluster.env(), stdout=log, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, workdir: Path) -> None:
    """Wait for snakemake; on failure or timeout show its log (and stop it, by pid)."""
    try:
        returncode = process.wait(timeout=WORKFLOW_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"snakemake did not finish in {WORKFLOW_TIMEOUT_S} s:\n{tail(workdir / 'snakemake.log')}")
    assert returncode == 0, f"snakemake exited {returncode}:\n{tail(workdir / 'snakemake.log')}"


def stop(process: subprocess.Popen) -> None:
    """Interrupt snakemake (it cancels its Slurm jobs first, which can take a while), then kill it."""
    process.terminate()
    try:
        process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else f"({path} missing)"


def uninterrupted_model(tmp_path: Path, steps: int) -> dict:
    """The toy training run straight through, without Slurm, as the reference result."""
    reference = copy_toy_workflow(tmp_path / "reference")
    (reference / "data.txt").write_text("\n".join(str(i) for i in range(1, 101)) + "\n")
    subprocess.run(
        [
            sys.executable,
            "train_toy.py",
            "--data",
            "data.txt",
            "--work-dir",
            "work",
            "--steps",
            str(steps),
            "--out",
            "model.json",
        ],
        cwd=reference,
        check=True,
    )
    return json.loads((reference / "model.json").read_text())


def recorded_job_id(workdir: Path, rule: str) -> str:
    return (workdir / "results" / "jobs" / f"{rule}.txt").read_text().strip()


def read_attempts(workdir: Path) -> list[dict]:
    path = workdir / "work" / "toy_run" / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_each_rule_runs_as_its_own_slurm_job(slurm_cluster, tmp_path):
    workdir = copy_toy_workflow(tmp_path / "toy")

    finish(start_snakemake(slurm_cluster, workdir, "train_steps=6"), workdir)

    job_ids = {rule: recorded_job_id(workdir, rule) for rule in TOY_RULES}
    assert all(job_id.isdigit() for job_id in job_ids.values()), job_ids
    assert len(set(job_ids.values())) == len(TOY_RULES), "each rule must run in a separate Slurm job"
    for rule, job_id in job_ids.items():
        job = slurm_job(slurm_cluster, job_id)
        assert job["JobState"] == "COMPLETED", job
        assert job["Comment"] == f"rule_{rule}", job  # the executor labels each job with its rule
        assert Path(job["WorkDir"]) == workdir
    assert json.loads((workdir / "results" / "summary.json").read_text()) == uninterrupted_model(tmp_path, steps=6)


def test_cancelled_training_job_is_resubmitted_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    steps, cancel_after_step = 20, 4
    workdir = copy_toy_workflow(tmp_path / "toy")
    checkpoint = workdir / "work" / "toy_run" / "checkpoint.json"
    process = start_snakemake(slurm_cluster, workdir, f"train_steps={steps}", "step_seconds=0.5")
    try:
        deadline = time.monotonic() + WORKFLOW_TIMEOUT_S
        while not (checkpoint.exists() and json.loads(checkpoint.read_text())["step"] >= cancel_after_step):
            assert process.poll() is None, f"snakemake ended early:\n{tail(workdir / 'snakemake.log')}"
            assert time.monotonic() < deadline, f"training never reached step {cancel_after_step}"
            time.sleep(0.2)
        first_job = read_attempts(workdir)[0]["slurm_job_id"]
        assert slurm_job(slurm_cluster, first_job)["JobState"] == "RUNNING"
        slurm_cluster.slurm("scancel", first_job)
    except BaseException:
        stop(process)
        raise

    finish(process, workdir)

    first, second = read_attempts(workdir)  # exactly one resubmission
    assert first == {"slurm_job_id": first_job, "start_step": 0}
    assert second["slurm_job_id"] != first_job
    assert second["start_step"] >= cancel_after_step, "the retry must resume from the checkpoint, not step 0"
    assert slurm_job(slurm_cluster, first_job)["JobState"] == "CANCELLED"
    assert slurm_job(slurm_cluster, second["slurm_job_id"])["JobState"] == "COMPLETED"
    assert recorded_job_id(workdir, "train_model") == second["slurm_job_id"]
    assert json.loads((workdir / "results" / "model.json").read_text()) == uninterrupted_model(tmp_path, steps)


def test_smoke_run_through_slurm_matches_a_local_run(slurm_cluster, tmp_path):
    targets = smoke_run_targets()
    local = copy_project(tmp_path / "local")
    run_project(local, project_env(local, slurm_cluster), targets)  # the default profile
    on_slurm = copy_project(tmp_path / "slurm")

    run_project(on_slurm, project_env(on_slurm, slurm_cluster), targets, USER_PROFILE, TEST_PROFILE)

    # The plugin files job logs as rule_<name>/<wildcards>/<job id>.log (no wildcards directory without wildcards).
    log_root = on_slurm / ".snakemake" / "slurm_logs"
    job_logs = sorted(log_root.glob("rule_*/**/*.log"))
    rule_of = {log: log.relative_to(log_root).parts[0].removeprefix("rule_") for log in job_logs}
    assert {"prepare_corpus", "finetune_model", "decode_test_set"} <= set(rule_of.values())
    assert "score_predictions" not in rule_of.values()  # a local rule: seconds of work on the submit host
    for log, rule in rule_of.items():
        job = slurm_job(slurm_cluster, log.stem)
        assert job["JobState"] == "COMPLETED", job
        assert job["Comment"].startswith(f"rule_{rule}"), job
    for target in targets:
        predictions = target.replace("/metrics/", "/predictions/").replace(".json", ".jsonl")
        assert (on_slurm / predictions).read_text() == (local / predictions).read_text(), predictions
        assert json.loads((on_slurm / target).read_text()) == json.loads((local / target).read_text()), target


# Two gloo processes per fine-tuning job (torchrun inside the job, as on a GPU node), a checkpoint every step.
TWO_PROCESSES = {
    "resources": {"finetune": {"threads": 1, "processes": 2}},  # one thread per process
    "training": {"per_device_batch_size": 4, "global_batch_size": 8, "checkpoint_every_steps": 1},
}
TWO_PROCESS_RUN = "slurp-en_direct_mixing_b50_s0"


def run_snakemake(project: Path, env: dict[str, str], targets: list[str], configs: list[str], *profiles: Path):
    cmd = [sys.executable, "-m", "snakemake", *targets, "--configfile", *configs]
    for profile in profiles:
        cmd += ["--profile", str(profile)]
    log = open(project / "snakemake.log", "w")
    return subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)


def newest_checkpoint_step(work_dir: Path) -> int:
    steps = [int(p.name.removeprefix("step-")) for p in (work_dir / "checkpoints").glob("step-*")
             if p.name.removeprefix("step-").isdigit()]
    return max(steps, default=0)


def running_job(cluster: SlurmCluster, rule: str) -> str | None:
    for line in cluster.slurm("squeue", "--noheader", "--states=RUNNING", "--format=%i %k").splitlines():
        job_id, _, comment = line.strip().partition(" ")
        if comment.startswith(f"rule_{rule}"):
            return job_id
    return None


def test_cancelled_two_process_fine_tuning_resumes_from_its_sharded_checkpoint_to_the_uninterrupted_result(
    slurm_cluster, tmp_path
):
    from safetensors.torch import load_file

    target = [f"results/runs/{TWO_PROCESS_RUN}/model"]
    projects = {}
    for name in ("local", "slurm"):
        projects[name] = copy_project(tmp_path / name)
        (projects[name] / "two_processes.yaml").write_text(yaml.safe_dump(TWO_PROCESSES))
    configs = [SMOKE_CONFIG, "two_processes.yaml"]
    local = projects["local"]
    process = run_snakemake(local, project_env(local, slurm_cluster), target, configs)  # the default profile
    assert process.wait(timeout=SMOKE_TIMEOUT_S) == 0, tail(local / "snakemake.log")

    on_slurm = projects["slurm"]
    work_dir = on_slurm / "work" / TWO_PROCESS_RUN
    process = run_snakemake(on_slurm, project_env(on_slurm, slurm_cluster), target, configs, USER_PROFILE,
                            TEST_PROFILE)
    try:
        deadline = time.monotonic() + SMOKE_TIMEOUT_S
        while newest_checkpoint_step(work_dir) < 3:
            assert process.poll() is None, f"snakemake ended early:\n{tail(on_slurm / 'snakemake.log')}"
            assert time.monotonic() < deadline, "fine-tuning never reached step 3"
            time.sleep(0.1)
        first_job = running_job(slurm_cluster, "finetune_model")
        assert first_job is not None
        slurm_cluster.slurm("scancel", first_job)
    except BaseException:
        stop(process)
        raise
    assert process.wait(timeout=SMOKE_TIMEOUT_S) == 0, tail(on_slurm / "snakemake.log")

    assert slurm_job(slurm_cluster, first_job)["JobState"] == "CANCELLED"
    job_log = (on_slurm / "logs" / "finetune_model" / f"{TWO_PROCESS_RUN}.log").read_text()
    assert "resumed from" in job_log and "2 process(es)" in job_log
    summary = json.loads((on_slurm / target[0] / "summary.json").read_text())
    assert summary["processes"] == 2
    expected = load_file(str(local / target[0] / "model.safetensors"))
    actual = load_file(str(on_slurm / target[0] / "model.safetensors"))
    assert expected.keys() == actual.keys()
    # The same two processes, threads and data order; weights and AdamW state restored exactly.
    assert [name for name in expected if not (expected[name] == actual[name]).all()] == []
    assert not work_dir.joinpath("checkpoints").exists()  # deleted once the final model was written
