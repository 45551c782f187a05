"""`lalm-slu ingest-audio`: turn a manifest's recorded audio into checked 16 kHz mono FLAC.

Each row's `audio` (relative to --audio-root) is read, downmixed, resampled and written once into
--audio-dir; the output manifest points at those files and carries `duration_s`. Unreadable, empty,
silent, missing and over-long files stop the run (--on-bad-audio error) or are dropped and counted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lalm_slu.data.audio import BAD_AUDIO_MODES
from lalm_slu.data.recorded_audio import ingest_manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="input manifest (audio = recording file names)")
    parser.add_argument("--audio-root", required=True, type=Path, help="folder the manifest's audio paths are relative to")
    parser.add_argument("--out-manifest", required=True, type=Path)
    parser.add_argument("--audio-dir", required=True, type=Path, help="cache folder for the 16 kHz FLAC files")
    parser.add_argument("--max-duration-s", type=float, default=30.0, help="longer recordings are rejected")
    parser.add_argument("--on-bad-audio", choices=BAD_AUDIO_MODES, default="error")
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    ingest_manifest(args.manifest, args.audio_root, args.out_manifest, args.audio_dir, args.max_duration_s,
                    args.on_bad_audio, args.threads)
    return 0
