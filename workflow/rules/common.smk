# Paths, input functions and code versions; config checks and grid expansion are lalm_slu.config_checks and
# lalm_slu.grid, wrapped here where Snakemake's config is needed.
# Plain Python only: nothing heavy is imported, only the package's plain-Python modules.

import hashlib
import json
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

SPLITS = ("train", "dev", "test")
PACKAGE_SRC = Path(workflow.basedir) / "src"
# Planning uses this checkout's package (plain-Python modules only), whatever is installed.
sys.path.insert(0, str(PACKAGE_SRC))
from lalm_slu.code_version import code_version as package_code_version
from lalm_slu.speech.voice_table import read_voice_table
from lalm_slu import grid
from lalm_slu.config_checks import ConfigError, check_config
from lalm_slu.grid import (
    expand_grid,
    expand_prefixes,
    parse_testset,
    phase_one_run,
    prefix_of,
    run_settings,
    run_testsets,
)
from lalm_slu.schemes import (
    BUDGET_FREE_PHASES,
    IMITATION_SCHEMES,
    INTERLEAVING_SCHEMES,
)

VOICE_SCHEMA = str(Path(workflow.basedir) / "workflow/schemas/voices.schema.yaml")


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
from lalm_slu.memory_plan import check_memory_plan

check_memory_plan(config)

RUNS = planned(expand_grid, config)
EVALUATED_RUNS = {name: run for name, run in RUNS.items() if run.evaluated}
PREFIXES = planned(expand_prefixes, config, RUNS)


def scheme_block(run):
    return grid.scheme_block(config, run)


def start_model(run):
    return grid.start_model(config, run)


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
    budget="[0-9]+(shot)?",
    modality="speech|text|cascade",
    run=alternatives(RUNS),
    prefix=alternatives(PREFIXES),
    testset="[a-z][a-z0-9]*-[a-z]{2,3}(-[a-z]{2,3})?",


# ---------------------------------------------------------------- paths


def manifest_path(corpus, lang, split):
    return f"results/manifests/{corpus}/{lang}/{split}.parquet"


def speech_manifest_path(corpus, lang, split):
    return f"results/speech/{corpus}/{lang}/{split}.parquet"


def budget_path(corpus, lang, split, seed, budget):
    return f"results/budgets/{corpus}/{lang}/{split}/seed{seed}/{budget}.txt"


def metrics_paths():
    return [
        f"results/runs/{name}/metrics/{testset}.{modality}.json"
        for name, run in EVALUATED_RUNS.items()
        for testset in run_testsets(run)
        for modality in config["decode"]["modalities"]
    ]


def all_targets():
    if not RUNS:
        return []
    return ["results/metrics.csv", "results/tables", "results/figures"]


def parent_dir(wildcards, output):
    """Directory of the first output (for commands that take an output directory)."""
    return str(Path(output[0]).parent)


# ---------------------------------------------------------------- input functions


def corpus_input(wildcards):
    """The local raw data, or the stamps of the downloads that filled the hub cache and the release text."""
    corpus = config["corpora"][wildcards.corpus]
    stamps = []
    if corpus["download"]:
        stamps.append(f"resources/downloads/{wildcards.corpus}.json")
    if corpus["download_release_text"]:
        stamps.append(f"resources/downloads/{wildcards.corpus}-release.json")
    return stamps or corpus_source(wildcards)


def release_text_dir(wildcards):
    corpus = config["corpora"][wildcards.corpus]
    if corpus["reader"] == "slurp_release":
        return corpus["source"]
    return corpus["options"]["annotations"]


def corpus_source(wildcards):
    source = config["corpora"][wildcards.corpus]["source"]
    return source[wildcards.lang] if isinstance(source, dict) else source


