"""What a job's command is told beyond its files: settings JSON and argument lists, pure functions of the
(validated) config and a run. Plain Python: the workflow plans with these (common.smk adapts a job's wildcards).

Params that stand for several arguments are lists: the rule's `:q` quotes each element, so no config value or file
name is ever split or read by the shell. `inputs` is a job's named input files (a mapping with .keys())."""

from __future__ import annotations

import json
import shlex

from lalm_slu.planning.config_checks import ConfigError
from lalm_slu.planning.grid import Run, run_scheme, scheme_block
from lalm_slu.planning.paths import start_model
from lalm_slu.config.schemes import BUDGET_FREE_PHASES, IMITATION_SCHEMES, INTERLEAVING_SCHEMES
from lalm_slu.config.settings import AudioFrameSettings, ImitationTask, TrainingSettings

SPLITS = ("train", "dev", "test")


def settings_json(config: dict, *keys: str) -> str:
    """A config block (by key path) as a JSON string, for a command's --settings."""
    value = config
    for key in keys:
        value = value[key]
    return json.dumps(value, sort_keys=True)


def decode_block(config: dict) -> dict:
    """config decode without its list of modalities: how one model decodes."""
    return {key: value for key, value in config["decode"].items() if key != "modalities"}


# ---------------------------------------------------------------- corpora


def reader_options(config: dict, corpus_name: str, lang: str) -> dict:
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


def reader_option_arguments(config: dict, corpus_name: str, lang: str) -> list[str]:
    options = reader_options(config, corpus_name, lang)
    pairs = [f"{key}={value}" for key, value in sorted(options.items())]
    return ["--option", *pairs] if pairs else []


def download_arguments(config: dict, corpus_name: str) -> list[str]:
    corpus = config["corpora"][corpus_name]
    locales = corpus["download"].get("locales") or [
        corpus["locales"][lang] for lang in corpus["languages"] if lang in corpus["locales"]
    ]
    arguments = ["--corpus", corpus["download"]["corpus"], "--cache-dir", corpus["options"]["cache_dir"]]
    return arguments + (["--locales", *locales] if locales else [])


def max_utterance_arguments(caps: dict) -> list[str]:
    """--max-utterances split=N for each split with a cap."""
    pairs = [f"{split}={caps[split]}" for split in SPLITS if caps.get(split)]
    return ["--max-utterances", *pairs] if pairs else []


def corpus_max_utterance_arguments(config: dict, corpus_name: str) -> list[str]:
    return max_utterance_arguments(config["corpora"][corpus_name]["max_utterances"])


def alignment_model_setting(config: dict, lang: str, key: str):
    """One key of a language's CTC model (alignment.models); no revision means the main branch."""
    models = config["alignment"]["models"]
    if lang not in models:
        raise ConfigError(f"alignment.models: no CTC model for language {lang!r} (its recorded speech is interleaved)")
    return models[lang][key] or ("main" if key == "revision" else None)


def model_revision(config: dict) -> str:
    # No revision means the main branch to huggingface_hub too.
    return config["model"]["revision"] or "main"


def model_revision_pinning(config: dict) -> list[str]:
    """--require-commit where fine-tuning runs on GPUs (paper scale): base weights that move under a grid of runs
    would make its runs incomparable."""
    return ["--require-commit"] if config.get("resources", {}).get("finetune", {}).get("gpu", 0) >= 1 else []


# ---------------------------------------------------------------- mixtures and fine-tuning


def mixture_target_arguments(config: dict, run: Run, inputs) -> list[str]:
    """A cross-lingual run's target-language manifests and ids (and whether its text is used)."""
    if run.target is None:
        return []
    arguments = [
        "--target-text-manifest",
        inputs["target_text"],
        "--target-speech-manifest",
        inputs["target_speech"],
        "--target-speech-ids",
        inputs["target_speech_ids"],
    ]
    return arguments + ([] if run.target_text else ["--no-target-text"])


def mixture_scheme_arguments(config: dict, run: Run, inputs) -> list[str]:
    """What an interleaving or imitation scheme adds to its mixture: its interleaving, targets, label-free speech."""
    arguments = []
    if run.scheme in INTERLEAVING_SCHEMES:
        arguments += ["--interleave", json.dumps(scheme_block(config, run)["interleaving"], sort_keys=True)]
    if run.scheme in IMITATION_SCHEMES:
        arguments += ["--imitation-targets", inputs["imitation_targets"]]
        if "label_free_speech" in inputs.keys():
            arguments += ["--label-free-speech", inputs["label_free_speech"], inputs["label_free_ids"]]
    return arguments


