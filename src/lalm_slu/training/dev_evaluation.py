"""Evaluation on the dev split while a run trains (`training.dev_eval`): on a sample of the dev utterances drawn
with the run's seed, per input (transcripts, speech) the teacher-forced answer loss (summed over processes and
divided by their answer tokens, as the training loss) and the SLU metrics of greedy decoding, parsed and scored
as the test sets are (slu_json.parse_prediction, metrics.score_examples).

Every process evaluates its share of the sample in the same number of batches of the same size (the last share
padded with repeats that count for nothing), and generates with transformers' `synced_gpus`, so the sharded
model's gathers pair up across processes. Results go to the log, TensorBoard and `dev.csv` in the work directory,
whose rows past the step a run resumes from are dropped, as loss.csv's are."""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from lalm_slu.model.batches import ChatItem, Collator
from lalm_slu.evaluation.decode import generate_batch
from lalm_slu.training.distributed import ProcessGroup
from lalm_slu.model.loss import answer_positions
from lalm_slu.evaluation.metrics import METRIC_NAMES, LabelledExample, score_examples
from lalm_slu.model.loading import base_model
from lalm_slu.data.records import DataError, read_manifest
from lalm_slu.config.settings import DevEvalSettings, GenerationSettings, TrainingSettings
from lalm_slu.data.slu_json import format_target, parse_prediction
from lalm_slu.data.audio import load_audio

if TYPE_CHECKING:
    from lalm_slu.training.loop import Segment, TrainingLoop

log = logging.getLogger(__name__)

DEV_CSV = "dev.csv"


def dev_sample(manifests: dict[str, str], max_examples: int, seed: int) -> dict[str, list[dict]]:
    """Per input (text, speech), the same `max_examples` dev utterances (all if fewer), drawn with `seed`, in
    manifest order. The speech manifest must hold every sampled utterance of the text one."""
    frames = {inputs: read_manifest(path) for inputs, path in manifests.items()}
    first = next(iter(manifests))
    ids = frames[first]["id"].astype(str).tolist()
    if len(ids) > max_examples:
        chosen = np.sort(np.random.default_rng(seed).choice(len(ids), size=max_examples, replace=False))
        ids = [ids[i] for i in chosen]
    sample = {}
    for inputs, frame in frames.items():
        by_id = {str(row["id"]): row for row in frame.to_dict("records")}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"the dev {inputs} manifest lacks {len(missing)} sampled utterances of {manifests[first]} "
                            f"(e.g. {missing[:3]})", manifests[inputs])
        sample[inputs] = [by_id[i] for i in ids]
    return sample


