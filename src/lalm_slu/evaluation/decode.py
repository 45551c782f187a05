"""Batched, deterministic decoding of a test manifest (speech or text input) into a predictions jsonl.

Batches formed longest first (prompt tokens, audio tokens counted from the clip's duration) up to a token
budget sized for the card (lalm_slu.evaluation.decode_batches) and `batch_size` prompts; clips padded to the batch's
longest, never to 30 s; left padding for generation; beam search from config. Every gold utterance gets
exactly one output line, in manifest order; unparseable output is kept with parsed=false and scores as wrong.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

import numpy as np
import torch
from tqdm import tqdm

from lalm_slu.model.audio_encoding import prompt_embeddings
from lalm_slu.model.audio_frames import FrameStore, load_frames
from lalm_slu.model.batches import ChatItem, Collator, token_counts
from lalm_slu.evaluation.decode_batches import decode_batch_tokens, longest_first_batches
from lalm_slu.model.memory_plan import GIB
from lalm_slu.model.loading import device_and_dtype, load_model_and_processor
from lalm_slu.core.outputs import atomic_output
from lalm_slu.data.records import read_manifest
from lalm_slu.config.settings import DecodingSettings, GenerationSettings
from lalm_slu.config.vocabulary import TEST_INPUTS
from lalm_slu.data.slu_json import parse_prediction
from lalm_slu.data.audio import load_audio
from lalm_slu.core.stages import STAGES

log = logging.getLogger(__name__)


def generate_batch(model, processor, collator: Collator, items: list[ChatItem], settings: GenerationSettings,
                   audio: torch.Tensor | None = None) -> list[str]:
    """Answers to `items`; `audio`: their clips' frames already computed (concatenated in order), if any."""
    batch = {k: v.to(model.device) for k, v in collator(items).items()}
    beams = settings.num_beams
    with torch.no_grad():
        embeddings = prompt_embeddings(model, batch, audio)
        cache = prompt_cache(model, embeddings, batch["attention_mask"], beams)
        # generate() continues from the cache: it runs only the last prompt position, then the beams. The output
        # holds only new tokens.
        generated = model.generate(
            inputs_embeds=embeddings,
            attention_mask=batch["attention_mask"],
            past_key_values=cache,
            max_new_tokens=settings.max_new_tokens,
            num_beams=beams,
            do_sample=False,
            length_penalty=1.0,
            early_stopping=beams > 1,
        )
    return [t.strip() for t in processor.tokenizer.batch_decode(generated, skip_special_tokens=True)]


def batch_token_budget(model, settings: GenerationSettings) -> int | None:
    """`settings.max_batch_tokens`; unset, what fits the GPU's memory (decode_batches.decode_batch_tokens), and on
    CPU no budget (`batch_size` alone)."""
    if settings.max_batch_tokens is not None:
        if settings.max_batch_tokens < 1:
            raise ValueError(f"decode settings: max_batch_tokens must be at least 1, not {settings.max_batch_tokens}")
        return settings.max_batch_tokens
    if model.device.type != "cuda":
        return None
    card_gib = torch.cuda.get_device_properties(model.device).total_memory / GIB
    return decode_batch_tokens(model.config.to_dict(), card_gib, settings.num_beams, settings.max_new_tokens,
                               model.dtype.itemsize)


def answers_longest_first(model, processor, prompt_tokens: list[int], make_batch, settings: GenerationSettings,
                          desc: str) -> list[str]:
    """Raw answers for items 0..n-1 with `prompt_tokens[i]` prompt tokens each (batches.token_counts), generated in
    batches longest first (the first batch shows at once whether memory suffices) up to the token budget and
    `settings.batch_size`, returned in item order. `make_batch(indices)` gives the batch's ChatItems and its
    precomputed audio frames (or None)."""
    budget = batch_token_budget(model, settings)
    batches = longest_first_batches(prompt_tokens, settings.batch_size, budget, settings.num_beams,
                                    settings.max_new_tokens)
    log.info("%s: %d items in %d batches (token budget %s, at most %d prompts)", desc, len(prompt_tokens),
             len(batches), budget, settings.batch_size)
    collator = Collator(processor, for_generation=True)
    model.eval()
    raw: dict[int, str] = {}
    for indices in tqdm(batches, desc=desc, mininterval=20):
        with STAGES.stage("data"):
            items, audio = make_batch(indices)
        with STAGES.stage("decoding"):  # collation (tokenization, features) included
            raw.update(zip(indices, generate_batch(model, processor, collator, items, settings, audio)))
    return [raw[i] for i in range(len(prompt_tokens))]


