"""The package works outside its checkout: a wheel of this checkout, installed (not editable) into a folder of its
own and run from a folder that is no checkout, finds its packaged schema and model architecture, loads settings and
plans paper.yaml's grid as the checkout does. Offline: the wheel is built with the environment's setuptools."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from lalm_slu.commands.plan import plan
from lalm_slu.config.layered import load_config


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(folder the wheel is installed into, an empty working folder holding a copy of paper.yaml)."""
    root = tmp_path_factory.mktemp("wheel")
    # A copy of what the wheel is built from, so the build leaves no build/ or egg-info in the checkout.
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]
    subprocess.run([*pip, "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(root / "dist")],
                   cwd=source, check=True)  # fmt: skip
    (wheel,) = (root / "dist").glob("lalm_slu-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True)
    work = root / "work"
    work.mkdir()
    shutil.copy(REPO / "workflow/configs/paper.yaml", work / "paper.yaml")
    return site, work


def run_installed(installed, *args: str) -> str:
    site, work = installed
    # Only the installed copy on the path: not this checkout's src/ (conftest, PYTHONPATH), whatever the
    # environment's editable install points to comes after it.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HOME": str(work)}
    done = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_the_installed_package_is_the_wheel_s_and_ships_its_config_files(installed):
    site, _ = installed
    found = json.loads(run_installed(installed, "-c", (
        "import json, lalm_slu\n"
        "from lalm_slu.config.files import architecture_path, schema_path\n"
        "print(json.dumps([lalm_slu.__file__, str(schema_path()), str(schema_path('voices')),"
        " str(architecture_path('Qwen2-Audio-7B-Instruct'))]))")))  # fmt: skip
    for path in found:
        assert str(site) in path and str(REPO) not in path, path
        assert (site / path[len(str(site)) + 1:]).is_file()


@pytest.mark.slow
def test_the_installed_package_loads_settings_from_its_packaged_schema(installed):
    training = json.loads(run_installed(installed, "-c", (
        "import json\n"
        "from lalm_slu.config.settings import TrainingSettings\n"
        "print(json.dumps(TrainingSettings.from_dict({'log_every_steps': 3}, 'test').to_dict()))")))  # fmt: skip
    from lalm_slu.config.settings import TrainingSettings

    assert training == TrainingSettings.from_dict({"log_every_steps": 3}, "test").to_dict()
    assert training["log_every_steps"] == 3 and training["precision"] == "auto"


@pytest.mark.slow
def test_the_installed_plan_command_plans_paper_yaml_from_outside_the_checkout(installed):
    _, work = installed
    result = json.loads(run_installed(installed, "-m", "lalm_slu", "plan", "--configfile", "paper.yaml", "--json"))
    assert result["model_shape"] == "lalm_slu/config/architectures/Qwen2-Audio-7B-Instruct.json"
    # The checkout's plan of the same config, read in the same folder: the same jobs, GPUs, FLOPs and memory.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        expected = plan(load_config(["paper.yaml"]))
    shape = [(job["rule"], job["name"], job["gpus"], job["flops"], job["memory_gb"]) for job in result["jobs"]]
    assert shape == [(job["rule"], job["name"], job["gpus"], job["flops"], job["memory_gb"]) for job in expected["jobs"]]
    assert len(shape) > 1000 and result["total"]["gpu_hours"] > 0
    assert {job["rule"] for job in result["jobs"]} >= {"finetune_model", "decode_test_set"}
