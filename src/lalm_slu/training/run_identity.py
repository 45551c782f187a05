"""What a fine-tuning run is, so that a checkpoint is resumed only by the run it was made for: the base model's
identity, the run's fingerprint (mixture, settings, model, code), and the identity of its first phases, which a
run continuing from another job's checkpoint (`--start-from`) checks before loading it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pandas as pd

from lalm_slu.core.code_version import code_version
from lalm_slu.training.checkpoints import checkpoint_state, load_checkpoint
from lalm_slu.training.distributed import ProcessGroup

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"



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


# Training settings that change how a job runs, not what it computes: a checkpoint written under other values
# is resumed (a resubmitted job may checkpoint more often, or take more workers).
HOW_IT_RUNS = ("checkpoint_every_steps", "log_every_steps", "dev_eval", "checkpoint_every_minutes",
               "time_limit_margin_minutes", "collective_timeout_minutes", "data_workers", "keep_checkpoint")


def trained_by(settings: dict) -> dict:
    """`settings` without the training keys of HOW_IT_RUNS."""
    training = {key: value for key, value in settings["training"].items() if key not in HOW_IT_RUNS}
    return {**settings, "training": training}


def fingerprint(mixture_path, settings: dict, code: str | None = None) -> str:
    """Identifies a run: a checkpoint of another mixture, settings, base model weights (e.g. a re-pretrained demo
    model at the same path) or code is never resumed. `code`: the hash the workflow gives the fine-tuning job
    (code_version), so any edit that re-runs the job also retrains it."""
    digest = hashlib.sha256(Path(mixture_path).read_bytes())
    digest.update(json.dumps(trained_by(settings), sort_keys=True).encode())
    digest.update(model_identity(str(settings["model"]["path"])).encode())
    digest.update((code or code_version("finetune_model")).encode())
    return digest.hexdigest()[:16]


def prefix_identity(mixture_path, settings: dict, phases: int) -> dict:
    """What training a run's first `phases` phases depends on, and nothing else: another run with the same identity
    for them would reach the same weights, optimizer state and RNG at their end, whatever its later phases."""
    scheme = settings["scheme"]
    numbers = [int(phase["phase"]) for phase in scheme["phases"][:phases]]
    mixture = pd.read_parquet(mixture_path)
    # Every column a row has (a scheme's own target, instruction or span too); a column empty in these rows
    # may be absent from another mixture.
    rows = mixture[mixture["phase"].isin(numbers)].dropna(axis=1, how="all")
    rows = rows[sorted(rows.columns)]
    return {
        "base_model": model_identity(str(settings["model"]["path"])),
        "model": settings["model"],
        "training": trained_by(settings)["training"],
        "trainable_modules": scheme["trainable_modules"],
        "phases": scheme["phases"][:phases],
        "prompt": settings["prompt"],
        # The items in training order, as listed.
        "items": {"count": len(rows), "sha256": hashlib.sha256(rows.to_json(orient="values").encode()).hexdigest()},
        "code": code_version("finetune_model"),
    }


def continue_from(path: Path, root, optimizer, mixture_path, settings: dict, group: ProcessGroup) -> dict:
    """Load a checkpoint written at the end of another job's phases (`output="checkpoint"`) to train the rest of
    this run, once it is shown to have been made for this run's first phases. Returns its state."""
    saved = checkpoint_state(path)
    made_for = saved.get("made_for")
    if made_for is None:
        raise ValueError(f"{path} does not say which phases it was trained for; it cannot start {mixture_path}")
    trained = len(made_for["phases"])
    position = saved["position"]
    if (position["segment"], position["step"]) != (trained, 0):
        raise ValueError(f"{path} was saved at {position}, not at the end of its {trained} phase(s)")
    expected = prefix_identity(mixture_path, settings, trained)
    for key, value in expected.items():
        if made_for.get(key) != value:
            raise ValueError(f"{path} was trained for other first phases than {mixture_path}: {key} is "
                             f"{made_for.get(key)!r} there, {value!r} here")
    state = load_checkpoint(path, root, optimizer, group)
    log.info("continuing from %s after %d phase(s), %d steps", path, trained, position["global_step"])
    return state

