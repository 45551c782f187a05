# The workflow's glue: config checks (lalm_slu.planning.config_checks), the grid (lalm_slu.planning.grid), and input/params functions
# that adapt a job's wildcards to lalm_slu.planning.paths (files) and lalm_slu.planning.job_arguments (settings, arguments).
# Plain Python only: nothing heavy is imported, only the package's plain-Python modules.

import difflib
import json
import re
import shlex
import subprocess
import sys
from functools import partial
from operator import attrgetter
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

PACKAGE_SRC = Path(workflow.basedir) / "src"  # on sys.path since the Snakefile
from lalm_slu.core.code_version import code_version as package_code_version
from lalm_slu.speech.voice_table import read_voice_table
from lalm_slu.planning import job_arguments as arguments
from lalm_slu.planning import paths
from lalm_slu.planning.config_checks import ConfigError, check_config
from lalm_slu.planning.grid import expand_grid, expand_prefixes
from lalm_slu.config.budget_label import LABEL_PATTERN as BUDGET_LABEL_PATTERN
from lalm_slu.config.files import schema_path
from lalm_slu.config.schemes import IMITATION_SCHEMES
from lalm_slu.config.vocabulary import TEST_INPUTS

# ---------------------------------------------------------------- the jobs' interpreter

# Asks a `python` what a job's `python -m lalm_slu` would see: its environment and whether it finds the package.
INTERPRETER_PROBE = "import importlib.util, sys; print(sys.prefix); print(bool(importlib.util.find_spec('lalm_slu')))"


def interpreter_bin():
    """The folder of the interpreter running Snakemake (a venv's or conda env's bin, with python, torchrun and
    lalm-slu), checked to hold that interpreter and to find this package."""
    bin_dir = Path(sys.executable).parent
    python = bin_dir / "python"
    try:
        probe = subprocess.run(
            [str(python), "-c", INTERPRETER_PROBE], capture_output=True, text=True
        )
        prefix, found = probe.stdout.splitlines()
    except (OSError, ValueError):
        prefix, found = None, None
    if prefix != sys.prefix:
        raise WorkflowError(
            f"Jobs run the `python` beside the interpreter running Snakemake ({sys.executable}), but {python} "
            "is missing or another interpreter. Run Snakemake from the project's environment: `make setup`, "
            "then `.venv/bin/snakemake` (README, Install)."
        )
    if found != "True":
        raise WorkflowError(
            f"The interpreter running Snakemake ({sys.executable}) cannot import lalm_slu, which every job runs. "
            "Run Snakemake from the project's environment: `make setup`, then `.venv/bin/snakemake` (README, "
            "Install); or `pip install -e .` into this one."
        )
    return bin_dir


# Rules call `python -m lalm_slu` and `torchrun`: the interpreter that runs Snakemake (`make`, .venv/bin/snakemake,
# an activated environment, a Slurm job step) runs them too, whatever PATH says. Prefixing the shell, not editing
# each command, keeps the commands' text, which Snakemake's `code` rerun trigger compares. Under `--sdm conda`
# each rule's own environment provides python.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    jobs_bin = shlex.quote(str(interpreter_bin())).replace("{", "{{").replace("}", "}}")
    shell.prefix(f'set -euo pipefail; export PATH={jobs_bin}:"$PATH"; ')

VOICE_SCHEMA = str(schema_path("voices"))


def tts_voice_table():
    """The voice table (config speech.tts.voices) as {lang: {split: [voice records]}}, rows checked."""
    try:
        return read_voice_table(config["speech"]["tts"]["voices"], VOICE_SCHEMA)
    except (OSError, ValueError) as error:
        raise WorkflowError(f"config speech.tts.voices: {error}") from None


# ---------------------------------------------------------------- config checks and runs


def planned(plan, *args):
    """A planning step of the package; its config error stops the workflow before any job."""
    try:
        return plan(*args)
    except ConfigError as error:
        raise WorkflowError(f"config {error}") from None