def audio_frames_settings(config: dict) -> str:
    """Frames are computed as training computes them: same device, precision and audio length handling."""
    training = TrainingSettings.from_dict(config["training"], "config training")
    settings = AudioFrameSettings(
        batch_size=config["audio_frames"]["batch_size"],
        length_aware=training.length_aware,
        device=training.device,
        precision=training.precision,
    )
    return json.dumps(settings.to_dict(), sort_keys=True)


def prefix_phases(run: Run) -> int:
    """How many of a curriculum run's phases its shared prefix trains (they need no speech budget)."""
    return BUDGET_FREE_PHASES[run.scheme]


def run_settings(config: dict, run: Run, phases: int | None = None) -> dict:
    """Everything training needs besides the data; `phases`: only the first ones (a prefix)."""
    return {
        # What the weights are; where they came from (hub_id, revision) or how planning sized them does not
        # identify the run.
        "model": {**{key: config["model"][key] for key in ("path", "lora")}, "path": start_model(config, run)},
        "training": {**config["training"], "seed": run.seed},
        "scheme": run_scheme(config, run, phases),
        "prompt": config["prompt"],
    }


def finetune_settings(config: dict, run: Run, prefix: str | None = None) -> str:
    """run_settings as one JSON string (a job training a prefix: the run's first phases only)."""
    phases = BUDGET_FREE_PHASES[run.scheme] if prefix is not None else None
    return json.dumps(run_settings(config, run, phases), sort_keys=True)


def start_from_argument(inputs) -> list[str]:
    """--start-from CHECKPOINT when the run continues a prefix's checkpoint."""
    return ["--start-from", *inputs["start_from"]] if inputs["start_from"] else []


def start_from_option(inputs) -> str:
    """start_from_argument as quoted shell text after a space (the space stands alone without a checkpoint): the
    one fine-tuning command's text for runs, finetune_output_option's for prefixes."""
    return " " + shlex.join(start_from_argument(inputs))


def finetune_output_option(prefix: bool) -> str:
    """Shell text after --out-dir: a prefix's job writes only its checkpoint (no config value, nothing to quote)."""
    return " --output checkpoint" if prefix else ""


def dev_manifests_argument(inputs) -> list[str]:
    """--dev-manifests text=MANIFEST speech=MANIFEST, those the run evaluates on (planning.paths.dev_manifests)."""
    given = [f"{name}={path}" for name in ("text", "speech") for path in inputs[f"dev_{name}"]]
    return ["--dev-manifests", *given] if given else []


def finetune_processes(config: dict, gpus: int) -> int:
    """Training processes per node: one per GPU of the job (its plan's), or as many as set (CPU runs)."""
    return config["resources"]["finetune"].get("processes") or max(1, gpus)


# The c10d rendezvous port of a multi-node job: one per job (from its id), so two jobs on one node never collide.
RENDEZVOUS_PORT = "$((20000 + SLURM_JOB_ID % 20000))"


def finetune_launcher(config: dict, gpus: int) -> str:
    """The same trainer for 1 and N processes: plain python for one, torchrun for one node's GPUs (a free port of
    its own), and on several nodes one torchrun per node (srun, one task a node, from the job's batch step: the
    rule is an `mpi` job, so no step wraps it) meeting at the job's first node. Built from integers only."""
    processes, nodes = finetune_processes(config, gpus), config["resources"]["finetune"]["nodes"]
    if nodes > 1:
        cpus = processes * config["resources"]["finetune"]["threads"]
        return (
            f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 --cpus-per-task {cpus} --kill-on-bad-exit 1"
            f" python -m torch.distributed.run --nnodes {nodes} --nproc-per-node {processes} --rdzv-backend c10d"
            f' --rdzv-endpoint "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):{RENDEZVOUS_PORT}"'
            ' --rdzv-id "$SLURM_JOB_ID"'
        )
    if processes > 1:
        return f"python -m torch.distributed.run --standalone --nproc-per-node {processes}"
    return "python"


