"""Pretrain the demo model, in one stage or several (see demo_model/pretrain.py for the recipe)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from lalm_slu.config.settings import whole_default
from lalm_slu.data.records import read_manifest
from lalm_slu.speech.tts import Voice, pick_voice


def add_arguments(parser):
    parser.add_argument("--model-dir", required=True, help="the built (untrained) demo model")
    parser.add_argument("--train-manifests", nargs="+", required=True, help="train/dev manifests (text only used)")
    parser.add_argument("--eval-manifests", nargs="+", required=True, help="held-out utterances for WER")
    parser.add_argument(
        "--voices-json", required=True, help='{"en": {"train": [voice records], "test": [...]}, ...} (config format)'
    )
    # Defaults: the schema's (config demo_model.pretrain_options).
    options = whole_default("pretrain_options")
    parser.add_argument("--voices-per-sentence", type=int, default=options["voices_per_sentence"])
    parser.add_argument(
        "--min-clips-per-lang", type=int, default=options["min_clips_per_lang"], help="more voices for small languages"
    )
    parser.add_argument("--max-sentences-per-lang", type=int, default=options["max_sentences_per_lang"])
    parser.add_argument("--eval-per-lang", type=int, default=options["eval_per_lang"])
    parser.add_argument(
        "--settings", default="{}",
        help="JSON overrides of PretrainConfig fields; a list of them runs stages in order, each from the last",
    )
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
    from lalm_slu.demo_model.pretrain import synthesize_clips

    stages = stage_configs(json.loads(args.settings))
    cfg = stages[0]
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
    run_stages(args.model_dir, args.out_dir, work, stages, train_clips, train_texts, eval_clips)


def stage_configs(settings: dict | list) -> list:
    """One PretrainConfig per stage, all checked before the first one runs (hours before the last)."""
    from lalm_slu.demo_model.pretrain import PretrainConfig

    stages = settings if isinstance(settings, list) else [settings]
    known = {f.name for f in fields(PretrainConfig)}
    configs = []
    for number, stage in enumerate(stages, 1):
        unknown = set(stage) - known
        if unknown:
            raise ValueError(f"--settings: stage {number}: unknown keys {sorted(unknown)}")
        configs.append(PretrainConfig(**stage))
    if not configs:
        raise ValueError("--settings: an empty list of stages")
    return configs


def run_stages(model_dir, out_dir, work: Path, stages: list, train_clips, train_texts, eval_clips) -> dict:
    """Each stage continues from the one before; the last writes `out_dir`. A finished stage's model is kept
    (work/stageN/model), so a re-run resumes at the first unfinished stage."""
    from lalm_slu.demo_model.pretrain import pretrain

    summary: dict = {}
    for number, cfg in enumerate(stages, 1):
        last = number == len(stages)
        stage_work = work if len(stages) == 1 else work / f"stage{number}"
        stage_out = Path(out_dir) if last else stage_work / "model"
        if not last and (stage_out / "pretraining_summary.json").exists():
            model_dir = stage_out
            continue
        summary = pretrain(model_dir, stage_out, stage_work, train_clips, train_texts, eval_clips, cfg)
        if not summary.get("finished"):
            break  # stop_after_steps: the job ends here and resumes this stage next time
        model_dir = stage_out
    return summary
