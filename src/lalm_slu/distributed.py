"""Training on 1 or N processes with one code path: the process group, FSDP2 sharding with fp32 master weights,
and sharded checkpoints that detect their own corruption.

- One process per device, launched by torchrun (or a plain `python` for one process: a one-member group is made
  here, so the same FSDP2 and checkpoint code runs either way). NCCL on GPUs, gloo on CPU.
- `parallelize` shards the trainable parameters with `fully_shard` (FSDP2): each LLM decoder layer, the token
  embeddings, the output head and any trainable audio part are units of their own, the rest goes to the root.
  Sharded parameters stay in fp32 (master weights: AdamW's updates at LR 5e-6 survive) and are gathered in the
  compute dtype; gradients are reduced in fp32. Frozen audio parts are not sharded: they are replicated in the
  compute dtype, so that a clip's frames can be encoded by one process alone (frame caching) and no process
  waits on another for the audio path.
- Checkpoints are `torch.distributed.checkpoint` directories (every process writes its shards), with a
  manifest of sizes and sha256 written last. A checkpoint whose files disagree with its manifest is moved aside,
  named in the log, and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "state.json"
# Kept so that a corrupted newest checkpoint still leaves one to resume from.
CHECKPOINTS_KEPT = 2
# Frozen weights come from the base model at every start; checkpoints hold only what trains.
TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True)


class ProcessGroup:
    """This process's place among the training processes (torchrun's environment, or alone)."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
                dist.init_process_group(backend)
            else:  # a plain `python`: a group of one, no rendezvous needed
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value: float) -> float:
        # On the process's own device: NCCL refuses CPU tensors.
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def barrier(self) -> None:
        dist.barrier()

    def broadcast(self, value):
        """Rank 0's `value` on every rank (any picklable object)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        boxes = [None] * self.world_size
        dist.all_gather_object(boxes, value)
        return boxes

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def parallelize(root: nn.Module, model, compute_dtype: torch.dtype, group: ProcessGroup) -> None:
    """Shard `root` (the training forward, holding `model`) in place; see the module docstring."""
    from lalm_slu.model_loading import base_model

    inner = base_model(model)
    llm, tower, projector = inner.model.language_model, inner.model.audio_tower, inner.model.multi_modal_projector
    # Frozen audio parameters stay plain tensors in the compute dtype, on every process.
    replicated = {p for part in (tower, projector) for p in part.parameters() if not p.requires_grad}
    for param in replicated:
        param.data = param.data.to(group.device, compute_dtype)
    units = [*llm.layers, llm.embed_tokens, inner.lm_head]
    if has_trainable(tower):
        units += [layer for layer in tower.layers if has_trainable(layer)] + [tower]
    if has_trainable(projector):
        units.append(projector)
    policy = MixedPrecisionPolicy(
        param_dtype=None if compute_dtype == torch.float32 else compute_dtype, reduce_dtype=torch.float32
    )
    # The last units of the forward are the first of the backward: kept gathered in between, they are not
    # gathered twice (torchtitan does the same for its last block and output head).
    kept_gathered = {id(llm.layers[-1]), id(inner.lm_head)}
    for unit in [*units, root]:
        # Upcast one unit at a time: a 7B model never exists in fp32 on the host.
        for param in unit.parameters():
            if param not in replicated and not isinstance(param, DTensor):
                param.data = param.data.float()
        fully_shard(unit, mesh=group.mesh, mp_policy=policy, ignored_params=replicated,
                    reshard_after_forward=id(unit) not in kept_gathered)
    for module in root.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != group.device:
                module._buffers[name] = buffer.to(group.device)


def full_state_dict(root: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Every weight of `root` under `prefix`, whole, on rank 0's CPU (other ranks get an empty dict). A
    collective: every process calls it."""
    state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name.removeprefix(prefix): tensor for name, tensor in state.items() if name.startswith(prefix)}


# ---------------------------------------------------------------- checkpoints


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