def reader_options(corpus_name, lang):
    """The reader options of one language: {lang}/{locale} filled in, the hub locale as `config`."""
    corpus = config["corpora"][corpus_name]
    locale = corpus["locales"].get(lang, lang)
    options = {
        key: value.format(lang=lang, locale=locale) if isinstance(value, str) else value
        for key, value in corpus["options"].items()
    }
    if lang in corpus["locales"]:
        options.setdefault("config", locale)
    return options


# Params that stand for several arguments are lists: the rule's `:q` quotes each element, so no
# config value or file name is ever split or read by the shell.


def reader_option_arguments(wildcards):
    options = reader_options(wildcards.corpus, wildcards.lang)
    pairs = [f"{key}={value}" for key, value in sorted(options.items())]
    return ["--option", *pairs] if pairs else []


def download_arguments(wildcards):
    corpus = config["corpora"][wildcards.corpus]
    locales = corpus["download"].get("locales") or [
        corpus["locales"][lang]
        for lang in corpus["languages"]
        if lang in corpus["locales"]
    ]
    arguments = [
        "--corpus",
        corpus["download"]["corpus"],
        "--cache-dir",
        corpus["options"]["cache_dir"],
    ]
    return arguments + (["--locales", *locales] if locales else [])


def max_utterance_arguments(wildcards):
    caps = config["corpora"][wildcards.corpus]["max_utterances"]
    pairs = [f"{split}={caps[split]}" for split in SPLITS if caps.get(split)]
    return ["--max-utterances", *pairs] if pairs else []


def corpus_setting(name):
    """Params function returning one key of the wildcard's corpus config."""

    def setting(wildcards):
        return config["corpora"][wildcards.corpus][name]

    return setting


def tts_voices_json(wildcards):
    """Test speech uses the held-out voices; train and dev speech the training voices."""
    voices = tts_voice_table()[wildcards.lang]
    return json.dumps(voices["test" if wildcards.split == "test" else "train"])


def budget_pool(wildcards):
    return manifest_path(wildcards.corpus, wildcards.lang, wildcards.split)


def mixture_inputs(wildcards):
    run = job_run(wildcards)
    split = run.source_split
    speech_path = run_speech_manifest_path(run)
    inputs = {
        "text": manifest_path(run.corpus, run.source, split),
        "speech": speech_path(run.corpus, run.source, split),
    }
    if run.target is None:
        inputs["speech_ids"] = budget_path(
            run.corpus, run.source, split, run.seed, run.budget
        )
        return inputs
    # Cross-lingual: all source speech (none for text-only); the budget applies to the target language.
    source_budget = "0" if run.scheme == "text_only" else "100"
    inputs["speech_ids"] = budget_path(
        run.corpus, run.source, split, run.seed, source_budget
    )
    inputs["target_text"] = manifest_path(run.corpus, run.target, run.target_split)
    inputs["target_speech"] = speech_path(run.corpus, run.target, run.target_split)
    inputs["target_speech_ids"] = budget_path(
        run.corpus, run.target, run.target_split, run.seed, run.budget
    )
    return inputs


def mixture_target_arguments(wildcards, input):
    run = job_run(wildcards)
    if run.target is None:
        return []
    arguments = [
        "--target-text-manifest",
        input.target_text,
        "--target-speech-manifest",
        input.target_speech,
        "--target-speech-ids",
        input.target_speech_ids,
    ]
    return arguments + ([] if run.target_text else ["--no-target-text"])


def run_scheme(wildcards):
    return job_run(wildcards).scheme


def run_seed(wildcards):
    return job_run(wildcards).seed


def prefix_phases(wildcards):
    return BUDGET_FREE_PHASES[job_run(wildcards).scheme]


def audio_frames_path(corpus, lang, split):
    return f"results/audio_frames/{corpus}/{lang}/{split}.safetensors"


