"""Training on 1 or N processes with one code path: the process group and FSDP2 sharding with fp32 master weights
(checkpoints: lalm_slu.training.checkpoints).

- One process per device, launched by torchrun (or a plain `python` for one process: a one-member group is made
  here, so the same FSDP2 and checkpoint code runs either way). NCCL on GPUs, gloo on CPU.
- `parallelize` shards the trainable parameters with `fully_shard` (FSDP2): each LLM decoder layer, the token
  embeddings, the output head and any trainable audio part are units of their own, the rest goes to the root.
  Sharded parameters stay in fp32 (master weights: AdamW's updates at LR 5e-6 survive) and are gathered in the
  compute dtype; gradients are reduced in fp32. Frozen audio parts are not sharded: they are replicated in the
  compute dtype, so that a clip's frames can be encoded by one process alone (frame caching) and no process
  waits on another for the audio path.
- Collectives time out after `training.collective_timeout_minutes`; waits on rank 0's file work (the final
  weights, moving a checkpoint) and the background checkpoint writes use gloo groups with a long timeout, so that
  no NCCL watchdog fires while rank 0 writes.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)

# Rank 0's file work while the others wait (15.5 GB of final weights, a 93 GB checkpoint moved to another
# filesystem at ~100 MB/s) and a background checkpoint write take minutes, not a step's seconds.
FILE_WORK_TIMEOUT = datetime.timedelta(hours=2)



class ProcessGroup:
    """This process's place among the training processes (torchrun's environment, or alone)."""

    def __init__(self, device: str, collective_timeout_minutes: float = 30):
        self.device = torch.device(device)
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            timeout = datetime.timedelta(minutes=collective_timeout_minutes)
            if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
                dist.init_process_group(backend, timeout=timeout)
            else:  # a plain `python`: a group of one, no rendezvous needed
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        # CPU groups: one for decisions and waits on rank 0's file work, one for the background checkpoint
        # writes alone (their collectives run in another thread, and must not interleave with ours).
        self.cpu_group = dist.new_group(backend="gloo", timeout=FILE_WORK_TIMEOUT)
        self.checkpoint_group = dist.new_group(backend="gloo", timeout=FILE_WORK_TIMEOUT)

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

    def wait_for_main(self) -> None:
        """Every process waits here while rank 0 does file work: on the CPU group, with its long timeout."""
        dist.barrier(group=self.cpu_group)

    def any_of(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any process (a CPU collective: no device sync). A decision that rank 0
        alone takes is passed as false elsewhere."""
        if self.world_size == 1:
            return [bool(flag) for flag in flags]
        values = torch.tensor([int(bool(flag)) for flag in flags], dtype=torch.int32)
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return [bool(value) for value in values.tolist()]

    def broadcast(self, value):
        """Rank 0's `value` on every rank (any picklable object; over the CPU group: no device copies)."""
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def gather(self, value) -> list:
        boxes = [None] * self.world_size
        dist.all_gather_object(boxes, value, group=self.cpu_group)
        return boxes

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()



def has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())



def parallelize(root: nn.Module, model, compute_dtype: torch.dtype, group: ProcessGroup) -> None:
    """Shard `root` (the training forward, holding `model`) in place; see the module docstring."""
    from lalm_slu.model.loading import base_model

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

