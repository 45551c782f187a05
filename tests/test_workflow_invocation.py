"""Calling the workflow as researchers do: whichever way Snakemake is started, its jobs run with its interpreter;
plain `snakemake` needs no options; a mistake in the call stops planning with a short message that names it."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, WorkflowCopy
from snakemake.utils import available_cpu_count

MANIFEST = "results/manifests/slurp/en/train.parquet"  # one small job: prepare_corpus
SYSTEM_PATH = "/usr/bin:/bin"  # no venv on it


def project_copy(root: Path) -> WorkflowCopy:
    """The workflow with its default profile and the vendored data, as a fresh checkout has them."""
    root.mkdir(exist_ok=True)
    copy = WorkflowCopy(root)
    shutil.copytree(REPO / "profiles", root / "profiles")
    (root / "data").symlink_to(REPO / "data")
    return copy


def run(copy: WorkflowCopy, command: list[str], path: str, **env: str) -> subprocess.CompletedProcess:
    """`command` in the copy with only PATH, HOME and the copy's package on PYTHONPATH (how the tests import it)."""
    environment = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": str(copy.root / "src"), **env}  # fmt: skip
    result = subprocess.run(command, cwd=copy.root, env=environment, capture_output=True, text=True, timeout=600)
    result.output = result.stdout + result.stderr
    return result


def fake_environment(root: Path, package: bool) -> Path:
    """A venv that shares this one's packages but has no `python` beside its `python3` (package=True), or has one
    but cannot import lalm_slu (package=False: the shared site-packages are on its path, their .pth files not run,
    so the editable install is not either)."""
    (root / "bin").mkdir(parents=True)
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", root / "pyvenv.cfg")
    (root / "bin/python3").symlink_to(Path(sys.executable).resolve())
    site_packages = Path(sysconfig.get_path("purelib"))
    own_site_packages = root / site_packages.relative_to(sys.prefix)
    if package:
        (root / "lib").symlink_to(Path(sys.prefix) / "lib")
    else:
        (root / "bin/python").symlink_to("python3")
        own_site_packages.mkdir(parents=True)
        (own_site_packages / "shared.pth").write_text(f"{site_packages}\n")
    return root / "bin/python3"


@pytest.mark.slow
@pytest.mark.parametrize("started", ["by path, no venv on PATH", "from an activated venv"])
def test_jobs_run_with_the_interpreter_that_runs_snakemake(tmp_path, started):
    copy = project_copy(tmp_path)
    if started == "by path, no venv on PATH":
        result = run(copy, [str(BIN / "snakemake"), MANIFEST], SYSTEM_PATH)
    else:
        result = run(copy, ["snakemake", MANIFEST], f"{BIN}:{SYSTEM_PATH}", VIRTUAL_ENV=str(BIN.parent))
    assert result.returncode == 0, result.output
    assert (copy.root / MANIFEST).is_file()
    # No --cores: the default profile gives every core.
    assert "workflow specific profile profiles/default" in result.output
    assert f"Provided cores: {available_cpu_count()}" in result.output


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="builds a venv beside the one running the tests")
@pytest.mark.parametrize(
    "package, message",
    [(True, "is missing or another interpreter"), (False, "cannot import lalm_slu, which every job runs")],
)
def test_snakemake_whose_jobs_would_not_find_the_package_stops_before_planning(tmp_path, package, message):
    copy = project_copy(tmp_path / "project")
    python = fake_environment(tmp_path / "env", package)
    result = run(copy, [str(python), "-m", "snakemake", "--dry-run", MANIFEST], SYSTEM_PATH, PYTHONPATH="")
    assert result.returncode != 0
    assert message in result.output and str(python) in result.output
    assert "Building DAG of jobs" not in result.output


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="builds a venv beside the one running the tests")
def test_under_sdm_conda_jobs_are_left_to_each_rules_environment(tmp_path):
    copy = project_copy(tmp_path / "project")
    python = fake_environment(tmp_path / "env", package=True)  # no `python` beside it: fine, jobs use conda's
    result = run(copy, [str(python), "-m", "snakemake", MANIFEST, "--dry-run", "--sdm", "conda"], SYSTEM_PATH)
    assert "is missing or another interpreter" not in result.output
    assert "Building DAG of jobs" in result.output


def test_default_profile_agrees_with_the_slurm_profile_on_every_key_they_share():
    # Snakemake reads profiles/default after `--profile workflow/profiles/slurm`, and the later profile wins.
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    slurm = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert {key: default[key] for key in default.keys() & slurm.keys()} == {
        key: slurm[key] for key in default.keys() & slurm.keys()
    }
    # Only the local core count is the default's own (the Slurm executor does not limit remote jobs by it).
    assert default.keys() - slurm.keys() == {"cores"}


def test_mistyped_target_names_the_nearest_rule(workflow_copy):
    result = workflow_copy.snakemake("--dry-run", "pretrain_demo_modle", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "no rule or file pretrain_demo_modle; did you mean pretrain_demo_model?" in output
    assert "MissingRuleException" not in output


def test_bare_word_target_that_is_an_existing_file_is_not_an_error(workflow_copy):
    (workflow_copy.root / "notes").write_text("kept\n")
    result = workflow_copy.snakemake("--dry-run", "notes")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_missing_local_model_names_the_path_the_key_and_the_download_rule(workflow_copy):
    for path in ("data/massive/en-US.jsonl", "data/xsid/README"):  # raw data stand-ins for a dry run
        (workflow_copy.root / path).parent.mkdir(parents=True, exist_ok=True)
        (workflow_copy.root / path).touch()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["model"].update(path="models/absent", hub_id=None)
    (workflow_copy.root / "config.yaml").write_text(yaml.safe_dump(config))
    result = workflow_copy.snakemake("--dry-run", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config model.path: models/absent does not exist, and model.hub_id is null" in output
    assert "download_model" in output
    assert "MissingInputException" not in output


def test_targets_that_do_not_need_the_missing_model_still_plan(workflow_copy):
    (workflow_copy.root / "data").symlink_to(REPO / "data")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["model"].update(path="models/absent", hub_id=None)
    (workflow_copy.root / "config.yaml").write_text(yaml.safe_dump(config))
    result = workflow_copy.snakemake("--dry-run", MANIFEST)
    assert "prepare_corpus" in result.stdout + result.stderr
