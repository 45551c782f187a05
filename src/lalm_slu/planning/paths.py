"""Where the workflow's files live, and which of them a job reads: pure functions of the (validated) config and a
run. Plain Python: the workflow plans with these (common.smk adapts a job's wildcards to them).

Each kind of file has one function here. Rules declare their outputs with the same functions, called with wildcard
patterns (`manifest_path("{corpus}", "{lang}", "{split}")`), so a path is written once for the job that makes it
and the jobs that read it. Logs (logs/...) are written by their rule alone and stay in the rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath

from lalm_slu.planning.grid import Run, parse_testset, phase_one_run, prefix_of, run_testsets, scheme_block
from lalm_slu.config.budget_label import budget_label
from lalm_slu.config.schemes import FIXED_BUDGETS, IMITATION_SCHEMES, INTERLEAVING_SCHEMES
from lalm_slu.config.settings import DevEvalSettings

# ---------------------------------------------------------------- one file each

# The report's inputs and outputs, and the cost plan of a GPU grid.
METRICS_TABLE = "results/metrics.csv"
COMPARISONS_TABLE = "results/comparisons.csv"
TABLES_DIR = "results/tables"
FIGURES_DIR = "results/figures"
GPU_HOURS_FIGURE = "results/plan/gpu_hours.png"
COST_PLAN = "results/plan/plan.json"


def manifest_path(corpus: str, lang: str, split: str) -> str:
    return f"results/manifests/{corpus}/{lang}/{split}.parquet"


def speech_manifest_path(corpus: str, lang: str, split: str) -> str:
    return f"results/speech/{corpus}/{lang}/{split}.parquet"


def speech_audio_dir(corpus: str, lang: str, split: str) -> str:
    """The audio files of a speech manifest, beside it."""
    return f"results/speech/{corpus}/{lang}/{split}"


def aligned_manifest_path(corpus: str, lang: str, split: str) -> str:
    return f"results/aligned/{corpus}/{lang}/{split}.parquet"


def budget_path(corpus: str, lang: str, split: str, seed, budget: str) -> str:
    """A budget's utterance ids; `budget` is its label (config.budget_label), as in run names."""
    return f"results/budgets/{corpus}/{lang}/{split}/seed{seed}/{budget}.txt"


def budget_coverage_path(corpus: str, lang: str, split: str, seed, budget: str) -> str:
    """A budget's size and intent coverage, beside its ids."""
    return f"results/budgets/{corpus}/{lang}/{split}/seed{seed}/{budget}.json"


def audio_frames_path(corpus: str, lang: str, split: str) -> str:
    return f"results/audio_frames/{corpus}/{lang}/{split}.safetensors"


def mixture_path(run_name: str) -> str:
    return f"results/mixtures/{run_name}.parquet"


def prefix_mixture_path(prefix: str) -> str:
    return f"results/prefixes/{prefix}/mixture.parquet"


def prefix_checkpoint_path(prefix: str) -> str:
    return f"results/prefixes/{prefix}/checkpoint"


def run_model_dir(name: str) -> str:
    """A run's fine-tuned model (rule finetune_model's output), with its loss.csv, dev.csv and summary.json."""
    return f"results/runs/{name}/model"


def start_model(config: dict, run: Run) -> str:
    """The model a run's training starts from: its phase-1 run's for imitation schemes, else model.path."""
    if run.scheme in IMITATION_SCHEMES:
        return run_model_dir(phase_one_run(run).name)
    return config["model"]["path"]


def prediction_path(run_name: str, testset: str, modality: str) -> str:
    return f"results/runs/{run_name}/predictions/{testset}.{modality}.jsonl"


def run_metrics_path(run_name: str, testset: str, modality: str) -> str:
    return f"results/runs/{run_name}/metrics/{testset}.{modality}.json"


def decode_outputs(modalities, run_name: str, testset: str) -> dict[str, str]:
    """Modality -> its predictions: the outputs of one decoding job, named by the modality each holds."""
    return {modality: prediction_path(run_name, testset, modality) for modality in modalities}


def imitation_pool_path(pool: str) -> str:
    return f"results/imitation_targets/{pool}.parquet"


