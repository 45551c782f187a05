"""Frames of a frozen audio tower and projector, computed once per speech manifest and read by every run and
decode whose scheme freezes both (all of the paper's schemes do): no clip goes through the encoder twice.

A frames file is safetensors, one tensor per clip (named by its audio path as the manifest gives it, one row
per `<|AUDIO|>` token), with metadata saying which audio weights made it: loading checks them against the
consumer's own model, so frames of another encoder are never used.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from tqdm import tqdm

from lalm_slu.model.audio_encoding import audio_parts_fingerprint, clip_frames
from lalm_slu.model.loading import base_model, device_and_dtype, load_model_and_processor
from lalm_slu.core.outputs import atomic_output
from lalm_slu.data.records import DataError, read_manifest
from lalm_slu.config.settings import AudioFrameSettings
from lalm_slu.data.audio import load_audio

log = logging.getLogger(__name__)
FORMAT = "lalm-slu audio frames 1"


def encode_manifest(model_path: str, manifest_path: str, out_path: str, settings: Mapping) -> dict:
    """Frames of every clip of a speech manifest. `settings`: batch_size, length_aware, and the device and
    precision keys of the training settings (frames are computed as training would compute them)."""
    started = time.time()
    encoding = AudioFrameSettings.from_dict(settings, "encode-audio settings")
    device, dtype = device_and_dtype(encoding)
    length_aware = encoding.length_aware
    model, processor = load_model_and_processor(model_path, dtype=dtype, device=device)
    model.eval()
    manifest = read_manifest(manifest_path)
    missing = manifest.loc[~manifest["audio"].astype(bool), "id"].tolist()
    if missing:
        raise DataError(f"{len(missing)} utterances have no audio (e.g. {missing[:3]})", manifest_path)
    clips = manifest.sort_values("duration_s", ascending=False, kind="stable")["audio"].drop_duplicates().tolist()
    batch_size = encoding.batch_size
    frames: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(clips), batch_size), desc="encode audio", mininterval=20):
        paths = clips[start : start + batch_size]
        encoded = clip_frames(model, processor, [load_audio(path) for path in paths], length_aware)
        frames.update({path: clip.cpu().contiguous() for path, clip in zip(paths, encoded)})
    metadata = {
        "format": FORMAT,
        "audio_parts": audio_parts_fingerprint(model),
        "length_aware": str(length_aware),
        "dtype": str(dtype).removeprefix("torch."),
        "model": str(model_path),
        "manifest": str(manifest_path),
    }
    with atomic_output(out_path) as tmp:
        save_file(frames, str(tmp), metadata=metadata)
    out_path = Path(out_path)
    summary = {
        "clips": len(frames),
        "frames": sum(len(clip) for clip in frames.values()),
        "megabytes": round(out_path.stat().st_size / 2**20, 1),
        "wall_time_s": round(time.time() - started, 2),
    }
    log.info("encoded %s: %s", manifest_path, summary)
    return summary


class FrameStore:
    """The frames of one file, by audio path; a clip it lacks is an error naming the file."""

    def __init__(self, path: str | os.PathLike, frames: dict[str, torch.Tensor]):
        self.path = str(path)
        self.frames = frames

    def __getitem__(self, audio_path: str) -> torch.Tensor:
        try:
            return self.frames[audio_path]
        except KeyError:
            raise DataError(f"no frames for clip {audio_path}; re-run encode_audio for its manifest",
                            self.path) from None


def load_frames(path: str | os.PathLike, model, length_aware: bool = True) -> FrameStore:
    """Frames of a file written by `encode_manifest`, checked against `model`'s audio tower and projector
    and moved to its device and dtype."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        frames = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise DataError(f"cannot read audio frames: {error}", path) from error
    if metadata.get("format") != FORMAT:
        raise DataError(f"not an audio frames file (format {metadata.get('format')!r}, expected {FORMAT!r})", path)
    if metadata["length_aware"] != str(length_aware):
        raise DataError(f"frames were encoded with length_aware={metadata['length_aware']}, "
                        f"this run uses {length_aware}", path)
    if metadata["audio_parts"] != audio_parts_fingerprint(model):
        raise DataError(f"frames were computed by {metadata['model']}, whose audio tower or projector differ from "
                        "this model's; re-run encode_audio with this model", path)
    reference = base_model(model).model.multi_modal_projector.linear.weight
    return FrameStore(path, {key: clip.to(reference.device, reference.dtype) for key, clip in frames.items()})
