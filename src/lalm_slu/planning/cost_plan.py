"""The grid's cost before anything is submitted: per GPU job, the GPUs it asks (the fewest whose memory plan fits),
its FLOPs, checkpoint bytes and I/O, its wall time and GPU-hours; summed per rule, per scheme and in total.

Plain Python on purpose: the Snakefile sizes every GPU job's `gpu` and `runtime` from this plan at planning time.

Work is counted from the model's shape (lalm_slu.model.memory_plan.Architecture), with P the elements of the LLM's layer
matrices (the projections the matmuls run; no embedding lookup):

    fine-tuning, per item of S tokens (A of them answer tokens):
        forward 2·P·S, backward 4·P·S (2·P·S when the LLM is frozen: input gradients only), recompute 2·P·S
        with gradient checkpointing; the output head 2·V·h per answer token forward, 4·V·h backward (2 when
        frozen), attention 2·L·S·d per token (causal); the frozen audio encoder's forward 2·E·s·50 per speech
        item of s seconds (50 frames a second, E elements per encoder layer stack)
    decoding, per prompt: a prefill of S tokens per beam at the MFU, then G generated tokens per beam at the
        assumed decoding rate (tokens per GPU-second, all beams counted)
    time = FLOPs / (GPUs · peak · MFU) + reading the bf16 weights and (fine-tuning) writing them at the
        filesystem's bandwidth + every checkpoint's device-to-host staging

Checkpoints hold 12 bytes per trained parameter (fp32 weights + AdamW's two moments). They are saved
asynchronously every `training.checkpoint_every_minutes`, so the GPUs wait only for the copy to host memory
(`plan.staging_gb_per_second`), not for the write. Every rate is an assumption of the config's `plan` block,
replaced by a GPU benchmark's measurement once benchmarks/results/ holds one (gpu_finetune_step.json: MFU;
gpu_decode.json: decoding tokens per second). Item counts come from the corpus manifests once they exist,
else from `plan.corpus_sizes`.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from lalm_slu.planning.grid import Run, expand_grid, expand_prefixes, parse_testset, run_testsets, scheme_block
from lalm_slu.model.memory_plan import (
    AUDIO_PARTS,
    Architecture,
    MemoryPlanError,
    TrainingShape,
    model_config_json,
    parameter_sizes,
    plan_memory,
    read_architecture,
    smallest_gpu_count,
    trainable_parameters,
    training_shape,
)
from lalm_slu.config.schemes import BUDGET_FREE_PHASES, IMITATION_SCHEMES
from lalm_slu.config.settings import DevEvalSettings, PlanSettings, TrainingSettings
from lalm_slu.config.budget_label import SpeechBudget
from lalm_slu.planning.paths import dev_manifests, imitation_pool_name, manifest_path

REPO = Path(__file__).resolve().parents[3]
BENCHMARK_RESULTS = REPO / "benchmarks" / "results"
# The trainer's checkpoint interval; a config without the key checkpoints every 30 minutes.
DEFAULT_CHECKPOINT_MINUTES = 30
CHECKPOINT_BYTES_PER_TRAINED_PARAMETER = 12  # fp32 weights + AdamW's two fp32 moments
AUDIO_FRAMES_PER_SECOND = 50  # the Whisper-like encoder's positions per second of audio
WEIGHT_BYTES = 2  # bf16, as the model is stored and loaded
GPU_RULES = ("finetune_model", "finetune_prefix", "decode_test_set", "transcribe_test_set", "imitation_targets",
             "align_words", "encode_audio")


class PlanError(ValueError):
    """A config or file the plan cannot use; the message names the file or key."""


class UnknownSizeError(PlanError):
    """A split with neither a manifest nor a size in plan.corpus_sizes."""


@dataclass(frozen=True)
class JobCost:
    """One GPU job's plan."""

    rule: str
    name: str  # the run, prefix, pool or test set
    scheme: str
    gpus: int
    memory_gb: float  # planned per GPU
    flops: float
    checkpoint_bytes: float  # one checkpoint
    io_bytes: float  # weights read and written, checkpoints staged
    seconds: float  # wall time

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.seconds / 3600

    def runtime_minutes(self, assumptions: PlanSettings) -> int:
        """The job's time limit: its planned time with the margin, in whole minutes, within the site's maximum."""
        minutes = math.ceil(self.seconds * assumptions.runtime_margin / 60)
        return max(assumptions.min_runtime_minutes, min(minutes, assumptions.max_runtime_minutes))


