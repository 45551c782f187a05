"""One optimizer step's gradients, accumulated over this process's micro-batches."""

from __future__ import annotations

import torch
import torch.distributed as dist

from lalm_slu.core.stages import STAGES
from lalm_slu.model.loading import base_model
from lalm_slu.training.distributed import ProcessGroup
from lalm_slu.training.items import MicroBatch


def accumulate_gradients(root, micro_batches: list[MicroBatch], audio_cache, group: ProcessGroup,
                              touch_audio: bool, trains_audio_tower: bool, where: str) -> tuple[float, int]:
    """Accumulate one optimizer step's gradients over this process's micro-batches: the gradient of the mean
    cross-entropy over the answer tokens of the whole step, all micro-batches and processes (as transformers ≥ 4.46
    and torchtitan normalise), not an average of per-batch means. The device is waited for once, at the end, for
    the step's loss, token count and finite check together. Returns the step's mean loss and answer tokens."""
    device, world_size = group.device, group.world_size
    root.train()
    if not trains_audio_tower:
        base_model(root.model).model.audio_tower.eval()
    own_tokens = sum(mb.answer_tokens for mb in micro_batches if not mb.padding)
    step_tokens = torch.tensor(float(own_tokens), device=device)
    if world_size > 1:
        dist.all_reduce(step_tokens)  # queued on the device: nothing waits for it here
    loss_sum = torch.zeros((), device=device)
    non_finite = torch.zeros((), device=device)
    for micro_batch in micro_batches:
        with STAGES.stage("steps"):
            batch = micro_batch.to(device, with_features=audio_cache is None)
            frames = None
            if audio_cache is not None:
                frames = audio_cache.batch_frames(root.model, list(zip(micro_batch.audio_keys, micro_batch.waveforms)))
            loss = root(batch, frames, touch_audio=touch_audio, reduction="sum") / step_tokens
            non_finite += (~torch.isfinite(loss)).float()
            # FSDP2 averages gradients over processes: × processes makes it the sum of each one's share.
            (loss * (0.0 if micro_batch.padding else world_size)).backward()
            if not micro_batch.padding:
                loss_sum += loss.detach()
    totals = torch.stack([loss_sum, non_finite])
    if world_size > 1:
        dist.all_reduce(totals)
    loss_value, non_finite_count, tokens = torch.cat([totals, step_tokens.reshape(1)]).tolist()  # the one wait
    if non_finite_count:
        raise FloatingPointError(f"non-finite loss at {where}; the last good checkpoint is kept")
    return loss_value, int(tokens)