def prompt_cache(model, embeddings: torch.Tensor, attention_mask: torch.Tensor, beams: int):
    """The key/value cache of every prompt position but the last, computed once per utterance and copied to its
    beams. generate() on its own copies each prompt to every beam first and computes it num_beams times."""
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    cache = model(
        inputs_embeds=embeddings[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, :-1],
        use_cache=True,
        logits_to_keep=1,
    ).past_key_values
    if beams > 1:
        cache.batch_repeat_interleave(beams)
    return cache


def decode_manifest(model, processor, manifest, modality: str, settings: GenerationSettings,
                    instruction: str, frames: FrameStore | None = None) -> list[dict]:
    """Predictions for every row of `manifest` (a DataFrame), in its order. `frames`: the clips' precomputed
    frames (speech only), valid for this model's audio tower and projector."""
    if modality not in TEST_INPUTS:
        raise ValueError(f"modality must be one of {TEST_INPUTS}, not {modality!r}")
    if frames is not None and modality != "speech":
        raise ValueError("precomputed audio frames are for speech input only")
    rows = manifest.to_dict("records")
    if modality == "speech":
        missing = [r["id"] for r in rows if not r["audio"]]
        if missing:
            raise ValueError(f"{len(missing)} utterances have no audio (e.g. {missing[:3]}); synthesize or ingest first")
    no_audio = np.zeros(0, dtype=np.float32)
    prompts = [
        ChatItem(instruction, audio=no_audio) if modality == "speech" else ChatItem(instruction, text=row["text"])
        for row in rows
    ]
    lengths = token_counts(processor, prompts, [row.get("duration_s") or 0.0 for row in rows])

    def batch(indices):
        if modality != "speech":
            return [prompts[i] for i in indices], None
        items = [ChatItem(instruction, audio=load_audio(rows[i]["audio"])) for i in indices]
        return items, None if frames is None else torch.cat([frames[rows[i]["audio"]] for i in indices])

    raw = answers_longest_first(model, processor, lengths, batch, settings, f"decode {modality}")
    predictions = []
    for i, row in enumerate(rows):
        parsed = parse_prediction(raw[i])
        predictions.append({"id": row["id"], "raw": raw[i], **parsed.to_dict()})
    return predictions


def decode(model_dir: str, inputs: list[tuple[str, str, str]], settings: Mapping,
           audio_frames: str | None = None) -> dict:
    """Decode each (modality, manifest, predictions jsonl) of `inputs` with one loaded model: a run's test set is
    decoded from speech, text and the cascade's transcripts in one process, which starts and loads the model once.
    `audio_frames`: a file of the speech manifest's precomputed frames (audio_frames.encode_manifest); it must come
    from this model's audio tower and projector, as it does when fine-tuning froze them."""
    decoding = DecodingSettings.from_dict(settings, "decode settings")
    modalities = [modality for modality, _, _ in inputs]
    for modality in modalities:
        if modality not in TEST_INPUTS:
            raise ValueError(f"modality must be one of {TEST_INPUTS}, not {modality!r}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"each modality is decoded once, not {modalities}")
    if audio_frames is not None and "speech" not in modalities:
        raise ValueError("precomputed audio frames are for speech input only")
    device, dtype = device_and_dtype(decoding)
    with STAGES.stage("model_load"):
        model, processor = load_model_and_processor(model_dir, dtype=dtype, device=device)
    with STAGES.stage("data"):
        frames = None if audio_frames is None else load_frames(audio_frames, model)
    summaries = {}
    for modality, manifest_path, out_path in inputs:
        started = time.time()
        with STAGES.stage("data"):
            manifest = read_manifest(manifest_path)
        predictions = decode_manifest(model, processor, manifest, modality, decoding, decoding.instruction,
                                      frames if modality == "speech" else None)
        with atomic_output(out_path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            for prediction in predictions:
                handle.write(json.dumps(prediction, ensure_ascii=False) + "\n")
        failures = sum(not p["parsed"] for p in predictions)
        summaries[modality] = {
            "utterances": len(predictions),
            "parse_failures": failures,
            "parse_failure_rate": round(failures / max(1, len(predictions)), 4),
            "wall_time_s": round(time.time() - started, 2),
        }
        log.info("decoded %s (%s): %s", manifest_path, modality, summaries[modality])
    return summaries