def shares_audio_frames(run):
    """Precomputed frames serve the run: its scheme trains neither the audio tower nor the projector."""
    if not config["audio_frames"]["precompute"]:
        return False
    # A scheme without trainable_modules fails in the trainer (KeyError naming it); planning must not.
    modules = {**config["schemes"][run.scheme], **run.scheme_settings}.get(
        "trainable_modules"
    )
    if modules is None:
        return False
    trained = {module.split(".")[0] for module in modules}
    return not trained & {"audio_tower", "multi_modal_projector"}


def run_audio_frames(run):
    """Frames files of the speech the run trains on (none for text-only training)."""
    if not shares_audio_frames(run):
        return []
    frames = []
    if run.target is not None or run.budget != "0":
        frames.append(audio_frames_path(run.corpus, run.source, run.source_split))
    if run.target is not None and run.budget != "0":
        frames.append(audio_frames_path(run.corpus, run.target, run.target_split))
    return frames


def audio_frames_settings(wildcards):
    """Frames are computed as training computes them: same device, precision and audio length handling."""
    training = config["training"]
    return json.dumps(
        {
            "batch_size": config["audio_frames"]["batch_size"],
            "length_aware": training.get("length_aware", True),
            "device": training.get("device", "auto"),
            "precision": training.get("precision", "auto"),
        },
        sort_keys=True,
    )


def prefix_checkpoint_path(name):
    return f"results/prefixes/{name}/checkpoint"


def finetune_inputs(wildcards):
    inputs = mixture_inputs(wildcards)
    run = job_run(wildcards)
    prefix = prefix_of(run)
    if "prefix" in wildcards.keys():
        mixture, start_from = f"results/prefixes/{wildcards.prefix}/mixture.parquet", []
    else:
        mixture = f"results/mixtures/{wildcards.run}.parquet"
        start_from = [prefix_checkpoint_path(prefix)] if prefix else []
    return {
        "mixture": mixture,
        "manifests": [inputs[key] for key in inputs if not key.endswith("speech_ids")],
        "model": start_model(run),
        "audio_frames": run_audio_frames(run),
        "start_from": start_from,
    }


def start_from_argument(wildcards, input):
    return ["--start-from", *input.start_from] if input.start_from else []


def finetune_settings(wildcards):
    """run_settings as one JSON string (a prefix: its first phases only)."""
    run = job_run(wildcards)
    phases = BUDGET_FREE_PHASES[run.scheme] if "prefix" in wildcards.keys() else None
    return json.dumps(run_settings(config, run, phases), sort_keys=True)


def finetune_processes():
    """Training processes per node: one per GPU, or as many as set (CPU runs)."""
    block = config["resources"]["finetune"]
    return block.get("processes") or max(1, block["gpu"])


def finetune_launcher(wildcards):
    """The same trainer for 1 and N processes: plain python for one, torchrun for one node's GPUs, and on several
    nodes one torchrun per node (srun) meeting at the job's first node. Built from integers only.
    """
    processes, nodes = finetune_processes(), resource("finetune", "nodes")
    if nodes > 1:
        return (
            f"srun --nodes {nodes} --ntasks-per-node 1 python -m torch.distributed.run"
            f" --nnodes {nodes} --nproc-per-node {processes} --rdzv-backend c10d"
            ' --rdzv-endpoint "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500"'
            ' --rdzv-id "$SLURM_JOB_ID"'
        )
    if processes > 1:
        return (
            f"python -m torch.distributed.run --standalone --nproc-per-node {processes}"
        )
    return "python"


