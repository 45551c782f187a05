"""Demo-model pretraining: a few steps lower the loss, and an interrupted run resumes to the same state."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lalm_slu.demo_model.build import build_demo_model
from lalm_slu.demo_model.pretrain import (
    INSTRUCTION_TASKS,
    PretrainConfig,
    batch_plan,
    lr_at,
    pretrain,
    synthesize_clips,
    tasks_of_step,
)
from lalm_slu.model_loading import load_model_and_processor
from lalm_slu.speech.tts import Voice
from tiny_model import TINY_ARCHITECTURE

SENTENCES = [
    "wake me up at five am",
    "what is the weather in paris",
    "play some jazz music",
    "turn off the kitchen lights",
    "set a timer for ten minutes",
    "how tall is the eiffel tower",
    "remind me to call mom tomorrow",
    "order a pizza for dinner",
]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    model_dir = build_demo_model(SENTENCES, root / "built", TINY_ARCHITECTURE)
    voice = Voice("en-us+m3", 180, 50)
    clips = synthesize_clips([(s, "en", voice) for s in SENTENCES], root / "audio")
    return model_dir, clips


def _config(**overrides) -> PretrainConfig:
    base = dict(steps=6, batch_size=4, learning_rate=3e-3, warmup_steps=1, checkpoint_every=2, eval_every=1000,
                text_fraction=0.25, threads=1, seed=3)
    return PretrainConfig(**{**base, **overrides})


def test_batch_plan_is_a_pure_function_of_seed_and_step():
    lengths = [float(i % 7) for i in range(100)]
    cfg = _config(batch_size=8)
    assert batch_plan(lengths, 50, cfg, 17) == batch_plan(lengths, 50, cfg, 17)
    assert batch_plan(lengths, 50, cfg, 17) != batch_plan(lengths, 50, cfg, 18)
    assert all(len(batch_plan(lengths, 50, cfg, s)) == 8 for s in range(60))


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(tiny_setup, tmp_path):
    model_dir, clips = tiny_setup
    cfg = _config(steps=12)
    summary = pretrain(model_dir, tmp_path / "out", tmp_path / "work", clips, SENTENCES, {"en": clips[:2]}, cfg)
    losses = [float(line.split(",")[1]) for line in (tmp_path / "out" / "pretraining_loss.csv").read_text().split()[1:]]
    assert summary["finished"] and len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert set(summary["final_wer"]) == {"en"}


@pytest.mark.slow
def test_interrupted_pretraining_resumes_to_the_same_state(tiny_setup, tmp_path):
    model_dir, clips = tiny_setup
    evaluation = {"en": clips[:1]}
    pretrain(model_dir, tmp_path / "a_out", tmp_path / "a_work", clips, SENTENCES, evaluation, _config())
    first = pretrain(model_dir, tmp_path / "b_out", tmp_path / "b_work", clips, SENTENCES, evaluation,
                     _config(stop_after_steps=3))
    assert first == {"steps_done": 3, "finished": False}
    assert not (tmp_path / "b_out").exists()
    pretrain(model_dir, tmp_path / "b_out", tmp_path / "b_work", clips, SENTENCES, evaluation, _config())
    uninterrupted = load_file(str(tmp_path / "a_work" / "checkpoint" / "trainable.safetensors"))
    resumed = load_file(str(tmp_path / "b_work" / "checkpoint" / "trainable.safetensors"))
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    history_a = json.loads((tmp_path / "a_out" / "pretraining_summary.json").read_text())
    assert history_a["steps"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("tower", [[], ["audio_tower.layers.3", "audio_tower.layer_norm"]], ids=["frozen", "top"])
def test_cached_encoder_frames_train_like_the_encoder_run_at_every_step(tiny_setup, tmp_path, tower):
    model_dir, clips = tiny_setup
    evaluation = {"en": clips[:1]}
    weights = {}
    trainable = PretrainConfig().trainable + tower
    for cached in (True, False):
        cfg = _config(steps=4, alignment_start_step=0, cache_encoder_frames=cached, trainable=trainable)
        pretrain(model_dir, tmp_path / f"{cached}_out", tmp_path / f"{cached}_work", clips, SENTENCES, evaluation, cfg)
        weights[cached] = load_file(str(tmp_path / f"{cached}_work" / "checkpoint" / "trainable.safetensors"))
    initial = load_model_and_processor(str(model_dir))[0].state_dict()
    for name, value in weights[True].items():
        # AdamW moves every weight by ~lr per step whatever its gradient's size, so float noise in a
        # near-zero gradient can differ by up to ~lr; a wrong frame moves whole tensors further.
        assert torch.allclose(value, weights[False][name], atol=1e-4), name
    moved = [n for n in weights[True] if "multi_modal_projector" in n or "audio_tower" in n]
    assert any("audio_tower" in n for n in moved) == bool(tower)
    assert moved and all(not torch.allclose(weights[True][n], initial[n]) for n in moved)


@pytest.mark.slow
def test_continued_pretraining_keeps_the_earlier_recipe_and_can_drop_llm_layers(tiny_setup, tmp_path):
    model_dir, clips = tiny_setup
    evaluation = {"en": clips[:1]}
    pretrain(model_dir, tmp_path / "first", tmp_path / "first_work", clips, SENTENCES, evaluation, _config(steps=3))
    cfg = _config(steps=0, instruction_steps=2, instruction_warmup_steps=1, keep_language_model_layers=[1])
    summary = pretrain(tmp_path / "first", tmp_path / "second", tmp_path / "second_work", clips, SENTENCES,
                       evaluation, cfg)
    assert summary["steps"] == 2 and summary["continued_from"]["steps"] == 3
    card = (tmp_path / "second" / "README.md").read_text()
    assert "Continued from a checkpoint pretrained for 3 steps" in card
    assert "Then 2 steps of instruction imitation" in card
    assert "keeping LLM layers [1] of the model it started from" in card
    assert len(load_model_and_processor(str(tmp_path / "second"))[0].model.language_model.layers) == 1


def test_cached_encoder_frames_need_a_frozen_audio_tower():
    with pytest.raises(ValueError, match="frozen audio tower"):
        PretrainConfig(trainable=["audio_tower", "language_model"], cache_encoder_frames=True)
    with pytest.raises(ValueError, match="'audio_tower.conv1'"):
        PretrainConfig(trainable=["audio_tower.conv1", "language_model"], cache_encoder_frames=True)
    upper = PretrainConfig(trainable=["audio_tower.layers.3", "audio_tower.layers.2", "audio_tower.layer_norm"])
    assert upper.first_trained_encoder_layer(4) == 2
    assert PretrainConfig(trainable=["audio_tower.layer_norm"]).first_trained_encoder_layer(4) == 4
    assert PretrainConfig().first_trained_encoder_layer(4) is None


def test_instruction_stage_follows_transcription_with_its_own_schedule_and_task_mix():
    cfg = PretrainConfig(steps=10, warmup_steps=2, learning_rate=1e-3, instruction_steps=10,
                         instruction_learning_rate=4e-4, instruction_warmup_steps=4, min_lr_ratio=0.1,
                         instruction_tasks={"transcribe": 1.0, "count_words": 1.0})
    assert cfg.total_steps == 20
    assert tasks_of_step(cfg, 9, 16) == ["transcribe"] * 16
    drawn = [task for step in range(10, 20) for task in tasks_of_step(cfg, step, 16)]
    assert set(drawn) == {"transcribe", "count_words"}
    assert tasks_of_step(cfg, 12, 16) == tasks_of_step(cfg, 12, 16)  # a pure function of (seed, step)
    assert lr_at(9, cfg) < 1.5e-4  # near the end of the first cosine (floor 1e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-4)  # warm-up restarts: 1/4 of the new peak
    assert lr_at(13, cfg) == pytest.approx(4e-4)
    with pytest.raises(ValueError, match="unknown tasks \\['summarize'\\]"):
        tasks_of_step(PretrainConfig(steps=0, instruction_steps=1, instruction_tasks={"summarize": 1.0}), 0, 1)


def test_instruction_answers_come_from_the_transcript_alone():
    answers = {name: answer("set an alarm for seven am") for name, (_, answer) in INSTRUCTION_TASKS.items()}
    assert answers == {
        "transcribe": "set an alarm for seven am",
        "quote_json": '{"text": "set an alarm for seven am"}',
        "first_words": "set an alarm",
        "last_words": "seven am",
        "count_words": '{"words": 6}',
        "long_words_json": '{"first": "set", "last": "am", "long_words": []}',
    }
    shaped = json.loads(INSTRUCTION_TASKS["long_words_json"][1]("remind me tomorrow about the meeting"))
    assert shaped["long_words"] == [{"position": 3, "word": "tomorrow"}, {"position": 6, "word": "meeting"}]


@pytest.mark.slow
def test_pretraining_stages_run_in_order_and_a_rerun_skips_finished_ones(tiny_setup, tmp_path, monkeypatch):
    from lalm_slu.commands import pretrain_demo_model as command

    model_dir, clips = tiny_setup
    stages = command.stage_configs([{"steps": 2, "batch_size": 4, "threads": 1, "eval_every": 1000},
                                    {"steps": 0, "instruction_steps": 2, "batch_size": 4, "threads": 1,
                                     "instruction_tasks": {"long_words_json": 1.0}}])
    summary = command.run_stages(model_dir, tmp_path / "out", tmp_path / "work", stages, clips, SENTENCES,
                                 {"en": clips[:1]})
    assert summary["steps"] == 2 and summary["continued_from"]["steps"] == 2
    assert (tmp_path / "work" / "stage1" / "model" / "config.json").exists()
    assert json.loads((tmp_path / "out" / "pretraining_summary.json").read_text()) == summary
    ran = []
    monkeypatch.setattr("lalm_slu.demo_model.pretrain.pretrain", lambda model, out, *a: ran.append(model) or {})
    command.run_stages(model_dir, tmp_path / "out2", tmp_path / "work", stages, clips, SENTENCES, {})
    assert ran == [tmp_path / "work" / "stage1" / "model"]  # stage 1 is done: only stage 2 runs again


def test_pretraining_stage_settings_are_all_checked_before_any_runs():
    from lalm_slu.commands.pretrain_demo_model import stage_configs

    assert len(stage_configs({"steps": 3})) == 1
    with pytest.raises(ValueError, match="stage 2: unknown keys \\['stpes'\\]"):
        stage_configs([{"steps": 3}, {"stpes": 3}])
    with pytest.raises(ValueError, match="unknown tasks"):
        stage_configs([{"steps": 3}, {"instruction_tasks": {"summarize": 1.0}}])


def test_kept_language_model_layers_keep_their_weights_and_reload_at_the_new_depth(tmp_path):
    from lalm_slu.demo_model.build import keep_language_model_layers, save_model

    three_layers = {**TINY_ARCHITECTURE, "text": {**TINY_ARCHITECTURE["text"], "num_hidden_layers": 3}}
    model_dir = build_demo_model(SENTENCES, tmp_path / "built", three_layers)
    model, processor = load_model_and_processor(str(model_dir))
    original = [layer.state_dict() for layer in model.model.language_model.layers]
    keep_language_model_layers(model, [0, 2])
    save_model(model, processor, tmp_path / "shallow")
    reloaded, _ = load_model_and_processor(str(tmp_path / "shallow"))
    layers = reloaded.model.language_model.layers
    assert reloaded.config.text_config.num_hidden_layers == 2 and len(layers) == 2
    for layer, source in zip(layers, [original[0], original[2]]):
        for name, value in layer.state_dict().items():
            assert torch.equal(value, source[name].to(torch.float16).to(value.dtype)), name
    # Generation reads the KV cache by layer position: cached and uncached decoding must agree.
    prompt = processor.tokenizer("wake me up at", return_tensors="pt")
    cached = reloaded.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = reloaded.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    for bad in ([1, 0], [0, 0], [2], []):
        with pytest.raises(ValueError, match="keep_language_model_layers"):
            keep_language_model_layers(reloaded, bad)
    with pytest.raises(ValueError, match=r"keep_language_model_layers: \[2, 1\]"):
        PretrainConfig(keep_language_model_layers=[2, 1])
