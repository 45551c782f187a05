"""The one loader of the layered config (lalm_slu.config.layered), which the Snakefile and `lalm-slu plan` share:
the demo model's recipe, config.yaml over it, each --configfile in order, then --config's keys, validated, the
schema's defaults filled in; a missing or malformed file and a bad key are errors naming them."""

import shutil

import pytest
import yaml
from conftest import REPO
from snakemake.exceptions import WorkflowError

from lalm_slu.config.layered import BASE_CONFIG_FILES, load_config


@pytest.fixture
def workdir(tmp_path):
    for name in BASE_CONFIG_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def layer(path, text: str):
    path.write_text(text)
    return path


def test_each_layer_overrides_the_one_below_key_by_key(workdir):
    recipe = yaml.safe_load((workdir / BASE_CONFIG_FILES[0]).read_text())["demo_model"]
    base = load_config(workdir=workdir)
    assert base["demo_model"]["pretrain"] == recipe["pretrain"]  # the recipe, where config.yaml is silent
    first = layer(workdir / "first.yaml", "training: {log_every_steps: 3, checkpoint_every_steps: 7}\n")
    second = layer(workdir / "second.yaml", "training: {log_every_steps: 4}\n")
    config = load_config([first, second], workdir=workdir)
    assert (config["training"]["log_every_steps"], config["training"]["checkpoint_every_steps"]) == (4, 7)
    config = load_config([first, second], {"training": {"log_every_steps": 5}}, workdir=workdir)
    assert config["training"]["log_every_steps"] == 5
    # Everything else is config.yaml's, and keys no file sets take the schema's defaults.
    assert config["training"]["precision"] == base["training"]["precision"]
    assert config["training"]["time_limit_margin_minutes"] == 10


def test_without_config_files_a_missing_config_yaml_is_an_error_naming_it(workdir):
    (workdir / "config.yaml").unlink()
    with pytest.raises(WorkflowError, match="config file config.yaml is not there"):
        load_config(workdir=workdir)
    paper = REPO / "workflow/configs/paper.yaml"
    assert load_config([paper], workdir=workdir)["model"]["architecture"] == "Qwen2-Audio-7B-Instruct"


def test_a_config_file_that_is_not_a_mapping_is_named(workdir):
    bad = layer(workdir / "bad.yaml", "- a list\n")
    with pytest.raises(WorkflowError, match=r"bad.yaml: a config file is a mapping of keys, not a YAML list"):
        load_config([bad], workdir=workdir)


def test_a_bad_key_is_named_with_its_likely_spelling(workdir):
    with pytest.raises(WorkflowError, match=r"config training: .*did you mean 'log_every_steps' for 'log_every_step'"):
        load_config(overrides={"training": {"log_every_step": 2}}, workdir=workdir)
