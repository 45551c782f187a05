"""Demo-model pretraining on the fine-tuning loop: a few steps lower the loss, a killed stage resumes to the
uninterrupted state, a stage of other settings never resumes another's checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lalm_slu.demo_model.build import build_demo_model
from lalm_slu.demo_model.pretrain import (
    INSTRUCTION_TASKS,
    PretrainConfig,
    batch_plan,
    pretrain,
    schedule,
    synthesize_clips,
    tasks_of_step,
)
from lalm_slu.model.loading import load_model_and_processor
from lalm_slu.speech.tts import Voice
from tiny_model import TINY_ARCHITECTURE, checkpoint_step, kill_process_tree, subprocess_env

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


def trained_weights(monkeypatch) -> dict:
    """Records the trainable weights (fp32) a pretraining run ends with, keyed by its output directory."""
    import lalm_slu.demo_model.pretrain as module

    ended = {}
    real_save = module.save_model

    def recording_save(model, processor, out_dir):
        ended[out_dir] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return real_save(model, processor, out_dir)

    monkeypatch.setattr(module, "save_model", recording_save)
    return ended


PRETRAIN_SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from lalm_slu.demo_model.pretrain import Clip, PretrainConfig, pretrain
args = json.loads(open(sys.argv[1]).read())
clips = [Clip(**clip) for clip in args["clips"]]
pretrain(args["model_dir"], args["out"], args["work"], clips, args["texts"], {"en": clips[:1]},
         PretrainConfig(**args["config"]))
"""


def pretrain_command(tmp_path, model_dir, clips, out: str, config: dict) -> list[str]:
    """A pretraining run in its own process, as the workflow's job runs it."""
    args = tmp_path / f"{out}.json"
    args.write_text(json.dumps({"model_dir": str(model_dir), "out": str(tmp_path / out), "work": str(tmp_path / f"{out}-work"),
                                "clips": [asdict(c) for c in clips], "texts": SENTENCES, "config": config}))
    return [sys.executable, "-c", PRETRAIN_SCRIPT, str(args)]


@pytest.mark.slow
def test_pretraining_killed_mid_stage_resumes_to_the_uninterrupted_state(tiny_setup, tmp_path):
    model_dir, clips = tiny_setup
    # Both segments (transcription with alignment, then instructions), a checkpoint every step.
    config = dict(steps=5, instruction_steps=4, instruction_warmup_steps=1, alignment_start_step=2, batch_size=4,
                  learning_rate=3e-3, warmup_steps=1, checkpoint_every=1, eval_every=1000, threads=1, seed=3)
    reference = subprocess.run(pretrain_command(tmp_path, model_dir, clips, "reference", config), env=subprocess_env(),
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-5000:]

    command = pretrain_command(tmp_path, model_dir, clips, "out", config)
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, env=subprocess_env(), stdout=log, stderr=log)
        while process.poll() is None and checkpoint_step(tmp_path / "out-work") < 6:  # inside the second segment
            time.sleep(0.005)
        kill_process_tree(process.pid)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert not (tmp_path / "out" / "pretraining_summary.json").exists()

    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert "resumed from" in rerun.stderr
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    actual = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "reference" / "pretraining_loss.csv"),
                                  pd.read_csv(tmp_path / "out" / "pretraining_loss.csv"))
    assert not (tmp_path / "out-work" / "checkpoints").exists()  # deleted once the stage's model is written


