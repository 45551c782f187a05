"""What a training job shows while it runs (rank 0 only): every step's record appended to `loss.csv` in the work
directory (a killed job keeps its curve), every step's scalars in TensorBoard event files beside it, and every
`log_every` steps a log line with loss, learning rate, grad norm, answer tokens/s and ETA.

Both live in the work directory, not in the job's declared output, which Snakemake creates only when the job
succeeds (training.finetune._write_output copies them into the model directory at the end). On resume the CSV is rewritten
from the checkpoint's history (steps past the checkpoint dropped: the file equals the history) and TensorBoard is
told to purge the events after it (`purge_step`)."""

from __future__ import annotations

import csv
import datetime
import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOSS_CSV = "loss.csv"
TENSORBOARD = "tensorboard"
# Per-step scalars of a record, as TensorBoard tags.
STEP_SCALARS = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm"}


class TrainingMetrics:
    """The live view of one run's training, written to `work_dir` by the main process."""

    def __init__(self, work_dir: Path, log_every: int, is_main: bool):
        self.csv_path = Path(work_dir) / LOSS_CSV
        self.tensorboard_dir = Path(work_dir) / TENSORBOARD
        self.log_every, self.is_main = int(log_every), is_main
        self.columns: list[str] | None = None
        self.writer = None
        self.total_steps = 0
        self.interval: dict = {}

    def start(self, history: list[dict], total_steps: int) -> None:
        """Before the first step of a session: the files equal `history` (resumed or continued from)."""
        self.total_steps = total_steps
        self._new_interval()
        if not self.is_main:
            return
        self._rewrite_csv(history)
        from torch.utils.tensorboard import SummaryWriter

        if not history:
            shutil.rmtree(self.tensorboard_dir, ignore_errors=True)  # a run that starts over
        has_events = any(self.tensorboard_dir.glob("events.out.tfevents.*"))
        last = history[-1]["step"] if history else 0
        # A resume hides the events an earlier session wrote past its checkpoint.
        self.writer = SummaryWriter(str(self.tensorboard_dir), purge_step=last + 1 if has_events else None)
        if not has_events:
            for record in history:  # a run continued from another job's checkpoint: that job's steps
                self._add_scalars(record)
            self.writer.flush()

    def add(self, record: dict, phase: str) -> None:
        """A step's complete record (after its grad norm is read)."""
        self.interval["steps"] += 1
        self.interval["answer_tokens"] += record.get("answer_tokens", 0)
        if not self.is_main:
            return
        self._append_csv(record)
        self._add_scalars(record)
        if record["step"] % self.log_every == 0 or record["step"] == self.total_steps:
            self._log_interval(record, phase)

    def add_dev(self, step: int, results: dict[str, dict]) -> None:
        """A dev evaluation's results per input (dev_evaluation.DevEvaluation); its time is not training's."""
        self.interval["started"] += sum(values["seconds"] for values in results.values())
        if not self.is_main:
            return
        for inputs, values in results.items():
            for name in ("loss", "intent_accuracy", "slu_f1"):
                self.writer.add_scalar(f"dev_{inputs}/{name}", values[name], step)
            log.info("step %d dev (%s, %d utterances): loss %.4f intent accuracy %.4f SLU-F1 %.4f, %d unparsed, "
                     "%.0f s", step, inputs, values["examples"], values["loss"], values["intent_accuracy"],
                     values["slu_f1"], values["parse_failures"], values["seconds"])
        self.writer.flush()

    def flush(self) -> None:
        """Events on disk, as a checkpoint is taken: a resume never misses the steps before it."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _new_interval(self) -> None:
        self.interval = {"started": time.monotonic(), "steps": 0, "answer_tokens": 0}

    def _log_interval(self, record: dict, phase: str) -> None:
        seconds = max(time.monotonic() - self.interval["started"], 1e-9)
        step = record["step"]
        eta = datetime.timedelta(seconds=round(seconds / self.interval["steps"] * (self.total_steps - step)))
        where = f"{phase}" + (f" epoch {record['epoch']}" if "epoch" in record else "")
        tokens = ""
        if self.interval["answer_tokens"]:
            rate = self.interval["answer_tokens"] / seconds
            tokens = f" answer tokens/s {rate:.0f}"
            self.writer.add_scalar("train/answer_tokens_per_s", rate, step)
        self.writer.add_scalar("train/seconds_per_step", seconds / self.interval["steps"], step)
        log.info("step %d/%d %s loss %.4f lr %.3e grad norm %.3f%s ETA %s", step, self.total_steps, where,
                 record["loss"], record["lr"], record.get("grad_norm", float("nan")), tokens, eta)
        self._new_interval()

    def _add_scalars(self, record: dict) -> None:
        for key, tag in STEP_SCALARS.items():
            if key in record:
                self.writer.add_scalar(tag, record[key], record["step"])

    def _rewrite_csv(self, history: list[dict]) -> None:
        self.columns = None
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.csv_path.with_suffix(".csv.tmp")
        tmp.unlink(missing_ok=True)
        for record in history:
            self._append_csv(record, tmp)
        if history:
            tmp.replace(self.csv_path)
        else:
            self.csv_path.unlink(missing_ok=True)

    def _append_csv(self, record: dict, path: Path | None = None) -> None:
        path = path or self.csv_path
        if self.columns is not None and list(record) != self.columns:
            raise ValueError(f"{path}: a step's record has columns {list(record)}, the earlier ones {self.columns}")
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(record))
            if self.columns is None:
                writer.writeheader()
                self.columns = list(record)
            writer.writerow(record)
