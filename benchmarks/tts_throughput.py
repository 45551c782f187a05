"""Throughput of the demo's speech front end: eSpeak NG synthesis + Whisper log-mel features.

Synthesizes N MASSIVE sentences with the pipeline's own code path (fresh process per chunk,
FLAC written), then computes 80-bin log-mel features for every file with the feature
extractor the model uses, split over the same number of worker processes, once padded to
Whisper's 30 s window and once unpadded. Writes utterances per second for each stage and
for synthesis + features together to a JSON file (with the load average: the numbers only
mean something on an otherwise idle machine).

    python benchmarks/tts_throughput.py --utterances 1000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

from lalm_slu.data.records import Utterance
from lalm_slu.speech.synthesis import synthesize_utterances, voices_from_json

VOICES = [
    {"name": "en-us+m1", "rate_wpm": 150, "pitch": 45},
    {"name": "en-us+m3", "rate_wpm": 170, "pitch": 50},
    {"name": "en-us+f2", "rate_wpm": 160, "pitch": 60},
    {"name": "en-us+f4", "rate_wpm": 180, "pitch": 55},
]


def read_sentences(path: Path, count: int) -> list[str]:
    sentences = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            sentences.append(json.loads(line)["utt"])
            if len(sentences) == count:
                break
    if len(sentences) < count:
        raise SystemExit(f"{path}: only {len(sentences)} sentences, {count} requested")
    return sentences


def log_mel_features(task: tuple[list[str], str]) -> float:
    """Seconds to compute Whisper log-mel features for a shard (after the one-off imports),
    padded to the extractor's 30 s window ("max_length", as the stock processor does) or to
    the utterance itself ("longest", as a length-aware encoder would)."""
    import soundfile
    from transformers import WhisperFeatureExtractor

    paths, padding = task
    extractor = WhisperFeatureExtractor(feature_size=80)
    started = time.perf_counter()
    for path in paths:
        audio, rate = soundfile.read(path, dtype="float32")
        extractor(audio, sampling_rate=rate, return_tensors="np", padding=padding)
    return time.perf_counter() - started


def time_features(paths: list[str], workers: int, padding: str) -> float:
    """Wall time of the slowest of `workers` parallel shards."""
    shards = [(paths[worker::workers], padding) for worker in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return max(pool.map(log_mel_features, shards, chunksize=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-source", type=Path, default=Path("data/massive/en-US.jsonl"))
    parser.add_argument("--utterances", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tts_throughput.json"))
    args = parser.parse_args()

    sentences = read_sentences(args.text_source, args.utterances)
    utterances = [
        Utterance(f"bench{i:05d}", "massive", "en", "train", text, "bench", "bench") for i, text in enumerate(sentences)
    ]
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        synthesized = synthesize_utterances(
            utterances, scratch, voices_from_json(VOICES), seed=0, workers=args.workers, chunk_size=args.chunk_size
        )
        synthesis_s = time.perf_counter() - started

        paths = [utt.audio for utt in synthesized]
        features_s = {padding: time_features(paths, args.workers, padding) for padding in ("max_length", "longest")}

    audio_s = sum(utt.duration_s for utt in synthesized)
    result = {
        "utterances": len(utterances),
        "workers": args.workers,
        "chunk_size": args.chunk_size,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "audio_hours": round(audio_s / 3600, 3),
        "synthesis_s": round(synthesis_s, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "synthesis_utt_per_s": round(len(utterances) / synthesis_s, 1),
    }
    for padding, name in (("max_length", "30s_window"), ("longest", "unpadded")):
        seconds = features_s[padding]
        result[f"features_{name}_utt_per_s"] = round(len(utterances) / seconds, 1)
        result[f"combined_{name}_utt_per_s"] = round(len(utterances) / (synthesis_s + seconds), 1)
        result[f"combined_{name}_realtime_factor"] = round(audio_s / (synthesis_s + seconds), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