@pytest.mark.slow
def test_a_stopped_session_continues_and_a_changed_setting_starts_over(tiny_setup, tmp_path, monkeypatch, caplog):
    model_dir, clips = tiny_setup
    evaluation = {"en": clips[:1]}
    ended = trained_weights(monkeypatch)
    pretrain(model_dir, tmp_path / "a", tmp_path / "a_work", clips, SENTENCES, evaluation, _config())
    first = pretrain(model_dir, tmp_path / "b", tmp_path / "b_work", clips, SENTENCES, evaluation,
                     _config(stop_after_steps=3))
    assert first == {"steps_done": 3, "finished": False}
    assert not (tmp_path / "b").exists()
    # A session with another checkpoint interval continues the same stage.
    pretrain(model_dir, tmp_path / "b", tmp_path / "b_work", clips, SENTENCES, evaluation, _config(checkpoint_every=3))
    assert all(torch.equal(ended[tmp_path / "a"][n], ended[tmp_path / "b"][n]) for n in ended[tmp_path / "a"])

    pretrain(model_dir, tmp_path / "c", tmp_path / "c_work", clips, SENTENCES, evaluation,
             _config(stop_after_steps=3))
    caplog.clear()
    with caplog.at_level("WARNING"):
        summary = pretrain(model_dir, tmp_path / "c", tmp_path / "c_work", clips, SENTENCES, evaluation,
                           _config(learning_rate=1e-3))
    assert "written for other settings" in caplog.text
    losses = pd.read_csv(tmp_path / "c" / "pretraining_loss.csv")
    assert summary["finished"] and losses["step"].tolist() == list(range(1, 7))  # all six steps trained anew
    assert losses["lr"].max() == pytest.approx(1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("tower", [[], ["audio_tower.layers.3", "audio_tower.layer_norm"]], ids=["frozen", "top"])
def test_cached_encoder_frames_train_like_the_encoder_run_at_every_step(tiny_setup, tmp_path, tower, monkeypatch):
    model_dir, clips = tiny_setup
    evaluation = {"en": clips[:1]}
    ended = trained_weights(monkeypatch)
    trainable = PretrainConfig().trainable + tower
    for cached in (True, False):
        cfg = _config(steps=4, alignment_start_step=0, cache_encoder_frames=cached, trainable=trainable)
        pretrain(model_dir, tmp_path / f"{cached}_out", tmp_path / f"{cached}_work", clips, SENTENCES, evaluation, cfg)
    weights = {cached: ended[tmp_path / f"{cached}_out"] for cached in (True, False)}
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
    transcription, instructions = schedule(cfg)
    assert transcription.lr_at(9) < 1.5e-4  # near the end of the first cosine (floor 1e-4)
    assert instructions.lr_at(0) == pytest.approx(1e-4)  # warm-up restarts: 1/4 of the new peak
    assert instructions.lr_at(3) == pytest.approx(4e-4)
    assert 4e-5 < instructions.lr_at(9) < 8e-5  # its own cosine, towards its own floor
    assert [s.name for s in schedule(PretrainConfig(steps=0, instruction_steps=5))] == ["instructions"]
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


def _paired_batches(model_dir, chosen, task: str):
    """The tiny model, its processor, and `chosen` clips as one text batch and one speech batch of `task`, with the
    speech batch's projected audio frames."""
    from lalm_slu.data.audio import load_audio
    from lalm_slu.model.audio_encoding import projected_audio
    from lalm_slu.model.batches import ChatItem, Collator

    model, processor = load_model_and_processor(str(model_dir))
    collator = Collator(processor)
    instruction, answer = INSTRUCTION_TASKS[task]
    text_batch = collator([ChatItem(instruction, answer(c.text), text=c.text) for c in chosen])
    speech_batch = collator([ChatItem(instruction, answer(c.text), audio=load_audio(c.audio)) for c in chosen])
    audio = projected_audio(model, speech_batch["input_features"], speech_batch["feature_attention_mask"])
    return model, processor, text_batch, speech_batch, audio


def test_behaviour_alignment_vanishes_for_the_transcript_itself_and_not_for_its_clip(tiny_setup):
    from lalm_slu.demo_model.pretrain import behaviour_alignment_losses, shared_suffix_positions
    from lalm_slu.model.audio_encoding import merge_audio
    from lalm_slu.model.batches import ChatItem, Collator
    from lalm_slu.model.loss import answer_loss, answer_positions

    model_dir, clips = tiny_setup
    model, processor, text_batch, speech_batch, audio = _paired_batches(model_dir, clips[:3], "first_words")
    instruction, answer = INSTRUCTION_TASKS["first_words"]
    text_inputs = {key: text_batch[key] for key in ("input_ids", "attention_mask", "labels")}

    same_answer, kl, hidden, _ = behaviour_alignment_losses(model, text_inputs, text_inputs)
    assert kl.item() == pytest.approx(0.0, abs=1e-6) and hidden.item() == pytest.approx(0.0, abs=1e-6)
    assert same_answer.item() == pytest.approx(answer_loss(model, text_inputs).item(), rel=1e-5)

    speech_inputs = {"inputs_embeds": merge_audio(model, speech_batch["input_ids"], audio),
                     "attention_mask": speech_batch["attention_mask"], "labels": speech_batch["labels"]}
    speech_answer, kl, hidden, _ = behaviour_alignment_losses(model, speech_inputs, text_inputs)
    assert kl.item() > 1e-3 and hidden.item() > 1e-3
    assert speech_answer.item() == pytest.approx(answer_loss(model, speech_inputs).item(), rel=1e-5)
    (kl + hidden).backward()
    assert model.model.multi_modal_projector.linear.weight.grad.abs().sum() > 0

    # After the input: the instruction, the template and the answer, the same tokens in both batches.
    speech_positions, text_positions = shared_suffix_positions(
        speech_batch["input_ids"], speech_batch["attention_mask"], text_batch["input_ids"], text_batch["attention_mask"])
    assert len(speech_positions) == len(text_positions) > len(answer_positions(text_batch["labels"])[0])
    assert torch.equal(speech_batch["input_ids"].flatten()[speech_positions], text_batch["input_ids"].flatten()[text_positions])
    instruction_ids = processor.tokenizer(instruction, add_special_tokens=False)["input_ids"]
    assert all(token in text_batch["input_ids"].flatten()[text_positions].tolist() for token in instruction_ids)
    _, kl_after, hidden_after, _ = behaviour_alignment_losses(model, speech_inputs, text_inputs, speech_batch["input_ids"])
    assert kl_after.item() > 1e-3 and hidden_after.item() > 1e-3
    _, kl_same, _, _ = behaviour_alignment_losses(model, text_inputs, text_inputs, text_batch["input_ids"])
    assert kl_same.item() == pytest.approx(0.0, abs=1e-6)

    other = Collator(processor)([ChatItem(instruction, answer(c.text), text=c.text) for c in clips[3:6]])
    with pytest.raises(ValueError, match="tokenize differently"):
        behaviour_alignment_losses(model, speech_inputs,
                                   {key: other[key] for key in ("input_ids", "attention_mask", "labels")})


@pytest.mark.slow
def test_a_behaviour_alignment_stage_lowers_its_loss_with_the_llm_frozen(tiny_setup, tmp_path):
    model_dir, clips = tiny_setup
    cfg = _config(steps=0, instruction_steps=12, instruction_learning_rate=3e-3, instruction_warmup_steps=1,
                  text_fraction=0.0, distill_weight=1.0, hidden_weight=1.0,
                  trainable=["multi_modal_projector"], alignment_start_step=None)
    before, _ = load_model_and_processor(str(model_dir))
    pretrain(model_dir, tmp_path / "out", tmp_path / "work", clips, SENTENCES, {"en": clips[:2]}, cfg)
    losses = pd.read_csv(tmp_path / "out" / "pretraining_loss.csv")["loss"].tolist()
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    after = load_model_and_processor(str(tmp_path / "out"))[0].state_dict()
    changed = {name for name, value in before.state_dict().items() if not torch.equal(after[name], value)}
    assert changed and all("multi_modal_projector" in name for name in changed)


def _peaked(path: list[int], vocabulary: int = 9) -> np.ndarray:
    """Log-probabilities with each frame's mass on one token."""
    log_probs = np.full((len(path), vocabulary), np.log(0.01 / (vocabulary - 1)))
    log_probs[np.arange(len(path)), path] = np.log(0.99)
    return log_probs


def test_ctc_token_ends_mark_where_each_token_has_been_heard():
    from lalm_slu.demo_model.pretrain import ctc_token_ends

    # blank a a blank b blank: a is heard by frame 3 (b starts at 4), b by the end.
    assert ctc_token_ends(_peaked([0, 5, 5, 0, 7, 0]), [5, 7], blank=0) == [3, 5]
    # A repeated token needs a blank between its two emissions.
    assert ctc_token_ends(_peaked([5, 0, 5, 0]), [5, 5], blank=0) == [1, 3]
    assert ctc_token_ends(_peaked([5, 5]), [5, 5], blank=0) is None
    assert ctc_token_ends(_peaked([5]), [5, 7], blank=0) is None


def test_input_token_pairs_pair_each_transcript_token_with_a_frame_of_its_own_clip(tiny_setup):
    from lalm_slu.demo_model.pretrain import input_token_pairs
    from lalm_slu.model.batches import audio_token_count

    model_dir, clips = tiny_setup
    chosen = clips[:2]
    model, processor, text_batch, speech_batch, audio = _paired_batches(model_dir, chosen, "transcribe")
    audio = audio.detach()
    counts = [audio_token_count(int(n)) for n in speech_batch["feature_attention_mask"].sum(-1)]
    speech_positions, text_positions = input_token_pairs(
        model, processor, speech_batch["input_ids"], text_batch["input_ids"], list(audio.split(counts)),
        [c.text for c in chosen], _config())
    transcript_tokens = sum(len(processor.tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chosen)
    assert len(speech_positions) == len(text_positions) == transcript_tokens
    audio_token = model.config.audio_token_id
    assert (speech_batch["input_ids"].flatten()[speech_positions] == audio_token).all()
    width = speech_batch["input_ids"].shape[1]
    rows = speech_positions // width
    assert rows.tolist() == sorted(rows.tolist()) and set(rows.tolist()) == {0, 1}
    transcript = processor.tokenizer(chosen[0].text, add_special_tokens=False)["input_ids"]
    first_row = text_positions[text_positions < text_batch["input_ids"].shape[1]]
    assert text_batch["input_ids"].flatten()[first_row].tolist() == transcript
