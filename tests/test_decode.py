"""Decoding: one prediction line per gold utterance in manifest order; batching never changes an output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import INSTRUCTION, tiny_assets  # noqa: F401 - session fixture

from lalm_slu.model.batches import ChatItem, Collator, token_counts
from lalm_slu.evaluation.decode import batch_token_budget, decode, decode_manifest, generate_batch
from lalm_slu.evaluation.decode_batches import decode_batch_tokens, longest_first_batches
from lalm_slu.model.loading import load_model_and_processor
from lalm_slu.data.records import read_manifest
from lalm_slu.config.settings import DecodingSettings
from lalm_slu.data.audio import load_audio
from lalm_slu.config.files import architecture_path


REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "models/demo-qwen2-audio"
ARCHITECTURE_7B = architecture_path("Qwen2-Audio-7B-Instruct")


def settings(**overrides) -> dict:
    base = dict(
        num_beams=1, batch_size=3, max_new_tokens=12, instruction=INSTRUCTION, device="cpu", precision="fp32"
    )
    return {**base, **overrides}


def settings_view(**overrides) -> DecodingSettings:
    """settings() as the decode job reads them."""
    return DecodingSettings.from_dict(settings(**overrides), "test settings")


@pytest.fixture(scope="module")
def tiny(tiny_assets):  # noqa: F811
    model, processor = load_model_and_processor(str(tiny_assets.model_dir))
    return model.eval(), processor


@pytest.mark.parametrize("modality", ["speech", "text"])
def test_one_line_per_gold_utterance_in_manifest_order(tiny_assets, tmp_path, modality):  # noqa: F811
    out = tmp_path / "predictions.jsonl"
    # 8 utterances in batches of 3: the last batch is partial, and batches are formed longest first.
    summary = decode(str(tiny_assets.model_dir), [(modality, str(tiny_assets.speech_manifest), str(out))],
                     settings())[modality]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    gold = read_manifest(tiny_assets.speech_manifest)
    assert [line["id"] for line in lines] == gold["id"].tolist()
    for line in lines:
        assert {"id", "raw", "parsed", "scenario", "action", "entities", "error"} <= line.keys()
        assert isinstance(line["raw"], str) and isinstance(line["parsed"], bool)
    assert summary["utterances"] == len(gold)
    assert summary["parse_failures"] == sum(not line["parsed"] for line in lines)


def test_one_job_decodes_each_input_as_a_job_of_its_own_would(tiny_assets, tmp_path):  # noqa: F811
    model_dir, manifest = str(tiny_assets.model_dir), str(tiny_assets.speech_manifest)
    together = [("speech", manifest, str(tmp_path / "speech.jsonl")), ("text", manifest, str(tmp_path / "text.jsonl"))]
    summaries = decode(model_dir, together, settings())
    assert set(summaries) == {"speech", "text"}
    for modality, _, out in together:
        alone = tmp_path / f"alone.{modality}.jsonl"
        decode(model_dir, [(modality, manifest, str(alone))], settings())
        assert Path(out).read_text() == alone.read_text()
    with pytest.raises(ValueError, match="decoded once"):
        decode(model_dir, [together[0], together[0]], settings())


def one_at_a_time(model, processor, items, decoding) -> list[str]:
    collator = Collator(processor, for_generation=True)
    return [generate_batch(model, processor, collator, [item], decoding)[0] for item in items]


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
@pytest.mark.parametrize("modality", ["speech", "text"])
def test_batched_decoding_equals_one_utterance_at_a_time(tiny, tiny_assets, modality, num_beams):  # noqa: F811
    model, processor = tiny
    manifest = read_manifest(tiny_assets.speech_manifest)
    decoding = settings_view(num_beams=num_beams, batch_size=4)
    batched = [p["raw"] for p in decode_manifest(model, processor, manifest, modality, decoding, INSTRUCTION)]
    items = [
        (
            ChatItem(INSTRUCTION, audio=load_audio(row.audio))
            if modality == "speech"
            else ChatItem(INSTRUCTION, text=row.text)
        )
        for row in manifest.itertuples()
    ]
    single = one_at_a_time(model, processor, items, decoding)
    assert batched == single
    assert len(set(single)) > 1  # outputs depend on the input, so equality is not trivial


@pytest.mark.parametrize("modality, num_beams", [("text", 1), ("text", 3), ("speech", 1), ("speech", 3)])
def test_generated_text_is_what_stock_generate_returns_after_the_prompt(tiny, tiny_assets, modality, num_beams):  # noqa: F811
    # The decoder generates from merged prompt embeddings and a prompt cache (each clip encoded and each
    # prompt computed once, not once per beam); the stock `generate(**batch)` is the reference.
    model, processor = tiny
    rows = read_manifest(tiny_assets.speech_manifest).iloc[:3]
    items = [
        ChatItem(INSTRUCTION, audio=load_audio(row["audio"])) if modality == "speech" else ChatItem(INSTRUCTION, text=row["text"])
        for _, row in rows.iterrows()
    ]
    batch = Collator(processor, for_generation=True)(items)
    with torch.no_grad():
        generated = model.generate(
            **batch, max_new_tokens=12, do_sample=False, num_beams=num_beams, early_stopping=num_beams > 1
        )
    expected = processor.tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    collator = Collator(processor, for_generation=True)
    actual = generate_batch(model, processor, collator, items, settings_view(num_beams=num_beams))
    assert actual == [text.strip() for text in expected]


def test_beam_search_computes_each_prompt_once_then_one_position_per_beam(tiny, tiny_assets):  # noqa: F811
    model, processor = tiny
    rows = read_manifest(tiny_assets.speech_manifest).iloc[:3]
    items = [ChatItem(INSTRUCTION, text=text) for text in rows["text"]]
    collator = Collator(processor, for_generation=True)
    prompt_length = collator(items)["input_ids"].shape[1]
    shapes = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _module, _args, kwargs: shapes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        generate_batch(model, processor, collator, items, settings_view(num_beams=3))
    finally:
        hook.remove()
    assert shapes[0] == (3, prompt_length - 1)
    assert len(shapes) > 2 and all(shape == (9, 1) for shape in shapes[1:])


def test_speech_decoding_of_a_manifest_without_audio_fails_clearly(tiny, tiny_assets):  # noqa: F811
    model, processor = tiny
    manifest = read_manifest(tiny_assets.text_manifest)
    with pytest.raises(ValueError, match=r"8 utterances have no audio \(e\.g\. \['u0', 'u1', 'u2'\]\)"):
        decode_manifest(model, processor, manifest, "speech", settings_view(), INSTRUCTION)


def test_unknown_modality_is_refused(tiny, tiny_assets):  # noqa: F811
    model, processor = tiny
    with pytest.raises(ValueError, match="modality must be one of"):
        decode_manifest(model, processor, read_manifest(tiny_assets.text_manifest), "video", settings_view(), INSTRUCTION)


@pytest.mark.parametrize("modality", ["speech", "text"])
def test_prompt_token_counts_are_the_collator_s_unpadded_prompt_lengths(tiny, tiny_assets, modality):  # noqa: F811
    _, processor = tiny
    manifest = read_manifest(tiny_assets.speech_manifest)
    placeholders = [
        ChatItem(INSTRUCTION, audio=np.zeros(0)) if modality == "speech" else ChatItem(INSTRUCTION, text=text)
        for text in manifest["text"]
    ]
    counts = token_counts(processor, placeholders, manifest["duration_s"].tolist())
    items = [
        ChatItem(INSTRUCTION, audio=load_audio(row.audio)) if modality == "speech" else ChatItem(INSTRUCTION, text=row.text)
        for row in manifest.itertuples()
    ]
    batch = Collator(processor, for_generation=True)(items)
    assert counts == batch["attention_mask"].sum(-1).tolist()


def test_batches_are_formed_longest_first_up_to_the_token_budget_and_the_prompt_cap():
    prompt_tokens = [10, 40, 20, 40, 30, 5]
    # 2 beams, 10 new tokens: a batch holds its prompts × (its first, longest, prompt + 10) × 2 tokens.
    batches = longest_first_batches(prompt_tokens, max_prompts=3, max_tokens=200, num_beams=2, max_new_tokens=10)
    assert batches == [[1, 3], [4, 2], [0, 5]]  # 2·50·2 = 200 fits; 3·40·2 = 240 does not
    assert longest_first_batches(prompt_tokens, 4, None, 2, 10) == [[1, 3, 4, 2], [0, 5]]
    # A prompt over the budget on its own still gets a batch of its own.
    assert longest_first_batches([500, 1], 4, 100, 1, 10) == [[0], [1]]


def test_the_7b_s_token_budget_on_an_80_gib_card_is_the_hand_computed_one():
    layers, kv_heads, head_dim, hidden, mlp, vocab = 32, 32, 128, 4096, 11008, 156032
    audio_width, audio_ffn = 1280, 5120
    parameters = 8_397_094_912  # Qwen2-Audio-7B-Instruct, every weight (memory_plan.parameter_sizes)
    beams, new_tokens, bf16 = 3, 128, 2
    cache = 2 * layers * kv_heads * head_dim * bf16  # 0.5 MiB per token
    prompt_pass = bf16 * max(4 * hidden + 3 * mlp, 2 * (8 * audio_width + 2 * audio_ffn)) / beams
    logits = vocab * (bf16 + 3 * 4) / new_tokens
    free = 0.9 * ((80 - 4) * 2**30 - bf16 * parameters)
    expected = math.floor(free / (cache + prompt_pass + logits))
    architecture = json.loads(ARCHITECTURE_7B.read_text())
    assert decode_batch_tokens(architecture, 80, beams, new_tokens, bf16) == expected == 101_566
    # Paper-sized prompts (≤ 400 tokens: a 14 s clip and the instruction) fill 64 prompts × 3 beams.
    assert expected // ((400 + new_tokens) * beams) >= 64
    assert decode_batch_tokens(architecture, 141, beams, new_tokens, bf16) > 2 * expected


def test_a_card_too_small_for_the_weights_is_refused():
    architecture = json.loads(ARCHITECTURE_7B.read_text())
    with pytest.raises(ValueError, match="do not fit a 16 GiB card"):
        decode_batch_tokens(architecture, 16, 3, 128, 2)


def test_the_budget_is_the_setting_s_and_none_on_cpu_when_unset(tiny):
    model, _ = tiny
    assert batch_token_budget(model, settings_view(max_batch_tokens=4096)) == 4096
    assert batch_token_budget(model, settings_view()) is None
    with pytest.raises(ValueError, match="max_batch_tokens must be at least 1, not 0"):
        batch_token_budget(model, settings_view(max_batch_tokens=0))


@pytest.fixture(scope="module")
def demo():
    model, processor = load_model_and_processor(str(DEMO_MODEL))
    return model.eval(), processor


def fixed_batches(model, processor, manifest, modality: str, decoding: DecodingSettings) -> list[str]:
    """The decoder before token budgets: batches of batch_size, longest first by clip duration or characters."""
    rows = manifest.to_dict("records")
    lengths = [row["duration_s"] if modality == "speech" else len(row["text"]) for row in rows]
    order = sorted(range(len(rows)), key=lambda i: -lengths[i])
    collator, raw = Collator(processor, for_generation=True), {}
    for start in range(0, len(order), decoding.batch_size):
        indices = order[start : start + decoding.batch_size]
        items = [
            ChatItem(INSTRUCTION, audio=load_audio(rows[i]["audio"])) if modality == "speech"
            else ChatItem(INSTRUCTION, text=rows[i]["text"])
            for i in indices
        ]
        raw.update(zip(indices, generate_batch(model, processor, collator, items, decoding)))
    return [raw[i] for i in range(len(rows))]


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
@pytest.mark.parametrize("modality", ["speech", "text"])
def test_token_budgeted_batches_predict_what_fixed_batches_did_on_the_demo_model(
    demo, tiny_assets, modality, num_beams  # noqa: F811
):
    model, processor = demo
    manifest = read_manifest(tiny_assets.speech_manifest)
    fixed = fixed_batches(model, processor, manifest, modality, settings_view(num_beams=num_beams, batch_size=3))
    # A budget of two of the longest prompt's sequences: batches of other sizes and members than the fixed ones.
    prompts = [
        ChatItem(INSTRUCTION, audio=np.zeros(0)) if modality == "speech"
        else ChatItem(INSTRUCTION, text=text)
        for text in manifest["text"]
    ]
    lengths = token_counts(processor, prompts, manifest["duration_s"].tolist())
    budget = 2 * (max(lengths) + 12) * num_beams
    sizes = [len(batch) for batch in longest_first_batches(lengths, 8, budget, num_beams, 12)]
    assert sizes != [3, 3, 2] and sizes[0] == 2
    budgeted_settings = settings_view(num_beams=num_beams, batch_size=8, max_batch_tokens=budget)
    predictions = decode_manifest(model, processor, manifest, modality, budgeted_settings, INSTRUCTION)
    budgeted = [p["raw"] for p in predictions]
    assert budgeted == fixed
    assert len(set(fixed)) > 1  # outputs depend on the input, so equality is not trivial
