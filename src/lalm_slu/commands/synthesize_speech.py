"""Synthesize speech for every utterance of a manifest (16 kHz mono FLAC, eSpeak NG)."""

from __future__ import annotations

import json
import logging

from lalm_slu.config.settings import schema_default
from lalm_slu.data.records import DataError, read_manifest, utterances_from_frame, write_manifest
from lalm_slu.speech.synthesis import synthesize_utterances, voices_from_json

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument("--manifest", required=True, help="input manifest (text)")
    parser.add_argument("--out-manifest", required=True, help="output manifest with audio paths and durations")
    parser.add_argument("--audio-dir", required=True, help="directory for the FLAC files")
    parser.add_argument(
        "--voices-json",
        required=True,
        help='JSON list of voices for this split, e.g. [{"name": "en-us+m3", "rate_wpm": 160, "pitch": 50}]',
    )
    parser.add_argument("--seed", type=int, required=True, help="seeds voice choice and eSpeak NG's noise")
    # Defaults: the config's (the schema's), as the workflow passes them.
    parser.add_argument(
        "--threads",
        type=int,
        default=schema_default("resources", "synthesize_speech", "threads"),
        help="worker processes (does not change the audio); default: resources.synthesize_speech.threads",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=schema_default("speech", "tts", "chunk_size"),
        help="utterances per fresh process (changes the audio); default: speech.tts.chunk_size",
    )
    parser.add_argument(
        "--max-duration-s",
        type=float,
        default=schema_default("speech", "max_duration_s"),
        help="fail on longer utterances; default: speech.max_duration_s",
    )


def run(args):
    try:
        voices = voices_from_json(json.loads(args.voices_json))
    except (ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--voices-json: not a list of {{name, rate_wpm, pitch}} records ({error})") from None
    if not voices:
        raise SystemExit("--voices-json: no voices given")
    utterances = utterances_from_frame(read_manifest(args.manifest))
    log.info(
        "%s: %d utterances, voices %s, %d workers, chunks of %d",
        args.manifest,
        len(utterances),
        ", ".join(voice.key for voice in voices),
        args.threads,
        args.chunk_size,
    )
    try:
        synthesized = synthesize_utterances(
            utterances,
            args.audio_dir,
            voices,
            args.seed,
            workers=args.threads,
            chunk_size=args.chunk_size,
            max_duration_s=args.max_duration_s,
        )
    except DataError as error:
        raise DataError(str(error), args.manifest) from None
    write_manifest(synthesized, args.out_manifest)
    log.info("wrote %s", args.out_manifest)