# ---------------------------------------------------------------- assumptions


def plan_settings(config: dict, results: Path = BENCHMARK_RESULTS) -> tuple[PlanSettings, dict[str, str]]:
    """The config's `plan` block with measured rates put in, and where each rate came from."""
    settings = PlanSettings.from_dict(config.get("plan", {}), "config plan")
    sources = {key: "assumed (config plan)" for key in ("mfu", "decode_tokens_per_second")}
    finetune = measurement(results / "gpu_finetune_step.json", "mfu")
    if finetune:
        settings, sources["mfu"] = replace(settings, mfu=finetune[0]), finetune[1]
    decode = measurement(results / "gpu_decode.json", "tokens_per_s")
    if decode:
        settings = replace(settings, decode_tokens_per_second=decode[0])
        sources["decode_tokens_per_second"] = decode[1]
    return settings, sources


def measurement(path: Path, key: str) -> tuple[float, str] | None:
    """A GPU benchmark's measurement (a CPU run measures nothing a GPU job does)."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PlanError(f"{path}: not JSON ({error})") from None
    value = result.get("measurements", {}).get(key)
    if not value or str(result.get("device", "cpu")).lower() == "cpu":
        return None
    return float(value), f"measured ({path.name}, {result['device']})"


def checkpoint_minutes(config: dict) -> float:
    return config.get("training", {}).get("checkpoint_every_minutes", DEFAULT_CHECKPOINT_MINUTES)


# ---------------------------------------------------------------- counts


@functools.cache
def manifest_rows(manifest: str) -> int | None:
    """Rows of a prepared manifest (None before it exists); grid_costs clears this per plan."""
    if not Path(manifest).is_file():
        return None
    import pyarrow.parquet  # only once data exist: a fresh checkout plans in plain Python

    return pyarrow.parquet.read_metadata(manifest).num_rows


def split_size(config: dict, corpus: str, lang: str, split: str) -> int:
    """Utterances of a split: its manifest's rows once prepared, else plan.corpus_sizes."""
    manifest = manifest_path(corpus, lang, split)
    rows = manifest_rows(manifest)
    if rows is not None:
        return rows
    sizes = config.get("plan", {}).get("corpus_sizes", {})
    try:
        return int(sizes[corpus][lang][split])
    except KeyError:
        raise UnknownSizeError(
            f"config plan.corpus_sizes: no size for {corpus}/{lang}/{split} and no manifest {manifest} yet; "
            f"give plan.corpus_sizes.{corpus}.{lang}.{split} (utterances)"
        ) from None


def budget_items(config: dict, run: Run, lang: str, split: str, budget: str) -> int:
    return SpeechBudget.parse(budget).size(split_size(config, run.corpus, lang, split))


def phase_items(config: dict, run: Run) -> dict[int, tuple[int, int]]:
    """Items per epoch by phase, as (text items, speech items) (lalm_slu.data.mixtures' listing, counted)."""
    scheme = run.scheme
    if run.target is None:
        text = split_size(config, run.corpus, run.source, run.source_split)
        speech_all, scarce = text, budget_items(config, run, run.source, run.source_split, run.budget)
        text_part, source_speech = text, 0
    else:
        source = split_size(config, run.corpus, run.source, "train")
        target = split_size(config, run.corpus, run.target, run.target_split) if run.target_text else 0
        scarce = budget_items(config, run, run.target, run.target_split, run.budget)
        text_part, source_speech, speech_all = source + target, source, source + scarce
    if scheme == "text_only":
        return {1: (text_part, 0)}
    if scheme == "oracle":
        return {1: (0, speech_all)}
    if scheme in IMITATION_SCHEMES:
        tasks = len(scheme_block(config, run)["imitation"]["tasks"])
        return {2: (0, (source_speech + scarce) * tasks)}
    if scheme == "curriculum":
        return {1: (text_part, source_speech), 2: (text_part, source_speech + scarce)}
    return {1: (text_part, source_speech + scarce)}  # direct_mixing, interleaving


# ---------------------------------------------------------------- work

