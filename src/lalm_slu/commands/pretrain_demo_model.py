"""Pretrain the demo model: speech → transcript and text copy, audio tower frozen (see demo_model/pretrain.py)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from lalm_slu.records import read_manifest
from lalm_slu.speech.tts import Voice, pick_voice


def add_arguments(parser):
    parser.add_argument("--model-dir", required=True, help="the built (untrained) demo model")
    parser.add_argument("--train-manifests", nargs="+", required=True, help="train/dev manifests (text only used)")
    parser.add_argument("--eval-manifests", nargs="+", required=True, help="held-out utterances for WER")
    parser.add_argument(
        "--voices-json", required=True, help='{"en": {"train": [voice records], "test": [...]}, ...} (config format)'
    )
    parser.add_argument("--voices-per-sentence", type=int, default=1)
    parser.add_argument("--min-clips-per-lang", type=int, default=1500, help="more voices for small languages")
    parser.add_argument("--max-sentences-per-lang", type=int, default=20000)
    parser.add_argument("--eval-per-lang", type=int, default=200)
    parser.add_argument("--settings", default="{}", help="JSON overrides of PretrainConfig fields")
    parser.add_argument("--work-dir", required=True, help="checkpoints + synthesized audio (kept across runs)")
    parser.add_argument("--out-dir", required=True)


def voice_pools(voices_json: str) -> dict[str, dict[str, list[Voice]]]:
    from lalm_slu.speech.synthesis import voices_from_json

    raw = json.loads(voices_json)
    pools = {lang: {role: voices_from_json(records) for role, records in roles.items()} for lang, roles in raw.items()}
    for lang, roles in pools.items():
        shared = {v.name for v in roles["train"]} & {v.name for v in roles["test"]}
        if shared:
            raise ValueError(f"--voices-json: {lang} train and test voices overlap: {sorted(shared)}")
    return pools


def unique_texts(manifests: list[str], allowed_splits: set[str]) -> dict[str, list[str]]:
    by_lang: dict[str, list[str]] = {}
    for path in manifests:
        frame = read_manifest(path)
        bad = set(frame["split"]) - allowed_splits
        if bad:
            raise ValueError(f"{path}: split(s) {sorted(bad)} not allowed here ({sorted(allowed_splits)})")
        for lang, group in frame.groupby("lang"):
            by_lang.setdefault(lang, []).extend(group["text"].tolist())
    return {lang: list(dict.fromkeys(texts)) for lang, texts in by_lang.items()}


def run(args):
    from lalm_slu.demo_model.pretrain import PretrainConfig, pretrain, synthesize_clips

    settings = json.loads(args.settings)
    unknown = set(settings) - {f.name for f in fields(PretrainConfig)}
    if unknown:
        raise ValueError(f"--settings: unknown keys {sorted(unknown)}")
    cfg = PretrainConfig(**settings)
    pools = voice_pools(args.voices_json)
    train = unique_texts(args.train_manifests, {"train", "dev"})
    held_out = unique_texts(args.eval_manifests, {"dev", "test"})
    rng = np.random.default_rng(cfg.seed)
    train_items, train_texts = [], []
    for lang in sorted(train):
        texts = train[lang]
        forbidden = {t.lower() for t in held_out.get(lang, [])}
        texts = [t for t in texts if t.lower() not in forbidden]
        if len(texts) > args.max_sentences_per_lang:
            texts = [texts[i] for i in sorted(rng.choice(len(texts), args.max_sentences_per_lang, replace=False))]
        train_texts += texts
        voices_per_sentence = max(args.voices_per_sentence, -(-args.min_clips_per_lang // max(1, len(texts))))
        for k in range(voices_per_sentence):
            train_items += [(t, lang, pick_voice(f"{lang}:{t}:{k}", pools[lang]["train"], cfg.seed)) for t in texts]
    eval_items = []
    for lang in sorted(held_out):
        texts = held_out[lang][: args.eval_per_lang]
        eval_items += [(t, lang, pick_voice(f"{lang}:{t}", pools[lang]["test"], cfg.seed)) for t in texts]
    work = Path(args.work_dir)
    train_clips = synthesize_clips(train_items, work / "train_audio")
    eval_list = synthesize_clips(eval_items, work / "eval_audio")
    eval_clips: dict = {}
    for clip in eval_list:
        eval_clips.setdefault(clip.lang, []).append(clip)
    pretrain(args.model_dir, args.out_dir, work, train_clips, train_texts, eval_clips, cfg)
