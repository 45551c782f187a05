"""Model loading and batch building: prompts as the stock processor renders them, answer-only labels, padding
sides, one loader for local and hub models, save/load round trip, and the length-aware encoder path."""

from __future__ import annotations

import socket

import huggingface_hub
import pytest
import torch
from tiny_model import INSTRUCTION, tiny_assets  # noqa: F401 - session fixture
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from lalm_slu.model import loading as model_loading
from lalm_slu.model.audio_encoding import encoded_audio, encoded_audio_from_layer
from lalm_slu.model.batches import IGNORE_INDEX, ChatItem, Collator, audio_features, render_prompt
from lalm_slu.model.length_aware_encoder import LengthAwareQwen2AudioEncoder, make_encoder_length_aware
from lalm_slu.model.loss import answer_loss, is_right_padded
from lalm_slu.model.loading import ModelNotAvailableError, load_model_and_processor
from lalm_slu.data.records import read_manifest
from lalm_slu.data.audio import load_audio
from lalm_slu.model.trainable import set_trainable

HUB_ID = "Qwen/Qwen2-Audio-7B-Instruct"


@pytest.fixture(scope="module")
def tiny(tiny_assets):  # noqa: F811
    model, processor = load_model_and_processor(str(tiny_assets.model_dir))
    return model.eval(), processor


@pytest.fixture(scope="module")
def clips(tiny_assets):  # noqa: F811
    """(text, answer, waveform) of every tiny utterance, shortest and longest first."""
    from lalm_slu.data.slu_json import format_target

    rows = read_manifest(tiny_assets.speech_manifest).sort_values("duration_s", ascending=False)
    return [(r.text, format_target(r.scenario, r.action, r.entities), load_audio(r.audio)) for r in rows.itertuples()]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def speech_item(clip, with_answer=True) -> ChatItem:
    return ChatItem(INSTRUCTION, clip[1] if with_answer else None, audio=clip[2])


def text_item(clip, with_answer=True) -> ChatItem:
    return ChatItem(INSTRUCTION, clip[1] if with_answer else None, text=clip[0])


def unpadded(row_ids: torch.Tensor, row_mask: torch.Tensor) -> list[int]:
    return row_ids[row_mask.bool()].tolist()


def test_audio_placeholder_expands_as_the_stock_processor_does(tiny, clips):
    model, processor = tiny
    items = [speech_item(clips[0], False), speech_item(clips[-1], False)]
    ours = Collator(processor, for_generation=True)(items)
    stock = processor(
        text=[render_prompt(processor, it) for it in items],
        audio=[it.audio for it in items],
        sampling_rate=16_000,
        return_tensors="pt",
        padding=True,
    )
    audio_token = processor.audio_token_id
    stock_counts = (stock["input_ids"] == audio_token).sum(-1).tolist()
    assert (ours["input_ids"] == audio_token).sum(-1).tolist() == stock_counts
    # ~25 tokens per second: the long clip gets more tokens than the short one.
    assert stock_counts[0] > stock_counts[1] > 0
    for row in range(2):
        assert unpadded(ours["input_ids"][row], ours["attention_mask"][row]) == unpadded(
            stock["input_ids"][row], stock["attention_mask"][row]
        )


def test_labels_cover_only_the_answer_and_its_end_token(tiny, clips):
    _, processor = tiny
    for item in (speech_item(clips[0]), text_item(clips[1])):
        batch = Collator(processor)([item])
        labels = batch["labels"][0]
        learned = labels[labels != IGNORE_INDEX]
        assert processor.tokenizer.decode(learned) == item.answer + "<|im_end|>"
        # Learned positions are one contiguous run at the end of the prompt (only the template's newline follows).
        positions = (labels != IGNORE_INDEX).nonzero().flatten()
        assert positions.tolist() == list(range(positions[0], positions[0] + len(learned)))
        assert torch.equal(batch["input_ids"][0, positions], learned)
        assert positions[-1] == batch["input_ids"].shape[1] - 2


