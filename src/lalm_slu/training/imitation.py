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
from collections.abc import Mapping

import pandas as pd

from lalm_slu.model.batches import ChatItem, token_counts
from lalm_slu.evaluation.decode import answers_longest_first
from lalm_slu.model.loading import device_and_dtype, load_model_and_processor
from lalm_slu.core.outputs import atomic_output
from lalm_slu.data.budgets import read_budget_ids
from lalm_slu.data.records import DataError, read_manifest
from lalm_slu.config.settings import GenerationSettings, ImitationTask, SettingsError

log = logging.getLogger(__name__)

TARGET_COLUMNS = ("id", "lang", "manifest", "task", "instruction", "target")
# The only manifest columns imitation reads.
TRANSCRIPT_COLUMNS = ("id", "lang", "text")
# The order in which the answering models are loaded (ImitationTask.model; the schema names them).
ANSWERING_MODELS = ("phase1", "base")


def pool_transcripts(manifest_path: str, ids: list[str]) -> pd.DataFrame:
    """The transcripts of the pool's utterances (id, lang, text, manifest), in pool order; labels are dropped."""
    manifest = read_manifest(manifest_path)[list(TRANSCRIPT_COLUMNS)].set_index("id", drop=False)
    unknown = [uid for uid in ids if uid not in manifest.index]
    if unknown:
        raise DataError(f"{len(unknown)} pool ids are not in the manifest (first: {unknown[0]!r})", manifest_path)
    pool = manifest.loc[list(ids)].reset_index(drop=True)
    return pool.assign(manifest=str(manifest_path))


def answer_transcripts(model, processor, transcripts: list[str], instruction: str,
                       settings: GenerationSettings) -> list[str]:
    """The model's answers to `instruction` for each transcript, read as text (the text path), in order."""

    prompts = [ChatItem(instruction, text=text) for text in transcripts]

    def batch(indices):
        return [prompts[i] for i in indices], None

    lengths = token_counts(processor, prompts, [None] * len(prompts))
    return answers_longest_first(model, processor, lengths, batch, settings, "imitate")


def imitation_targets(model, processor, pool: pd.DataFrame, tasks: list[ImitationTask],
                      settings: GenerationSettings) -> pd.DataFrame:
    """One row per pool utterance × task (TARGET_COLUMNS)."""
    frames = []
    for task in tasks:
        answers = answer_transcripts(model, processor, list(pool["text"]), task.instruction, settings)
        frames.append(pool[["id", "lang", "manifest"]].assign(task=task.task, instruction=task.instruction,
                                                              target=answers))
    targets = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(TARGET_COLUMNS))
    return targets[list(TARGET_COLUMNS)]


def read_imitation_targets(path: str) -> pd.DataFrame:
    """An imitation targets file (TARGET_COLUMNS, at least one row); else a DataError naming it."""
    try:
        targets = pd.read_parquet(path)
    except FileNotFoundError:
        raise DataError("imitation targets file not found", path) from None
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"not a parquet file of imitation targets ({error})", path) from None
    missing = [column for column in TARGET_COLUMNS if column not in targets]
    if missing:
        raise DataError(f"not an imitation targets file (imitation-targets'): missing columns {missing}", path)
    if targets.empty:
        raise DataError("imitation targets file holds no targets", path)
    return targets


def task_models(tasks: list[ImitationTask]) -> list[str]:
    """The answering models the tasks name, in ANSWERING_MODELS order."""
    named = {task.model for task in tasks}
    return [name for name in ANSWERING_MODELS if name in named]


def read_paired_speech_pool(pool_files: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(manifest, ids file) pairs -> (manifest, ids); an empty pool is an error: nothing to imitate makes no
    targets file, not an empty one."""
    pools = [(manifest, read_budget_ids(ids)) for manifest, ids in pool_files]
    if not any(ids for _, ids in pools):
        raise DataError("the paired-speech pool is empty (no ids in " + ", ".join(ids for _, ids in pool_files) + ")")
    return pools


def write_imitation_targets(model_dirs: dict[str, str], pools: list[tuple[str, list[str]]], tasks: list[Mapping],
                            settings: Mapping, out_path: str) -> dict:
    """Targets for every (manifest, ids) pool to a parquet file; `model_dirs`: answering model -> its directory.
    `tasks` and `settings`: the job's --tasks and --settings JSON (ImitationTask, GenerationSettings)."""
    started = time.time()
    if not tasks:
        raise ValueError("behaviour imitation needs at least one task")
    typed_tasks = [ImitationTask.from_dict(task, f"imitation-targets --tasks[{index}]")
                   for index, task in enumerate(tasks)]
    names = [task.task for task in typed_tasks]
    if len(set(names)) != len(names):
        raise SettingsError(f"imitation-targets --tasks: task names {names} repeat one (a name names its targets)")
    generation = GenerationSettings.from_dict(settings, "imitation-targets --settings")
    device, dtype = device_and_dtype(generation)
    pool = pd.concat([pool_transcripts(path, ids) for path, ids in pools], ignore_index=True)
    frames = []
    for name in task_models(typed_tasks):
        if name not in model_dirs:
            raise ValueError(f"imitation tasks need the {name!r} model; none given")
        model, processor = load_model_and_processor(model_dirs[name], dtype=dtype, device=device)
        own = [task for task in typed_tasks if task.model == name]
        frames.append(imitation_targets(model, processor, pool, own, generation))
        del model, processor  # one model in memory at a time
    order = {task.task: rank for rank, task in enumerate(typed_tasks)}
    targets = pd.concat(frames, ignore_index=True)
    targets = targets.sort_values("task", key=lambda tasks_: tasks_.map(order), kind="stable").reset_index(drop=True)
    with atomic_output(out_path) as tmp:
        targets.to_parquet(tmp, index=False)
    summary = {"utterances": len(pool), "tasks": [t.task for t in typed_tasks], "targets": len(targets),
               "models": {t.task: t.model for t in typed_tasks},
               "empty_targets": int((targets["target"].str.strip() == "").sum()),
               "wall_time_s": round(time.time() - started, 2)}
    log.info("imitation targets from %s: %s", model_dirs, summary)
    return summary
