"""A manifest's recorded audio ingested: each row's `audio` (relative to an audio root) read, checked, downmixed,
resampled and written once as 16 kHz mono FLAC (lalm_slu.data.audio); the output manifest points at those files
and carries `duration_s`."""

from __future__ import annotations

import logging
from pathlib import Path

from lalm_slu.data.audio import ingest_utterances
from lalm_slu.data.records import DataError, read_manifest, utterances_from_frame, write_manifest

log = logging.getLogger(__name__)


def ingest_manifest(
    manifest: Path, audio_root: Path, out_manifest: Path, audio_dir: Path, max_duration_s: float | None = 30.0,
    on_bad_audio: str = "error", threads: int = 1,
) -> None:
    """Write `out_manifest` with the checked clips in `audio_dir`; unusable audio stops the run (on_bad_audio
    "error") or is dropped and counted ("drop")."""
    utterances = utterances_from_frame(read_manifest(manifest))
    log.info("ingesting audio of %d utterances from %s", len(utterances), manifest)
    kept, report = ingest_utterances(
        utterances, audio_root, audio_dir, max_duration_s=max_duration_s, on_bad_audio=on_bad_audio, threads=threads,
    )
    for reason, errors in sorted(report.rejected.items()):
        log.warning("dropped %d utterance(s) with %s audio", len(errors), reason)
    if utterances and not kept:
        raise DataError(f"all {len(utterances)} utterances were rejected; nothing to write", manifest)
    write_manifest(kept, out_manifest)
    total = sum(u.duration_s for u in kept)
    log.info("wrote %s: %d utterances, %.1f h of audio", out_manifest, len(kept), total / 3600)