def test_training_pads_right_and_generation_pads_left(tiny, clips):
    _, processor = tiny
    items = [text_item(clips[0]), text_item(clips[-1])]  # the shorter transcript needs padding
    pad = processor.tokenizer.pad_token_id
    training = Collator(processor)(items)
    generation = Collator(processor, for_generation=True)(items)
    for batch, pad_at in ((training, -1), (generation, 0)):
        mask = batch["attention_mask"]
        assert mask[0].all() and not mask[1].all()
        assert mask[1, pad_at] == 0 and mask[1, -1 - pad_at] == 1
        assert (batch["input_ids"][mask == 0] == pad).all()
    assert (training["labels"][training["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert "labels" not in generation


def test_mixed_batch_has_features_only_for_speech_items(tiny, clips):
    _, processor = tiny
    batch = Collator(processor)([speech_item(clips[0]), text_item(clips[1]), speech_item(clips[2])])
    assert batch["input_features"].shape[0] == 2
    has_audio = (batch["input_ids"] == processor.audio_token_id).any(-1).tolist()
    assert has_audio == [True, False, True]


def test_demo_directory_and_hub_id_go_through_the_same_loader(tiny_assets, monkeypatch, no_network):  # noqa: F811
    real_processor = AutoProcessor.from_pretrained.__func__
    real_model = Qwen2AudioForConditionalGeneration.from_pretrained.__func__
    seen = []

    def processor_from(cls, source, *args, **kwargs):
        seen.append(("processor", source))
        return real_processor(cls, str(tiny_assets.model_dir))

    def model_from(cls, source, *args, **kwargs):
        seen.append(("model", source))
        return real_model(cls, str(tiny_assets.model_dir), *args, **kwargs)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(model_loading.AutoProcessor, "from_pretrained", classmethod(processor_from))
    monkeypatch.setattr(model_loading.Qwen2AudioForConditionalGeneration, "from_pretrained", classmethod(model_from))
    for name in (HUB_ID, str(tiny_assets.model_dir)):
        seen.clear()
        model, _ = load_model_and_processor(name)
        assert seen == [("processor", name), ("model", name)]
        assert isinstance(model.model.audio_tower, LengthAwareQwen2AudioEncoder)


def test_offline_hub_id_missing_from_the_cache_fails_clearly(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(
        ModelNotAvailableError,
        match=r"'Qwen/Qwen2-Audio-7B-Instruct'.*not in the Hugging Face cache.*" r"offline \(HF_HUB_OFFLINE=1\)",
    ):
        load_model_and_processor(HUB_ID)


def test_offline_hub_id_in_the_cache_resolves_unchanged(tmp_path, monkeypatch, no_network):
    snapshot = tmp_path / "models--Qwen--Qwen2-Audio-7B-Instruct" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_loading.resolve_model_source(HUB_ID) == HUB_ID


def test_saved_model_reloads_with_the_stock_loaders_to_identical_logits(tiny, clips, tmp_path):
    model, processor = tiny
    trained = Qwen2AudioForConditionalGeneration(model.config)  # weights no fp16 file could hold exactly
    trained.load_state_dict({k: v + 1e-4 * torch.randn_like(v) for k, v in model.state_dict().items()})
    trained.eval()
    trained.save_pretrained(tmp_path, safe_serialization=True)
    processor.save_pretrained(tmp_path)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path).eval()
    items = [speech_item(clips[0]), text_item(clips[1])]
    batch = Collator(processor, length_aware=False)(items)  # stock 30-s features: both towers are stock
    assert all(torch.equal(batch[k], v) for k, v in Collator(reloaded_processor, length_aware=False)(items).items())
    with torch.no_grad():
        assert torch.equal(trained(**batch).logits, reloaded(**batch).logits)


def test_forward_and_greedy_generate_on_speech_and_text(tiny, clips):
    model, processor = tiny
    items = [speech_item(clips[0]), text_item(clips[1])]
    with torch.no_grad():
        loss = model(**Collator(processor)(items)).loss
        prompts = Collator(processor, for_generation=True)([speech_item(clips[0], False), text_item(clips[1], False)])
        generated = model.generate(**prompts, max_new_tokens=6, do_sample=False)
    assert torch.isfinite(loss) and loss > 0
    width = prompts["input_ids"].shape[1]
    assert torch.equal(generated[:, :width], prompts["input_ids"])
    assert generated.shape[1] > width


def answer_logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        logits = model(**batch).logits
    return logits[batch["labels"] != IGNORE_INDEX]


def test_length_aware_logits_equal_the_stock_30s_window(tiny, clips):
    model, processor = tiny
    for clip in (clips[0], clips[-1]):
        item = [speech_item(clip)]
        length_aware = Collator(processor, length_aware=True)(item)
        stock = Collator(processor, length_aware=False)(item)
        assert length_aware["input_features"].shape[-1] < stock["input_features"].shape[-1] // 10
        assert torch.equal(length_aware["input_ids"], stock["input_ids"])
        ours = answer_logits(model, length_aware)
        model.model.audio_tower.__class__ = Qwen2AudioEncoder
        try:
            reference = answer_logits(model, stock)
        finally:
            make_encoder_length_aware(model)
        # Every encoder position sees the same mel frames in both paths (the padding reaches past the convs'
        # receptive field), and padded keys get exactly zero attention, so only float summation order differs:
        # measured ~1.5e-6 on logits of magnitude ~0.7. Zero padding right at the clip end moved them by ~3e-3.
        torch.testing.assert_close(ours, reference, rtol=0, atol=2e-5)


def test_clip_logits_do_not_depend_on_the_other_clips_of_the_batch(tiny, clips):
    model, processor = tiny
    short = speech_item(clips[-1])
    alone = answer_logits(model, Collator(processor)([short]))
    batched = Collator(processor)([speech_item(clips[0]), short])
    with torch.no_grad():
        logits = model(**batched).logits[1]
    torch.testing.assert_close(logits[batched["labels"][1] != IGNORE_INDEX], alone, rtol=0, atol=2e-5)


@pytest.mark.parametrize("start_layer", [0, 3, 4])
def test_upper_encoder_layers_from_cached_states_equal_the_whole_tower(tiny, clips, start_layer):
    model, processor = tiny
    waveforms = [clips[0][2], clips[-1][2]]
    features, mask = audio_features(processor, waveforms)
    with torch.no_grad():
        whole = encoded_audio(model, features, mask)
        lengths, _ = model.model.audio_tower._get_feat_extract_output_lengths(mask.sum(-1))
        states = encoded_audio(model, features, mask, before_layer=start_layer).split(lengths.tolist())
        # Each clip's states come back alone and in a different order: batch-mates must not matter.
        upper = encoded_audio_from_layer(model, [states[1], states[0]], start_layer)
    frames = whole.shape[0]
    first = int(lengths[0] - 2) // 2 + 1
    assert upper.shape == whole.shape and frames == first + int(lengths[1] - 2) // 2 + 1
    torch.testing.assert_close(torch.cat([upper[frames - first :], upper[: frames - first]]), whole,
                               rtol=0, atol=2e-5)


def test_length_aware_encoder_rejects_odd_or_too_long_features(tiny):
    model, _ = tiny
    tower = model.model.audio_tower
    for frames in (101, 3002):
        with pytest.raises(ValueError, match="mel length"):
            tower(torch.zeros(1, 80, frames))


def test_set_trainable_unfreezes_exactly_the_named_modules(tiny_assets):  # noqa: F811
    model, _ = load_model_and_processor(str(tiny_assets.model_dir))
    counts = set_trainable(model, ["multi_modal_projector", "language_model"])
    assert counts["audio_tower"] == 0 and counts["lm_head"] == 0
    assert counts["multi_modal_projector"] > 0 and counts["language_model"] > 0
    set_trainable(model, ["audio_tower"])
    assert not model.model.audio_tower.embed_positions.weight.requires_grad  # the sinusoid table never trains
    assert model.model.audio_tower.conv1.weight.requires_grad
    with pytest.raises(ValueError, match="unknown trainable module 'encoder'"):
        set_trainable(model, ["encoder"])
    # A dotted path unfreezes that part only: here the top encoder layer, not the convolutions below it.
    top = len(model.model.audio_tower.layers) - 1
    counts = set_trainable(model, [f"audio_tower.layers.{top}"])
    assert counts["audio_tower"] == sum(p.numel() for p in model.model.audio_tower.layers[top].parameters())
    assert not model.model.audio_tower.conv1.weight.requires_grad
    with pytest.raises(ValueError, match="audio_tower.layers.99"):
        set_trainable(model, ["audio_tower.layers.99"])


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_answer_loss_equals_the_stock_loss_and_its_gradients(tiny_assets, clips, lora):  # noqa: F811
    from lalm_slu.model.trainable import apply_lora

    model, processor = load_model_and_processor(str(tiny_assets.model_dir))
    set_trainable(model, ["language_model", "lm_head"])
    if lora:
        model = apply_lora(model, {"rank": 4}, ["language_model", "lm_head"])
    # Mixed modalities and lengths, so padding and prompt positions are both present.
    batch = Collator(processor)([speech_item(clips[0]), text_item(clips[-1]), speech_item(clips[-1])])
    # Right padding present: answer_loss then attends causally without the mask, the stock loss with it.
    assert is_right_padded(batch["attention_mask"]) and not batch["attention_mask"].all()
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(compute):
        model.zero_grad(set_to_none=True)
        loss = compute()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    stock_loss, stock_grads = loss_and_grads(lambda: model(**batch).loss)
    loss, grads = loss_and_grads(lambda: answer_loss(model, batch))
    assert torch.allclose(loss, stock_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(stock_grads) > 0
    for grad, stock in zip(grads, stock_grads):
        assert torch.allclose(grad, stock, rtol=1e-4, atol=1e-6)


def test_only_trailing_padding_counts_as_right_padded():
    assert is_right_padded(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert not is_right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))
    assert not is_right_padded(None)