def threads_per_process(wildcards, threads):
    return max(1, threads // finetune_processes())


def work_dir(wildcards):
    """Checkpoints live outside results/ and are not Snakemake outputs."""
    if "prefix" in wildcards.keys():
        return f"work/prefixes/{wildcards.prefix}"
    return f"work/{wildcards.run}"


def decode_inputs(wildcards):
    """The run's model and one manifest per configured modality (`manifest_<modality>`)."""
    corpus, lang = parse_testset(wildcards.testset)
    modalities = config["decode"]["modalities"]
    inputs = {"model": f"results/runs/{wildcards.run}/model"}
    for modality in modalities:
        # The cascade reads the base model's transcripts of the test speech, made once for every run.
        inputs[f"manifest_{modality}"] = (
            cascade_manifest_path(wildcards.testset)
            if modality == "cascade"
            else speech_manifest_path(corpus, lang, "test")
        )
    if "speech" in modalities and shares_audio_frames(RUNS[wildcards.run]):
        inputs["audio_frames"] = audio_frames_path(corpus, lang, "test")
    return inputs


def decode_input_arguments(wildcards, input, output):
    """--input MODALITY MANIFEST OUT for each configured modality (output follows the modalities' order)."""
    arguments = []
    for modality, predictions in zip(config["decode"]["modalities"], output):
        arguments += ["--input", modality, input[f"manifest_{modality}"], predictions]
    return arguments


def cascade_manifest_path(testset):
    return f"results/cascade/{testset}.parquet"


def cascade_speech_manifest(wildcards):
    corpus, lang = parse_testset(wildcards.testset)
    return speech_manifest_path(corpus, lang, "test")


def cascade_settings(wildcards):
    """Transcription settings: the cascade block over decode's (beams, batch size, device, precision)."""
    decode = {k: v for k, v in config["decode"].items() if k != "modalities"}
    return json.dumps({**decode, **config["cascade"]}, sort_keys=True)


def cascade_wer_paths():
    """The cascade transcripts' WER per test set, for the tables' notes (none without a cascade input)."""
    if "cascade" not in config["decode"]["modalities"]:
        return []
    return [
        f"results/cascade/{testset}.wer.json" for testset in sorted(test_manifests())
    ]


def audio_frames_argument(wildcards, input):
    if not hasattr(input, "audio_frames"):
        return []
    return ["--audio-frames", input.audio_frames]


def decode_settings(wildcards):
    settings = {k: v for k, v in config["decode"].items() if k != "modalities"}
    settings["instruction"] = config["prompt"]["instruction"]
    return json.dumps(settings, sort_keys=True)


def gold_manifest(wildcards):
    corpus, lang = parse_testset(wildcards.testset)
    return manifest_path(corpus, lang, "test")


def score_meta(wildcards):
    """The run's grid coordinates, copied into its metric files (and so into metrics.csv)."""
    run = RUNS[wildcards.run]
    meta = {"run": run.name, "corpus": run.corpus, "scheme": run.scheme}
    if run.target is None:
        meta["lang"] = run.source
    else:
        meta.update(source=run.source, target=run.target, target_text=run.target_text)
    meta.update(budget=run.budget, seed=run.seed)
    return json.dumps(meta)


def data_manifests(key):
    """The demo model's own text manifests named by a demo_model list of {corpus, lang, split}."""
    return [
        f"results/demo_model/manifests/{ref['corpus']}/{ref['lang']}/{ref['split']}.parquet"
        for ref in config["demo_model"][key]
    ]


def demo_max_utterance_arguments(wildcards):
    caps = config["demo_model"]["max_utterances"].get(wildcards.corpus, {})
    pairs = [f"{split}={caps[split]}" for split in SPLITS if caps.get(split)]
    return ["--max-utterances", *pairs] if pairs else []


def pretrain_voices_json(wildcards):
    """Voice records per language of the pretraining data: training voices speak, test voices evaluate."""
    languages = {ref["lang"] for ref in config["demo_model"]["train_data"]}
    voices = tts_voice_table()
    return json.dumps(
        {lang: voices[lang] for lang in sorted(languages)}, sort_keys=True
    )


def pretrain_options(wildcards):
    options = config["demo_model"]["pretrain_options"]
    return [
        argument
        for key, value in sorted(options.items())
        for argument in (f"--{key.replace('_', '-')}", str(value))
    ]


def settings_json(*keys):
    """A config block (by key path) as a JSON string, for a command's --settings."""
    value = config
    for key in keys:
        value = value[key]
    return json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------- resources


def resource(rule_name, key):
    return config["resources"][rule_name][key]


# ---------------------------------------------------------------- code versions

# A rule's params carry a hash of the package source its command runs, so editing that code
# re-runs the rule (and, by timestamps, everything downstream) and nothing else. The trainer's
# checkpoint fingerprint uses the same function.


def code_version(command_module):
    return package_code_version(command_module, PACKAGE_SRC)


# ---------------------------------------------------------------- comparisons


def comparison_inputs(wildcards):
    """Every run's predictions, with the settings (metrics.csv) and the gold labels they are scored on."""
    return {
        "metrics": "results/metrics.csv",
        "predictions": [
            f"results/runs/{name}/predictions/{testset}.{modality}.jsonl"
            for name, run in EVALUATED_RUNS.items()
            for testset in run_testsets(run)
            for modality in config["decode"]["modalities"]
        ],
        "gold": sorted(set(test_manifests().values())),
    }


def test_manifests():
    """Test set name -> its gold manifest, for every test set of the grid."""
    return {
        testset: manifest_path(*parse_testset(testset), "test")
        for run in EVALUATED_RUNS.values()
        for testset in run_testsets(run)
    }


def gold_arguments(wildcards):
    return [f"{testset}={path}" for testset, path in sorted(test_manifests().items())]


def comparison_pair_arguments(wildcards):
    """The configured pairs of schemes and of decode inputs, as --scheme-pair/--modality-pair arguments."""
    comparisons = config["comparisons"]
    arguments = []
    for flag, pairs in (
        ("--scheme-pair", comparisons["scheme_pairs"]),
        ("--modality-pair", comparisons["modality_pairs"]),
    ):
        for reference, compared in pairs:
            arguments += [flag, reference, compared]
    return arguments


# ---------------------------------------------------------------- model download


def model_download_stamp():
    """The download's record (hub commit, files), named after model.path's folder."""
    return f"resources/downloads/models/{Path(config['model']['path']).name}.json"


def model_revision():
    # No revision means the main branch to huggingface_hub too.
    return config["model"]["revision"] or "main"


# ---------------------------------------------------------------- behaviour imitation and interleaving


def imitation_pool_name(run):
    """Names the targets of a run's pool: its phase-1 model, budget and imitation settings (behaviour_imitation and
    mtbi at one budget share them): slurp-en_text_only_b0_s0/b5_3f2a1c9d."""
    settings = {
        key: scheme_block(run)["imitation"].get(key)
        for key in ("tasks", "max_new_tokens", "label_free_speech")
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{phase_one_run(run).name}/b{run.budget}_{digest[:8]}"


def imitation_targets_path(run):
    return f"results/imitation_targets/{imitation_pool_name(run)}.parquet"


# Pool name -> a run it serves (they share phase 1, pool and settings).
IMITATION_POOLS = {
    imitation_pool_name(run): run
    for run in RUNS.values()
    if run.scheme in IMITATION_SCHEMES
}


def label_free_inputs(run):
    """Paired speech without SLU labels beyond the run's budget (imitation.label_free_speech), if configured."""
    extra = scheme_block(run).get("imitation", {}).get("label_free_speech")
    if not extra:
        return {}
    return {
        "label_free_speech": speech_manifest_path(
            extra["corpus"], extra["lang"], extra["split"]
        ),
        "label_free_ids": budget_path(
            extra["corpus"], extra["lang"], extra["split"], run.seed, extra["budget"]
        ),
    }


def mixture_scheme_inputs(wildcards):
    """mixture_inputs plus what imitation schemes mix: their targets and any label-free paired speech."""
    run = RUNS[wildcards.run]
    inputs = mixture_inputs(wildcards)
    if run.scheme in IMITATION_SCHEMES:
        inputs["imitation_targets"] = imitation_targets_path(run)
        inputs.update(label_free_inputs(run))
    return inputs


def mixture_scheme_arguments(wildcards, input):
    run = RUNS[wildcards.run]
    arguments = []
    if run.scheme in INTERLEAVING_SCHEMES:
        arguments += [
            "--interleave",
            json.dumps(scheme_block(run)["interleaving"], sort_keys=True),
        ]
    if run.scheme in IMITATION_SCHEMES:
        arguments += ["--imitation-targets", input.imitation_targets]
        if "label_free_speech" in input.keys():
            arguments += [
                "--label-free-speech",
                input.label_free_speech,
                input.label_free_ids,
            ]
    return arguments


class RunWildcards(dict):
    """A run's job wildcards, for calling its input functions from another rule's."""

    def __getattr__(self, name):
        return self[name]


def imitation_pool_inputs(wildcards):
    """The phase-1 model and the paired-speech pool (manifests and id lists) of an imitation run."""
    run = IMITATION_POOLS[wildcards.pool]
    inputs = mixture_inputs(RunWildcards(run=run.name))
    pool = {
        "model": start_model(run),
        "speech": inputs["speech"],
        "speech_ids": inputs["speech_ids"],
    }
    if run.target is not None:
        pool["target_speech"] = inputs["target_speech"]
        pool["target_speech_ids"] = inputs["target_speech_ids"]
    pool.update(label_free_inputs(run))
    # Transcript-level tasks may be answered by the base model (before SLU fine-tuning).
    if any(
        task.get("model") == "base" for task in scheme_block(run)["imitation"]["tasks"]
    ):
        pool["base_model"] = config["model"]["path"]
    return pool


def imitation_pool_arguments(wildcards, input):
    pairs = [("speech", "speech_ids"), ("target_speech", "target_speech_ids")]
    pairs.append(("label_free_speech", "label_free_ids"))
    arguments = []
    for manifest, ids in pairs:
        if manifest in input.keys():
            arguments += ["--pool", input[manifest], input[ids]]
    if "base_model" in input.keys():
        arguments += ["--base-model", input.base_model]
    return arguments


def imitation_tasks(wildcards):
    """The instructions, and the model (phase1 or base) that answers each from the transcript (null: the SLU prompt)."""
    tasks = scheme_block(IMITATION_POOLS[wildcards.pool])["imitation"]["tasks"]
    return json.dumps(
        [
            {
                "task": task["task"],
                "instruction": task["instruction"] or config["prompt"]["instruction"],
                "model": task.get("model", "phase1"),
            }
            for task in tasks
        ]
    )


def imitation_decode_settings(wildcards):
    """Decoding of the targets: decode's settings, with the imitation block's length limit."""
    decode = {k: v for k, v in config["decode"].items() if k != "modalities"}
    imitation = scheme_block(IMITATION_POOLS[wildcards.pool])["imitation"]
    return json.dumps(
        {**decode, "max_new_tokens": imitation["max_new_tokens"]}, sort_keys=True
    )


def aligned_manifest_path(corpus, lang, split):
    return f"results/aligned/{corpus}/{lang}/{split}.parquet"


def run_speech_manifest_path(run):
    """Where a run reads its training speech: recorded speech of an interleaving scheme needs word times, so it
    reads the forced-aligned manifest (rule align_words); synthesized speech has them already.
    """
    recorded = config["corpora"][run.corpus]["speech"] == "recorded"
    if recorded and run.scheme in INTERLEAVING_SCHEMES:
        return aligned_manifest_path
    return speech_manifest_path


def alignment_model_setting(key):
    """Params function: one key of the wildcard language's CTC model (alignment.models)."""

    def setting(wildcards):
        models = config["alignment"]["models"]
        if wildcards.lang not in models:
            raise WorkflowError(
                f"config alignment.models: no CTC model for language {wildcards.lang!r} "
                "(its recorded speech is interleaved)"
            )
        return models[wildcards.lang][key] or ("main" if key == "revision" else None)

    return setting