planned(check_config, config, tts_voice_table())
# Plain Python: a fine-tuning job too big for its GPUs is refused here, before any job runs.
from lalm_slu.model.memory_plan import check_memory_plan
from lalm_slu.planning.cost_plan import PlanError, gpu_job_plans

check_memory_plan(config)

RUNS = planned(expand_grid, config)
PREFIXES = planned(expand_prefixes, config, RUNS)
# Each GPU job's GPUs and time limit, from the cost plan (`lalm-slu plan`); empty for CPU configs (the demo).
try:
    GPU_JOBS = gpu_job_plans(config)
except PlanError as error:
    raise WorkflowError(str(error)) from None
# Pool name -> a run it serves (they share phase 1, pool and settings).
IMITATION_POOLS = {
    paths.imitation_pool_name(config, run): run
    for run in RUNS.values()
    if run.scheme in IMITATION_SCHEMES
}


def job_run(wildcards):
    """The run a job serves: a grid run, or the shared first phases of several (a prefix)."""
    if "prefix" in wildcards.keys():
        return PREFIXES[wildcards.prefix]
    return RUNS[wildcards.run]


def alternatives(values):
    """A wildcard regex matching exactly these values (and nothing when there are none)."""
    return "|".join(re.escape(value) for value in sorted(values)) or "(?!)"


def corpora_with_speech(kind):
    return [name for name, c in config["corpora"].items() if c["speech"] == kind]


wildcard_constraints:
    corpus="[a-z][a-z0-9]*",
    lang="[a-z]{2,3}(-[a-z]{2,3})?",
    split="train|dev|test",
    seed="[0-9]+",
    # A budget's canonical label only (run names and paths carry it; config.budget_label).
    budget=BUDGET_LABEL_PATTERN,
    modality="|".join(TEST_INPUTS),
    run=alternatives(RUNS),
    prefix=alternatives(PREFIXES),
    testset="[a-z][a-z0-9]*-[a-z]{2,3}(-[a-z]{2,3})?",


# ---------------------------------------------------------------- adapters: wildcards -> the package's functions


def of_wildcards(function, *names):
    """An input/params function: function(the named wildcards' values)."""
    return lambda wildcards: function(*(wildcards[name] for name in names))


def of_config(function, *names):
    """An input/params function: function(config, the named wildcards' values)."""
    return lambda wildcards: function(config, *(wildcards[name] for name in names))


def of_job_run(function):
    """A params function: function(the job's run)."""
    return lambda wildcards: function(job_run(wildcards))


def of_run(function):
    """An input/params function: function(config, the job's run)."""
    return lambda wildcards: function(config, job_run(wildcards))


def of_run_and_input(function):
    """A params function: function(config, the job's run, its input files)."""
    return lambda wildcards, input: function(config, job_run(wildcards), input)


def of_pool(function):
    """An input/params function of an imitation pool's job: function(config, a run the pool serves)."""
    return lambda wildcards: function(config, IMITATION_POOLS[wildcards.pool])


def of_input(function):
    """A params function: function(the job's input files)."""
    return lambda wildcards, input: function(input)


def all_targets():
    plan = [paths.GPU_HOURS_FIGURE] if GPU_JOBS else []  # a GPU grid's cost plan
    return (
        [paths.METRICS_TABLE, paths.TABLES_DIR, paths.FIGURES_DIR, *plan]
        if RUNS
        else []
    )


def unknown_target(wildcards):
    """Input of a bare-word target that nothing else makes: none for a file already there, else a typo."""
    if Path(wildcards.target).exists():
        return []
    names = [rule.name for rule in workflow.rules if rule.name != "explain_target"]
    close = difflib.get_close_matches(wildcards.target, names, n=1)
    hint = (
        f"; did you mean {close[0]}?"
        if close
        else " (`snakemake --list-rules` lists the rules)"
    )
    raise WorkflowError(f"no rule or file {wildcards.target}{hint}")


