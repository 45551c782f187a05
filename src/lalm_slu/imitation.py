"""Behaviour imitation's targets: what the phase-1 (text-only) model answers when it *reads* a transcript.

For every utterance of the paired-speech pool and every configured task (an instruction: the SLU instruction,
transcribe, quote, ...), the phase-1 model's text path answers from the transcript alone. Phase 2 then trains the
speech of the same utterance to give those answers (MTBI's "equivalent responses to paired speech and text",
BLSP's "the LLM's own response to the transcript"). Only `id`, `lang` and `text` of the manifests are read: a
speech item's SLU label never reaches its target. Each task names the model that answers it (`model`): "phase1"
(the text-only SLU fine-tune) or "base" (the model before SLU fine-tuning, whose transcript-level skills the
SLU fine-tune has overwritten); both read the transcript as text.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from lalm_slu.batches import ChatItem
from lalm_slu.decode import answers_longest_first
from lalm_slu.model_loading import device_and_dtype, load_model_and_processor
from lalm_slu.outputs import atomic_output
from lalm_slu.records import DataError, read_manifest

log = logging.getLogger(__name__)

TARGET_COLUMNS = ("id", "lang", "manifest", "task", "instruction", "target")
# The only manifest columns imitation reads.
TRANSCRIPT_COLUMNS = ("id", "lang", "text")
# Which model answers a task: the phase-1 SLU fine-tune (default) or the base model before SLU fine-tuning.
ANSWERING_MODELS = ("phase1", "base")


def pool_transcripts(manifest_path: str, ids: list[str]) -> pd.DataFrame:
    """The transcripts of the pool's utterances (id, lang, text, manifest), in pool order; labels are dropped."""
    manifest = read_manifest(manifest_path)[list(TRANSCRIPT_COLUMNS)].set_index("id", drop=False)
    unknown = [uid for uid in ids if uid not in manifest.index]
    if unknown:
        raise DataError(f"{len(unknown)} pool ids are not in the manifest (first: {unknown[0]!r})", manifest_path)
    pool = manifest.loc[list(ids)].reset_index(drop=True)
    return pool.assign(manifest=str(manifest_path))


def answer_transcripts(model, processor, transcripts: list[str], instruction: str, settings: dict) -> list[str]:
    """The model's answers to `instruction` for each transcript, read as text (the text path), in order."""

    def batch(indices):
        return [ChatItem(instruction, text=transcripts[i]) for i in indices], None

    return answers_longest_first(model, processor, [len(t) for t in transcripts], batch, settings, "imitate")


def imitation_targets(model, processor, pool: pd.DataFrame, tasks: list[dict], settings: dict) -> pd.DataFrame:
    """One row per pool utterance × task (TARGET_COLUMNS). `tasks`: [{"task": name, "instruction": text}]."""
    frames = []
    for task in tasks:
        answers = answer_transcripts(model, processor, list(pool["text"]), task["instruction"], settings)
        frames.append(pool[["id", "lang", "manifest"]].assign(task=task["task"], instruction=task["instruction"],
                                                              target=answers))
    targets = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(TARGET_COLUMNS))
    return targets[list(TARGET_COLUMNS)]


def task_models(tasks: list[dict]) -> list[str]:
    """The answering models the tasks name, in ANSWERING_MODELS order; an unknown one is an error."""
    named = {task.get("model", "phase1") for task in tasks}
    unknown = named - set(ANSWERING_MODELS)
    if unknown:
        raise ValueError(f"imitation tasks name unknown models {sorted(unknown)}; choose from {ANSWERING_MODELS}")
    return [name for name in ANSWERING_MODELS if name in named]


def write_imitation_targets(model_dirs: dict[str, str], pools: list[tuple[str, list[str]]], tasks: list[dict],
                            settings: dict, out_path: str) -> dict:
    """Targets for every (manifest, ids) pool to a parquet file; `model_dirs`: answering model -> its directory."""
    started = time.time()
    if not tasks:
        raise ValueError("behaviour imitation needs at least one task")
    device, dtype = device_and_dtype(settings)
    pool = pd.concat([pool_transcripts(path, ids) for path, ids in pools], ignore_index=True)
    frames = []
    for name in task_models(tasks):
        if name not in model_dirs:
            raise ValueError(f"imitation tasks need the {name!r} model; none given")
        model, processor = load_model_and_processor(model_dirs[name], dtype=dtype, device=device)
        own = [task for task in tasks if task.get("model", "phase1") == name]
        frames.append(imitation_targets(model, processor, pool, own, settings))
        del model, processor  # one model in memory at a time
    order = {task["task"]: rank for rank, task in enumerate(tasks)}
    targets = pd.concat(frames, ignore_index=True)
    targets = targets.sort_values("task", key=lambda tasks_: tasks_.map(order), kind="stable").reset_index(drop=True)
    with atomic_output(out_path) as tmp:
        targets.to_parquet(tmp, index=False)
    summary = {"utterances": len(pool), "tasks": [t["task"] for t in tasks], "targets": len(targets),
               "models": {t["task"]: t.get("model", "phase1") for t in tasks},
               "empty_targets": int((targets["target"].str.strip() == "").sum()),
               "wall_time_s": round(time.time() - started, 2)}
    log.info("imitation targets from %s: %s", model_dirs, summary)
    return summary
