"""Decoding: one prediction line per gold utterance in manifest order; batching never changes an output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_model import INSTRUCTION, tiny_assets  # noqa: F401 - session fixture

from lalm_slu.batches import ChatItem, Collator
from lalm_slu.decode import decode, decode_manifest, generate_batch
from lalm_slu.model_loading import load_model_and_processor
from lalm_slu.records import read_manifest
from lalm_slu.settings import DecodingSettings
from lalm_slu.speech.audio import load_audio


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
