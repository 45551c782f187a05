"""The one training loop, shared by fine-tuning (training/finetune.py) and the demo model's pretraining
(demo_model/pretrain.py): optimizer steps over schedule segments, each with a linear warm-up and cosine decay,
gradient clipping, and checkpoints (lalm_slu.training.distributed: sharded, fingerprinted, atomic, written in the background)
from which a killed job resumes exactly. What a step trains on is the caller's: a `gradients(segment, step)`
function that accumulates one optimizer step's gradients and returns what to record of it; the loop adds the step,
learning rate and grad norm, and hands each complete record to `metrics` (training_metrics: log, loss.csv,
TensorBoard).

A checkpoint is taken every `checkpoint_every` steps and, if set, every `checkpoint_every_minutes` of wall time
(rank 0's clock decides for all). Near the job's time limit (`stop_at`, from `slurm_time_left_s`) or on SIGUSR1
(`scancel --signal=USR1`, a preemption notice) the loop checkpoints at the next step boundary, waits until the
checkpoint is complete, and exits with status EXIT_RESUBMIT (75, EX_TEMPFAIL): the job failed, a retry resumes
it. Slurm's own `--signal=USR1@<s>` is not used: it also reaches the Snakemake process and the torchrun agent of
the job step, whose default action on SIGUSR1 is to exit, killing the training processes mid-checkpoint."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from lalm_slu.config.settings import TrainingSettings
from lalm_slu.training.checkpoints import PendingCheckpoint, resume_checkpoint, save_checkpoint
from lalm_slu.training.distributed import ProcessGroup
from lalm_slu.core.stages import STAGES
from lalm_slu.training.step_log import TrainingMetrics

log = logging.getLogger(__name__)

STOP_SIGNAL = signal.SIGUSR1
EXIT_RESUBMIT = 75


def slurm_time_left_s() -> float | None:
    """Seconds until this Slurm job's time limit (`squeue -o %L`), None outside Slurm, without a limit, or when
    squeue cannot tell."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        left = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True,
                              timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        log.warning("squeue could not tell job %s's time left: no stop before its time limit", job)
        return None
    return parse_slurm_duration(left)


