"""Sharded checkpoints that detect their own corruption, and the lock on a run's work directory.

Checkpoints are `torch.distributed.checkpoint` directories (every process writes its shards), written in the
background (`dcp.async_save` on a gloo group of their own) while training goes on. Every stored item carries the
sha256 of its bytes, computed as it is written and checked as it is read back, so neither a save nor a resume
reads the shards an extra time; a manifest of every file (sizes; sha256 of the small ones) is written once the
shards are complete, then the directory is renamed into place and the previous checkpoint deleted. One complete
checkpoint is kept, plus the one being written. A checkpoint that fails its checks is moved aside and named.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._extension import ExtensionRegistry, StreamTransformExtension
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lalm_slu.training.distributed import ProcessGroup

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"

# Snakemake marks a finished directory output (a prefix's checkpoint) with this file; it is not checkpoint data.
SNAKEMAKE_MARKER = ".snakemake_timestamp"

STATE = "state.json"

LOCK = "lock"

# Frozen weights come from the base model at every start; checkpoints hold only what trains.
TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True)



class DamagedCheckpoint(ValueError):
    """A checkpoint that fails its checks (sizes, manifest, or a stored item's sha256)."""



class WorkDirectoryInUse(OSError):
    """Another process holds the lock of a work directory."""



@contextmanager
def work_dir_lock(work_dir: Path, group: ProcessGroup) -> Iterator[None]:
    """Hold an exclusive lock on `work_dir` for the run (rank 0 takes it for all its processes): a second run on
    the same directory fails at once, naming the holder, instead of racing this one on its checkpoints."""
    work_dir, handle, problem = Path(work_dir), None, None
    if group.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        path = work_dir / LOCK
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            handle = None
            problem = f"work directory {work_dir} is in use by {holder} (lock file {path})"
        else:
            handle.seek(0)
            handle.truncate()
            started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, started {started}\n")
            handle.flush()
    problem = group.broadcast(problem)
    if problem:
        raise WorkDirectoryInUse(problem)
    try:
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()



class Sha256Trailer(StreamTransformExtension):
    """A DCP stream transform: every stored item is followed by the sha256 of its bytes, computed as they are
    written and checked as they are read back. A save hashes what it writes at no extra read; a load (which reads
    every item anyway) checks it, so truncation and same-size corruption are found without a separate pass."""

    DIGEST_BYTES = 32

    @staticmethod
    def registry_name() -> str:
        return "lalm_slu.sha256_trailer"

    @staticmethod
    def from_descriptor(version: str) -> "Sha256Trailer":
        if version != "1":
            raise ValueError(f"unknown {Sha256Trailer.registry_name()} version {version!r}")
        return Sha256Trailer()

    def get_descriptor(self) -> str:
        return f"{self.registry_name()}/1"

    def transform_to(self, output):
        return _HashingWriter(output)

    def transform_from(self, input):
        data = bytearray(input.read())
        digest = bytes(data[-self.DIGEST_BYTES:])
        del data[-self.DIGEST_BYTES:]
        if len(digest) < self.DIGEST_BYTES or hashlib.sha256(data).digest() != digest:
            raise DamagedCheckpoint("a stored item does not match its sha256")
        return io.BytesIO(data)



class _HashingWriter(io.RawIOBase):
    def __init__(self, output):
        super().__init__()
        self.output, self.digest = output, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        return self.output.write(data)

    def close(self) -> None:
        if not self.closed:
            self.output.write(self.digest.digest())
            self.output.close()  # DCP's wrapper: flushes, leaves the file open for the next item
        super().close()



def _reader(path: Path) -> FileSystemReader:
    registry = ExtensionRegistry()
    registry.register(Sha256Trailer)
    return FileSystemReader(path, _extension_registry=registry)



def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**24), b""):
            digest.update(block)
    return digest.hexdigest()



def _checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints (renamed into place), newest first."""
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name.removeprefix("step-").isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")), reverse=True)



def _is_shard(name: str) -> bool:
    """DCP's data files: their items carry their own sha256 (Sha256Trailer)."""
    return name.endswith(".distcp")



class PendingCheckpoint:
    """A checkpoint being written in the background. `complete()` waits for it; then rank 0 writes its manifest,
    renames it into place and deletes the previous one."""

    def __init__(self, tmp: Path, final: Path, future: Future, group: ProcessGroup):
        self.tmp, self.final, self.future, self.group = tmp, final, future, group

    def written(self) -> bool:
        """This process's part is on disk (rank 0's: every process's, since DCP gathers them to it)."""
        return self.future.done()

    def complete(self) -> Path:
        try:
            self.future.result()
        except (Exception, CheckpointException) as error:
            raise RuntimeError(f"checkpoint {self.final} could not be written: {error}") from error
        if self.group.is_main:
            files = {}
            for path in sorted(self.tmp.iterdir()):
                files[path.name] = {"bytes": path.stat().st_size}
                if not _is_shard(path.name):  # .metadata, the RNG and the state: kilobytes to megabytes
                    files[path.name]["sha256"] = _sha256(path)
            fingerprint = json.loads((self.tmp / STATE).read_text())["fingerprint"]
            with open(self.tmp / MANIFEST, "w", encoding="utf-8") as handle:
                handle.write(json.dumps({"fingerprint": fingerprint, "files": files}, indent=1))
                handle.flush()
                os.fsync(handle.fileno())
            shutil.rmtree(self.final, ignore_errors=True)
            os.replace(self.tmp, self.final)
            for old in _checkpoint_dirs(self.final.parent):
                if old != self.final:
                    shutil.rmtree(old, ignore_errors=True)
        return self.final