# Shapes are frozen dataclasses: a grid of hundreds of runs has a handful of distinct ones.
model_sizes = functools.cache(parameter_sizes)
model_elements = functools.cache(lambda arch: sum(model_sizes(arch).values()))
memory_gb = functools.cache(lambda arch, shape: plan_memory(arch, shape).total / 2**30)
fewest_gpus = functools.cache(smallest_gpu_count)


@functools.cache
def layer_elements(arch: Architecture) -> tuple[int, int]:
    """Elements of the LLM's layer matrices and of the audio encoder's layer matrices."""
    sizes = model_sizes(arch)
    llm = sum(n for name, n in sizes.items() if name.startswith("language_model.layers.") and name.endswith("weight")
              and "norm" not in name)
    audio = sum(n for name, n in sizes.items() if name.startswith("audio_tower.layers.") and name.endswith("weight")
                and "norm" not in name)
    return llm, audio


def item_flops(arch: Architecture, shape: TrainingShape, settings: PlanSettings, speech: bool,
               llm_trained: bool) -> float:
    """One training item's FLOPs: forward, backward (and recompute), per the module docstring."""
    llm, audio = layer_elements(arch)
    tokens, answer = settings.mean_sequence_tokens, settings.mean_answer_tokens
    passes = 1 + (2 if llm_trained else 1) + (1 if shape.gradient_checkpointing else 0)
    attention = 2 * arch.num_hidden_layers * tokens * arch.num_attention_heads * arch.head_dim
    head = 2 * arch.vocab_size * arch.hidden_size * answer * (1 + (2 if llm_trained else 1))
    encoder = 2 * audio * settings.mean_audio_seconds * AUDIO_FRAMES_PER_SECOND if speech else 0
    return passes * (2 * llm * tokens + attention * tokens) + head + encoder


def load_seconds(arch: Architecture, settings: PlanSettings) -> float:
    return WEIGHT_BYTES * model_elements(arch) / (settings.filesystem_gb_per_second * 1e9)


@functools.cache
def trained_elements(arch: Architecture, shape: TrainingShape) -> tuple[int, bool]:
    """Parameters a shape trains, and whether the LLM or its head is among them."""
    sizes = model_sizes(arch)
    modules = [m for m in shape.trainable_modules if not shape.lora or m.split(".")[0] in AUDIO_PARTS]
    trained = trainable_parameters(sizes, modules, shape.freeze_token_embeddings)
    return sum(sizes[name] for name in trained), any(name.startswith(("language_model.", "lm_head.")) for name in trained)


def finetune_cost(config: dict, arch: Architecture, settings: PlanSettings, run: Run, rule: str, name: str,
                  phases: slice = slice(None), shapes: dict | None = None) -> JobCost:
    """A fine-tuning job training `phases` of the run's scheme (a prefix the first, a run after a prefix the rest);
    `shapes` keeps the shape of each trainable-module set across a grid's jobs."""
    block = scheme_block(config, run)
    modules = tuple(block["trainable_modules"])
    shapes = {} if shapes is None else shapes
    if modules not in shapes:
        shapes[modules] = finetune_shape(config, arch, modules)
    shape = shapes[modules]
    trained, llm_trained = trained_elements(arch, shape)
    items = phase_items(config, run)
    flops, evaluations = 0.0, 0
    global_batch = TrainingSettings.from_dict(config.get("training", {}), "config training").global_batch_size
    for phase in block["phases"][phases]:
        text, speech = items[phase["phase"]]
        flops += phase["epochs"] * (text * item_flops(arch, shape, settings, False, llm_trained)
                                    + speech * item_flops(arch, shape, settings, True, llm_trained))
        evaluations += dev_evaluations(config, run, phase["epochs"] * math.ceil((text + speech) / global_batch))
    compute = flops / (shape.gpus * settings.gpu_peak_tflops * 1e12 * settings.mfu)
    if evaluations:
        compute += evaluations * dev_evaluation_seconds(config, arch, settings, run) / shape.gpus
    checkpoint = CHECKPOINT_BYTES_PER_TRAINED_PARAMETER * trained
    checkpoints = math.floor(compute / 60 / checkpoint_minutes(config))
    # Each GPU stages its own shard, all at once.
    staging = checkpoints * checkpoint / shape.gpus / (settings.staging_gb_per_second * 1e9)
    weights = WEIGHT_BYTES * model_elements(arch)
    seconds = compute + staging + 2 * weights / (settings.filesystem_gb_per_second * 1e9)  # read once, write once
    return JobCost(rule, name, run.scheme, shape.gpus, memory_gb(arch, shape), flops, checkpoint,
                   2 * weights + checkpoints * checkpoint, seconds)