def cascade_manifest_path(testset: str) -> str:
    return f"results/cascade/{testset}.parquet"


def cascade_wer_path(testset: str) -> str:
    return f"results/cascade/{testset}.wer.json"


def benchmark_path(name: str) -> str:
    """A job's measured time and memory (Snakemake's benchmark): `name` is its rule and wildcards."""
    return f"results/benchmarks/{name}.tsv"


def demo_model_manifest_path(corpus: str, lang: str, split: str) -> str:
    """The demo model's own text manifests (prepared with its caps, apart from the runs' manifests)."""
    return f"results/demo_model/manifests/{corpus}/{lang}/{split}.parquet"


def demo_model_dir(stage: str) -> str:
    """The demo model after a stage of its recipe: initial, pretrained or continued."""
    return f"results/demo_model/{stage}"


def corpus_download_stamp(corpus_name: str) -> str:
    return f"resources/downloads/{corpus_name}.json"


def release_download_stamp(corpus_name: str) -> str:
    return f"resources/downloads/{corpus_name}-release.json"


def alignment_model_dir(lang: str) -> str:
    return f"resources/models/alignment/{lang}"


def alignment_model_stamp(lang: str) -> str:
    return f"resources/downloads/models/alignment-{lang}.json"


def gold_manifest(testset: str) -> str:
    """A test set's gold (text) manifest."""
    return manifest_path(*parse_testset(testset), "test")


def testset_speech_manifest(testset: str) -> str:
    return speech_manifest_path(*parse_testset(testset), "test")


def model_download_stamp(config: dict) -> str:
    """The download's record (hub commit, files), named after model.path's folder."""
    return f"resources/downloads/models/{PurePath(config['model']['path']).name}.json"


# ---------------------------------------------------------------- raw corpora


def corpus_source(config: dict, corpus_name: str, lang: str) -> str:
    """The corpus's raw data of one language (config corpora.<name>.source, one path or one per language)."""
    source = config["corpora"][corpus_name]["source"]
    return source[lang] if isinstance(source, dict) else source


def corpus_inputs(config: dict, corpus_name: str, lang: str):
    """The local raw data, or the stamps of the downloads that filled the hub cache and the release text."""
    corpus = config["corpora"][corpus_name]
    stamps = []
    if corpus["download"]:
        stamps.append(corpus_download_stamp(corpus_name))
    if corpus["download_release_text"]:
        stamps.append(release_download_stamp(corpus_name))
    return stamps or corpus_source(config, corpus_name, lang)


def release_text_dir(config: dict, corpus_name: str) -> str:
    """Where SLURP's release text is downloaded to: the corpus source, or its annotations option."""
    corpus = config["corpora"][corpus_name]
    if corpus["reader"] == "slurp_release":
        return corpus["source"]
    return corpus["options"]["annotations"]


# ---------------------------------------------------------------- the grid's outputs


def run_outputs(config: dict, runs: dict[str, Run], path) -> list[str]:
    """path(run, testset, modality) of every evaluated run, test set and modality."""
    return [
        path(name, testset, modality)
        for name, run in runs.items()
        if run.evaluated
        for testset in run_testsets(run)
        for modality in config["decode"]["modalities"]
    ]


def evaluated_model_dirs(runs: dict[str, Run]) -> list[str]:
    """The model directories of every evaluated run: their loss curves are drawn beside the metrics."""
    return [run_model_dir(name) for name, run in runs.items() if run.evaluated]


def metrics_paths(config: dict, runs: dict[str, Run]) -> list[str]:
    return run_outputs(config, runs, run_metrics_path)


def prediction_paths(config: dict, runs: dict[str, Run]) -> list[str]:
    return run_outputs(config, runs, prediction_path)


def gold_manifests(runs: dict[str, Run]) -> dict[str, str]:
    """Test set name -> its gold manifest, for every test set of the evaluated runs."""
    return {
        testset: gold_manifest(testset)
        for run in runs.values()
        if run.evaluated
        for testset in run_testsets(run)
    }


