"""`lalm-slu ingest-audio`: turn a manifest's recorded audio into checked 16 kHz mono FLAC.

Each row's `audio` (relative to --audio-root) is read, downmixed, resampled and written once into
--audio-dir; the output manifest points at those files and carries `duration_s`. Unreadable, empty,
silent, missing and over-long files stop the run (--on-bad-audio error) or are dropped and counted.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lalm_slu.data.records import DataError, read_manifest, utterances_from_frame, write_manifest
from lalm_slu.data.audio import BAD_AUDIO_MODES, ingest_utterances

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="input manifest (audio = recording file names)")
    parser.add_argument("--audio-root", required=True, type=Path, help="folder the manifest's audio paths are relative to")
    parser.add_argument("--out-manifest", required=True, type=Path)
    parser.add_argument("--audio-dir", required=True, type=Path, help="cache folder for the 16 kHz FLAC files")
    parser.add_argument("--max-duration-s", type=float, default=30.0, help="longer recordings are rejected")
    parser.add_argument("--on-bad-audio", choices=BAD_AUDIO_MODES, default="error")
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    utterances = utterances_from_frame(read_manifest(args.manifest))
    log.info("ingesting audio of %d utterances from %s", len(utterances), args.manifest)
    kept, report = ingest_utterances(
        utterances, args.audio_root, args.audio_dir, max_duration_s=args.max_duration_s,
        on_bad_audio=args.on_bad_audio, threads=args.threads,
    )
    for reason, errors in sorted(report.rejected.items()):
        log.warning("dropped %d utterance(s) with %s audio", len(errors), reason)
    if utterances and not kept:
        raise DataError(f"all {len(utterances)} utterances were rejected; nothing to write", args.manifest)
    write_manifest(kept, args.out_manifest)
    total = sum(u.duration_s for u in kept)
    log.info("wrote %s: %d utterances, %.1f h of audio", args.out_manifest, len(kept), total / 3600)
    return 0