def save_checkpoint(root_dir: Path, step: int, root: nn.Module, optimizer, state: dict,
                    group: ProcessGroup) -> PendingCheckpoint:
    """Start writing the sharded weights and optimizer state of every process, `state` (JSON: position, history,
    fingerprint) and the RNG to `step-N.tmp`. The weights are copied to CPU memory before this returns; the write
    goes on in the background. A kill at any point leaves the previous checkpoint as it was."""
    final = root_dir / f"step-{step:08d}"
    tmp = root_dir / f"step-{step:08d}.tmp"
    if group.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / STATE).write_text(json.dumps(state))
    group.wait_for_main()
    torch.save(torch.get_rng_state(), tmp / f"rng-{group.rank}.pt")
    trained = {"model": get_model_state_dict(root, options=TRAINED_ONLY),
               "optimizer": get_optimizer_state_dict(root, optimizer)}
    future = dcp.async_save(
        trained,
        storage_writer=FileSystemWriter(tmp, _extensions=[Sha256Trailer()]),
        process_group=group.checkpoint_group,
    )
    return PendingCheckpoint(tmp, final, future, group)



def _checkpoint_problem(path: Path, fingerprint: str | None, group: ProcessGroup) -> str | None:
    """Why `path` cannot be resumed (None: it can, as far as can be told without reading its shards, whose items
    are checked as they load; a None `fingerprint` is not checked). Rank 0 checks every file of the directory
    against the manifest: sizes, and the sha256 of the small files."""
    problem = None
    if group.is_main:
        problem = _manifest_problem(path, fingerprint)
    return group.broadcast(problem)



def _manifest_problem(path: Path, fingerprint: str | None) -> str | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        present = {p.name for p in path.iterdir()} - {MANIFEST, SNAKEMAKE_MARKER}
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"no readable {MANIFEST} ({error})"
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        return "written for other settings, data, code or base weights"
    if extra := sorted(present - set(files)):
        return f"{path / extra[0]} is not in its manifest"
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != entry["bytes"]:
            return f"{file} has {file.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if "sha256" in entry and _sha256(file) != entry["sha256"]:
            return f"{file} does not match its sha256"
    return None



def resume_checkpoint(root_dir: Path, root: nn.Module, optimizer, fingerprint: str, group: ProcessGroup) -> dict | None:
    """Load the newest sound checkpoint of this run into `root` and `optimizer`, returning its state (None: start
    over). A checkpoint of another run is deleted; a damaged one is moved aside (`*.corrupt`) and named in the log.
    One found damaged only while loading (a stored item's sha256) has already overwritten part of the weights: it
    is moved aside and the run stops with DamagedCheckpoint; a re-run starts over."""
    if group.is_main:
        for leftover in root_dir.glob("step-*.tmp"):  # a save that was killed
            shutil.rmtree(leftover, ignore_errors=True)
    group.barrier()
    for path in group.broadcast(_checkpoint_dirs(root_dir) if root_dir.is_dir() else []):
        problem = _checkpoint_problem(path, fingerprint, group)
        if problem is None:
            try:
                state = _load(path, root, optimizer, group)
            except DamagedCheckpoint as error:
                aside = _move_aside(path, group)
                raise DamagedCheckpoint(f"{error}: moved to {aside}. It was partly loaded, so this run stops; "
                                        "a re-run starts over") from error
            log.info("resumed from %s", path)
            return state
        if problem.startswith("written for"):
            if group.is_main:
                log.warning("%s was %s; starting over", path, problem)
                shutil.rmtree(path, ignore_errors=True)
        else:
            aside = _move_aside(path, group)
            if group.is_main:
                log.warning("checkpoint %s is damaged (%s): moved to %s", path, problem, aside)
        group.barrier()
    return None



def _move_aside(path: Path, group: ProcessGroup) -> Path:
    aside = path.with_name(path.name + ".corrupt")
    if group.is_main:
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
    group.barrier()
    return aside



def checkpoint_state(path: Path) -> dict:
    """A checkpoint's JSON state (position, history, fingerprint, what it was made for), without loading it."""
    return json.loads((Path(path) / STATE).read_text())



def load_checkpoint(path: Path, root: nn.Module, optimizer, group: ProcessGroup) -> dict:
    """Load one checkpoint, e.g. another job's, whatever run it was written for, into `root` and `optimizer`, and
    return its state. A damaged one is an error naming it (it is not ours to move aside)."""
    problem = _checkpoint_problem(Path(path), None, group)
    if problem:
        raise DamagedCheckpoint(f"checkpoint {path} cannot be loaded: {problem}")
    return _load(Path(path), root, optimizer, group)



def _load(path: Path, root: nn.Module, optimizer, group: ProcessGroup) -> dict:
    """Weights, optimizer state and this process's RNG from a checked checkpoint; its state. Every stored item's
    sha256 is checked as it is read (DamagedCheckpoint, naming the checkpoint)."""
    state = {
        "model": get_model_state_dict(root, options=TRAINED_ONLY),
        "optimizer": get_optimizer_state_dict(root, optimizer),
    }
    try:
        dcp.load(state, storage_reader=_reader(path))
    except CheckpointException as error:
        reasons = "; ".join(f"process {rank}: {failure[0]}" for rank, failure in sorted(error.failures.items()))
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({reasons})") from None
    set_model_state_dict(root, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(root, optimizer, state["optimizer"])
    rng = path / f"rng-{group.rank}.pt"
    if rng.exists():
        torch.set_rng_state(torch.load(rng, weights_only=True))
    return checkpoint_state(path)

