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
Deterministic given the seed. A recipe on fine-tuning's parts: the same loop, schedule, checkpoints (a killed
stage resumes; one of other settings never does) and frame cache (lalm_slu.training.loop, audio_encoding).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
import torch
from tqdm import tqdm

from lalm_slu.model.audio_encoding import FrozenAudioCache, merge_audio, projected_audio
from lalm_slu.model.batches import ChatItem, Collator, audio_token_count
from lalm_slu.core.code_version import code_version
from lalm_slu.demo_model.instructions import TRANSCRIBE_INSTRUCTION
from lalm_slu.demo_model.build import check_kept_layers, keep_language_model_layers, save_model
from lalm_slu.demo_model.model_card import write_model_card
from lalm_slu.training.distributed import ProcessGroup
from lalm_slu.model.loss import HOST_KEYS, answer_loss, answer_positions
from lalm_slu.evaluation.metrics import word_error_rate
from lalm_slu.model.loading import base_model, load_model_and_processor
from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.config.settings import GenerationSettings, whole_default
from lalm_slu.data.audio import load_audio
from lalm_slu.speech.tts import Voice
from lalm_slu.training.run_identity import CHECKPOINTS, model_identity
from lalm_slu.model.trainable import set_trainable, top_level
from lalm_slu.training.loop import Segment, TrainingLoop

log = logging.getLogger(__name__)

# The schedule segments of a stage.
TRANSCRIPTION, INSTRUCTIONS = "transcription", "instructions"


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


PRETRAIN_DEFAULTS = whole_default("pretrain_stage")


def stage_default(key: str):
    """A PretrainConfig field whose default is the schema's ($defs.pretrain_stage's default, the one source)."""
    value = PRETRAIN_DEFAULTS[key]
    return field(default_factory=lambda: copy.deepcopy(value))


@dataclass
class PretrainConfig:
    """A pretraining stage's settings: the schema's $defs.pretrain_stage describes each key."""

    steps: int = stage_default("steps")
    batch_size: int = stage_default("batch_size")
    learning_rate: float = stage_default("learning_rate")
    warmup_steps: int = stage_default("warmup_steps")
    min_lr_ratio: float = stage_default("min_lr_ratio")
    weight_decay: float = stage_default("weight_decay")
    text_fraction: float = stage_default("text_fraction")
    trainable: list = stage_default("trainable")
    checkpoint_every: int = stage_default("checkpoint_every")
    eval_every: int = stage_default("eval_every")
    eval_utterances: int = stage_default("eval_utterances")
    seed: int = stage_default("seed")
    threads: int = stage_default("threads")
    # End this session after so many steps (checkpointed, no final output): fits a job's time limit.
    stop_after_steps: int | None = stage_default("stop_after_steps")
    # Embedding alignment, from `alignment_start_step` on: CTC of the projected audio frames against the
    # transcript's tokens, scored by cosine similarity with the LLM's token embeddings (blank = pad token),
    # and a penalty keeping projected frames at the token embeddings' norm. Without it the projector's
    # output is ~25x larger than a token embedding and the LLM reads speech and text in different ways.
    alignment_start_step: int | None = stage_default("alignment_start_step")
    ctc_weight: float = stage_default("ctc_weight")
    norm_weight: float = stage_default("norm_weight")
    ctc_scale: float = stage_default("ctc_scale")
    # Behaviour alignment (speech steps): the same items with the transcript as text are the teacher (no gradient),
    # and the speech path learns its next-token distributions and every LLM layer's hidden states at the answer
    # positions. Transcription and imitation align what the model answers; this aligns the states the answer is
    # read from, which text-only fine-tuning changes and the speech path must follow.
    distill_weight: float = stage_default("distill_weight")
    hidden_weight: float = stage_default("hidden_weight")
    behaviour_positions: str = stage_default("behaviour_positions")
    # The transcript tokens' own states: each LLM layer's state of a token matched at the frame where CTC has just
    # heard it, so that the input itself reads alike, not only what follows it.
    token_state_weight: float = stage_default("token_state_weight")
    # Instruction imitation after the `steps` above: its own warm-up and cosine schedule, and task weights.
    instruction_steps: int = stage_default("instruction_steps")
    instruction_learning_rate: float = stage_default("instruction_learning_rate")
    instruction_warmup_steps: int = stage_default("instruction_warmup_steps")
    instruction_tasks: dict = stage_default("instruction_tasks")

    # Encode every training clip once before the first step and train on the cached frames: the encoder is
    # most of a speech step. Frozen lower layers are cached too when only upper ones train (`audio_tower.layers.N`,
    # `audio_tower.layer_norm`): a step then runs the trained layers alone.
    cache_encoder_frames: bool = stage_default("cache_encoder_frames")
    # Start the stage by keeping only these LLM decoder layers (indices of the model it starts from): a
    # shallower LLM makes every fine-tuning step cheaper; the stage's training heals the gap.
    keep_language_model_layers: list | None = stage_default("keep_language_model_layers")

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
    write_text_atomic(index_path, json.dumps([asdict(c) for c in clips]))  # a cache later runs trust
    return clips