class DevEvaluation:
    """Evaluates `root` (train.AnswerLoss, sharded) on a fixed dev sample; `__call__(step)` returns its results."""

    def __init__(self, root, processor, group: ProcessGroup, manifests: dict[str, str], settings: DevEvalSettings,
                 instruction: str, seed: int, work_dir: Path, length_aware: bool):
        self.root, self.processor, self.group, self.settings = root, processor, group, settings
        self.instruction = instruction
        self.csv_path = Path(work_dir) / DEV_CSV
        self.sample = dev_sample(manifests, settings.max_examples, seed)
        self.collator = Collator(processor, length_aware=length_aware)
        self.generation_collator = Collator(processor, length_aware=length_aware, for_generation=True)
        self.generation = GenerationSettings(num_beams=1, batch_size=settings.batch_size, max_batch_tokens=None,
                                             max_new_tokens=settings.max_new_tokens, precision="auto", device="auto")
        # transformers' mark of an FSDP2 model (its apply_fsdp2 sets it): under several processes generate() then
        # keeps stepping until every process is done (synced_gpus), so the sharded layers' gathers pair up.
        base_model(root.model)._is_fsdp_managed_module = True
        log.info("dev evaluation: %d utterances, inputs %s", len(next(iter(self.sample.values()))),
                 list(self.sample))

    def resume(self, last_step: int) -> None:
        """Drop the results of steps after the one training resumes from."""
        if self.group.is_main and self.csv_path.exists():
            table = pd.read_csv(self.csv_path)
            table[table["step"] <= last_step].to_csv(self.csv_path, index=False)

    def __call__(self, step: int) -> dict[str, dict]:
        """Per input: loss, answer tokens, SLU metrics, parse failures, seconds; appended to dev.csv."""
        results = {}
        self.root.eval()
        for inputs, rows in self.sample.items():
            started = time.monotonic()
            with torch.no_grad():
                loss, tokens = self._loss(rows, inputs)
                answers = self._answers(rows, inputs)
            pairs, failures = [], 0
            for row, raw in zip(rows, answers):
                predicted = parse_prediction(raw)
                failures += not predicted.parsed
                pairs.append((LabelledExample.from_entities(row["scenario"], row["action"], row["entities"]),
                              LabelledExample.from_entities(predicted.scenario, predicted.action,
                                                            predicted.entities)))
            scores = score_examples(pairs, bootstrap_resamples=0).values
            results[inputs] = {"examples": len(rows), "loss": round(loss, 6), "answer_tokens": tokens,
                               **{name: round(scores[name], 6) for name in METRIC_NAMES},
                               "parse_failures": failures, "seconds": round(time.monotonic() - started, 2)}
        if self.group.is_main:
            table = pd.DataFrame([{"step": step, "inputs": inputs, **values} for inputs, values in results.items()])
            table.to_csv(self.csv_path, mode="a", header=not self.csv_path.exists(), index=False)
        return results

    def _share(self, rows: list[dict]) -> list[tuple[dict, bool]]:
        """This process's rows and whether each is padding; every process gets as many."""
        rank, world = self.group.rank, self.group.world_size
        per_process = math.ceil(len(rows) / world)
        mine = [(row, False) for row in rows[rank::world]]
        return mine + [(rows[0], True)] * (per_process - len(mine))

    def _items(self, share: list[tuple[dict, bool]], inputs: str, with_answers: bool) -> list[ChatItem]:
        return [
            ChatItem(self.instruction,
                     format_target(row["scenario"], row["action"], list(row["entities"])) if with_answers else None,
                     text=row["text"] if inputs == "text" else None,
                     audio=load_audio(row["audio"]) if inputs == "speech" else None)
            for row, _ in share
        ]

    def _batches(self, share):
        size = self.settings.batch_size
        return [share[start : start + size] for start in range(0, len(share), size)]

    def _loss(self, rows: list[dict], inputs: str) -> tuple[float, int]:
        device = self.group.device
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        for batch_rows in self._batches(self._share(rows)):
            batch = self.collator(self._items(batch_rows, inputs, with_answers=True))
            counted = torch.tensor([not padding for _, padding in batch_rows])
            # A padding row keeps its place in the batch (every process computes the same shapes) but no label.
            batch["labels"][~counted] = -100
            tokens = answer_positions(batch["labels"])[1].numel()
            batch = {key: value.to(device) for key, value in batch.items()}
            loss = self.root(batch, reduction="sum")  # on every process, even with no label: its gathers pair up
            totals += torch.stack([loss.double(), torch.tensor(float(tokens), dtype=torch.float64, device=device)])
        if self.group.world_size > 1:
            dist.all_reduce(totals)
        loss_sum, tokens = totals.tolist()
        return loss_sum / max(tokens, 1.0), int(tokens)

    def _answers(self, rows: list[dict], inputs: str) -> list[str]:
        model = base_model(self.root.model)
        share = self._share(rows)
        answers = []
        self.root.unshard()  # the root's own weights (the final norm); the blocks gather in their forwards
        try:
            for batch_rows in self._batches(share):
                answers += generate_batch(model, self.processor, self.generation_collator,
                                          self._items(batch_rows, inputs, with_answers=False), self.generation)
        finally:
            self.root.reshard()
        mine = [answer for answer, (_, padding) in zip(answers, share) if not padding]
        if self.group.world_size == 1:
            return mine
        gathered: list[list[str]] = [[] for _ in range(self.group.world_size)]
        dist.all_gather_object(gathered, mine)
        # Process r evaluated rows r, r + world, ...: interleave back into sample order.
        order = [None] * len(rows)
        for rank, answers_of_rank in enumerate(gathered):
            order[rank :: self.group.world_size] = answers_of_rank
        return order


def dev_evaluation_hook(root, processor, group: ProcessGroup, training: TrainingSettings, manifests: dict[str, str],
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

