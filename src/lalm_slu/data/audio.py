"""Recorded audio → checked 16 kHz mono FLAC, written once into a cache folder.

Every file is read with soundfile, downmixed to mono, resampled with soxr, and rejected (with the
file named) when it cannot be read, holds no samples, holds samples that are not finite numbers or lie
outside [-1, 1] (float files only: no repair would be faithful), is silent, or is longer than allowed.
Whether a rejected file stops the run or is dropped and counted is the caller's choice. `load_audio` reads such a
file back for a model (16 kHz mono, or an error naming the file).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile
import soxr

from lalm_slu.core.outputs import atomic_output
from lalm_slu.data.records import DataError, Utterance

log = logging.getLogger(__name__)

TARGET_RATE = 16_000
# Peak amplitude below this (about -80 dBFS) counts as digital silence: nothing a model could hear.
SILENCE_PEAK = 1e-4
REJECTION_REASONS = ("unreadable", "empty", "non_finite", "out_of_range", "silent", "too_long", "missing")
BAD_AUDIO_MODES = ("error", "drop")


class AudioRejected(DataError):
    """A file no stage could use; `reason` is one of REJECTION_REASONS."""

    def __init__(self, reason: str, message: str, path):
        super().__init__(f"{reason}: {message}", path)
        self.reason = reason


def read_mono_16k(source: str | os.PathLike | bytes, name: str | os.PathLike) -> np.ndarray:
    """Decode a file path or encoded bytes to float32 mono at 16 kHz; `name` is used in errors."""
    is_encoded = isinstance(source, (bytes, bytearray))
    if not is_encoded and not os.path.isfile(source):
        raise AudioRejected("missing", "audio file not found", name)
    try:
        samples, rate = soundfile.read(io.BytesIO(source) if is_encoded else source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as error:
        raise AudioRejected("unreadable", f"cannot decode audio ({error})", name) from None
    check_sample_values(samples, name)
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != TARGET_RATE and len(mono):
        mono = soxr.resample(mono, rate, TARGET_RATE, quality="HQ").astype(np.float32)
    return mono


def load_audio(path: str) -> np.ndarray:
    """A 16 kHz mono clip as float32; anything else is an error naming the file."""
    try:
        audio, rate = soundfile.read(path, dtype="float32")
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise DataError(f"cannot read audio: {error}", path) from error
    if rate != TARGET_RATE or audio.ndim != 1:
        raise DataError(f"expected 16 kHz mono audio, got {rate} Hz with shape {audio.shape}", path)
    return audio


def check_sample_values(samples: np.ndarray, name) -> None:
    """Decoded samples are finite and within full scale; only float files can break either rule."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(np.size(finite) - np.count_nonzero(finite))
        raise AudioRejected("non_finite", f"{bad} sample value(s) are NaN or infinite", name)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 1.0:
        raise AudioRejected("out_of_range", f"peak {peak:.3g} exceeds full scale 1.0 (the file is clipped or mis-scaled)", name)


def check_samples(samples: np.ndarray, name, max_duration_s: float | None) -> float:
    """Return the duration in seconds, or raise AudioRejected."""
    if len(samples) == 0:
        raise AudioRejected("empty", "no samples", name)
    if float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise AudioRejected("silent", f"peak amplitude below {SILENCE_PEAK} (silence only)", name)
    duration = len(samples) / TARGET_RATE
    if max_duration_s is not None and duration > max_duration_s:
        raise AudioRejected("too_long", f"{duration:.1f} s is longer than the {max_duration_s} s limit", name)
    return duration


def write_flac(samples: np.ndarray, path: str | os.PathLike) -> Path:
    """Atomic write (temp file + rename): an interrupted run never leaves a half-written FLAC."""
    # Inputs are within full scale (check_sample_values); resampling can overshoot it by a little.
    with atomic_output(path, suffix=".flac.tmp") as tmp:
        soundfile.write(tmp, np.clip(samples, -1.0, 1.0), TARGET_RATE, format="FLAC", subtype="PCM_16")
    return Path(path)