def parse_slurm_duration(text: str) -> float | None:
    """Seconds of a Slurm duration ([days-]hours:minutes:seconds, minutes:seconds); None for UNLIMITED/NOT_SET."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


class StoppedForResubmission(SystemExit):
    """Raised once the checkpoint asked for by STOP_SIGNAL is complete: the process exits with EXIT_RESUBMIT."""

    def __init__(self):
        super().__init__(EXIT_RESUBMIT)


@dataclass(frozen=True)
class Segment:
    """A stretch of optimizer steps under one learning-rate schedule: linear warm-up to `learning_rate`, then
    cosine decay to `min_lr_ratio` of it (0: transformers' get_cosine_schedule_with_warmup)."""

    name: str
    steps: int
    learning_rate: float
    warmup_steps: int
    min_lr_ratio: float = 0.0

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        # With no floor this is bit for bit peak × 0.5 × (1 + cos) (halving is exact), as fine-tuning had it.
        return self.learning_rate * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """A warm-up given as a fraction of the segment's steps, as the paper gives it."""
    return int(math.ceil(total_steps * warmup_ratio))


class TrainingLoop:
    """Optimizer steps over `segments`, with the position (segment, step in it, global step) and the per-step
    history saved in every checkpoint. A checkpoint is resumed only if written under the same `fingerprint`
    (settings, data, base weights and code); `made_for` is stored beside it for jobs that continue from it."""

    def __init__(self, root: torch.nn.Module, optimizer: torch.optim.Optimizer, group: ProcessGroup,
                 checkpoint_dir: Path, fingerprint: str, max_grad_norm: float, checkpoint_every: int,
                 made_for: dict | None = None, checkpoint_every_minutes: float | None = None,
                 stop_at: float | None = None, metrics: TrainingMetrics | None = None):
        """`stop_at`: a `time.monotonic()` time (rank 0's) at which to checkpoint and stop for a resubmission.
        `metrics`: where each step's record goes as it completes (log, loss.csv, TensorBoard)."""
        self.root, self.optimizer, self.group = root, optimizer, group
        self.params = [p for param_group in optimizer.param_groups for p in param_group["params"]]
        self.checkpoint_dir = Path(checkpoint_dir)
        self.fingerprint, self.made_for = fingerprint, made_for
        self.max_grad_norm, self.checkpoint_every = float(max_grad_norm), int(checkpoint_every)
        self.checkpoint_every_minutes = checkpoint_every_minutes
        self.position = {"segment": 0, "step": 0, "global_step": 0}
        self.history: list[dict] = []
        self.pending: PendingCheckpoint | None = None
        self.last_checkpoint_time = time.monotonic()
        self.stop_requested = False
        self.stop_at = stop_at
        self.metrics = metrics
        # The last step's record, its grad norm still on the device, and its segment's name.
        self.unfinished: tuple[dict, torch.Tensor, str] | None = None

    def resume(self) -> bool:
        """Load this run's newest sound checkpoint, if any (see checkpoints.resume_checkpoint)."""
        with STAGES.stage("checkpoints"):
            state = resume_checkpoint(self.checkpoint_dir, self.root, self.optimizer, self.fingerprint, self.group)
        if state is None:
            return False
        self.restore(state)
        return True

    def restore(self, state: dict) -> None:
        self.position, self.history = state["position"], state["history"]
        log.info("at %s", self.position)

    def checkpoint(self, wait: bool = False) -> Path:
        """Checkpoint the current position, in the background (after the previous one is complete); `wait`: until
        this one is complete too. Returns where it is (or will be)."""
        self.finish_step()
        if self.metrics is not None:
            self.metrics.flush()
        state = {"fingerprint": self.fingerprint, "position": self.position, "history": self.history,
                 "made_for": self.made_for}
        with STAGES.stage("checkpoints"):
            self.complete_checkpoint()
            self.pending = save_checkpoint(self.checkpoint_dir, self.position["global_step"], self.root,
                                           self.optimizer, state, self.group)
            self.last_checkpoint_time = time.monotonic()
            final = self.pending.final
            if wait:
                self.complete_checkpoint()
        return final

    def finish_step(self) -> None:
        """Record the last step's grad norm and pass its record on. Called after the next step's gradients, for
        which the host has already waited for the device (it has passed this norm), so it adds no wait; only at a
        checkpoint or the end of a session it waits for the optimizer step."""
        if self.unfinished is None:
            return
        record, grad_norm, segment_name = self.unfinished
        self.unfinished = None
        record["grad_norm"] = round(grad_norm.item(), 6)
        if self.metrics is not None:
            self.metrics.add(record, segment_name)

    def complete_checkpoint(self) -> None:
        """Wait for the checkpoint being written, if any, and put it in place."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            with STAGES.stage("checkpoints"):
                pending.complete()

    def _checkpoint_due(self, global_step: int) -> tuple[bool, bool]:
        """(checkpoint now, then stop), the same on every process: the step interval, rank 0's clock, and a stop
        signal received by any process."""
        elapsed = time.monotonic() - self.last_checkpoint_time
        timed = self.checkpoint_every_minutes is not None and elapsed >= 60 * self.checkpoint_every_minutes
        out_of_time = self.stop_at is not None and time.monotonic() >= self.stop_at
        if out_of_time and self.group.is_main and not self.stop_requested:
            log.warning("the job's time limit is near: checkpointing at the end of this step, then stopping")
        timed, stop = self.group.any_of(timed and self.group.is_main,
                                        self.stop_requested or (out_of_time and self.group.is_main))
        return global_step % self.checkpoint_every == 0 or timed or stop, stop

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True
        log.warning("got signal %d: checkpointing at the end of this step, then stopping", signum)

    def run(self, segments: list[Segment], gradients: Callable[[int, int], dict],
            after_step: Callable[[dict], None] | None = None, stop_after_steps: int | None = None) -> bool:
        """Train from the current position to the end of `segments` (True), or for `stop_after_steps` steps of
        this session (False; checkpointed, a re-run continues). `gradients(segment_index, step)` leaves one
        optimizer step's gradients on the parameters and returns the step's record (loss and the like);
        `after_step(record)` may add to the record (an evaluation) before it is checkpointed. Returns (or raises)
        only once every checkpoint it started is complete; STOP_SIGNAL raises StoppedForResubmission."""
        handles_signal = threading.current_thread() is threading.main_thread()
        previous = signal.signal(STOP_SIGNAL, self._request_stop) if handles_signal else None
        self.last_checkpoint_time = time.monotonic()
        if self.metrics is not None:
            self.metrics.start(self.history, sum(segment.steps for segment in segments))
        try:
            return self._run(segments, gradients, after_step, stop_after_steps)
        finally:
            self.finish_step()
            if self.metrics is not None:
                self.metrics.close()
            self.complete_checkpoint()  # also when a step failed: that checkpoint is sound
            if handles_signal:
                signal.signal(STOP_SIGNAL, previous)

    def _run(self, segments, gradients, after_step, stop_after_steps) -> bool:
        session_steps = 0
        for index, segment in enumerate(segments):
            if index < self.position["segment"]:
                continue
            first = self.position["step"] if index == self.position["segment"] else 0
            # With metrics, a job log (not a terminal) gets their step lines only, not a bar run into them.
            progress = tqdm(total=segment.steps, initial=first, desc=segment.name, mininterval=20,
                            disable=not self.group.is_main or (None if self.metrics is not None else False))
            for step in range(first, segment.steps):
                self.optimizer.zero_grad(set_to_none=True)
                record = gradients(index, step)
                self.finish_step()
                lr = segment.lr_at(step)
                with STAGES.stage("steps"):
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
                    if isinstance(grad_norm, DTensor):  # sharded gradients: every process gets the total now
                        grad_norm = grad_norm.full_tensor()
                    for param_group in self.optimizer.param_groups:
                        param_group["lr"] = lr
                    self.optimizer.step()
                global_step = self.position["global_step"] + 1
                self.position = {"segment": index, "step": step + 1, "global_step": global_step}
                self.history.append({"step": global_step, **record, "lr": lr})
                self.unfinished = (self.history[-1], grad_norm.detach(), segment.name)
                progress.update(1)
                if after_step is not None:
                    after_step(self.history[-1])
                session_steps += 1
                if self.pending is not None and self.pending.written():
                    self.complete_checkpoint()
                stopping = stop_after_steps is not None and session_steps >= stop_after_steps
                due, signalled = self._checkpoint_due(global_step)
                if due or stopping:
                    self.checkpoint(wait=signalled)
                if signalled:
                    progress.close()
                    log.warning("checkpoint at step %d complete; exiting with status %d for a resubmission",
                                global_step, EXIT_RESUBMIT)
                    raise StoppedForResubmission()
                if stopping and (step + 1 < segment.steps or index + 1 < len(segments)):
                    progress.close()
                    log.info("stopped after step %d as asked; a re-run continues", global_step)
                    return False
            progress.close()
            self.position = {"segment": index + 1, "step": 0, "global_step": self.position["global_step"]}
            if index + 1 < len(segments):  # after the last, the caller writes its output at once
                self.checkpoint()
        return True


def stop_before_time_limit(training: TrainingSettings) -> float | None:
    """When (time.monotonic()) to checkpoint and stop for a resubmission: `time_limit_margin_minutes` before
    the Slurm job's time limit, None outside Slurm."""
    left = slurm_time_left_s()
    if left is None:
        return None
    log.info("Slurm time left: %.0f min; stopping for a resubmission %.0f min before", left / 60,
             training.time_limit_margin_minutes)
    return time.monotonic() + left - 60 * training.time_limit_margin_minutes