def _synthesize_worker(jobs):
    from lalm_slu.speech.tts import TARGET_RATE, ESpeakSynthesizer

    synthesizer = ESpeakSynthesizer()
    for text, _lang, voice_key, path in tqdm(jobs, desc="synthesizing", mininterval=10):
        soundfile.write(path, synthesizer.synthesize(text, Voice.from_key(voice_key)), TARGET_RATE)


def schedule(cfg: PretrainConfig) -> list[Segment]:
    """The stage's schedule segments (transcription, then instruction imitation; a stage may have either alone):
    each warms up to its own peak, then decays by cosine to `min_lr_ratio` of it."""
    segments = [
        Segment(TRANSCRIPTION, cfg.steps, cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio),
        Segment(INSTRUCTIONS, cfg.instruction_steps, cfg.instruction_learning_rate, cfg.instruction_warmup_steps,
                cfg.min_lr_ratio),
    ]
    return [segment for segment in segments if segment.steps]


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
    from lalm_slu.evaluation.decode import generate_batch

    collator = Collator(processor, for_generation=True)
    model.eval()
    greedy = GenerationSettings.from_dict({"num_beams": 1, "batch_size": batch_size, "max_new_tokens": max_new_tokens},
                                          "the demo model's transcription")
    out = []
    for start in range(0, len(clips), batch_size):
        items = [ChatItem(TRANSCRIBE_INSTRUCTION, audio=load_audio(c.audio)) for c in clips[start : start + batch_size]]
        out += generate_batch(model, processor, collator, items, greedy)
    return out


def evaluate_wer(model, processor, eval_clips: dict[str, list[Clip]]) -> dict[str, float]:
    return {
        lang: round(word_error_rate([c.text for c in clips], transcribe(model, processor, clips)), 4)
        for lang, clips in eval_clips.items()
    }


def alignment_logits(model, frames: torch.Tensor, cfg: "PretrainConfig") -> torch.Tensor:
    """The alignment's CTC logits of projected frames: cosine similarity with each token embedding, scaled."""
    embeddings = model.model.language_model.embed_tokens.weight
    return cfg.ctc_scale * torch.nn.functional.normalize(frames, dim=-1) @ torch.nn.functional.normalize(
        embeddings, dim=-1).T


def alignment_losses(model, processor, clip_frames: list[torch.Tensor], texts, cfg: PretrainConfig):
    """CTC of each clip's projected frames against its transcript's tokens (cosine with token embeddings) + a
    norm penalty keeping the frames at the token embeddings' norm."""
    embeddings = model.model.language_model.embed_tokens.weight
    lengths = torch.tensor([len(f) for f in clip_frames])
    logits = alignment_logits(model, torch.nn.utils.rnn.pad_sequence(clip_frames, batch_first=True), cfg)
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