def save_checkpoint(root_dir: Path, step: int, root: nn.Module, optimizer, state: dict, group: ProcessGroup) -> Path:
    """Sharded weights and optimizer state of every process, `state` (JSON: position, history, fingerprint) and
    the RNG, then the manifest, then the rename: a kill at any point leaves the previous checkpoints as they were."""
    final = root_dir / f"step-{step:08d}"
    tmp = root_dir / f"step-{step:08d}.tmp"
    if group.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    group.barrier()
    dcp.save(
        {"model": get_model_state_dict(root, options=TRAINED_ONLY), "optimizer": get_optimizer_state_dict(root, optimizer)},
        checkpoint_id=str(tmp),
    )
    torch.save(torch.get_rng_state(), tmp / f"rng-{group.rank}.pt")
    group.barrier()
    # Every process hashes its own files; rank 0 writes the manifest of all of them, last.
    own = [p for p in sorted(tmp.iterdir()) if p.name.startswith((f"__{group.rank}_", f"rng-{group.rank}."))]
    hashes = group.gather({p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in own})
    if group.is_main:
        (tmp / STATE).write_text(json.dumps(state))
        files = {name: entry for part in hashes for name, entry in part.items()}
        for path in sorted(tmp.iterdir()):
            if path.name not in files:  # .metadata and the state, written by rank 0
                files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        (tmp / MANIFEST).write_text(json.dumps({"fingerprint": state["fingerprint"], "files": files}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoint_dirs(root_dir)[CHECKPOINTS_KEPT:]:
            shutil.rmtree(old, ignore_errors=True)
    group.barrier()
    return final


def _checkpoint_problem(path: Path, fingerprint: str | None, group: ProcessGroup) -> str | None:
    """Why `path` cannot be resumed (None: it can; a None `fingerprint` is not checked). Sizes are checked by rank 0,
    hashes shared out by file."""
    problem = None
    manifest = None
    if group.is_main:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            problem = f"no readable {MANIFEST} ({error})"
        else:
            if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
                problem = "written for other settings, data, code or base weights"
            for name, entry in files.items():
                if problem:
                    break
                file = path / name
                if not file.is_file():
                    problem = f"{file} is missing"
                elif file.stat().st_size != entry["bytes"]:
                    problem = f"{file} has {file.stat().st_size} bytes, the manifest says {entry['bytes']}"
    problem, manifest = group.broadcast((problem, manifest))
    if problem:
        return problem
    names = sorted(manifest["files"])
    mine = [n for i, n in enumerate(names) if i % group.world_size == group.rank]
    bad = [f"{path / n} does not match its sha256" for n in mine if _sha256(path / n) != manifest["files"][n]["sha256"]]
    bad = [b for part in group.gather(bad) for b in part]
    return bad[0] if bad else None


def resume_checkpoint(root_dir: Path, root: nn.Module, optimizer, fingerprint: str, group: ProcessGroup) -> dict | None:
    """Load the newest sound checkpoint of this run into `root` and `optimizer`, returning its state (None: start
    over). A checkpoint of another run is deleted; a damaged one is moved aside (`*.corrupt`) and named in the log."""
    if group.is_main:
        for leftover in root_dir.glob("step-*.tmp"):  # a save that was killed
            shutil.rmtree(leftover, ignore_errors=True)
    group.barrier()
    for path in group.broadcast(_checkpoint_dirs(root_dir) if root_dir.is_dir() else []):
        problem = _checkpoint_problem(path, fingerprint, group)
        if problem is None:
            state = _load(path, root, optimizer, group)
            log.info("resumed from %s", path)
            return state
        if group.is_main:
            if problem.startswith("written for"):
                log.warning("%s was %s; starting over", path, problem)
                shutil.rmtree(path, ignore_errors=True)
            else:
                aside = path.with_name(path.name + ".corrupt")
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(path, aside)
                log.warning("checkpoint %s is damaged (%s): moved to %s; trying the previous one", path, problem, aside)
        group.barrier()
    return None


def checkpoint_state(path: Path) -> dict:
    """A checkpoint's JSON state (position, history, fingerprint, what it was made for), without loading it."""
    return json.loads((Path(path) / STATE).read_text())


def load_checkpoint(path: Path, root: nn.Module, optimizer, group: ProcessGroup) -> dict:
    """Load one checkpoint, e.g. another job's, whatever run it was written for, into `root` and `optimizer`, and
    return its state. A damaged one is an error naming it (it is not ours to move aside)."""
    problem = _checkpoint_problem(Path(path), None, group)
    if problem:
        raise ValueError(f"checkpoint {path} cannot be loaded: {problem}")
    return _load(Path(path), root, optimizer, group)


def _load(path: Path, root: nn.Module, optimizer, group: ProcessGroup) -> dict:
    """Weights, optimizer state and this process's RNG from a checked checkpoint; its state."""
    state = {
        "model": get_model_state_dict(root, options=TRAINED_ONLY),
        "optimizer": get_optimizer_state_dict(root, optimizer),
    }
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(root, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(root, optimizer, state["optimizer"])
    rng = path / f"rng-{group.rank}.pt"
    if rng.exists():
        torch.set_rng_state(torch.load(rng, weights_only=True))
    return checkpoint_state(path)
