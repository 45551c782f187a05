"""Fine-tuning on one mixture file: every scheme (text-only, direct mixing, curriculum, oracle, cross-lingual).

Items → length-grouped micro-batches → accumulation → AdamW + warm-up/cosine per phase → checkpoint, on the
loop that pretraining shares (lalm_slu.training.loop). A scheme is only config: which modules train, and the
phases (each with epochs, LR, warm-up) whose items come from the mixture's `phase` column. The same loop runs in 1 or N processes (lalm_slu.training.distributed:
FSDP2 with fp32 master weights, sharded checkpoints). Checkpoints live in a work directory that is not a
Snakemake output, so an interrupted or killed job resumes where it stopped on re-run; it is deleted once the
final model is written.

Runs that share their first phases (every speech budget of a curriculum: phase 1 holds no budgeted speech) train
them once: a job with `output="checkpoint"` writes its final checkpoint instead of a model, and each run given it
as `start_from` continues from there (weights, AdamW moments, RNG, position and history), after checking that it
was made for the same first phases (`prefix_identity`). The result equals training the run inline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from lalm_slu.config.settings import TrainingSettings
from lalm_slu.core.stages import STAGES
from lalm_slu.data.records import DataError
from lalm_slu.model.audio_encoding import FrozenAudioCache
from lalm_slu.model.audio_frames import load_frames
from lalm_slu.model.batches import Collator
from lalm_slu.model.forward import AnswerLoss
from lalm_slu.model.loading import base_model, device_and_dtype, load_model_and_processor, stored_dtype
from lalm_slu.model.memory_plan import check_job_fits
from lalm_slu.model.trainable import AUDIO_PARTS, apply_lora, count_parameters, set_trainable, top_level
from lalm_slu.training.dev_evaluation import DEV_CSV, dev_evaluation_hook, last_dev_results
from lalm_slu.training.checkpoints import work_dir_lock
from lalm_slu.training.distributed import ProcessGroup, full_state_dict, parallelize
from lalm_slu.training.items import PhaseBatches, StepLoader, data_workers, load_items, sequence_lengths
from lalm_slu.training.loop import Segment, TrainingLoop, stop_before_time_limit, warmup_steps
from lalm_slu.training.optimizer import build_optimizer
from lalm_slu.training.run_identity import CHECKPOINTS, continue_from, fingerprint, prefix_identity
from lalm_slu.training.step import accumulate_gradients
from lalm_slu.training.step_log import LOSS_CSV, TENSORBOARD, TrainingMetrics

log = logging.getLogger(__name__)


def training_precision(training: TrainingSettings) -> tuple[str, torch.dtype]:
    """Device and compute dtype (the schema offers no fp16: no loss scaling). Weights that train are always kept
    and updated in fp32: in bf16 AdamW loses most updates at the paper's learning rates (a weight moves only if
    |w| < ~512 × lr)."""
    return device_and_dtype(training)


def output_dtype(training: TrainingSettings, model_path: str) -> torch.dtype:
    """The dtype of the written weights: the base model's own (`original`) or fp32."""
    return torch.float32 if training.output_dtype == "fp32" else stored_dtype(model_path)


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
    """The recipe: the model and what trains, the loop (resumed, or continued from a shared prefix), each
    phase's batches, the steps, the output."""
    scheme, instruction = settings["scheme"], settings["prompt"]["instruction"]
    if group.device.type == "cuda":
        card = torch.cuda.get_device_properties(group.device).total_memory / 2**30
        check_job_fits(settings, group.world_size, card)  # before minutes of loading, not at the first OOM
    torch.manual_seed(training.seed)
    root, model, processor, parameter_counts = prepare_model(settings, training, group, dtype)
    trained_parts = {top_level(m) for m in scheme["trainable_modules"]}
    audio_frozen = not set(AUDIO_PARTS) & trained_parts
    if audio_frames and not audio_frozen:
        raise ValueError(f"precomputed audio frames were given, but scheme {scheme.get('name')!r} trains "
                         f"{sorted(set(AUDIO_PARTS) & trained_parts)}: its frames change as it trains")
    optimizer = build_optimizer([p for p in root.parameters() if p.requires_grad],
                                float(scheme["phases"][0]["learning_rate"]), training, group.device)
    audio_cache = None
    if audio_frozen and (training.cache_frozen_audio or audio_frames):
        audio_cache = FrozenAudioCache(processor, training.length_aware)
        with STAGES.stage("data"):
            for path in audio_frames:
                audio_cache.add(load_frames(path, model, training.length_aware).frames)

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

    segments, phase_batches = plan_phases(mixture_path, settings, training, group, processor)

    def gradients(phase_index: int, step: int) -> dict:
        batches = phase_batches[phase_index]
        epoch, step_in_epoch, mine, counts = batches.step(step)
        loss, tokens = accumulate_gradients(
            root, mine, audio_cache, group, touch_audio=not audio_frozen and counts["audio_items"] > 0,
            trains_audio_tower="audio_tower" in trained_parts,
            where=f"phase {batches.phase} epoch {epoch} step {step_in_epoch}",
        )
        return {"phase": batches.phase, "epoch": epoch, "loss": round(loss, 6), "answer_tokens": tokens,
                "text_items": counts["items"] - counts["speech_items"], "speech_items": counts["speech_items"]}

    evaluate = dev_evaluation_hook(root, processor, group, training, dev_manifests, instruction, work_dir, loop,
                                   segments)
    loop.run(segments, gradients, evaluate)
    summary = {
        "wall_time_s": round(time.time() - started, 2),
        "optimizer_steps": loop.position["global_step"],
        "processes": group.world_size,
        "precision": {"compute": str(dtype).removeprefix("torch."), "master_weights": "float32"},
        "trainable_parameters": parameter_counts,
        "final_loss": loop.history[-1]["loss"] if loop.history else None,
    }
    if torch.cuda.is_available() and group.device.type == "cuda":
        summary["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(group.device) / 2**30, 2)
    if start_from is not None:
        summary["continued_from"] = str(start_from)
    if evaluate is not None and group.is_main:
        summary["dev"] = last_dev_results(work_dir / DEV_CSV)
    write_result(output, loop, root, model, processor, settings, training, summary, out_dir, work_dir, group)
    return summary


def prepare_model(settings: dict, training: TrainingSettings, group: ProcessGroup, dtype: torch.dtype):
    """The model as it trains: loaded as stored (bf16 for the 7B model), the scheme's modules trainable (LoRA
    adapters if asked), gradient checkpointing, and the forward (`AnswerLoss`) sharded, where `parallelize`
    upcasts what trains to fp32 one unit at a time. Returns the forward, the model, its processor and the
    trainable-parameter counts."""
    model_cfg, scheme = settings["model"], settings["scheme"]
    with STAGES.stage("model_load"):
        model, processor = load_model_and_processor(model_cfg["path"], dtype=stored_dtype(model_cfg["path"]))
    counts = set_trainable(model, scheme["trainable_modules"], training.freeze_token_embeddings)
    if model_cfg.get("lora"):
        model = apply_lora(model, model_cfg["lora"], scheme["trainable_modules"])
    if training.gradient_checkpointing:
        # Non-reentrant: the form that composes with FSDP2's hooks.
        base_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    parameter_counts = {"per_module": counts, **count_parameters(model)}
    log.info("trainable parameters: %s", parameter_counts)
    root = AnswerLoss(model)
    with STAGES.stage("model_load"):
        parallelize(root, model, dtype, group)
    return root, model, processor, parameter_counts


def plan_phases(mixture_path, settings: dict, training: TrainingSettings, group: ProcessGroup, processor):
    """Each phase's schedule (a loop Segment) and batches. Every phase's items are checked before any training,
    so a bad row fails at once, not after phase 1."""
    scheme, instruction = settings["scheme"], settings["prompt"]["instruction"]
    per_device, global_batch = training.per_device_batch_size, training.global_batch_size
    accumulation = global_batch // (per_device * group.world_size)
    if accumulation < 1 or accumulation * per_device * group.world_size != global_batch:
        raise ValueError(
            f"training.global_batch_size={global_batch} must be a multiple of per_device_batch_size={per_device} "
            f"× processes={group.world_size}"
        )
    phases = scheme["phases"]
    with STAGES.stage("data"):
        phase_items = {int(phase["phase"]): load_items(mixture_path, int(phase["phase"])) for phase in phases}
    mixture_phases = sorted(int(p) for p in pd.read_parquet(mixture_path, columns=["phase"])["phase"].unique())
    if mixture_phases != sorted(phase_items):
        raise DataError(f"the mixture has phases {mixture_phases}, scheme {scheme.get('name')!r} trains phases "
                        f"{sorted(phase_items)}", mixture_path)
    collator = Collator(processor, training.length_aware)
    audio_token_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    workers, span = data_workers(training, group.device), accumulation * group.world_size

    def loader_for(items, epoch_batches, steps: range) -> StepLoader:
        return StepLoader(items, epoch_batches, steps, span, group.rank, group.world_size, instruction, collator,
                          audio_token_id, workers, pin_memory=group.device.type == "cuda")

    def lengths_of(items) -> list[int]:
        return sequence_lengths(items, processor, instruction)

    segments, batches = [], []
    for phase in phases:
        items = phase_items[int(phase["phase"])]
        steps_per_epoch = math.ceil(len(items) / global_batch)
        total_steps = steps_per_epoch * int(phase["epochs"])
        segments.append(Segment(f"phase {phase['phase']}", total_steps, float(phase["learning_rate"]),
                                warmup_steps(total_steps, float(phase["warmup_ratio"]))))
        batches.append(PhaseBatches(items, int(phase["phase"]), steps_per_epoch, per_device, span, training.seed,
                                    lengths_of if training.group_by_length else None, loader_for))
        modalities = pd.Series([it.modality for it in items]).value_counts().to_dict()
        log.info("phase %s: %d items %s, %s epochs × %d steps, lr %s, warm-up %s, %d process(es)", phase["phase"],
                 len(items), modalities, phase["epochs"], steps_per_epoch, phase["learning_rate"],
                 phase["warmup_ratio"], group.world_size)
    return segments, batches


def write_result(output: str, loop: TrainingLoop, root, model, processor, settings: dict, training: TrainingSettings,
                 summary: dict, out_dir: Path, work_dir: Path, group: ProcessGroup) -> None:
    """The job's output: the final checkpoint (a shared prefix's), or the model; the work directory's checkpoints
    are deleted after (93 GB per 7B run) unless `training.keep_checkpoint`."""
    if output == "checkpoint":
        final = loop.checkpoint(wait=True)  # the end of the last phase is saved only here, as this job's output
        if group.is_main:
            _move_checkpoint(final, out_dir)
            if not training.keep_checkpoint:
                shutil.rmtree(loop.checkpoint_dir, ignore_errors=True)
        group.wait_for_main()
        return
    with STAGES.stage("output"):
        weights = full_state_dict(root, prefix="model.")
        if group.is_main:
            _write_output(out_dir, model, processor, weights, output_dtype(training, settings["model"]["path"]),
                          settings, loop.history, summary, work_dir)
        if not training.keep_checkpoint:
            shutil.rmtree(loop.checkpoint_dir, ignore_errors=True)
    group.wait_for_main()


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