def finetune_slurm_resources(config: dict, gpus: int) -> dict:
    """What the Slurm executor turns into the job's request (None: left out).
    One node: `gpu` GPUs and the rule's threads (processes × resources.finetune.threads) as one task, which the
    jobstep's srun hands whole to torchrun. N nodes: `gres` gpu:G per node, one task per node (`tasks`, as an `mpi`
    job: the plugin runs the rule's own srun launcher in the batch step instead of wrapping it in a step), and
    `tasks_per_gpu: 0` so that no --ntasks-per-gpu is derived from the task count."""
    nodes = config["resources"]["finetune"]["nodes"]
    if nodes > 1:
        return {"gpu": 0, "gres": f"gpu:{gpus}", "nodes": nodes, "tasks": nodes, "tasks_per_gpu": 0, "mpi": "srun"}
    return {"gpu": gpus, "gres": None, "nodes": 1, "tasks": None, "tasks_per_gpu": None, "mpi": None}


# ---------------------------------------------------------------- decoding and scoring


def decode_settings(config: dict) -> str:
    return json.dumps({**decode_block(config), "instruction": config["prompt"]["instruction"]}, sort_keys=True)


def decode_input_arguments(config: dict, inputs, outputs) -> list[str]:
    """--input MODALITY MANIFEST OUT for each configured modality: its manifest (`manifest_<modality>`, from
    planning.paths.decode_inputs) and its predictions (the output named after it, planning.paths.decode_outputs)."""
    arguments = []
    for modality in config["decode"]["modalities"]:
        arguments += ["--input", modality, inputs[f"manifest_{modality}"], outputs[modality]]
    return arguments


def audio_frames_argument(inputs) -> list[str]:
    return ["--audio-frames", inputs["audio_frames"]] if "audio_frames" in inputs.keys() else []


def cascade_settings(config: dict) -> str:
    """Transcription settings: the cascade block over decode's (beams, batch size, device, precision)."""
    return json.dumps({**decode_block(config), **config["cascade"]}, sort_keys=True)


def score_meta(run: Run, testset: str, modality: str) -> str:
    """What a metric file scores: the run's grid coordinates, the test set and its input, copied into the file
    (and so into metrics.csv, which reads them from there)."""
    meta = {"run": run.name, "corpus": run.corpus, "scheme": run.scheme}
    if run.target is None:
        meta["lang"] = run.source
    else:
        meta.update(source=run.source, target=run.target, target_text=run.target_text)
    meta.update(budget=run.budget, seed=run.seed, testset=testset, modality=modality)
    return json.dumps(meta)


def gold_arguments(test_manifests: dict[str, str]) -> list[str]:
    """testset=gold manifest, for each test set."""
    return [f"{testset}={path}" for testset, path in sorted(test_manifests.items())]


def comparison_pair_arguments(config: dict) -> list[str]:
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


# ---------------------------------------------------------------- behaviour imitation


def imitation_pool_arguments(inputs) -> list[str]:
    """--pool MANIFEST IDS per paired-speech pool of the inputs, and the base model if a task uses it."""
    arguments = []
    for manifest, ids in (
        ("speech", "speech_ids"),
        ("target_speech", "target_speech_ids"),
        ("label_free_speech", "label_free_ids"),
    ):
        if manifest in inputs.keys():
            arguments += ["--pool", inputs[manifest], inputs[ids]]
    if "base_model" in inputs.keys():
        arguments += ["--base-model", inputs["base_model"]]
    return arguments


def imitation_tasks(config: dict, run: Run) -> str:
    """The instructions, and the model (phase1 or base) that answers each from the transcript (null: the SLU prompt)."""
    tasks = [
        ImitationTask.from_dict(
            {**task, "instruction": task["instruction"] or config["prompt"]["instruction"]},
            f"{run.scheme}'s imitation.tasks[{index}]",
        ).to_dict()
        for index, task in enumerate(scheme_block(config, run)["imitation"]["tasks"])
    ]
    return json.dumps(tasks)


def imitation_decode_settings(config: dict, run: Run) -> str:
    """Decoding of the targets: decode's settings, with the imitation block's length limit."""
    imitation = scheme_block(config, run)["imitation"]
    return json.dumps({**decode_block(config), "max_new_tokens": imitation["max_new_tokens"]}, sort_keys=True)