def missing_model(wildcards):
    """Input of the model when model.path is missing and model.hub_id is null: nothing can make it."""
    raise WorkflowError(
        f"config model.path: {config['model']['path']} does not exist, and model.hub_id is null, so nothing "
        "downloads it. Set model.hub_id to the model's Hub repository (the download_model rule then fetches "
        "it into model.path), or model.path to the model's folder."
    )


def config_json(wildcards):
    """The workflow's config, as the plan command reads it."""
    return json.dumps(config, sort_keys=True)


def parent_dir(wildcards, output):
    """Directory of the first output (for commands that take an output directory)."""
    return str(Path(output[0]).parent)


metrics_paths = partial(paths.metrics_paths, config, RUNS)
evaluated_model_dirs = partial(paths.evaluated_model_dirs, RUNS)
cascade_wer_paths = partial(paths.cascade_wer_paths, config, RUNS)
settings_json = partial(arguments.settings_json, config)
model_download_stamp = partial(paths.model_download_stamp, config)
model_revision = partial(arguments.model_revision, config)
model_revision_pinning = partial(arguments.model_revision_pinning, config)


def resource(rule_name, key):
    return config["resources"][rule_name][key]


def job_resources(block, gpu=False, planned_as=None):
    """A rule's resources from config resources.<block>: mem_mb, runtime and, for a GPU job, gpu;
    `planned_as`: the rule name of a GPU job whose runtime and gpu come from the cost plan (planned_resource).
    """
    resources = {
        "mem_mb": resource(block, "mem_mb"),
        "runtime": resource(block, "runtime"),
    }
    if planned_as is not None:
        resources["runtime"] = planned_resource(planned_as, block, "runtime")
        resources["gpu"] = planned_resource(planned_as, block, "gpu")
    elif gpu:
        resources["gpu"] = resource(block, "gpu")
    return resources


def gpu_job_key(wildcards):
    """The cost plan's name of a GPU job: its run, prefix, pool, test set or run/test set."""
    if "run" in wildcards.keys() and "testset" in wildcards.keys():
        return f"{wildcards.run}/{wildcards.testset}"
    return next(
        wildcards[name]
        for name in ("run", "prefix", "pool", "testset")
        if name in wildcards.keys()
    )


def planned_resource(rule_name, block, key):
    """A GPU job's gpu or runtime: its plan's on a GPU config, else the config's resources.<block>.<key>."""

    def lookup(wildcards):
        plan = GPU_JOBS.get((rule_name, gpu_job_key(wildcards)))
        return config["resources"][block][key] if plan is None else plan[key]

    return lookup


def training_rule(wildcards):
    """The name the cost plan gives the job's rule (finetune_prefix trains a prefix, finetune_model a run)."""
    return "finetune_prefix" if "prefix" in wildcards.keys() else "finetune_model"


def finetune_gpus(wildcards):
    return planned_resource(training_rule(wildcards), "finetune", "gpu")(wildcards)


def finetune_threads(wildcards):
    """The job's CPUs: resources.finetune.threads for each of its processes on a node."""
    processes = arguments.finetune_processes(config, finetune_gpus(wildcards))
    return processes * resource("finetune", "threads")


def finetune_resource(key):
    """Slurm geometry of a fine-tuning job (arguments.finetune_slurm_resources; None: not asked)."""
    return lambda wildcards: arguments.finetune_slurm_resources(
        config, finetune_gpus(wildcards)
    )[key]


def finetune_resources():
    """A fine-tuning job's resources: GPUs and time limit from the cost plan, the Slurm geometry from its launch."""
    return {
        "mem_mb": resource("finetune", "mem_mb"),
        "runtime": lambda wildcards: planned_resource(
            training_rule(wildcards), "finetune", "runtime"
        )(wildcards),
        **{
            key: finetune_resource(key)
            for key in ("gpu", "gres", "nodes", "tasks", "tasks_per_gpu", "mpi")
        },
    }


def finetune_launcher(wildcards):
    return arguments.finetune_launcher(config, finetune_gpus(wildcards))


# A rule's params carry a hash of the package source its command runs, so editing that code
# re-runs the rule (and, by timestamps, everything downstream) and nothing else.
def code_version(command_module):
    return package_code_version(command_module, PACKAGE_SRC)


