"""The demo model's card (README.md beside its weights), filled from model_card.md.

The template uses `string.Template` (`${name}`) rather than `str.format` so that a card may quote JSON braces as
they are. Its fields: `audio_*` and `text_*` (the model's config.json), the summary's top-level values, and the
optional paragraphs below, computed here because each depends on the recipe.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.demo_model.instructions import TRANSCRIBE_INSTRUCTION
from lalm_slu.model.trainable import top_level

TEMPLATE = Path(__file__).with_name("model_card.md")


def _alignment(cfg: dict) -> str:
    if cfg.get("alignment_start_step") is None:
        return ""
    return (
        f"\n- From step {cfg['alignment_start_step']}: embedding alignment — CTC (weight {cfg['ctc_weight']}) of the"
        " projected audio frames against the transcript's tokens, scored by cosine similarity with the LLM's"
        f" token embeddings (scale {cfg['ctc_scale']}, blank = pad token), and a penalty (weight"
        f" {cfg['norm_weight']}) keeping projected frames at the token embeddings' norm (before it they were"
        " ~25x larger, and the LLM read speech and text in different ways)."
    )


def _instructions(cfg: dict) -> str:
    if not cfg.get("instruction_steps"):
        return ""
    weights = ", ".join(f"{name} {weight}" for name, weight in sorted(cfg["instruction_tasks"].items()))
    return (
        f"\n- Then {cfg['instruction_steps']} steps of instruction imitation (lr {cfg['instruction_learning_rate']},"
        f" warm-up {cfg['instruction_warmup_steps']}, cosine): speech and text items alike get one of several"
        f" instructions answered from the transcript alone (task weights: {weights}), so that the LLM follows"
        " an instruction the same way for audio as for text instead of transcribing every clip."
    )


def _behaviour_alignment(cfg: dict) -> str:
    if not (cfg.get("distill_weight") or cfg.get("hidden_weight")):
        return ""
    return (
        "\n- Behaviour alignment on every speech step: the same items with the transcript as text are the teacher"
        f" (no gradient); the clip's next-token distributions at the answer positions learn the teacher's (KL,"
        f" weight {cfg['distill_weight']}) and so do every LLM layer's hidden states there (relative squared error,"
        f" weight {cfg['hidden_weight']}), so that the LLM reads a clip in the states it reads its transcript in,"
        " the states text-only fine-tuning changes."
    )


def _transcription(summary: dict) -> str:
    """The transcription stage, or for a continuation the stage it continued; then any kept LLM layers."""
    cfg = summary["config"]
    text = ""
    if "continued_from" in summary:
        text = (
            f"\n- Continued from a checkpoint pretrained for {summary['continued_from']['steps']} steps (its recipe"
            " and WER: `continued_from` in pretraining_summary.json); this stage: batch"
            f" {cfg['batch_size']}, seed {cfg['seed']}, {cfg['text_fraction']:.0%} of steps text."
        )
    elif cfg["steps"]:
        text = (
            f'\n- Objective: answer "{TRANSCRIBE_INSTRUCTION}" with the transcript, for speech input'
            f" (speech → transcript) and for the written transcript (copy), {cfg['text_fraction']:.0%} of steps"
            f" text: {cfg['steps']} steps, batch {cfg['batch_size']}, AdamW lr {cfg['learning_rate']} (warm-up"
            f" {cfg['warmup_steps']}, cosine to {cfg['min_lr_ratio']} of peak), seed {cfg['seed']}; trained:"
            f" {', '.join(cfg['trainable'])}."
        )
    if cfg.get("keep_language_model_layers") is not None:
        text += (
            f" The stage began by keeping LLM layers {cfg['keep_language_model_layers']} of the model it started"
            " from and dropping the others; its training lets the kept layers adjust to their new neighbours."
        )
    return text


def write_model_card(out_dir: str | Path, summary: dict) -> Path:
    """README.md beside the weights: what the model is, how it was made, what it measures.

    A field the template names but neither config.json nor the summary provides raises KeyError naming it."""
    out_dir = Path(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    cfg = summary["config"]
    tower_parts = [name for name in cfg["trainable"] if top_level(name) == "audio_tower"]
    fields = {
        **{f"audio_{key}": value for key, value in config["audio_config"].items()},
        **{f"text_{key}": value for key, value in config["text_config"].items()},
        **summary,
        "window_s": config["audio_config"]["max_source_positions"] // 50,  # 50 encoder positions a second
        "tower": f"partly trained in pretraining ({', '.join(tower_parts)})" if tower_parts else "kept frozen",
        "transcription": _transcription(summary),
        "alignment": _alignment(cfg),
        "instructions": _instructions(cfg),
        "behaviour_alignment": _behaviour_alignment(cfg),
        "wall_time_s": summary.get("wall_time_s_total", summary["wall_time_s_this_session"]),
        "wer_rows": "\n".join(f"| {lang} | {wer:.3f} | {summary['eval_utterances'][lang]} |"
                              for lang, wer in sorted(summary["final_wer"].items())),
        "rebuild_rule": "continue_demo_model" if "continued_from" in summary else "pretrain_demo_model",
    }
    card = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(fields)
    return write_text_atomic(out_dir / "README.md", card)