def ctc_token_ends(log_probs: np.ndarray, targets: list[int], blank: int) -> list[int] | None:
    """On the most likely CTC path of (frames × vocabulary) `log_probs` through `targets`, the last frame before
    each next token starts (for the last token, the last frame): where a token has been heard and the next one not
    yet. None when the frames are too few for the tokens."""
    frames, extended = len(log_probs), [blank]
    for token in targets:
        extended += [token, blank]
    states = len(extended)
    if not targets or frames < len(targets):
        return None
    emission = log_probs[:, extended]
    score = np.full(states, -np.inf)
    score[:2] = emission[0, :2]
    came_from = np.zeros((frames, states), dtype=np.int64)
    index = np.arange(states)
    # A state is reached from itself, the one before, or (a token differing from the one two back) two before.
    skip = np.array([s >= 2 and extended[s] != blank and extended[s] != extended[s - 2] for s in range(states)])
    for t in range(1, frames):
        stay, step = score, np.concatenate([[-np.inf], score[:-1]])
        jump = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        best = np.argmax(np.stack([stay, step, jump]), axis=0)
        score = np.stack([stay, step, jump])[best, index] + emission[t]
        came_from[t] = index - best
    state = states - 1 if score[-1] >= score[-2] else states - 2
    if not np.isfinite(score[state]):
        return None
    path = [state]
    for t in range(frames - 1, 0, -1):
        state = came_from[t, state]
        path.append(state)
    path.reverse()
    starts = [path.index(2 * k + 1) for k in range(len(targets))]
    return [start - 1 for start in starts[1:]] + [frames - 1]


def input_token_pairs(model, processor, speech_ids, text_ids, clip_frames: list[torch.Tensor], texts: list[str],
                      cfg: "PretrainConfig") -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions pairing each transcript token of the text batch with the audio frame of the speech batch where
    CTC (the alignment head: cosine with token embeddings) has just heard it. Items whose transcript tokens do not
    appear as such in the text prompt, or whose clip is too short for them, add no pair."""
    blank = processor.tokenizer.pad_token_id
    slots = (speech_ids == base_model(model).config.audio_token_id).nonzero(as_tuple=False)
    speech_positions, text_positions = [], []
    for row, (frames, text) in enumerate(zip(clip_frames, texts)):
        targets = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = alignment_logits(model, frames, cfg)
        ends = ctc_token_ends(logits.log_softmax(-1).float().numpy(), targets, blank)
        prompt = text_ids[row].tolist()
        start = next((i for i in range(len(prompt) - len(targets) + 1) if prompt[i : i + len(targets)] == targets),
                     None)
        if ends is None or start is None:
            continue
        columns = slots[slots[:, 0] == row, 1]
        speech_positions += (row * speech_ids.shape[1] + columns[ends]).tolist()
        text_positions += [row * text_ids.shape[1] + start + k for k in range(len(targets))]
    return torch.tensor(speech_positions, dtype=torch.long), torch.tensor(text_positions, dtype=torch.long)


def layer_states(model, batch: dict) -> list[torch.Tensor]:
    """Every LLM layer's output (the last one normed), flattened to (rows × width, hidden)."""
    inputs = {key: value for key, value in batch.items() if key not in HOST_KEYS}
    hidden = base_model(model).model(**inputs, use_cache=False, output_hidden_states=True).hidden_states
    return [h.reshape(-1, h.shape[-1]) for h in hidden[1:]]