def cached_duration(path: Path) -> float | None:
    """Duration of an already cached, valid 16 kHz mono FLAC; None if it must be (re)written."""
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, FileNotFoundError):
        return None
    if info.samplerate != TARGET_RATE or info.channels != 1 or info.frames == 0:
        return None
    return info.frames / TARGET_RATE


def cache_name(utterance_id: str) -> str:
    """File name for an utterance's FLAC: readable, and unique even when ids differ only in odd characters."""
    readable = re.sub(r"[^\w.-]", "_", utterance_id)[:80]
    digest = hashlib.sha1(utterance_id.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}.flac"


def standardize(
    source: str | os.PathLike | bytes, name, destination: Path, max_duration_s: float | None
) -> float:
    """Write `source` as checked 16 kHz mono FLAC at `destination` unless a valid copy is there; return seconds."""
    duration = cached_duration(destination)
    if duration is not None:
        if max_duration_s is not None and duration > max_duration_s:
            raise AudioRejected("too_long", f"{duration:.1f} s is longer than the {max_duration_s} s limit", name)
        return duration
    samples = read_mono_16k(source, name)
    duration = check_samples(samples, name, max_duration_s)
    write_flac(samples, destination)
    return duration


@dataclass
class IngestReport:
    written: int = 0
    rejected: dict[str, list[str]] = field(default_factory=dict)

    def count(self, reason: str) -> int:
        return len(self.rejected.get(reason, []))

    def total_rejected(self) -> int:
        return sum(len(errors) for errors in self.rejected.values())


def ingest_utterances(
    utterances: list[Utterance],
    audio_root: str | os.PathLike,
    audio_dir: str | os.PathLike,
    max_duration_s: float | None = 30.0,
    on_bad_audio: str = "error",
    threads: int = 1,
) -> tuple[list[Utterance], IngestReport]:
    """Standardize every utterance's `audio` (relative paths resolve against `audio_root`) into `audio_dir`.

    Returns new utterances whose `audio` is the cached FLAC and `duration_s` is set; an utterance
    whose audio is rejected raises (on_bad_audio="error") or is dropped and counted ("drop").
    """
    if on_bad_audio not in BAD_AUDIO_MODES:
        raise ValueError(f"on_bad_audio must be one of {BAD_AUDIO_MODES}, got {on_bad_audio!r}")
    audio_root, audio_dir = Path(audio_root), Path(audio_dir)
    report = IngestReport()

    def process(utt: Utterance) -> Utterance:
        if not utt.audio:
            raise AudioRejected("missing", f"utterance {utt.id!r} names no audio file", "manifest")
        source = audio_root / utt.audio
        destination = audio_dir / cache_name(utt.id)
        duration = standardize(source, source, destination, max_duration_s)
        return replace(utt, audio=str(destination), duration_s=duration)

    kept: list[Utterance] = []
    progress_every = max(1, len(utterances) // 20)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        outcomes = pool.map(_capture(process), utterances)
        for index, (utt, (result, error)) in enumerate(zip(utterances, outcomes), start=1):
            if error is None:
                kept.append(result)
                report.written += 1
            elif on_bad_audio == "error":
                raise error
            else:
                report.rejected.setdefault(error.reason, []).append(str(error))
                if report.total_rejected() <= 5:
                    log.warning("dropping utterance %s: %s", utt.id, error)
            if index % progress_every == 0 or index == len(utterances):
                log.info("audio %d/%d checked (%d kept)", index, len(utterances), len(kept))
    return kept, report


def _capture(function):
    """Run `function`, returning (result, None) or (None, AudioRejected) so one bad file doesn't kill the pool."""

    def wrapped(argument):
        try:
            return function(argument), None
        except AudioRejected as error:
            return None, error

    return wrapped
