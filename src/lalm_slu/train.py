"""Fine-tuning on one mixture file: every scheme (text-only, direct mixing, curriculum, oracle, cross-lingual).

One loop, top to bottom: items → length-grouped micro-batches → accumulation → AdamW + warm-up/cosine per phase
→ checkpoint. A scheme is only config: which modules train, and the phases (each with epochs, LR, warm-up)
whose items come from the mixture's `phase` column. Checkpoints live in a work directory that is not a
Snakemake output, so an interrupted or killed job resumes where it stopped on re-run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from lalm_slu.audio_frames import load_frames
from lalm_slu.modeling import (
    SAMPLE_RATE,
    ChatItem,
    Collator,
    FrozenAudioCache,
    answer_loss,
    answer_turn,
    audio_token_count,
    base_model,
    count_parameters,
    device_and_dtype,
    load_audio,
    load_model_and_processor,
    render_prompt,
    set_trainable,
    top_level,
)
from lalm_slu.records import DataError, read_manifest
from lalm_slu.slu_json import format_target

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint"
# The parts that turn audio into LLM inputs: training either invalidates cached audio frames.
AUDIO_PARTS = ("audio_tower", "multi_modal_projector")


@dataclass
class TrainItem:
    id: str
    modality: str
    text: str
    target: str
    audio_path: str | None
    duration_s: float | None  # speech items only


def load_items(mixture_path: str | Path, phase: int) -> list[TrainItem]:
    """The mixture's items of one phase, joined with their manifests (the only data training reads)."""
    mixture = pd.read_parquet(mixture_path)
    required = {"id", "lang", "modality", "phase", "manifest"}
    if missing := required - set(mixture.columns):
        raise DataError(f"mixture lacks columns {sorted(missing)}", mixture_path)
    rows = mixture[mixture["phase"] == phase]
    manifests: dict[str, pd.DataFrame] = {}
    items = []
    for row in rows.itertuples(index=False):
        if row.manifest not in manifests:
            manifests[row.manifest] = read_manifest(row.manifest).set_index("id", drop=False)
        frame = manifests[row.manifest]
        if row.id not in frame.index:
            raise DataError(f"id {row.id!r} not found in manifest {row.manifest}", mixture_path)
        utt = frame.loc[row.id]
        target = format_target(utt["scenario"], utt["action"], utt["entities"])
        if row.modality == "speech":
            if not utt["audio"]:
                raise DataError(f"speech item {row.id!r} has no audio in {row.manifest}", mixture_path)
            if not os.path.isfile(utt["audio"]):
                raise DataError(f"audio file {utt['audio']} of speech item {row.id!r} not found", row.manifest)
            items.append(TrainItem(row.id, "speech", utt["text"], target, utt["audio"], float(utt["duration_s"])))
        elif row.modality == "text":
            items.append(TrainItem(row.id, "text", utt["text"], target, None, None))
        else:
            raise DataError(f"unknown modality {row.modality!r} for id {row.id!r}", mixture_path)
    return items


def sequence_lengths(items: list[TrainItem], processor, instruction: str) -> list[int]:
    """Tokens of each item's training sequence as the Collator builds it: prompt, audio tokens (from the clip's
    duration) and answer. Grouping by this, not by transcript or clip length alone, also groups by answer length,
    which varies as much (1,000 demo text items: 217 → 184 padded tokens per item)."""
    tokenizer = processor.tokenizer
    speech_prompt = render_prompt(processor, ChatItem(instruction, audio=np.zeros(0, dtype=np.float32)))
    sequences = [
        (speech_prompt if it.modality == "speech" else render_prompt(processor, ChatItem(instruction, text=it.text)))
        + answer_turn(it.target)
        for it in items
    ]
    lengths = [len(ids) for ids in tokenizer(sequences, add_special_tokens=False)["input_ids"]]
    hop = processor.feature_extractor.hop_length
    # The audio placeholder (one token) becomes one token per encoder frame pair.
    return [
        n - 1 + audio_token_count(math.ceil(it.duration_s * SAMPLE_RATE / hop)) if it.modality == "speech" else n
        for n, it in zip(lengths, items)
    ]