def shared_suffix_positions(speech_ids, speech_mask, text_ids, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat positions of each row's tokens after its input (instruction, template, answer: the tokens a clip's
    item and its transcript's share at their ends) in a right-padded speech and text batch, paired in order."""
    speech_positions, text_positions = [], []
    for row, (speech, speech_length, text, text_length) in enumerate(
        zip(speech_ids.tolist(), speech_mask.sum(-1).tolist(), text_ids.tolist(), text_mask.sum(-1).tolist())
    ):
        shared = 0
        while (shared < min(speech_length, text_length)
               and speech[speech_length - 1 - shared] == text[text_length - 1 - shared]):
            shared += 1
        speech_end, text_end = row * speech_ids.shape[1] + speech_length, row * text_ids.shape[1] + text_length
        speech_positions += range(speech_end - shared, speech_end)
        text_positions += range(text_end - shared, text_end)
    return torch.tensor(speech_positions), torch.tensor(text_positions)


def behaviour_alignment_losses(model, speech_inputs: dict, text_inputs: dict, speech_ids: torch.Tensor | None = None,
                               token_pairs: tuple[torch.Tensor, torch.Tensor] | None = None):
    """The speech items' answer loss, and their behaviour alignment against the same items given as text: KL
    divergence of the next-token distributions (teacher: text) and the layers' mean relative squared error, at
    the positions that predict the answer or, given the speech batch's `speech_ids`, at every position after the
    input (the shared instruction and answer). Both batches hold the same answers, so positions pair up. With
    `token_pairs` (`input_token_pairs`), also the layers' relative squared error between each transcript token's
    states and those of the frame where it has just been heard (0 without)."""
    lm_head = base_model(model).lm_head
    with torch.no_grad():
        teacher_states = layer_states(model, text_inputs)
    states = layer_states(model, speech_inputs)
    speech_answer, targets = answer_positions(speech_inputs["labels"])
    text_answer, teacher_targets = answer_positions(text_inputs["labels"])
    if not torch.equal(targets, teacher_targets):
        raise ValueError("behaviour alignment: the speech and text items' answers tokenize differently")
    answer = torch.nn.functional.cross_entropy(lm_head(states[-1][speech_answer]).float(), targets)
    if speech_ids is None:
        speech_positions, text_positions = speech_answer, text_answer
    else:
        speech_positions, text_positions = shared_suffix_positions(
            speech_ids, speech_inputs["attention_mask"], text_inputs["input_ids"], text_inputs["attention_mask"])
    teacher = [layer[text_positions] for layer in teacher_states]
    student = [layer[speech_positions] for layer in states]
    log_probs = lm_head(student[-1]).float().log_softmax(-1)
    teacher_log_probs = lm_head(teacher[-1]).float().log_softmax(-1)
    kl = torch.nn.functional.kl_div(log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
    hidden = relative_squared_error(student, teacher)
    tokens = torch.zeros(())
    if token_pairs is not None and len(token_pairs[0]):
        tokens = relative_squared_error([layer[token_pairs[0]] for layer in states],
                                        [layer[token_pairs[1]] for layer in teacher_states])
    return answer, kl, hidden, tokens


def relative_squared_error(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the squared error relative to the teacher's mean squared norm."""
    errors = [((s - t) ** 2).sum(-1).mean() / (t ** 2).sum(-1).mean() for s, t in zip(student, teacher)]
    return torch.stack(errors).mean()


# Settings that change how a session runs or reports, not what it trains: a checkpoint written under other values of
# these is resumed.
SESSION_SETTINGS = ("stop_after_steps", "threads", "checkpoint_every", "eval_every", "eval_utterances")


def pretraining_fingerprint(model_dir, cfg: PretrainConfig, train_clips: list[Clip], train_texts: list[str]) -> str:
    """Identifies a stage: a checkpoint of other settings, data, starting weights or code is never resumed."""
    trained = {key: value for key, value in asdict(cfg).items() if key not in SESSION_SETTINGS}
    digest = hashlib.sha256(json.dumps(trained, sort_keys=True).encode())
    digest.update(json.dumps([[asdict(clip) for clip in train_clips], train_texts]).encode())
    digest.update(model_identity(str(model_dir)).encode())
    digest.update(code_version("pretrain_demo_model").encode())
    return digest.hexdigest()[:16]


def pretrain(
    model_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    train_clips: list[Clip],
    train_texts: list[str],
    eval_clips: dict[str, list[Clip]],
    cfg: PretrainConfig,
) -> dict:
    """Train from `model_dir` (the built model), checkpointing into `work_dir`; write the result to `out_dir`.
    One process, fp32 (the demo model is small); the loop, schedule and checkpoints are fine-tuning's."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    group = ProcessGroup("cpu")
    try:
        return _pretrain(Path(model_dir), Path(out_dir), Path(work_dir), train_clips, train_texts, eval_clips, cfg,
                         group)
    finally:
        group.close()


def _pretrain(model_dir: Path, out_dir: Path, work_dir: Path, train_clips, train_texts, eval_clips,
              cfg: PretrainConfig, group: ProcessGroup) -> dict:
    started = time.time()
    model, processor = load_model_and_processor(str(model_dir))
    if cfg.keep_language_model_layers is not None:
        keep_language_model_layers(model, cfg.keep_language_model_layers)
    set_trainable(model, cfg.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    collator = Collator(processor)
    segments = schedule(cfg)
    loop = TrainingLoop(model, optimizer, group, work_dir / CHECKPOINTS,
                        pretraining_fingerprint(model_dir, cfg, train_clips, train_texts), max_grad_norm=1.0,
                        checkpoint_every=cfg.checkpoint_every)
    loop.resume()
    first_step = loop.position["global_step"]
    clip_lengths = [soundfile.info(c.audio).duration for c in train_clips]
    cache = None
    if cfg.cache_encoder_frames:
        layer = cfg.first_trained_encoder_layer(len(model.model.audio_tower.layers))
        cache = FrozenAudioCache(processor, trained_from="projector" if layer is None else layer)
        cache.precompute(model, [(clip.audio, clip.audio) for clip in train_clips])
    alignment_log: list[tuple[float, float]] = []
    behaviour_log: list[tuple[float, float, float]] = []
    evaluation_seconds = 0.0

    def gradients(segment_index: int, step_in_segment: int) -> dict:
        step = step_in_segment + (cfg.steps if segments[segment_index].name == INSTRUCTIONS else 0)
        model.train()
        model.model.audio_tower.eval()
        items, transcripts, clips = [], [], []
        plan = batch_plan(clip_lengths, len(train_texts), cfg, step)
        for (kind, index), task in zip(plan, tasks_of_step(cfg, step, len(plan))):
            instruction, answer = INSTRUCTION_TASKS[task]
            if kind == "speech":
                clip = train_clips[index]
                items.append(ChatItem(instruction, answer(clip.text), audio=load_audio(clip.audio)))
                transcripts.append(clip.text)
                clips.append((clip.audio, items[-1].audio))
            else:
                text = train_texts[index]
                items.append(ChatItem(instruction, answer(text), text=text))
        batch = collator(items)
        audio = None
        if clips:
            if cache is not None:
                audio = cache.batch_frames(model, clips)
            else:
                audio = projected_audio(model, batch["input_features"], batch["feature_attention_mask"])
        inputs = {"inputs_embeds": merge_audio(model, batch["input_ids"], audio),
                  "attention_mask": batch["attention_mask"], "labels": batch["labels"]}
        if audio is not None and (cfg.distill_weight or cfg.hidden_weight or cfg.token_state_weight):
            teacher = collator([ChatItem(item.instruction, item.answer, text=text)
                                for item, text in zip(items, transcripts)])
            text_inputs = {key: teacher[key] for key in ("input_ids", "attention_mask", "labels")}
            after_input = batch["input_ids"] if cfg.behaviour_positions == "after_input" else None
            token_pairs = None
            if cfg.token_state_weight:
                counts = [audio_token_count(int(n)) for n in batch["feature_attention_mask"].sum(-1)]
                token_pairs = input_token_pairs(model, processor, batch["input_ids"], teacher["input_ids"],
                                                list(audio.detach().split(counts)), transcripts, cfg)
            loss, kl, hidden, tokens = behaviour_alignment_losses(model, inputs, text_inputs, after_input, token_pairs)
            loss = loss + cfg.distill_weight * kl + cfg.hidden_weight * hidden + cfg.token_state_weight * tokens
            behaviour_log.append((kl.item(), hidden.item(), tokens.item()))
        else:
            loss = answer_loss(model, inputs)
        aligning = cfg.alignment_start_step is not None and step >= cfg.alignment_start_step
        if aligning and audio is not None:
            counts = [audio_token_count(int(n)) for n in batch["feature_attention_mask"].sum(-1)]
            ctc, norm = alignment_losses(model, processor, list(audio.split(counts)), transcripts, cfg)
            loss = loss + cfg.ctc_weight * ctc + cfg.norm_weight * norm
            alignment_log.append((ctc.item(), norm.item()))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}; the last good checkpoint is kept in "
                                     f"{loop.checkpoint_dir}")
        loss.backward()
        return {"loss": round(loss.item(), 5)}

    def after_step(record: dict) -> None:
        nonlocal evaluation_seconds
        step = record["step"]
        if step % 50 == 0:
            recent = np.mean([h["loss"] for h in loop.history[-50:]])
            log.info("step %d loss %.4f lr %.2e", step, recent, record["lr"])
            if alignment_log:
                ctc_mean, norm_mean = np.mean(alignment_log[-30:], axis=0)
                log.info("step %d alignment: ctc %.3f norm penalty %.3f", step, ctc_mean, norm_mean)
            if behaviour_log:
                kl_mean, hidden_mean, tokens_mean = np.mean(behaviour_log[-30:], axis=0)
                log.info("step %d behaviour alignment: KL %.4f hidden-state error %.4f token-state error %.4f", step,
                         kl_mean, hidden_mean, tokens_mean)
        if step % cfg.eval_every == 0 and step < cfg.total_steps:
            evaluation_started = time.time()
            subset = {lang: clips[: cfg.eval_utterances] for lang, clips in eval_clips.items()}
            record["wer"] = evaluate_wer(model, processor, subset)
            log.info("step %d held-out-voice WER %s", step, record["wer"])
            evaluation_seconds += time.time() - evaluation_started

    training_started = time.time()
    finished = loop.run(segments, gradients, after_step, stop_after_steps=cfg.stop_after_steps)
    training_seconds = time.time() - training_started - evaluation_seconds
    step = loop.position["global_step"]
    if not finished:
        return {"steps_done": step, "finished": False}
    final_wer = evaluate_wer(model, processor, eval_clips)
    log.info("final held-out-voice WER %s", final_wer)
    save_model(model, processor, out_dir)
    summary = {
        "finished": True,
        "steps": cfg.total_steps,
        "wall_time_s_this_session": round(time.time() - started, 1),
        "mean_step_s_this_session": round(training_seconds / max(1, step - first_step), 4),
        "final_wer": final_wer,
        "eval_utterances": {lang: len(c) for lang, c in eval_clips.items()},
        "train_clips": len(train_clips),
        "train_texts": len(train_texts),
        "config": asdict(cfg),
    }
    earlier = model_dir / "pretraining_summary.json"
    if earlier.exists():
        # A continuation: keep the lineage, since this run's config describes only its own stage.
        summary["continued_from"] = json.loads(earlier.read_text())
    (out_dir / "pretraining_summary.json").write_text(json.dumps(summary, indent=2))
    write_model_card(out_dir, summary)
    losses = pd.DataFrame(loop.history)[["step", "loss", "lr"]]
    losses["lr"] = losses["lr"].map("{:.6g}".format)
    losses.to_csv(out_dir / "pretraining_loss.csv", index=False)
    shutil.rmtree(loop.checkpoint_dir, ignore_errors=True)  # the stage's model is written
    return summary
