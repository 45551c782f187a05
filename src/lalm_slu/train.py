"""Fine-tuning on one mixture file: every scheme (text-only, direct mixing, curriculum, oracle, cross-lingual).

Items → length-grouped micro-batches → accumulation → AdamW + warm-up/cosine per phase → checkpoint, on the
loop that pretraining shares (lalm_slu.training_loop). A scheme is only config: which modules train, and the
phases (each with epochs, LR, warm-up) whose items come from the mixture's `phase` column. The same loop runs in 1 or N processes (lalm_slu.distributed:
FSDP2 with fp32 master weights, sharded checkpoints). Checkpoints live in a work directory that is not a
Snakemake output, so an interrupted or killed job resumes where it stopped on re-run; it is deleted once the
final model is written.

Runs that share their first phases (every speech budget of a curriculum: phase 1 holds no budgeted speech) train
them once: a job with `output="checkpoint"` writes its final checkpoint instead of a model, and each run given it
as `start_from` continues from there (weights, AdamW moments, RNG, position and history), after checking that it
was made for the same first phases (`prefix_identity`). The result equals training the run inline.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from lalm_slu.audio_encoding import FrozenAudioCache, merge_audio, projected_audio
from lalm_slu.audio_frames import load_frames
from lalm_slu.batches import Collator
from lalm_slu.code_version import code_version
from lalm_slu.dev_evaluation import DEV_CSV, DevEvaluation
from lalm_slu.distributed import (
    ProcessGroup,
    checkpoint_state,
    full_state_dict,
    load_checkpoint,
    parallelize,
    work_dir_lock,
)
from lalm_slu.loss import answer_loss
from lalm_slu.memory_plan import check_job_fits
from lalm_slu.model_loading import base_model, device_and_dtype, load_model_and_processor
from lalm_slu.records import DataError
from lalm_slu.settings import DevEvalSettings, LoraSettings, TrainingSettings
from lalm_slu.stages import STAGES
from lalm_slu.trainable import count_parameters, set_trainable, top_level
from lalm_slu.training_data import MicroBatch, StepLoader, load_items, micro_batches, sequence_lengths
from lalm_slu.training_loop import Segment, TrainingLoop, slurm_time_left_s, warmup_steps
from lalm_slu.training_metrics import LOSS_CSV, TENSORBOARD, TrainingMetrics

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
# The parts that turn audio into LLM inputs: training either invalidates cached audio frames.
AUDIO_PARTS = ("audio_tower", "multi_modal_projector")


def model_identity(name_or_path: str) -> str:
    """What the base model is, cheaply: for a local directory every file's name, size and first and last MiB
    (a 7B model's shards are not read through); for a hub id, the id (its revision lives in the settings)."""
    root = Path(name_or_path)
    if not root.is_dir():
        return name_or_path
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}:{size}:".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(2**20))
            if size > 2**21:
                handle.seek(-(2**20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()


# Training settings that change how a job runs, not what it computes: a checkpoint written under other values
# is resumed (a resubmitted job may checkpoint more often, or take more workers).
HOW_IT_RUNS = ("checkpoint_every_steps", "log_every_steps", "dev_eval", "checkpoint_every_minutes",
               "time_limit_margin_minutes", "collective_timeout_minutes", "data_workers", "keep_checkpoint")


def trained_by(settings: dict) -> dict:
    """`settings` without the training keys of HOW_IT_RUNS."""
    training = {key: value for key, value in settings["training"].items() if key not in HOW_IT_RUNS}
    return {**settings, "training": training}


def fingerprint(mixture_path, settings: dict, code: str | None = None) -> str:
    """Identifies a run: a checkpoint of another mixture, settings, base model weights (e.g. a re-pretrained demo
    model at the same path) or code is never resumed. `code`: the hash the workflow gives the fine-tuning job
    (code_version), so any edit that re-runs the job also retrains it."""
    digest = hashlib.sha256(Path(mixture_path).read_bytes())
    digest.update(json.dumps(trained_by(settings), sort_keys=True).encode())
    digest.update(model_identity(str(settings["model"]["path"])).encode())
    digest.update((code or code_version("finetune")).encode())
    return digest.hexdigest()[:16]


def prefix_identity(mixture_path, settings: dict, phases: int) -> dict:
    """What training a run's first `phases` phases depends on, and nothing else: another run with the same identity
    for them would reach the same weights, optimizer state and RNG at their end, whatever its later phases."""
    scheme = settings["scheme"]
    numbers = [int(phase["phase"]) for phase in scheme["phases"][:phases]]
    mixture = pd.read_parquet(mixture_path)
    # Every column a row has (a scheme's own target, instruction or span too); a column empty in these rows
    # may be absent from another mixture.
    rows = mixture[mixture["phase"].isin(numbers)].dropna(axis=1, how="all")
    rows = rows[sorted(rows.columns)]
    return {
        "base_model": model_identity(str(settings["model"]["path"])),
        "model": settings["model"],
        "training": trained_by(settings)["training"],
        "trainable_modules": scheme["trainable_modules"],
        "phases": scheme["phases"][:phases],
        "prompt": settings["prompt"],
        # The items in training order, as listed.
        "items": {"count": len(rows), "sha256": hashlib.sha256(rows.to_json(orient="values").encode()).hexdigest()},
        "code": code_version("finetune"),
    }


def continue_from(path: Path, root, optimizer, mixture_path, settings: dict, group: ProcessGroup) -> dict:
    """Load a checkpoint written at the end of another job's phases (`output="checkpoint"`) to train the rest of
    this run, once it is shown to have been made for this run's first phases. Returns its state."""
    saved = checkpoint_state(path)
    made_for = saved.get("made_for")
    if made_for is None:
        raise ValueError(f"{path} does not say which phases it was trained for; it cannot start {mixture_path}")
    trained = len(made_for["phases"])
    position = saved["position"]
    if (position["segment"], position["step"]) != (trained, 0):
        raise ValueError(f"{path} was saved at {position}, not at the end of its {trained} phase(s)")
    expected = prefix_identity(mixture_path, settings, trained)
    for key, value in expected.items():
        if made_for.get(key) != value:
            raise ValueError(f"{path} was trained for other first phases than {mixture_path}: {key} is "
                             f"{made_for.get(key)!r} there, {value!r} here")
    state = load_checkpoint(path, root, optimizer, group)
    log.info("continuing from %s after %d phase(s), %d steps", path, trained, position["global_step"])
    return state


class AnswerLoss(nn.Module):
    """The training forward as one module call, so that FSDP2 gathers every unit inside it (the root first).
    Audio frames are computed before the token embeddings, as Qwen2AudioModel.forward does."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, audio_frames: torch.Tensor | None = None, touch_audio: bool = False,
                reduction: str = "mean") -> torch.Tensor:
        """`batch`: a Collator batch, or a MicroBatch's (host-computed positions: no device synchronisation).
        `audio_frames`: the batch's frames, precomputed (else from its features, if it has speech).
        `touch_audio`: run the audio path even without speech (see `silent_audio_frames`). `reduction`: the
        answer tokens' cross-entropy "mean" or "sum"."""
        frames = audio_frames
        if frames is None and "input_features" in batch:
            frames = projected_audio(self.model, batch["input_features"], batch["feature_attention_mask"],
                                     batch.get("audio_frames_at"), batch.get("audio_padded"))
        silent = silent_audio_frames(self.model) if frames is None and touch_audio else None
        embeddings = merge_audio(self.model, batch["input_ids"], frames, batch.get("audio_slots"))
        if silent is not None:
            embeddings = embeddings + 0.0 * silent.sum()
        inputs = {"inputs_embeds": embeddings, "attention_mask": batch["attention_mask"]}
        inputs.update({key: batch[key] for key in ("labels", "answer_positions", "answer_targets", "right_padded")
                       if key in batch})
        return answer_loss(self.model, inputs, reduction)


def silent_audio_frames(model) -> torch.Tensor:
    """Projected frames of the shortest input the audio tower takes (4 mel frames of zeros: one frame). A
    trainable audio path is sharded, so every process must run it, at the same point of the forward, in every
    micro-batch of a step that has speech on any process, or their gathers and reductions no longer pair up.
    Added with zero weight: no gradient."""
    mel_bins = base_model(model).config.audio_config.num_mel_bins
    device = next(base_model(model).model.multi_modal_projector.parameters()).device
    # Its one frame is at position 0: given, so that selecting it waits for nothing.
    return projected_audio(model, torch.zeros(1, mel_bins, 4, device=device),
                           torch.ones(1, 4, dtype=torch.long, device=device),
                           frames_at=torch.zeros(1, dtype=torch.long, device=device), padded=False)


def optimizer_implementation(training: TrainingSettings, device: torch.device) -> str:
    """The AdamW implementation a job uses: `training.optimizer`, with auto = fused on a GPU (no scratch copy of
    the shard, one kernel per step) and the for-loop on CPU (the implementation every demo result was made with)."""
    if training.optimizer != "auto":
        return training.optimizer
    return "fused" if device.type == "cuda" else "forloop"


def build_optimizer(params, learning_rate: float, training: TrainingSettings, device: torch.device):
    implementation = optimizer_implementation(training, device)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=training.weight_decay, betas=(0.9, 0.999),
                             fused=implementation == "fused", foreach=implementation == "foreach")


def stop_before_time_limit(training: TrainingSettings) -> float | None:
    """When (time.monotonic()) to checkpoint and stop for a resubmission: `time_limit_margin_minutes` before
    the Slurm job's time limit, None outside Slurm."""
    left = slurm_time_left_s()
    if left is None:
        return None
    log.info("Slurm time left: %.0f min; stopping for a resubmission %.0f min before", left / 60,
             training.time_limit_margin_minutes)
    return time.monotonic() + left - 60 * training.time_limit_margin_minutes


def data_workers(training: TrainingSettings, device: torch.device) -> int:
    """Processes collating micro-batches ahead of the step (`training.data_workers`; auto: 4 beside a GPU, none on
    CPU, where they would take the cores the step computes on)."""
    if training.data_workers is not None:
        return training.data_workers
    return 4 if device.type == "cuda" else 0


def training_precision(training: TrainingSettings) -> tuple[str, torch.dtype]:
    """Device and compute dtype (the schema offers no fp16: no loss scaling). Weights that train are always kept
    and updated in fp32: in bf16 AdamW loses most updates at the paper's learning rates (a weight moves only if
    |w| < ~512 × lr)."""
    return device_and_dtype(training)


def output_dtype(training: TrainingSettings, model_path: str) -> torch.dtype:
    """The dtype of the written weights: the base model's own (`original`) or fp32."""
    return torch.float32 if training.output_dtype == "fp32" else stored_dtype(model_path)


def stored_dtype(model_path: str) -> torch.dtype:
    """The dtype a model's weights are stored in (its config says), fp32 when it does not say."""
    config_file = Path(model_path) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    stored = config.get("dtype") or config.get("torch_dtype")
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(stored, torch.float32)


def apply_lora(model, lora: dict, trainable_modules: list[str]):
    """LoRA adapters on the LLM; the audio tower and projector, if trainable, train fully beside them
    (peft would otherwise freeze everything but the adapters)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraSettings.from_dict(lora, "fine-tuning settings: model.lora")
    targets = "|".join(lora.target_modules)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # Only the LLM: the audio tower has q/k/v projections with the same names.
        target_modules=rf".*language_model.*\.({targets})",
        modules_to_save=[m for m in trainable_modules if top_level(m) in AUDIO_PARTS] or None,
    )
    model = get_peft_model(model, config)
    for name, param in model.named_parameters():
        if "embed_positions" in name:  # the sinusoid table never trains
            param.requires_grad_(False)
    return model


def finetune(mixture_path: str | Path, settings: dict, out_dir: str | Path, work_dir: str | Path,
             audio_frames: list[str] = (), start_from: str | Path | None = None, output: str = "model",
             dev_manifests: dict[str, str] | None = None) -> dict:
    """Train per `settings` = {"model": {...}, "training": {...}, "scheme": {...}, "prompt": {...}}.
    `audio_frames`: files of precomputed frames (audio_frames.encode_manifest) for the mixture's clips; only
    for a scheme that freezes the audio tower and the projector. `start_from`: a checkpoint another job wrote at
    the end of this run's first phases (see `continue_from`). `output`: "model", or "checkpoint" to write the
    final checkpoint to `out_dir` for other runs to start from. `dev_manifests`: input (text, speech) → the
    manifest of the dev split, for `training.dev_eval`."""
    if output not in ("model", "checkpoint"):
        raise ValueError(f"output must be 'model' or 'checkpoint', not {output!r}")
    started = time.time()
    training = TrainingSettings.from_dict(settings["training"], "fine-tuning settings: training")
    if training.seed is None:
        raise ValueError("fine-tuning settings: training: missing setting seed (the run's seed)")
    device, dtype = training_precision(training)
    group = ProcessGroup(device, training.collective_timeout_minutes)
    try:
        with work_dir_lock(Path(work_dir), group):
            return _finetune(mixture_path, settings, training, Path(out_dir), Path(work_dir), audio_frames, group,
                             dtype, started, start_from, output, dev_manifests or {})
    finally:
        group.close()


def _finetune(mixture_path, settings, training: TrainingSettings, out_dir: Path, work_dir: Path, audio_frames,
              group: ProcessGroup, dtype: torch.dtype, started: float, start_from, output: str,
              dev_manifests: dict[str, str]) -> dict:
    model_cfg, scheme = settings["model"], settings["scheme"]
    instruction = settings["prompt"]["instruction"]
    if group.device.type == "cuda":
        card = torch.cuda.get_device_properties(group.device).total_memory / 2**30
        check_job_fits(settings, group.world_size, card)  # before minutes of loading, not at the first OOM
    seed = training.seed
    torch.manual_seed(seed)
    # Loaded as stored (bf16 for the 7B model); `parallelize` upcasts what trains to fp32 one unit at a time.
    with STAGES.stage("model_load"):
        model, processor = load_model_and_processor(model_cfg["path"], dtype=stored_dtype(model_cfg["path"]))
    counts = set_trainable(model, scheme["trainable_modules"], training.freeze_token_embeddings)
    lora = model_cfg.get("lora")
    if lora:
        model = apply_lora(model, lora, scheme["trainable_modules"])
    if training.gradient_checkpointing:
        # Non-reentrant: the form that composes with FSDP2's hooks.
        base_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    parameter_counts = {"per_module": counts, **count_parameters(model)}
    log.info("trainable parameters: %s", parameter_counts)
    trained_parts = {top_level(m) for m in scheme["trainable_modules"]}
    audio_frozen = not set(AUDIO_PARTS) & trained_parts
    if audio_frames and not audio_frozen:
        raise ValueError(f"precomputed audio frames were given, but scheme {scheme.get('name')!r} trains "
                         f"{sorted(set(AUDIO_PARTS) & trained_parts)}: its frames change as it trains")
    root = AnswerLoss(model)
    with STAGES.stage("model_load"):
        parallelize(root, model, dtype, group)
    params = [p for p in root.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, float(scheme["phases"][0]["learning_rate"]), training, group.device)
    length_aware = training.length_aware
    collator = Collator(processor, length_aware=length_aware)
    audio_token_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    workers = data_workers(training, group.device)
    audio_cache = None
    if audio_frozen and (training.cache_frozen_audio or audio_frames):
        audio_cache = FrozenAudioCache(processor, length_aware)
        with STAGES.stage("data"):
            for path in audio_frames:
                audio_cache.add(load_frames(path, model, length_aware).frames)
    per_device, global_batch = training.per_device_batch_size, training.global_batch_size
    accumulation = global_batch // (per_device * group.world_size)
    if accumulation < 1 or accumulation * per_device * group.world_size != global_batch:
        raise ValueError(
            f"training.global_batch_size={global_batch} must be a multiple of per_device_batch_size={per_device} "
            f"× processes={group.world_size}"
        )

    phases = scheme["phases"]
    loop = TrainingLoop(root, optimizer, group, work_dir / CHECKPOINTS, fingerprint(mixture_path, settings),
                        max_grad_norm=training.max_grad_norm,
                        checkpoint_every=training.checkpoint_every_steps,
                        made_for=prefix_identity(mixture_path, settings, len(phases)),
                        checkpoint_every_minutes=training.checkpoint_every_minutes,
                        stop_at=stop_before_time_limit(training),
                        metrics=TrainingMetrics(work_dir, training.log_every_steps, group.is_main))
    if not loop.resume() and start_from is not None:
        with STAGES.stage("checkpoints"):
            loop.restore(continue_from(Path(start_from), root, optimizer, mixture_path, settings, group))

    # Every phase's items are checked before any training, so a bad row fails at once, not after phase 1.
    with STAGES.stage("data"):
        phase_items = {int(phase["phase"]): load_items(mixture_path, int(phase["phase"])) for phase in phases}
    mixture_phases = sorted(int(p) for p in pd.read_parquet(mixture_path, columns=["phase"])["phase"].unique())
    if mixture_phases != sorted(phase_items):
        raise DataError(f"the mixture has phases {mixture_phases}, scheme {scheme.get('name')!r} trains phases "
                        f"{sorted(phase_items)}", mixture_path)

    segments, epoch_plans = [], []
    for phase in phases:
        items = phase_items[int(phase["phase"])]
        steps_per_epoch = math.ceil(len(items) / global_batch)
        total_steps = steps_per_epoch * int(phase["epochs"])
        segments.append(Segment(f"phase {phase['phase']}", total_steps, float(phase["learning_rate"]),
                                warmup_steps(total_steps, float(phase["warmup_ratio"]))))
        epoch_plans.append({"steps_per_epoch": steps_per_epoch, "lengths": None, "epoch": None, "batches": None,
                            "loader": None})
        modalities = pd.Series([it.modality for it in items]).value_counts().to_dict()
        log.info("phase %s: %d items %s, %s epochs × %d steps, lr %s, warm-up %s, %d process(es)", phase["phase"],
                 len(items), modalities, phase["epochs"], steps_per_epoch, phase["learning_rate"],
                 phase["warmup_ratio"], group.world_size)

    def gradients(phase_index: int, step: int) -> dict:
        phase, plan = phases[phase_index], epoch_plans[phase_index]
        items = phase_items[int(phase["phase"])]
        if plan["lengths"] is None and training.group_by_length:
            with STAGES.stage("tokenization"):
                plan["lengths"] = sequence_lengths(items, processor, instruction)
        epoch, step_in_epoch = divmod(step, plan["steps_per_epoch"])
        span = accumulation * group.world_size
        if plan["epoch"] != epoch or plan["loader"].next != step_in_epoch:
            if plan["epoch"] != epoch:
                plan["epoch"] = epoch
                plan["batches"] = micro_batches(items, plan["lengths"], per_device, seed, int(phase["phase"]), epoch)
            plan["loader"] = StepLoader(items, plan["batches"], range(step_in_epoch, plan["steps_per_epoch"]), span,
                                        group.rank, group.world_size, instruction, collator, audio_token_id, workers,
                                        pin_memory=group.device.type == "cuda")
        step_batches = plan["batches"][step_in_epoch * span : (step_in_epoch + 1) * span]
        step_items = sum(len(batch) for batch in step_batches)
        speech_items = sum(items[i].modality == "speech" for batch in step_batches for i in batch)
        audio_items = sum(items[i].modality != "text" for batch in step_batches for i in batch)
        with STAGES.stage("collation"):  # waiting for the loader: audio, chat template, tokenization, features
            mine = plan["loader"].next_step(step_in_epoch)
        loss, tokens = _optimizer_step_gradients(
            root, mine, audio_cache, group, touch_audio=not audio_frozen and audio_items > 0,
            trains_audio_tower="audio_tower" in trained_parts,
            where=f"phase {phase['phase']} epoch {epoch} step {step_in_epoch}",
        )
        return {"phase": int(phase["phase"]), "epoch": epoch, "loss": round(loss, 6), "answer_tokens": tokens,
                "text_items": step_items - speech_items, "speech_items": speech_items}

    evaluate = dev_evaluation(root, processor, group, training, dev_manifests, instruction, work_dir, loop, segments)
    loop.run(segments, gradients, evaluate)
    history, position = loop.history, loop.position
    summary = {
        "wall_time_s": round(time.time() - started, 2),
        "optimizer_steps": position["global_step"],
        "processes": group.world_size,
        "precision": {"compute": str(dtype).removeprefix("torch."), "master_weights": "float32"},
        "trainable_parameters": parameter_counts,
        "final_loss": history[-1]["loss"] if history else None,
    }
    if torch.cuda.is_available() and group.device.type == "cuda":
        summary["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(group.device) / 2**30, 2)
    if start_from is not None:
        summary["continued_from"] = str(start_from)
    if evaluate is not None and group.is_main:
        summary["dev"] = last_dev_results(work_dir / DEV_CSV)
    if output == "checkpoint":
        final = loop.checkpoint(wait=True)  # the end of the last phase is saved only here, as this job's output
        if group.is_main:
            _move_checkpoint(final, out_dir)
            if not training.keep_checkpoint:
                shutil.rmtree(loop.checkpoint_dir, ignore_errors=True)
        group.wait_for_main()
        return summary
    with STAGES.stage("output"):
        weights = full_state_dict(root, prefix="model.")
        if group.is_main:
            _write_output(out_dir, model, processor, weights, output_dtype(training, model_cfg["path"]), settings,
                          history, summary, work_dir)
        if not training.keep_checkpoint:
            shutil.rmtree(loop.checkpoint_dir, ignore_errors=True)  # 93 GB per 7B run; the final model is written
    group.wait_for_main()
    return summary


def dev_evaluation(root, processor, group: ProcessGroup, training: TrainingSettings, manifests: dict[str, str],
                   instruction: str, work_dir: Path, loop: TrainingLoop, segments: list[Segment]):
    """The loop's `after_step` that evaluates on the dev split when `training.dev_eval` says (every N steps, at
    phase ends), or None."""
    if training.dev_eval is None:
        return None
    settings = DevEvalSettings.from_dict(training.dev_eval, "fine-tuning settings: training.dev_eval")
    manifests = {inputs: path for inputs, path in manifests.items() if inputs in settings.inputs}
    if not manifests:
        log.info("no dev evaluation: no dev manifest was given (the run trains on its dev split)")
        return None
    evaluation = DevEvaluation(root, processor, group, manifests, settings, instruction, training.seed, work_dir,
                               training.length_aware)
    evaluation.resume(loop.position["global_step"])
    phase_ends = set(itertools.accumulate(segment.steps for segment in segments)) if settings.at_phase_end else set()

    def after_step(record: dict) -> None:
        step = record["step"]
        if step in phase_ends or (settings.every_steps is not None and step % settings.every_steps == 0):
            loop.metrics.add_dev(step, evaluation(step))

    return after_step


def last_dev_results(path: Path) -> dict:
    """The latest dev evaluation of dev.csv, per input, with its step (none yet: empty)."""
    if not path.exists():
        return {}
    table = pd.read_csv(path)
    last = table[table["step"] == table["step"].max()]
    return {row.pop("inputs"): row for row in last.to_dict("records")}


def _optimizer_step_gradients(root, micro_batches: list[MicroBatch], audio_cache, group: ProcessGroup,
                              touch_audio: bool, trains_audio_tower: bool, where: str) -> tuple[float, int]:
    """Accumulate one optimizer step's gradients over this process's micro-batches: the gradient of the mean
    cross-entropy over the answer tokens of the whole step, all micro-batches and processes (as transformers ≥ 4.46
    and torchtitan normalise), not an average of per-batch means. The device is waited for once, at the end, for
    the step's loss, token count and finite check together. Returns the step's mean loss and answer tokens."""
    device, world_size = group.device, group.world_size
    root.train()
    if not trains_audio_tower:
        base_model(root.model).model.audio_tower.eval()
    own_tokens = sum(mb.answer_tokens for mb in micro_batches if not mb.padding)
    step_tokens = torch.tensor(float(own_tokens), device=device)
    if world_size > 1:
        dist.all_reduce(step_tokens)  # queued on the device: nothing waits for it here
    loss_sum = torch.zeros((), device=device)
    non_finite = torch.zeros((), device=device)
    for micro_batch in micro_batches:
        with STAGES.stage("steps"):
            batch = micro_batch.to(device, with_features=audio_cache is None)
            frames = None
            if audio_cache is not None:
                frames = audio_cache.batch_frames(root.model, list(zip(micro_batch.audio_keys, micro_batch.waveforms)))
            loss = root(batch, frames, touch_audio=touch_audio, reduction="sum") / step_tokens
            non_finite += (~torch.isfinite(loss)).float()
            # FSDP2 averages gradients over processes: × processes makes it the sum of each one's share.
            (loss * (0.0 if micro_batch.padding else world_size)).backward()
            if not micro_batch.padding:
                loss_sum += loss.detach()
    totals = torch.stack([loss_sum, non_finite])
    if world_size > 1:
        dist.all_reduce(totals)
    loss_value, non_finite_count, tokens = torch.cat([totals, step_tokens.reshape(1)]).tolist()  # the one wait
    if non_finite_count:
        raise FloatingPointError(f"non-finite loss at {where}; the last good checkpoint is kept")
    return loss_value, int(tokens)


def _move_checkpoint(checkpoint: Path, out_dir: Path) -> None:
    """The declared output appears only when complete (the work directory may be on another filesystem)."""
    tmp = out_dir.parent / (out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(checkpoint, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def _write_output(out_dir: Path, model, processor, weights: dict, dtype: torch.dtype, settings, history,
                  summary, work_dir: Path) -> None:
    """Everything goes to a temp dir first; the declared output appears only when complete. The work directory's
    TensorBoard events are copied in, so that `tensorboard --logdir results/runs` shows every finished run."""
    tmp = out_dir.parent / (out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {name: t.to(dtype) if t.is_floating_point() else t for name, t in weights.items()}
    model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)  # a peft model saves only its adapter
    processor.save_pretrained(tmp)
    (tmp / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    pd.DataFrame(history).to_csv(tmp / LOSS_CSV, index=False)
    if (work_dir / TENSORBOARD).is_dir():
        shutil.copytree(work_dir / TENSORBOARD, tmp / TENSORBOARD)
    if (work_dir / DEV_CSV).exists():
        shutil.copyfile(work_dir / DEV_CSV, tmp / DEV_CSV)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
