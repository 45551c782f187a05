"""Synthesize a manifest's utterances to FLAC, reproducibly, with eSpeak NG.

eSpeak NG's waveform generator keeps state across calls within a process, so the samples
for one utterance depend on what that process synthesized before. Synthesis is therefore
done in a fixed order, in fixed-size chunks, each chunk in a fresh process that never ran
eSpeak NG before (forked from a clean fork server where available, else spawned): the audio
is byte-identical for any number of workers and on every rerun. The chunk size is part of
the recipe (changing it changes the audio); the worker count is not.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import soundfile

from lalm_slu.speech.tts import TARGET_RATE, ESpeakSynthesizer, Voice, pick_voice

if TYPE_CHECKING:  # records imports pandas; chunk workers start fresh, so keep their imports light
    from lalm_slu.data.records import Utterance

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Below one step of 16-bit PCM: a clip without a louder sample is silence.
SILENCE = 1 / 32768


@dataclass(frozen=True)
class SynthesisJob:
    """One utterance to speak: where to write it, in which voice."""

    utterance_id: str
    text: str
    voice: Voice
    path: str


@dataclass(frozen=True)
class Synthesized:
    utterance_id: str
    path: str
    duration_s: float
    word_times: list  # [[word, start_s, end_s], ...] from eSpeak NG's word events


def audio_file_name(utterance_id: str) -> str:
    """A file name for an utterance id; ids that are not file-safe get a hash suffix to stay unique."""
    if _SAFE_NAME.match(utterance_id):
        return f"{utterance_id}.flac"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", utterance_id).lstrip("._-") or "utt"
    digest = hashlib.sha256(utterance_id.encode("utf-8")).hexdigest()[:10]
    return f"{safe}-{digest}.flac"


def plan_jobs(
    utterances: Sequence[Utterance], audio_dir: str | Path, voices: Sequence[Voice], seed: int
) -> list[SynthesisJob]:
    """One job per utterance, in manifest order; each utterance's voice is picked from `voices`. An utterance
    without a letter or digit to speak is a DataError."""
    if not voices:
        raise ValueError("no voices to synthesize with")
    audio_dir = Path(audio_dir)
    jobs = []
    for utt in utterances:
        if not re.search(r"\w", utt.text):  # eSpeak would make a few milliseconds of silence of it
            _fail(f"utterance {utt.id!r} has nothing to speak: {utt.text!r}")
        voice = pick_voice(utt.id, list(voices), seed)
        jobs.append(SynthesisJob(utt.id, utt.text, voice, str(audio_dir / audio_file_name(utt.id))))
    paths = [job.path for job in jobs]
    if len(set(paths)) != len(paths):
        raise ValueError("two utterances map to the same audio file (duplicate ids?)")
    return jobs


def utterance_seed(seed: int, utterance_id: str) -> int:
    """eSpeak NG's noise seed for one utterance (sha256, so the same on every machine)."""
    digest = hashlib.sha256(f"{seed}:{utterance_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def synthesize_chunk(jobs: Sequence[SynthesisJob], seed: int, max_duration_s: float | None) -> list[Synthesized]:
    """Synthesize and write one chunk; meant to run in a fresh process (see module docstring)."""
    synthesizer = ESpeakSynthesizer()
    done = []
    for job in jobs:
        audio, word_times = synthesizer.synthesize_timed(job.text, job.voice, seed=utterance_seed(seed, job.utterance_id))
        duration = len(audio) / TARGET_RATE
        if duration == 0 or not (abs(audio) >= SILENCE).any():
            _fail(f"eSpeak NG produced no audible audio for utterance {job.utterance_id!r}: {job.text!r}")
        if max_duration_s is not None and duration > max_duration_s:
            _fail(
                f"utterance {job.utterance_id!r} lasts {duration:.1f} s with voice {job.voice.key}, "
                f"above speech.max_duration_s={max_duration_s}"
            )
        soundfile.write(job.path, audio, TARGET_RATE, format="FLAC", subtype="PCM_16")
        done.append(Synthesized(job.utterance_id, job.path, round(duration, 6), word_times))
    return done


def _fail(message: str) -> None:
    from lalm_slu.data.records import DataError  # imported late: records pulls in pandas, slow in every fresh worker

    raise DataError(message)


def _run_chunk(task: tuple[Sequence[SynthesisJob], int, float | None]) -> list[Synthesized]:
    return synthesize_chunk(*task)


def fresh_process_context():
    """Processes that never ran eSpeak NG: forked from a clean server (fast), or spawned."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # The server only imports modules; eSpeak NG is loaded in each chunk's own process.
    context.set_forkserver_preload([__name__])
    return context


def synthesize_utterances(
    utterances: Sequence[Utterance],
    audio_dir: str | Path,
    voices: Sequence[Voice],
    seed: int,
    workers: int = 1,
    chunk_size: int = 256,
    max_duration_s: float | None = None,
) -> list[Utterance]:
    """Return the utterances with audio, duration_s, voice and recordings filled in."""
    from tqdm import tqdm

    if chunk_size < 1 or workers < 1:
        raise ValueError("chunk_size and workers must be positive")
    jobs = plan_jobs(utterances, audio_dir, voices, seed)
    Path(audio_dir).mkdir(parents=True, exist_ok=True)
    chunks = [jobs[start : start + chunk_size] for start in range(0, len(jobs), chunk_size)]
    tasks = [(chunk, seed, max_duration_s) for chunk in chunks]
    results: dict[str, Synthesized] = {}
    started = time.perf_counter()
    progress = tqdm(total=len(jobs), unit="utt", desc="synthesize", mininterval=5, disable=not jobs)
    # A fresh process per chunk: eSpeak NG output depends on what its process spoke before.
    context = fresh_process_context()
    with context.Pool(max(1, min(workers, len(chunks))), maxtasksperchild=1) as pool:
        for chunk_result in pool.imap(_run_chunk, tasks, chunksize=1):
            results.update((item.utterance_id, item) for item in chunk_result)
            progress.update(len(chunk_result))
    progress.close()
    elapsed = time.perf_counter() - started
    audio_seconds = sum(item.duration_s for item in results.values())
    log.info(
        "synthesized %d utterances (%.0f s of audio) in %.1f s: %.1f utt/s with %d workers",
        len(jobs),
        audio_seconds,
        elapsed,
        len(jobs) / elapsed if elapsed > 0 else 0.0,
        workers,
    )
    synthesized = []
    for utt, job in zip(utterances, jobs):
        done = results[job.utterance_id]
        synthesized.append(
            replace(utt, audio=done.path, duration_s=done.duration_s, voice=job.voice.key, recordings=[done.path],
                    word_times=done.word_times)
        )
    return synthesized


def voices_from_json(records: Sequence[dict]) -> list[Voice]:
    """Voices from config records `{name, rate_wpm, pitch}`, where a list of rates or pitches stands for every
    combination; unknown voices and variants are rejected."""

    def as_list(value, default):
        value = default if value is None else value
        return [int(v) for v in (value if isinstance(value, list) else [value])]

    voices = [
        Voice(str(r["name"]), rate, pitch)
        for r in records
        for rate in as_list(r.get("rate_wpm"), 160)
        for pitch in as_list(r.get("pitch"), 50)
    ]
    for voice in voices:
        check_voice(voice)
    return voices


def check_voice(voice: Voice) -> None:
    """eSpeak NG silently speaks an unknown voice or `+variant` in another voice; fail instead."""
    from lalm_slu.speech.voice_table import unknown_voice

    problem = unknown_voice(voice.name)
    if problem:
        raise ValueError(problem)