def micro_batches(items: list[TrainItem], lengths: list[int] | None, batch_size: int, seed: int, phase: int,
                  epoch: int) -> list[list[int]]:
    """Seeded order for one epoch. With `lengths` (sequence_lengths), group by length: sort inside windows of 50
    batches, then shuffle the batches."""
    rng = np.random.default_rng([seed, phase, epoch])
    order = rng.permutation(len(items))
    if lengths is not None:
        window = batch_size * 50
        grouped = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            grouped += sorted(chunk.tolist(), key=lambda i: (items[i].modality, lengths[i]))
        order = np.array(grouped, dtype=np.int64)
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def to_chat_items(items: list[TrainItem], instruction: str) -> list[ChatItem]:
    return [
        ChatItem(instruction, it.target, audio=load_audio(it.audio_path))
        if it.modality == "speech"
        else ChatItem(instruction, it.target, text=it.text)
        for it in items
    ]


def cosine_lr(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Linear warm-up then cosine decay to zero (transformers' get_cosine_schedule_with_warmup)."""
    warmup = int(math.ceil(total * warmup_ratio))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


TRAINING_CODE = tuple(Path(__file__).with_name(name) for name in ("train.py", "modeling.py", "audio_frames.py"))


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


def fingerprint(mixture_path, settings: dict) -> str:
    """Identifies a run: a checkpoint with another fingerprint (other mixture, settings or base model
    weights, e.g. a re-pretrained demo model at the same path) is never resumed."""
    digest = hashlib.sha256(Path(mixture_path).read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(model_identity(str(settings["model"]["path"])).encode())
    # The training code itself: after an edit, Snakemake re-runs the job and it must really retrain.
    for source in TRAINING_CODE:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


class Distributed:
    """torchrun/accelerate-launched DDP (gloo on CPU, nccl on GPU), or a single process."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world_size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params) -> None:
        if self.world_size == 1:
            return
        # A parameter no rank touched this step (the projector in an all-text step) keeps grad None, so AdamW
        # skips it as a single process would; zeros would still move it through its moments.
        touched = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
        torch.distributed.all_reduce(touched)
        for p, ranks in zip(params, touched.tolist()):
            if ranks == 0:
                continue
            if p.grad is None:  # touched on another rank only: join the reduction with zeros
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= self.world_size

    def all_sum(self, value: float) -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def apply_lora(model, lora: dict, trainable_modules: list[str]):
    """LoRA adapters on the LLM; the audio tower and projector, if trainable, train fully beside them
    (peft would otherwise freeze everything but the adapters)."""
    from peft import LoraConfig, get_peft_model

    targets = "|".join(lora.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"]))
    config = LoraConfig(
        r=int(lora.get("rank", 8)),
        lora_alpha=float(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
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
             audio_frames: list[str] = ()) -> dict:
    """Train per `settings` = {"model": {...}, "training": {...}, "scheme": {...}, "prompt": {...}}.
    `audio_frames`: files of precomputed frames (audio_frames.encode_manifest) for the mixture's clips; only
    for a scheme that freezes the audio tower and the projector."""
    started = time.time()
    model_cfg, training, scheme = settings["model"], settings["training"], settings["scheme"]
    instruction = settings["prompt"]["instruction"]
    dist = Distributed()
    seed = int(training.get("seed", 0))
    torch.manual_seed(seed)
    device, dtype = device_and_dtype(training)
    model, processor = load_model_and_processor(model_cfg["path"], dtype=dtype, device=device)
    counts = set_trainable(model, scheme["trainable_modules"], bool(training.get("freeze_token_embeddings")))
    lora = model_cfg.get("lora")
    if lora:
        model = apply_lora(model, lora, scheme["trainable_modules"])
    if training.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    parameter_counts = {"per_module": counts, **count_parameters(model)}
    log.info("trainable parameters: %s", parameter_counts)
    optimizer = torch.optim.AdamW(
        params, lr=float(scheme["phases"][0]["learning_rate"]), weight_decay=float(training.get("weight_decay", 0.0)),
        betas=(0.9, 0.999),
    )
    length_aware = bool(training.get("length_aware", True))
    collator = Collator(processor, length_aware=length_aware)
    trained_parts = {top_level(m) for m in scheme["trainable_modules"]}
    audio_frozen = not set(AUDIO_PARTS) & trained_parts
    if audio_frames and not audio_frozen:
        raise ValueError(f"precomputed audio frames were given, but scheme {scheme.get('name')!r} trains "
                         f"{sorted(set(AUDIO_PARTS) & trained_parts)}: its frames change as it trains")
    audio_cache = None
    if audio_frozen and (training.get("cache_frozen_audio") or audio_frames):
        audio_cache = FrozenAudioCache(processor, length_aware)
        for path in audio_frames:
            audio_cache.add(load_frames(path, model, length_aware).frames)
    per_device = int(training["per_device_batch_size"])
    global_batch = int(training["global_batch_size"])
    accumulation = global_batch // (per_device * dist.world_size)
    if accumulation < 1 or accumulation * per_device * dist.world_size != global_batch:
        raise ValueError(
            f"training.global_batch_size={global_batch} must be a multiple of per_device_batch_size={per_device} "
            f"× processes={dist.world_size}"
        )

    work_dir, out_dir = Path(work_dir), Path(out_dir)
    checkpoint = work_dir / CHECKPOINT_NAME
    run_fingerprint = fingerprint(mixture_path, settings)
    position = {"phase_index": 0, "epoch": 0, "step_in_epoch": 0, "global_step": 0}
    history: list[dict] = []
    previous = checkpoint.parent / (checkpoint.name + ".old")
    if not checkpoint.exists() and previous.exists():  # killed between the two renames of _save_checkpoint
        os.replace(previous, checkpoint)
    shutil.rmtree(previous, ignore_errors=True)  # killed after the swap: the newer checkpoint is complete
    if checkpoint.exists() and _checkpoint_fingerprint(checkpoint) != run_fingerprint:
        # The config or the mixture changed since that checkpoint: its state belongs to another run.
        log.warning("%s was written for other settings or another mixture; starting over", checkpoint)
        shutil.rmtree(checkpoint)
    if checkpoint.exists():
        position, history = _resume(checkpoint, model, optimizer, run_fingerprint)
        log.info("resumed from %s at %s", checkpoint, position)

    # Every phase's items are checked before any training, so a bad row fails at once, not after phase 1.
    phase_items = {int(phase["phase"]): load_items(mixture_path, int(phase["phase"])) for phase in scheme["phases"]}
    for number, items in phase_items.items():
        if not items:
            raise DataError(f"phase {number} of the mixture has no items", mixture_path)

    for phase_index, phase in enumerate(scheme["phases"]):
        if phase_index < position["phase_index"]:
            continue
        items = phase_items[int(phase["phase"])]
        lengths = sequence_lengths(items, processor, instruction) if training.get("group_by_length", True) else None
        epochs = int(phase["epochs"])
        steps_per_epoch = math.ceil(len(items) / global_batch)
        total_steps = steps_per_epoch * epochs
        modalities = pd.Series([it.modality for it in items]).value_counts().to_dict()
        log.info("phase %s: %d items %s, %d epochs × %d steps, lr %s, warm-up %s", phase["phase"], len(items),
                 modalities, epochs, steps_per_epoch, phase["learning_rate"], phase["warmup_ratio"])
        progress = tqdm(total=total_steps, desc=f"phase {phase['phase']}", mininterval=20, disable=not dist.is_main)
        start_epoch = position["epoch"] if phase_index == position["phase_index"] else 0
        for epoch in range(start_epoch, epochs):
            batches = micro_batches(items, lengths, per_device, seed, int(phase["phase"]), epoch)
            first = position["step_in_epoch"] if (phase_index, epoch) == (position["phase_index"], position["epoch"]) else 0
            progress.n = epoch * steps_per_epoch + first
            for step in range(first, steps_per_epoch):
                group = batches[step * accumulation * dist.world_size : (step + 1) * accumulation * dist.world_size]
                mine = group[dist.rank :: dist.world_size]
                speech_items = sum(items[i].modality == "speech" for batch_ids in group for i in batch_ids)
                n_items = dist.all_sum(float(sum(len(b) for b in mine)))
                model.train()
                if "audio_tower" not in trained_parts:
                    base_model(model).model.audio_tower.eval()
                optimizer.zero_grad(set_to_none=True)
                loss_sum = 0.0
                for batch_ids in mine:
                    batch_items = [items[i] for i in batch_ids]
                    chats = to_chat_items(batch_items, instruction)
                    batch = {k: v.to(device) for k, v in collator(chats).items()}
                    if audio_cache is not None:
                        clips = [(it.audio_path, c.audio) for it, c in zip(batch_items, chats) if c.audio is not None]
                        batch = audio_cache.input_embeddings(model, batch, clips)
                    with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
                        loss = answer_loss(model, batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"non-finite loss at phase {phase['phase']} epoch {epoch} step {step}; "
                            f"the last good checkpoint is kept in {checkpoint}"
                        )
                    # Weight each micro-batch by its share of the global batch's items.
                    (loss * len(batch_ids) * dist.world_size / n_items).backward()
                    loss_sum += float(loss.detach()) * len(batch_ids)
                dist.average_gradients(params)
                torch.nn.utils.clip_grad_norm_(params, float(training.get("max_grad_norm", 1.0)))
                lr = cosine_lr(epoch * steps_per_epoch + step, total_steps, float(phase["learning_rate"]),
                               float(phase["warmup_ratio"]))
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr
                optimizer.step()
                position = {"phase_index": phase_index, "epoch": epoch, "step_in_epoch": step + 1,
                            "global_step": position["global_step"] + 1}
                history.append({"step": position["global_step"], "phase": int(phase["phase"]), "epoch": epoch,
                                "loss": round(dist.all_sum(loss_sum) / n_items, 6), "lr": lr,
                                "text_items": int(n_items) - speech_items, "speech_items": speech_items})
                progress.update(1)
                every = int(training.get("checkpoint_every_steps", 50))
                if position["global_step"] % every == 0:
                    _save_checkpoint(checkpoint, model, optimizer, position, history, run_fingerprint, dist)
            position = {**position, "epoch": epoch + 1, "step_in_epoch": 0}
        progress.close()
        position = {**position, "phase_index": phase_index + 1, "epoch": 0, "step_in_epoch": 0}
        _save_checkpoint(checkpoint, model, optimizer, position, history, run_fingerprint, dist)

    summary = {
        "wall_time_s": round(time.time() - started, 2),
        "optimizer_steps": position["global_step"],
        "processes": dist.world_size,
        "trainable_parameters": parameter_counts,
        "final_loss": history[-1]["loss"] if history else None,
    }
    if dist.is_main:
        _write_output(out_dir, model, processor, settings, history, summary)
    dist.barrier()
    return summary


def _trainable_state(model) -> dict:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(path: Path, model, optimizer, position, history, run_fingerprint, dist) -> None:
    """Atomic: written to a temp dir, then swapped in, so a kill mid-write leaves the previous checkpoint."""
    if not dist.is_main:
        dist.barrier()
        return
    from safetensors.torch import save_file

    tmp = path.parent / (path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    torch.save({"optimizer": optimizer.state_dict(), "position": position, "rng": rng}, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"fingerprint": run_fingerprint, "position": position}))
    (tmp / "history.json").write_text(json.dumps(history))
    old = path.parent / (path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)  # left by a kill after the swap, before its clean-up
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _checkpoint_fingerprint(path: Path) -> str | None:
    try:
        return json.loads((path / "meta.json").read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def _resume(path: Path, model, optimizer, run_fingerprint: str):
    from safetensors.torch import load_file

    meta = json.loads((path / "meta.json").read_text())
    if meta["fingerprint"] != run_fingerprint:
        raise RuntimeError(
            f"{path} belongs to a different mixture or settings (fingerprint {meta['fingerprint']} ≠ "
            f"{run_fingerprint}); delete it to start over"
        )
    weights = load_file(str(path / "trainable.safetensors"))
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"{path}: unexpected keys {result.unexpected_keys[:5]}")
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    return state["position"], json.loads((path / "history.json").read_text())


def _write_output(out_dir: Path, model, processor, settings, history, summary) -> None:
    """Everything goes to a temp dir first; the declared output appears only when complete."""
    tmp = out_dir.parent / (out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)  # a peft model saves only its adapter
    processor.save_pretrained(tmp)
    (tmp / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    pd.DataFrame(history).to_csv(tmp / "loss.csv", index=False)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