def comparison_inputs(config: dict, runs: dict[str, Run]) -> dict:
    """Every run's predictions, with the settings (metrics.csv) and the gold labels they are scored on."""
    return {
        "metrics": METRICS_TABLE,
        "predictions": prediction_paths(config, runs),
        "gold": sorted(set(gold_manifests(runs).values())),
    }


def cascade_wer_paths(config: dict, runs: dict[str, Run]) -> list[str]:
    """The cascade transcripts' WER per test set, for the tables' notes (none without a cascade input)."""
    if "cascade" not in config["decode"]["modalities"]:
        return []
    return [cascade_wer_path(testset) for testset in sorted(gold_manifests(runs))]


# ---------------------------------------------------------------- a run's inputs


def run_speech_manifest_path(config: dict, run: Run):
    """Where a run reads its training speech: recorded speech of an interleaving scheme needs word times, so it
    reads the forced-aligned manifest (rule align_words); synthesized speech has them already."""
    recorded = config["corpora"][run.corpus]["speech"] == "recorded"
    if recorded and run.scheme in INTERLEAVING_SCHEMES:
        return aligned_manifest_path
    return speech_manifest_path


def mixture_inputs(config: dict, run: Run) -> dict[str, str]:
    """The text and speech manifests and speech id lists a run's training mixture is made of."""
    split = run.source_split
    speech_path = run_speech_manifest_path(config, run)
    inputs = {
        "text": manifest_path(run.corpus, run.source, split),
        "speech": speech_path(run.corpus, run.source, split),
    }
    if run.target is None:
        inputs["speech_ids"] = budget_path(run.corpus, run.source, split, run.seed, run.budget)
        return inputs
    # Cross-lingual: all source speech (none for text-only); the budget applies to the target language.
    source_budget = FIXED_BUDGETS["text_only" if run.scheme == "text_only" else "oracle"]
    inputs["speech_ids"] = budget_path(run.corpus, run.source, split, run.seed, source_budget)
    inputs["target_text"] = manifest_path(run.corpus, run.target, run.target_split)
    inputs["target_speech"] = speech_path(run.corpus, run.target, run.target_split)
    inputs["target_speech_ids"] = budget_path(run.corpus, run.target, run.target_split, run.seed, run.budget)
    return inputs


def shares_audio_frames(config: dict, run: Run) -> bool:
    """Precomputed frames serve the run: its scheme trains neither the audio tower nor the projector."""
    if not config["audio_frames"]["precompute"]:
        return False
    # A scheme without trainable_modules fails in the trainer (KeyError naming it); planning must not.
    modules = scheme_block(config, run).get("trainable_modules")
    if modules is None:
        return False
    trained = {module.split(".")[0] for module in modules}
    return not trained & {"audio_tower", "multi_modal_projector"}


def run_audio_frames(config: dict, run: Run) -> list[str]:
    """Frames files of the speech the run trains on (none for text-only training)."""
    if not shares_audio_frames(config, run):
        return []
    frames = []
    if run.target is not None or run.budget != "0":
        frames.append(audio_frames_path(run.corpus, run.source, run.source_split))
    if run.target is not None and run.budget != "0":
        frames.append(audio_frames_path(run.corpus, run.target, run.target_split))
    return frames


def finetune_inputs(config: dict, run: Run, prefix: str | None = None) -> dict:
    """A fine-tuning job's mixture, start model and frames; `prefix`: the job trains that prefix. The mixture holds
    all the job reads of its items; their audio exists once it does (the speech manifests it is made from come with
    their audio)."""
    if prefix is not None:
        mixture, start_from = prefix_mixture_path(prefix), []
    else:
        mixture = mixture_path(run.name)
        start_from = [prefix_checkpoint_path(prefix_of(run))] if prefix_of(run) else []
    return {
        "mixture": mixture,
        "model": start_model(config, run),
        "audio_frames": run_audio_frames(config, run),
        "start_from": start_from,
        **dev_manifests(config, run),
    }