def dev_evaluations(config: dict, run: Run, phase_steps: int) -> int:
    """How often a phase of `phase_steps` steps evaluates on the dev split (training.dev_eval)."""
    dev_eval = config.get("training", {}).get("dev_eval")
    if dev_eval is None or not any(dev_manifests(config, run).values()):
        return 0
    dev = DevEvalSettings.from_dict(dev_eval, "config: training.dev_eval")
    return (phase_steps // dev.every_steps if dev.every_steps else 0) + int(dev.at_phase_end)


def dev_evaluation_seconds(config: dict, arch: Architecture, settings: PlanSettings, run: Run) -> float:
    """One dev evaluation on one GPU: the teacher-forced loss and greedy decoding of every sampled input, at the
    plan's decode rate (the processes split the sample)."""
    dev = DevEvalSettings.from_dict(config["training"]["dev_eval"], "config: training.dev_eval")
    size = min(dev.max_examples, split_size(config, run.corpus, run.test_lang, "dev"))
    prompts = size * sum(1 for paths in dev_manifests(config, run).values() if paths)
    speech = size if dev_manifests(config, run)["dev_speech"] else 0
    decoding = decode_cost(arch, settings, "", "", run.scheme, prompts, settings.mean_answer_tokens, speech, 1)
    loss_pass = prompts * 2 * layer_elements(arch)[0] * settings.mean_sequence_tokens
    return (decoding.seconds - load_seconds(arch, settings)
            + loss_pass / (settings.gpu_peak_tflops * 1e12 * settings.mfu))


def finetune_shape(config: dict, arch: Architecture, modules: tuple[str, ...]) -> TrainingShape:
    """The fine-tuning shape on the fewest GPUs of one node (resources.finetune.gpu at most) that fit the card;
    on several nodes, every GPU of them."""
    block = config["resources"]["finetune"]
    card = block.get("gpu_memory_gb")
    shape = training_shape(config, modules)
    nodes = block.get("nodes", 1)
    if nodes > 1 or card is None:
        return replace(shape, gpus=nodes * max(1, block["gpu"]))
    fewest = fewest_gpus(arch, shape, card, block["gpu"])
    if fewest is None:
        raise MemoryPlanError(
            f"config resources.finetune: {', '.join(modules)} fits no count up to resources.finetune.gpu "
            f"({block['gpu']}) of {card:g} GB cards; `lalm-slu plan --configfile <config>` prints the plan"
        )
    # The global batch must split evenly over the GPUs: the next count that divides it.
    global_batch = TrainingSettings.from_dict(config.get("training", {}), "config training").global_batch_size
    while global_batch % (shape.per_device_batch_size * fewest) and fewest < block["gpu"]:
        fewest += 1
    return replace(shape, gpus=fewest)


def decode_cost(arch: Architecture, settings: PlanSettings, rule: str, name: str, scheme: str,
                prompts: int, generated_tokens: float, speech_prompts: int, beams: int) -> JobCost:
    llm, audio = layer_elements(arch)
    prefill = prompts * beams * 2 * llm * settings.mean_sequence_tokens
    encoder = speech_prompts * 2 * audio * settings.mean_audio_seconds * AUDIO_FRAMES_PER_SECOND
    generate = prompts * beams * generated_tokens * 2 * llm
    seconds = ((prefill + encoder) / (settings.gpu_peak_tflops * 1e12 * settings.mfu)
               + prompts * beams * generated_tokens / settings.decode_tokens_per_second
               + load_seconds(arch, settings))
    weights = WEIGHT_BYTES * model_elements(arch)
    memory = (weights + 4 * 2**30) / 2**30
    return JobCost(rule, name, scheme, 1, memory, prefill + encoder + generate, 0.0, weights, seconds)


# ---------------------------------------------------------------- the grid


def grid_costs(config: dict, arch: Architecture, settings: PlanSettings) -> list[JobCost]:
    """Every GPU job of the grid, as the workflow plans it."""
    runs, shapes = expand_grid(config), {}
    manifest_rows.cache_clear()
    costs = []
    for run in runs.values():
        shared = BUDGET_FREE_PHASES.get(run.scheme, 0)  # trained by the run's prefix job
        costs.append(finetune_cost(config, arch, settings, run, "finetune_model", run.name, slice(shared, None), shapes))
    for name, prefix in expand_prefixes(config, runs).items():
        phases = slice(None, BUDGET_FREE_PHASES[prefix.scheme])
        costs.append(finetune_cost(config, arch, settings, prefix, "finetune_prefix", name, phases, shapes))
    modalities = config.get("decode", {}).get("modalities", [])
    beams, answer = config.get("decode", {}).get("num_beams", 1), settings.mean_answer_tokens
    testsets = {}
    for run in runs.values():
        for testset in run_testsets(run) if run.evaluated else []:
            size = testsets.setdefault(testset, split_size(config, *parse_testset(testset), "test"))
            costs.append(decode_cost(arch, settings, "decode_test_set", f"{run.name}/{testset}", run.scheme,
                                     size * len(modalities), answer, size * ("speech" in modalities), beams))
    if "cascade" in modalities:
        for testset, size in sorted(testsets.items()):
            costs.append(decode_cost(arch, settings, "transcribe_test_set", testset, "cascade", size,
                                     settings.mean_transcript_tokens, size, beams))
    pools: dict[str, list[Run]] = {}
    for run in runs.values():
        if run.scheme in IMITATION_SCHEMES:
            pools.setdefault(imitation_pool_name(config, run), []).append(run)
    for pool, users in sorted(pools.items()):
        _, items = phase_items(config, users[0])[2]  # one answer per pool utterance and task, from the transcript
        schemes = "+".join(sorted({run.scheme for run in users}))  # the schemes sharing the targets
        costs.append(decode_cost(arch, settings, "imitation_targets", pool, schemes, items, answer, 0, beams))
    return costs


def read_plan_config(config: dict) -> tuple[Architecture, Path]:
    """The model's shape, with errors naming the file."""
    if not isinstance(config, dict):
        raise PlanError(f"the config is a {type(config).__name__}, not a mapping of keys")
    config_json = model_config_json(config["model"]) if "model" in config else None
    if config_json is None:
        raise PlanError("config model: no model shape (model.architecture, or a downloaded model.path/config.json)")
    try:
        return read_architecture(config_json), config_json
    except json.JSONDecodeError as error:
        raise PlanError(f"{config_json}: not JSON ({error})") from None
    except OSError as error:
        raise PlanError(f"{config_json}: {error.strerror}") from None


def check_plan_inputs(config: dict) -> None:
    """Values the formulas would divide by or silently accept."""
    block = config.get("resources", {}).get("finetune", {})
    if block.get("gpu", 0) < 1 or block.get("gpu_memory_gb") is None:
        raise PlanError("config resources.finetune: the plan needs gpu >= 1 (GPUs per node) and gpu_memory_gb")
    for key in ("per_device_batch_size", "global_batch_size"):
        value = config.get("training", {}).get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise PlanError(f"config training.{key}: must be a positive integer, not {value!r}")


def gpu_job_plans(config: dict) -> dict[tuple[str, str], dict]:
    """(rule, job name) -> {"gpu" (per node), "runtime"} for every GPU job of a GPU config (resources.finetune.gpu
    >= 1 and gpu_memory_gb set); empty for a CPU config, or one whose item counts are not known yet (no manifests,
    no plan.corpus_sizes): their jobs take the config's resources."""
    finetune = config["resources"]["finetune"]
    if finetune.get("gpu", 0) < 1 or finetune.get("gpu_memory_gb") is None:
        return {}
    check_plan_inputs(config)
    arch, _ = read_plan_config(config)
    settings, _ = plan_settings(config)
    try:
        costs = grid_costs(config, arch, settings)
    except UnknownSizeError:
        return {}
    decode_on_gpu, nodes = config["resources"]["decode"].get("gpu", 0) > 0, finetune.get("nodes", 1)
    return {
        # gpu per node: every node of a job has the same
        (cost.rule, cost.name): {"gpu": cost.gpus // nodes if cost.rule.startswith("finetune_") else cost.gpus,
                                 "runtime": cost.runtime_minutes(settings)}
        for cost in costs
        if cost.rule.startswith("finetune_") or decode_on_gpu
    }