# ---------------------------------------------------------------- corpora and speech

corpus_input = of_config(paths.corpus_inputs, "corpus", "lang")
corpus_source = of_config(paths.corpus_source, "corpus", "lang")
release_text_dir = of_config(paths.release_text_dir, "corpus")
reader_option_arguments = of_config(arguments.reader_option_arguments, "corpus", "lang")
download_arguments = of_config(arguments.download_arguments, "corpus")
budget_pool = of_wildcards(paths.manifest_path, "corpus", "lang", "split")
max_utterance_arguments = of_config(arguments.corpus_max_utterance_arguments, "corpus")


def corpus_setting(name):
    """Params function returning one key of the wildcard's corpus config."""
    return lambda wildcards: config["corpora"][wildcards.corpus][name]


def tts_voices_json(wildcards):
    """Test speech uses the held-out voices; train and dev speech the training voices."""
    voices = tts_voice_table()[wildcards.lang]
    return json.dumps(voices["test" if wildcards.split == "test" else "train"])


def alignment_model_setting(key):
    """Params function: one key of the wildcard language's CTC model (alignment.models)."""
    setting = arguments.alignment_model_setting
    return lambda wildcards: planned(setting, config, wildcards.lang, key)


# ---------------------------------------------------------------- mixtures and fine-tuning

mixture_inputs = of_run(paths.mixture_inputs)
mixture_scheme_inputs = of_run(paths.mixture_scheme_inputs)
mixture_target_arguments = of_run_and_input(arguments.mixture_target_arguments)
mixture_scheme_arguments = of_run_and_input(arguments.mixture_scheme_arguments)
audio_frames_settings = of_config(arguments.audio_frames_settings)


run_scheme = of_job_run(attrgetter("scheme"))
run_seed = of_job_run(attrgetter("seed"))
prefix_phases = of_job_run(arguments.prefix_phases)


def of_training_job(function):
    """An input/params function: function(config, the job's run, the prefix it trains or None)."""
    return lambda wildcards: function(
        config, job_run(wildcards), wildcards.get("prefix")
    )


finetune_inputs = of_training_job(paths.finetune_inputs)
finetune_settings = of_training_job(arguments.finetune_settings)
work_dir = of_training_job(paths.work_dir)
start_from_option = of_input(arguments.start_from_option)
dev_manifests_argument = of_input(arguments.dev_manifests_argument)


def threads_per_process(wildcards, threads):
    processes = arguments.finetune_processes(config, finetune_gpus(wildcards))
    return max(1, threads // processes)


# ---------------------------------------------------------------- decoding, scoring and comparisons

decode_settings = of_config(arguments.decode_settings)
cascade_settings = of_config(arguments.cascade_settings)
audio_frames_argument = of_input(arguments.audio_frames_argument)
comparison_pair_arguments = of_config(arguments.comparison_pair_arguments)
gold_manifest = of_wildcards(paths.gold_manifest, "testset")
cascade_speech_manifest = of_wildcards(paths.testset_speech_manifest, "testset")


def score_meta(wildcards):
    return arguments.score_meta(
        job_run(wildcards), wildcards.testset, wildcards.modality
    )


def decode_inputs(wildcards):
    return paths.decode_inputs(config, job_run(wildcards), wildcards.testset)


def decode_input_arguments(wildcards, input, output):
    return arguments.decode_input_arguments(config, input, output)


def comparison_inputs(wildcards):
    return paths.comparison_inputs(config, RUNS)


def gold_arguments(wildcards):
    return arguments.gold_arguments(paths.gold_manifests(RUNS))


# ---------------------------------------------------------------- behaviour imitation

imitation_pool_inputs = of_pool(paths.imitation_pool_inputs)
imitation_pool_arguments = of_input(arguments.imitation_pool_arguments)
imitation_tasks = of_pool(arguments.imitation_tasks)
imitation_decode_settings = of_pool(arguments.imitation_decode_settings)