def dev_manifests(config: dict, run: Run) -> dict[str, list[str]]:
    """`dev_text`, `dev_speech`: the manifests of the dev split of the run's (target) language that it evaluates
    on while training (training.dev_eval's inputs), each [] when not: dev_eval is off, or that split is the run's
    training data (xSID's target languages train on dev)."""
    manifests = {"dev_text": [], "dev_speech": []}
    dev_eval = config.get("training", {}).get("dev_eval")
    if dev_eval is None:
        return manifests
    if (run.target_split if run.target is not None else run.source_split) == "dev":
        return manifests
    settings = DevEvalSettings.from_dict(dev_eval, "config: training.dev_eval")
    lang = run.test_lang
    if "text" in settings.inputs:
        manifests["dev_text"] = [manifest_path(run.corpus, lang, "dev")]
    if "speech" in settings.inputs:
        manifests["dev_speech"] = [speech_manifest_path(run.corpus, lang, "dev")]
    return manifests


def work_dir(config: dict, run: Run, prefix: str | None = None) -> str:
    """Where a fine-tuning job keeps its checkpoints: outside results/, not Snakemake outputs."""
    return f"work/prefixes/{prefix}" if prefix is not None else f"work/{run.name}"


def decode_inputs(config: dict, run: Run, testset: str) -> dict[str, str]:
    """The run's model and one manifest per configured modality (`manifest_<modality>`)."""
    corpus, lang = parse_testset(testset)
    modalities = config["decode"]["modalities"]
    inputs = {"model": run_model_dir(run.name)}
    for modality in modalities:
        # The cascade reads the base model's transcripts of the test speech, made once for every run.
        inputs[f"manifest_{modality}"] = (
            cascade_manifest_path(testset) if modality == "cascade" else speech_manifest_path(corpus, lang, "test")
        )
    if "speech" in modalities and shares_audio_frames(config, run):
        inputs["audio_frames"] = audio_frames_path(corpus, lang, "test")
    return inputs


# ---------------------------------------------------------------- behaviour imitation


def imitation_pool_name(config: dict, run: Run) -> str:
    """Names the targets of a run's pool: its phase-1 model, budget and imitation settings (behaviour_imitation and
    mtbi at one budget share them): slurp-en_text_only_b0_s0/b5_3f2a1c9d."""
    imitation = scheme_block(config, run)["imitation"]
    settings = {key: imitation.get(key) for key in ("tasks", "max_new_tokens", "label_free_speech")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{phase_one_run(run).name}/b{run.budget}_{digest[:8]}"


def imitation_targets_path(config: dict, run: Run) -> str:
    return imitation_pool_path(imitation_pool_name(config, run))


def label_free_inputs(config: dict, run: Run) -> dict[str, str]:
    """Paired speech without SLU labels beyond the run's budget (imitation.label_free_speech), if configured."""
    extra = scheme_block(config, run).get("imitation", {}).get("label_free_speech")
    if not extra:
        return {}
    corpus, lang, split = extra["corpus"], extra["lang"], extra["split"]
    return {
        "label_free_speech": speech_manifest_path(corpus, lang, split),
        "label_free_ids": budget_path(corpus, lang, split, run.seed, budget_label(extra["budget"])),
    }


def mixture_scheme_inputs(config: dict, run: Run) -> dict[str, str]:
    """mixture_inputs plus what imitation schemes mix: their targets and any label-free paired speech."""
    inputs = mixture_inputs(config, run)
    if run.scheme in IMITATION_SCHEMES:
        inputs["imitation_targets"] = imitation_targets_path(config, run)
        inputs.update(label_free_inputs(config, run))
    return inputs


def imitation_pool_inputs(config: dict, run: Run) -> dict[str, str]:
    """The phase-1 model and the paired-speech pool (manifests and id lists) of an imitation run."""
    inputs = mixture_inputs(config, run)
    pool = {"model": start_model(config, run), "speech": inputs["speech"], "speech_ids": inputs["speech_ids"]}
    if run.target is not None:
        pool["target_speech"] = inputs["target_speech"]
        pool["target_speech_ids"] = inputs["target_speech_ids"]
    pool.update(label_free_inputs(config, run))
    # Transcript-level tasks may be answered by the base model (before SLU fine-tuning).
    if any(task.get("model") == "base" for task in scheme_block(config, run)["imitation"]["tasks"]):
        pool["base_model"] = config["model"]["path"]
    return pool
