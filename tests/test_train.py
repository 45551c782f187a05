"""The fine-tuning loop: freezing, curriculum phases, mixing ratios, LoRA, resume after SIGKILL, DDP, failures."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_model import (  # noqa: F401 - tiny_assets: session fixture
    INSTRUCTION,
    checkpoint_step,
    kill_process_tree,
    subprocess_env,
    tiny_assets,
)
from transformers import Qwen2AudioForConditionalGeneration

from lalm_slu.model import forward
from lalm_slu.training import finetune as train, items as training_data, loop as training_loop, run_identity
from lalm_slu.model.batches import ChatItem, Collator
from lalm_slu.training.checkpoints import DamagedCheckpoint
from lalm_slu.model.length_aware_encoder import LengthAwareQwen2AudioEncoder
from lalm_slu.data.mixtures import ManifestCache, with_item_data
from lalm_slu.model.loading import load_model_and_processor
from lalm_slu.model.trainable import apply_lora
from lalm_slu.data.records import DataError, read_manifest
from lalm_slu.data.audio import load_audio
from lalm_slu.training.finetune import finetune
from lalm_slu.training.items import load_items, micro_batches, sequence_lengths, to_chat_items

IDS = [f"u{i}" for i in range(8)]
LLM_ONLY = ["language_model", "lm_head"]


def write_mixture(path: Path, manifest: Path, rows: list[tuple[str, str, int]]) -> Path:
    """rows: (id, modality, phase); every id comes from `manifest`, its data joined as the mixing job joins it."""
    listing = pd.DataFrame(rows, columns=["id", "modality", "phase"])
    listing.insert(1, "lang", "en")
    listing["manifest"] = str(manifest)
    with_item_data(listing, ManifestCache()).to_parquet(path, index=False)
    return path


def make_settings(model_dir, phases, trainable=LLM_ONLY, lora=None, **training) -> dict:
    defaults = dict(
        per_device_batch_size=2,
        global_batch_size=4,
        seed=0,
        checkpoint_every_steps=100,
        group_by_length=True,
        length_aware=True,
        precision="fp32",
        device="cpu",
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
    )
    model = {"path": str(model_dir)}
    if lora:
        model["lora"] = lora
    return {
        "model": model,
        "training": {**defaults, **training},
        "scheme": {
            "name": "direct_mixing",  # a configured scheme: the finetune command checks its settings
            "trainable_modules": trainable,
            "phases": [dict(zip(("phase", "epochs", "learning_rate", "warmup_ratio"), p)) for p in phases],
        },
        "prompt": {"instruction": INSTRUCTION},
    }


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return {name: tensor.float() for name, tensor in load_file(str(model_dir / "model.safetensors")).items()}


def run_cli(mixture, settings, out_dir, work_dir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lalm_slu",
        "finetune",
        "--mixture",
        str(mixture),
        "--settings",
        json.dumps(settings),
        "--out-dir",
        str(out_dir),
        "--work-dir",
        str(work_dir),
    ]


def mixed_rows(phase=1) -> list[tuple[str, str, int]]:
    return [(i, "text", phase) for i in IDS] + [(i, "speech", phase) for i in IDS[:4]]


def test_sequence_lengths_are_the_collators_unpadded_lengths(tiny_assets, tmp_path):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    items = load_items(mixture, 1)
    _, processor = load_model_and_processor(str(tiny_assets.model_dir))
    collator = Collator(processor)
    actual = [int(collator(to_chat_items([it], INSTRUCTION))["attention_mask"].sum()) for it in items]
    assert sequence_lengths(items, processor, INSTRUCTION) == actual
    assert len({n for n, it in zip(actual, items) if it.modality == "speech"}) > 1  # clips differ in length


def test_length_grouping_batches_similar_lengths_and_keeps_every_item_once():
    items = [training_data.TrainItem(f"u{i}", "text", "", "", None, None) for i in range(64)]
    lengths = list(np.random.default_rng(0).integers(10, 200, size=64))
    grouped = micro_batches(items, lengths, 8, seed=0, phase=1, epoch=0)
    drawn = micro_batches(items, None, 8, seed=0, phase=1, epoch=0)
    assert sorted(i for b in grouped for i in b) == list(range(64)) == sorted(i for b in drawn for i in b)

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(grouped) < 0.8 * padded(drawn)
    assert grouped != micro_batches(items, lengths, 8, seed=0, phase=1, epoch=1)  # a new order every epoch


@pytest.mark.parametrize("modalities", [("text",), ("text", "speech")], ids=["text_only", "with_speech"])
def test_frozen_modules_stay_bitwise_unchanged_and_the_llm_trains(tiny_assets, tmp_path, modalities):  # noqa: F811
    rows = [(i, modality, 1) for modality in modalities for i in IDS]
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, rows)
    # Weight decay would move any parameter the optimizer holds, even one without gradient.
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], weight_decay=0.1)
    finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    before, after = weights(tiny_assets.model_dir), weights(tmp_path / "out")
    assert before.keys() == after.keys()
    # Saved files use Qwen2-Audio's original key layout (the LLM and its lm_head under "language_model.").
    frozen = [n for n in before if n.startswith(("audio_tower.", "multi_modal_projector."))]
    trained = [n for n in before if n.startswith("language_model.")]
    assert frozen and trained
    assert [n for n in frozen if not torch.equal(before[n], after[n])] == []
    assert [n for n in trained if torch.equal(before[n], after[n])] == []


def test_frozen_token_embeddings_stay_bitwise_unchanged_while_the_rest_of_the_llm_trains(
    tiny_assets, tmp_path  # noqa: F811
):
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], weight_decay=0.1, freeze_token_embeddings=True)
    finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    before, after = weights(tiny_assets.model_dir), weights(tmp_path / "out")
    embeddings = "language_model.model.embed_tokens.weight"
    assert torch.equal(before[embeddings], after[embeddings])
    trained = [n for n in before if n.startswith("language_model.") and n != embeddings]
    assert trained and [n for n in trained if torch.equal(before[n], after[n])] == []


def count_encoder_batches(monkeypatch) -> list[int]:
    """From now on, the clips in each batch the audio tower encodes, one entry per batch."""
    encoded = []
    real_forward = LengthAwareQwen2AudioEncoder.forward

    def counting_forward(self, input_features, *args, **kwargs):
        encoded.append(input_features.shape[0])
        return real_forward(self, input_features, *args, **kwargs)

    monkeypatch.setattr(LengthAwareQwen2AudioEncoder, "forward", counting_forward)
    return encoded


def test_cached_frozen_audio_trains_as_encoding_every_step_and_encodes_each_clip_once(
    tiny_assets, tmp_path, monkeypatch  # noqa: F811
):
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    encoded = count_encoder_batches(monkeypatch)
    plain = make_settings(tiny_assets.model_dir, [(1, 3, 2e-3, 0.0)])
    finetune(mixture, plain, tmp_path / "plain", tmp_path / "plain-work")
    clip_visits = sum(encoded)
    encoded.clear()
    cached = make_settings(tiny_assets.model_dir, [(1, 3, 2e-3, 0.0)], cache_frozen_audio=True)
    finetune(mixture, cached, tmp_path / "cached", tmp_path / "cached-work")
    assert clip_visits == 4 * 3 and encoded == [1] * 4  # 4 clips × 3 epochs, against each clip once, alone
    expected, actual = weights(tmp_path / "plain"), weights(tmp_path / "cached")
    # A clip encoded alone equals its in-batch encoding up to float summation order. AdamW scales each update to
    # about lr (2e-3) however small the gradient, so that noise reaches ~1e-5 on weights whose gradient is near 0.
    assert [n for n in expected if not torch.allclose(expected[n], actual[n], rtol=1e-3, atol=1e-4)] == []
    losses = [pd.read_csv(tmp_path / run / "loss.csv")["loss"] for run in ("plain", "cached")]
    assert np.allclose(losses[0], losses[1], rtol=1e-4)


def test_bf16_training_with_cached_audio_frames_runs_on_cpu(tiny_assets, tmp_path):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    settings = make_settings(tiny_assets.model_dir, [(1, 2, 2e-3, 0.0)], precision="bf16", cache_frozen_audio=True)
    summary = finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    losses = pd.read_csv(tmp_path / "out" / "loss.csv")["loss"]
    assert summary["optimizer_steps"] == 6 and np.isfinite(losses).all()
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    stored = load_file(str(tiny_assets.model_dir / "model.safetensors"))
    # Computed in bf16, kept in fp32, written in the base model's own dtype.
    assert summary["precision"] == {"compute": "bfloat16", "master_weights": "float32"}
    assert {t.dtype for t in saved.values()} == {t.dtype for t in stored.values()}


@pytest.mark.parametrize("audio_part", ["multi_modal_projector", "audio_tower.layers.3"])
def test_audio_cache_is_not_used_when_the_audio_path_trains(tiny_assets, tmp_path, monkeypatch, audio_part):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    built = []
    monkeypatch.setattr(train, "FrozenAudioCache", lambda *args: built.append(args))
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 2e-3, 0.0)], trainable=[audio_part, *LLM_ONLY],
                             cache_frozen_audio=True)
    finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    assert built == []


CURRICULUM = [(1, 2, 2e-3, 0.25), (2, 1, 5e-4, 0.5)]


@pytest.fixture(scope="module")
def curriculum_run(tiny_assets, tmp_path_factory):  # noqa: F811
    """Phase 1: the 8 transcripts, 2 epochs; phase 2: transcripts + 4 clips, 1 epoch, its own LR and warm-up.
    Records the trainable weights at every checkpoint save."""
    root = tmp_path_factory.mktemp("curriculum")
    rows = [(i, "text", 1) for i in IDS] + mixed_rows(phase=2)
    mixture = write_mixture(root / "mixture.parquet", tiny_assets.speech_manifest, rows)
    settings = make_settings(tiny_assets.model_dir, CURRICULUM, trainable=["multi_modal_projector", *LLM_ONLY])
    saves = []
    real_save = training_loop.save_checkpoint

    def recording_save(root_dir, step, root, optimizer, state, group):
        saves.append((dict(state["position"]), trainable_weights(root)))
        return real_save(root_dir, step, root, optimizer, state, group)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_loop, "save_checkpoint", recording_save)
        finetune(mixture, settings, root / "out", root / "work")
    return mixture, settings, root / "out", saves


def test_curriculum_phase_two_restarts_warm_up_at_its_own_learning_rate(curriculum_run):
    _, _, out_dir, _ = curriculum_run
    history = pd.read_csv(out_dir / "loss.csv")
    assert history["phase"].tolist() == [1] * 4 + [2] * 3  # 8 items / 4 per step × 2 epochs, then 12 / 4 × 1
    phase1, phase2 = (history[history["phase"] == p]["lr"].tolist() for p in (1, 2))
    assert max(phase1) == pytest.approx(2e-3) and phase1[-1] < 2e-3
    # Warm-up of ceil(3 steps × 0.5) = 2 steps, starting again from a fraction of phase 2's own peak.
    assert phase2[0] == pytest.approx(5e-4 / 2) and max(phase2) == pytest.approx(5e-4)


def test_curriculum_phase_two_starts_from_phase_one_final_weights(curriculum_run, tiny_assets):  # noqa: F811
    mixture, settings, out_dir, saves = curriculum_run
    end_of_phase1 = [state for position, state in saves if position["segment"] == 1]
    assert len(end_of_phase1) == 1
    history = pd.read_csv(out_dir / "loss.csv")
    logged = history[history["phase"] == 2]["loss"].iloc[0]

    # Recompute phase 2's first loss (taken before its first update) from phase 1's final weights.
    model, processor = load_model_and_processor(str(tiny_assets.model_dir))
    model.eval()
    items = load_items(mixture, 2)
    training = settings["training"]
    lengths = sequence_lengths(items, processor, INSTRUCTION)
    steps_batches = micro_batches(items, lengths, training["per_device_batch_size"], training["seed"], 2, 0)
    first_step = steps_batches[: training["global_batch_size"] // training["per_device_batch_size"]]
    collator = Collator(processor)

    def first_step_loss():
        """The mean over the step's answer tokens, all its micro-batches together."""
        total, tokens = 0.0, 0
        with torch.no_grad():
            for ids in first_step:
                batch = collator(to_chat_items([items[i] for i in ids], INSTRUCTION))
                answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
                total += float(model(**batch).loss) * answer_tokens
                tokens += answer_tokens
        return total / tokens

    from_base_weights = first_step_loss()
    model.load_state_dict(end_of_phase1[0], strict=False)
    assert first_step_loss() == pytest.approx(logged, abs=2e-6)  # loss.csv keeps 6 decimals
    assert abs(from_base_weights - logged) > 1e-3  # the check can tell the weights apart


def test_items_seen_per_modality_and_phase_match_the_mixture(curriculum_run):
    mixture, settings, out_dir, _ = curriculum_run
    history = pd.read_csv(out_dir / "loss.csv")
    seen = history.groupby("phase")[["text_items", "speech_items"]].sum()
    expected = pd.read_parquet(mixture).groupby(["phase", "modality"]).size().unstack(fill_value=0)
    for phase in settings["scheme"]["phases"]:
        number, epochs = phase["phase"], phase["epochs"]
        assert seen.loc[number, "text_items"] == epochs * expected.loc[number, "text"]
        assert seen.loc[number, "speech_items"] == epochs * expected.loc[number].get("speech", 0)
    assert seen.loc[2, "speech_items"] == 4  # phase 2 added the clips


def first_phase_job(settings: dict, phases: int = 1, name: str = "another_scheme") -> dict:
    """The settings of a job that trains only a run's first `phases` phases, under any scheme name."""
    return {**settings, "scheme": {**settings["scheme"], "name": name, "phases": settings["scheme"]["phases"][:phases]}}


@pytest.fixture(scope="module")
def shared_first_phase(tiny_assets, tmp_path_factory):  # noqa: F811
    """A curriculum whose phase 1 holds text and two clips (cached frozen audio) and a checkpoint of that phase
    written by a job of its own, from a mixture of phase 1's rows only."""
    root = tmp_path_factory.mktemp("shared-first-phase")
    phase1 = [(i, "text", 1) for i in IDS] + [(i, "speech", 1) for i in IDS[:2]]
    mixture = write_mixture(root / "mixture.parquet", tiny_assets.speech_manifest, phase1 + mixed_rows(phase=2))
    settings = make_settings(tiny_assets.model_dir, CURRICULUM, cache_frozen_audio=True)
    prefix_mixture = write_mixture(root / "prefix.parquet", tiny_assets.speech_manifest, phase1)
    finetune(prefix_mixture, first_phase_job(settings), root / "prefix", root / "prefix-work", output="checkpoint")
    return mixture, settings, root / "prefix"


def test_a_run_continued_from_its_first_phase_trained_elsewhere_ends_with_the_inline_weights(
    shared_first_phase, tmp_path  # noqa: F811
):
    mixture, settings, prefix = shared_first_phase
    inline = finetune(mixture, settings, tmp_path / "inline", tmp_path / "inline-work")
    continued = finetune(mixture, settings, tmp_path / "continued", tmp_path / "continued-work", start_from=prefix)
    # 10 items / 4 per step × 2 epochs, then 12 / 4 × 1.
    assert continued["optimizer_steps"] == inline["optimizer_steps"] == 9 and continued["continued_from"] == str(prefix)
    expected, actual = weights(tmp_path / "inline"), weights(tmp_path / "continued")
    # One thread, same data order; weights, AdamW moments, RNG and position taken over exactly: bitwise equal.
    assert expected.keys() == actual.keys()
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "inline" / "loss.csv"),
                                  pd.read_csv(tmp_path / "continued" / "loss.csv"))


def test_a_first_phase_checkpoint_is_the_jobs_output_and_serves_any_number_of_runs(shared_first_phase, tmp_path):
    mixture, settings, prefix = shared_first_phase
    assert (prefix / "manifest.json").is_file() and not (prefix.parent / "prefix-work" / "checkpoints").exists()
    assert not (prefix / "model.safetensors").exists()
    before = sorted(p.name for p in prefix.iterdir())
    for name in ("first", "second"):
        finetune(mixture, settings, tmp_path / name, tmp_path / f"{name}-work", start_from=prefix)
    assert sorted(p.name for p in prefix.iterdir()) == before
    assert pd.read_csv(tmp_path / "second" / "loss.csv")["phase"].tolist() == [1] * 6 + [2] * 3


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda rows, settings: (rows[::-1], settings), "items"),
        (lambda rows, settings: (rows, {**settings, "training": {**settings["training"], "seed": 1}}), "training"),
        (lambda rows, settings: (rows, make_settings(settings["model"]["path"], [(1, 2, 1e-3, 0.25), (2, 1, 5e-4, 0.5)],
                                                     cache_frozen_audio=True)), "phases"),
        (lambda rows, settings: (rows, {**settings, "scheme": {**settings["scheme"],
                                                               "trainable_modules": ["language_model"]}}),
         "trainable_modules"),
    ],
    ids=["items", "seed", "schedule", "trainable_modules"],
)
def test_a_first_phase_checkpoint_made_for_other_first_phases_is_refused_naming_both(
    shared_first_phase, tiny_assets, tmp_path, change, named  # noqa: F811
):
    mixture, settings, prefix = shared_first_phase
    rows = list(pd.read_parquet(mixture)[["id", "modality", "phase"]].itertuples(index=False, name=None))
    phase1 = [row for row in rows if row[2] == 1]
    changed_phase1, changed = change(phase1, settings)
    other = write_mixture(tmp_path / "other.parquet", tiny_assets.speech_manifest,
                          changed_phase1 + [row for row in rows if row[2] == 2])
    with pytest.raises(ValueError, match=rf"{prefix}.*other first phases than {other}: {named} is"):
        finetune(other, changed, tmp_path / "out", tmp_path / "work", start_from=prefix)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_job_of_several_phases_outputs_the_end_of_its_last_one(shared_first_phase, tmp_path):
    mixture, settings, _ = shared_first_phase
    finetune(mixture, first_phase_job(settings, phases=2), tmp_path / "both", tmp_path / "both-work", output="checkpoint")
    state = json.loads((tmp_path / "both" / "state.json").read_text())
    assert state["position"] == {"segment": 2, "step": 0, "global_step": 9}
    # A run whose phases are all in the checkpoint has nothing left to train: it writes the inline weights.
    finetune(mixture, settings, tmp_path / "continued", tmp_path / "continued-work", start_from=tmp_path / "both")
    finetune(mixture, settings, tmp_path / "inline", tmp_path / "inline-work")
    expected, actual = weights(tmp_path / "inline"), weights(tmp_path / "continued")
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []


def test_a_checkpoint_saved_inside_a_phase_cannot_start_another_run(tiny_assets, tmp_path):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest,
                            [(i, "text", 1) for i in IDS] + [(i, "text", 2) for i in IDS])
    settings = make_settings(tiny_assets.model_dir, CURRICULUM, checkpoint_every_steps=5, keep_checkpoint=True)
    finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    # 4 steps of phase 1, then 2 of phase 2; the last checkpoint, kept, is step 5's, inside phase 2.
    mid_phase = tmp_path / "work" / "checkpoints" / "step-00000005"
    with pytest.raises(ValueError, match="not at the end of its 2 phase"):
        finetune(mixture, settings, tmp_path / "again", tmp_path / "again-work", start_from=mid_phase)


def test_lora_output_is_an_adapter_that_reloads_to_the_trained_logits(tiny_assets, tmp_path, monkeypatch):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    settings = make_settings(
        tiny_assets.model_dir,
        [(1, 1, 5e-3, 0.0)],
        lora={"rank": 4, "alpha": 8},
        trainable=["multi_modal_projector", "language_model"],
        output_dtype="fp32",  # the tiny model is stored in fp16, which would round the adapter
    )
    base, processor = load_model_and_processor(str(tiny_assets.model_dir))
    clip = read_manifest(tiny_assets.speech_manifest).iloc[0]
    probe = Collator(processor)(
        [
            ChatItem(INSTRUCTION, "{}", audio=load_audio(clip["audio"])),
            ChatItem(INSTRUCTION, "{}", text=clip["text"]),
        ]
    )
    in_memory = {}
    real_write = train._write_output

    def capture_then_write(out_dir, model, processor, weights, *args):
        # The trained weights, whole, in an unsharded copy of the model with the same adapters.
        trained, _ = load_model_and_processor(str(tiny_assets.model_dir))
        trained = apply_lora(trained, settings["model"]["lora"], settings["scheme"]["trainable_modules"])
        trained.load_state_dict(weights)
        with torch.no_grad():
            in_memory["logits"] = trained.eval()(**probe).logits
        real_write(out_dir, model, processor, weights, *args)

    monkeypatch.setattr(train, "_write_output", capture_then_write)
    finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    assert (tmp_path / "out" / "adapter_config.json").exists()
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()
    reloaded, _ = load_model_and_processor(str(tmp_path / "out"))
    with torch.no_grad():
        reloaded_logits = reloaded.eval()(**probe).logits
        base_logits = base.eval()(**probe).logits
    # Merging the adapter into the base weights changes only float rounding.
    torch.testing.assert_close(reloaded_logits, in_memory["logits"], rtol=0, atol=1e-5)
    assert (base_logits - in_memory["logits"]).abs().max() > 1e-3
    # The projector, listed as trainable, trained fully beside the adapters; the frozen encoder did not move.
    projector, encoder = reloaded.model.multi_modal_projector.linear.weight, reloaded.model.audio_tower.conv1.weight
    assert not torch.equal(projector, base.model.multi_modal_projector.linear.weight)
    assert torch.equal(encoder, base.model.audio_tower.conv1.weight)


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    tiny_assets, tmp_path, monkeypatch  # noqa: F811
):
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    settings = make_settings(tiny_assets.model_dir, [(1, 2, 1e-3, 0.0)], checkpoint_every_steps=1)
    real_loss = forward.answer_loss
    calls = []

    def nan_on_fifth_micro_batch(model, batch, reduction="mean"):
        loss = real_loss(model, batch, reduction)
        calls.append(1)
        return loss * float("nan") if len(calls) == 5 else loss  # 2 micro-batches per step: step 3's first

    monkeypatch.setattr(forward, "answer_loss", nan_on_fifth_micro_batch)
    work_dir = tmp_path / "work"
    with pytest.raises(FloatingPointError, match=r"non-finite loss at phase 1 epoch 1 step 0.*last good checkpoint"):
        finetune(mixture, settings, tmp_path / "out", work_dir)
    assert checkpoint_step(work_dir) == 2
    assert not (tmp_path / "out").exists()


def test_a_mixture_of_an_older_format_is_refused_naming_what_it_lacks(tiny_assets, tmp_path):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [("u0", "text", 1)])
    pd.read_parquet(mixture)[["id", "lang", "modality", "phase", "manifest"]].to_parquet(mixture, index=False)
    with pytest.raises(DataError, match=rf"{mixture}: mixture lacks columns \['audio', .*re-run its mixing job"):
        load_items(mixture, 1)


def test_speech_item_whose_audio_file_is_gone_fails_naming_mixture_and_file(tiny_assets, tmp_path):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest,
                            [("u0", "speech", 1), ("u1", "speech", 1)])
    frame = pd.read_parquet(mixture)
    frame.loc[frame["id"] == "u1", "audio"] = str(tmp_path / "deleted.flac")
    frame.to_parquet(mixture, index=False)
    with pytest.raises(DataError, match=rf"{mixture}: audio file {tmp_path / 'deleted.flac'} of speech item 'u1'"):
        load_items(mixture, 1)


def test_bad_row_in_a_later_phase_fails_before_any_training(tiny_assets, tmp_path):  # noqa: F811
    rows = [(i, "text", 1) for i in IDS] + [("u0", "speech", 2)]
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, rows)
    frame = pd.read_parquet(mixture)
    frame.loc[frame["phase"] == 2, "audio"] = str(tmp_path / "gone.flac")
    frame.to_parquet(mixture, index=False)
    settings = make_settings(tiny_assets.model_dir, CURRICULUM, checkpoint_every_steps=1)
    with pytest.raises(DataError, match=rf"{mixture}: audio file .*gone.flac of speech item 'u0'"):
        finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    assert not (tmp_path / "work" / "checkpoints").exists()


def test_a_mixture_whose_phases_are_not_the_schemes_is_refused_before_training(tiny_assets, tmp_path):  # noqa: F811
    rows = [(i, "text", 1) for i in IDS] + [(i, "speech", 2) for i in IDS[:4]]  # a curriculum mixture
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, rows)
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)])  # one phase, as direct mixing
    with pytest.raises(DataError, match=rf"{mixture}: the mixture has phases \[1, 2\], scheme 'direct_mixing' trains "
                                        r"phases \[1\]"):
        finetune(mixture, settings, tmp_path / "out", tmp_path / "work")


def trainable_weights(root) -> dict[str, torch.Tensor]:
    """The trainable weights of a sharded training module, whole, under the model's own names."""
    return {
        name.removeprefix("model."): (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in root.named_parameters()
        if p.requires_grad
    }


def test_a_damaged_checkpoint_is_moved_aside_named_in_the_log_and_training_starts_over(
    tiny_assets, tmp_path, caplog  # noqa: F811
):
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    settings = make_settings(tiny_assets.model_dir, [(1, 2, 1e-3, 0.0)], checkpoint_every_steps=1, keep_checkpoint=True)
    finetune(mixture, settings, tmp_path / "reference", tmp_path / "work")
    newest = tmp_path / "work" / "checkpoints" / "step-00000004"
    shard = next(newest.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a full disk or a kill mid-copy
    (tmp_path / "work" / "checkpoints" / "step-00000005.tmp").mkdir()  # a save that was killed
    with caplog.at_level("INFO"):
        finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    assert f"checkpoint {newest} is damaged ({shard} has" in caplog.text
    assert "resumed from" not in caplog.text  # one checkpoint is kept: no older one to fall back on
    assert (newest.parent / "step-00000004.corrupt").is_dir() and not (newest.parent / "step-00000005.tmp").exists()
    expected, actual = weights(tmp_path / "reference"), weights(tmp_path / "out")
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []


def test_a_checkpoint_whose_shard_changed_without_changing_size_is_refused(tiny_assets, tmp_path, caplog):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], checkpoint_every_steps=1, keep_checkpoint=True)
    finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    checkpoint = tmp_path / "work" / "checkpoints" / "step-00000002"
    shard = next(checkpoint.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    # Found as the shard loads, into weights it has partly overwritten: the job stops, and its re-run starts over.
    with pytest.raises(DamagedCheckpoint, match=rf"checkpoint {checkpoint} is damaged .*does not match its sha256"
                                                r".*a re-run starts over"):
        finetune(mixture, settings, tmp_path / "again", tmp_path / "work")
    with caplog.at_level("INFO"):
        finetune(mixture, settings, tmp_path / "again", tmp_path / "work")
    assert "resumed from" not in caplog.text
    assert pd.read_csv(tmp_path / "again" / "loss.csv")["step"].tolist() == [1, 2]  # trained from the start


def test_a_run_on_a_work_directory_another_process_holds_fails_at_once_naming_it(tiny_assets, tmp_path):  # noqa: F811
    import fcntl

    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], checkpoint_every_steps=1)
    (tmp_path / "work").mkdir()
    with open(tmp_path / "work" / "lock", "w") as holder:  # as another fine-tuning process holds it
        holder.write("host node7, pid 4242, started 2026-12-07T06:00:00+00:00\n")
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OSError, match=rf"work directory {tmp_path / 'work'} is in use by host node7, pid 4242"):
            finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    assert not (tmp_path / "work" / "checkpoints").exists() and not (tmp_path / "out").exists()


def test_the_work_checkpoints_are_deleted_once_the_final_model_is_written(tiny_assets, tmp_path):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], checkpoint_every_steps=1)
    finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert not (tmp_path / "work" / "checkpoints").exists()


DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "demo-qwen2-audio"


@pytest.fixture(scope="module")
def paper_lr_runs(tiny_assets, tmp_path_factory):  # noqa: F811
    """40 text-only steps of the demo model at the paper's LR (5e-6), in fp32 and in bf16, from the same start."""
    root = tmp_path_factory.mktemp("paper_lr")
    mixture = write_mixture(root / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    runs = {}
    for precision in ("fp32", "bf16"):
        settings = make_settings(DEMO_MODEL, [(1, 10, 5e-6, 0.0)], precision=precision, per_device_batch_size=2,
                                 global_batch_size=2, freeze_token_embeddings=True, output_dtype="fp32")
        finetune(mixture, settings, root / precision, root / f"{precision}-work")
        runs[precision] = root / precision
    return runs


def test_bf16_at_the_paper_learning_rate_changes_every_trainable_weight(paper_lr_runs):
    # Pure bf16 weights move only where |w| < ~512 × lr: at 5e-6, 1.6-3.3 % of the demo model's weights per step.
    before, after = weights(DEMO_MODEL), weights(paper_lr_runs["bf16"])
    trained = [n for n in before if n.startswith("language_model.") and "embed_tokens" not in n]
    changed = sum(int((before[n] != after[n]).sum()) for n in trained)
    total = sum(before[n].numel() for n in trained)
    assert changed / total >= 0.99


def test_bf16_loss_curve_follows_the_fp32_one_at_the_paper_learning_rate(paper_lr_runs):
    drops = {}
    for precision, out_dir in paper_lr_runs.items():
        loss = pd.read_csv(out_dir / "loss.csv")["loss"]
        assert len(loss) == 40
        drops[precision] = loss.iloc[:4].mean() - loss.iloc[-4:].mean()  # the same 4 batches each epoch
    assert drops["fp32"] > 0.05
    assert drops["bf16"] >= 0.8 * drops["fp32"]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "trainable, per_device, processes, training",
    [
        (["multi_modal_projector", *LLM_ONLY], 1, 1, {}),
        (LLM_ONLY, 2, 1, {"cache_frozen_audio": True}),
        # The paper's path: 2 processes, bf16 compute on fp32 master weights, gradient checkpointing.
        (["multi_modal_projector", *LLM_ONLY], 1, 2, {"precision": "bf16", "gradient_checkpointing": True}),
    ],
    ids=["projector", "cached_audio", "two_processes_bf16"],
)
def test_rerun_after_sigkill_ends_with_the_uninterrupted_weights(
    tiny_assets, tmp_path, trainable, per_device, processes, training  # noqa: F811
):
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    # 12 items, 2 per step, 2 epochs: 12 optimizer steps, a checkpoint after each.
    settings = make_settings(
        tiny_assets.model_dir,
        [(1, 2, 2e-3, 0.2)],
        trainable=trainable,
        per_device_batch_size=per_device,
        global_batch_size=2,
        checkpoint_every_steps=1,
        **training,
    )
    launcher = TORCHRUN + ["-m", "lalm_slu"] if processes > 1 else [sys.executable, "-m", "lalm_slu"]

    def command(out_dir, work_dir):
        return launcher + run_cli(mixture, settings, out_dir, work_dir)[3:]

    reference = subprocess.run(command(tmp_path / "reference", tmp_path / "reference-work"), env=subprocess_env(),
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-5000:]

    kill_at = int(np.random.default_rng(2509_15389).integers(2, 9))
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command(tmp_path / "out", tmp_path / "work"), env=subprocess_env(), stdout=log,
                                   stderr=log)
        while process.poll() is None and checkpoint_step(tmp_path / "work") < kill_at:
            time.sleep(0.005)
        kill_process_tree(process.pid)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert not (tmp_path / "out").exists()

    rerun = subprocess.run(command(tmp_path / "out", tmp_path / "work"), env=subprocess_env(), capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert "resumed from" in rerun.stderr
    expected, actual = weights(tmp_path / "reference"), weights(tmp_path / "out")
    assert expected.keys() == actual.keys()
    # One thread per process, same data order, optimizer state and weights restored exactly: bitwise equal.
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "reference" / "loss.csv"), pd.read_csv(tmp_path / "out" / "loss.csv")
    )
    # The live file lost the steps past the checkpoint it resumed from, and no more.
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "work" / "loss.csv"),
                                  pd.read_csv(tmp_path / "out" / "loss.csv"))


@pytest.mark.slow
def test_sigusr1_checkpoints_exits_for_resubmission_and_the_rerun_ends_with_the_uninterrupted_weights(
    tiny_assets, tmp_path  # noqa: F811
):
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    # 12 optimizer steps, no checkpoint by steps: the signal's is the only one.
    settings = make_settings(tiny_assets.model_dir, [(1, 2, 2e-3, 0.2)], per_device_batch_size=1,
                             global_batch_size=2, log_every_steps=1)
    reference = subprocess.run(run_cli(mixture, settings, tmp_path / "reference", tmp_path / "reference-work"),
                               env=subprocess_env(), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-5000:]

    log_path = tmp_path / "signalled.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(run_cli(mixture, settings, tmp_path / "out", tmp_path / "work"),
                                   env=subprocess_env(), stdout=log, stderr=log)
        # The first step's log line: the loop runs, with its handler.
        while process.poll() is None and not re.search(r"step 1/12 ", log_path.read_text()):
            time.sleep(0.005)
        process.send_signal(signal.SIGUSR1)  # as Slurm's --signal=USR1@<seconds> before a time limit
        process.wait()
    assert process.returncode == training_loop.EXIT_RESUBMIT, log_path.read_text()[-5000:]
    assert 0 < checkpoint_step(tmp_path / "work") < 12 and not (tmp_path / "out").exists()

    rerun = subprocess.run(run_cli(mixture, settings, tmp_path / "out", tmp_path / "work"), env=subprocess_env(),
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert "resumed from" in rerun.stderr
    expected, actual = weights(tmp_path / "reference"), weights(tmp_path / "out")
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "reference" / "loss.csv"), pd.read_csv(tmp_path / "out" / "loss.csv")
    )


@pytest.mark.slow
def test_two_gloo_processes_take_the_same_steps_as_one_with_the_same_global_batch(tiny_assets, tmp_path):  # noqa: F811
    # 11 items, 4 per step: each epoch's last step has 3 micro-batches for 2 processes, so one runs a padding one.
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows()[1:])
    settings = make_settings(
        tiny_assets.model_dir,
        [(1, 2, 2e-3, 0.2)],
        trainable=["multi_modal_projector", *LLM_ONLY],
        per_device_batch_size=1,
        global_batch_size=4,
        output_dtype="fp32",  # compared to 1e-5: the tiny model's own fp16 would round at that level
    )
    single = finetune(mixture, settings, tmp_path / "single", tmp_path / "single-work")

    command = TORCHRUN + ["-m", "lalm_slu"] + run_cli(mixture, settings, tmp_path / "ddp", tmp_path / "ddp-work")[3:]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and single["processes"] == 1
    assert summary["optimizer_steps"] == single["optimizer_steps"] == 6  # ceil(11 items / 4 per step) × 2 epochs
    one, two = (pd.read_csv(tmp_path / name / "loss.csv") for name in ("single", "ddp"))
    pd.testing.assert_frame_equal(
        one[["step", "text_items", "speech_items", "lr"]], two[["step", "text_items", "speech_items", "lr"]]
    )
    # Same items and gradient per step; only the order of float sums differs (gloo all-reduce vs accumulation, each
    # micro-batch's summed loss divided by the step's tokens): measured max difference 1.1e-5 after 6 steps.
    # Updating untouched parameters with zero gradients gave 4e-3.
    expected, actual = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=5e-5)
    assert max((expected[n] - weights(tiny_assets.model_dir)[n]).abs().max() for n in expected) > 1e-3


def test_a_checkpoint_of_other_settings_is_discarded_and_training_starts_over(tiny_assets, tmp_path):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    first = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], checkpoint_every_steps=1)
    finetune(mixture, first, tmp_path / "out", tmp_path / "work")
    changed = make_settings(tiny_assets.model_dir, [(1, 1, 5e-4, 0.0)], checkpoint_every_steps=1)
    finetune(mixture, changed, tmp_path / "out", tmp_path / "work")
    loss = pd.read_csv(tmp_path / "out" / "loss.csv")
    # A resumed run would have started after the first run's last step with nothing left to do.
    assert loss["step"].tolist() == [1, 2]
    assert loss["lr"].max() == pytest.approx(5e-4)


def test_a_checkpoint_made_on_other_base_weights_at_the_same_path_is_discarded(tiny_assets, tmp_path):  # noqa: F811
    # E.g. the demo model re-pretrained in place: same path and settings, other weights.
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_assets.model_dir, base)
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    settings = make_settings(str(base), [(1, 1, 1e-3, 0.0)], checkpoint_every_steps=1)
    finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    assert run_identity.fingerprint(mixture, settings) == run_identity.fingerprint(mixture, settings)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(base)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.5)
    model.save_pretrained(base)
    finetune(mixture, settings, tmp_path / "again", tmp_path / "work")
    # Resumed, the run would have had nothing left to do and copied the first run's head.
    head = "language_model.lm_head.weight"
    assert not torch.equal(weights(tmp_path / "out")[head], weights(tmp_path / "again")[head])


def test_an_edit_to_any_code_the_job_runs_changes_the_fingerprint_as_the_workflow_sees_it(tmp_path):
    import shutil

    from lalm_slu.core.code_version import PACKAGE_SRC, code_version

    copy = tmp_path / "src"
    shutil.copytree(PACKAGE_SRC / "lalm_slu", copy / "lalm_slu")
    code_version.cache_clear()
    assert code_version("finetune_model", copy) == code_version("finetune_model")
    target_format = copy / "lalm_slu" / "data" / "slu_json.py"  # not the trainer's own file: the target's JSON layout
    target_format.write_text(target_format.read_text() + "\n# an edit\n")
    code_version.cache_clear()  # a process hashes each tree once: this one edited its copy since
    assert code_version("finetune_model", copy) != code_version("finetune_model")


@pytest.mark.parametrize("observer, its_command", [("training/dev_evaluation.py", None),
                                                   ("training/step_log.py", None),
                                                   ("evaluation/metrics.py", "score"),
                                                   ("evaluation/decode.py", "decode_test_set")])
def test_an_edit_to_what_only_watches_training_keeps_the_fingerprint(tmp_path, observer, its_command):
    # Dev-set scores and logs must not retrain a 7B grid: the decoder and scorer they borrow included.
    import shutil

    from lalm_slu.core.code_version import PACKAGE_SRC, code_version

    copy = tmp_path / "src"
    shutil.copytree(PACKAGE_SRC / "lalm_slu", copy / "lalm_slu")
    edited = copy / "lalm_slu" / observer
    edited.write_text(edited.read_text() + "\n# an edit\n")
    code_version.cache_clear()
    assert code_version("finetune_model", copy) == code_version("finetune_model")
    if its_command:  # the job that produces results with it does re-run
        assert code_version(its_command, copy) != code_version(its_command)


def test_a_checkpoint_of_other_code_is_discarded_and_training_starts_over(tiny_assets, tmp_path, monkeypatch):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], checkpoint_every_steps=1, keep_checkpoint=True)
    finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    before = run_identity.fingerprint(mixture, settings)
    monkeypatch.setattr(run_identity, "code_version", lambda command: "edited")
    assert run_identity.fingerprint(mixture, settings) != before
    finetune(mixture, settings, tmp_path / "again", tmp_path / "work")
    # Resumed, the run would have had no step left and logged none.
    assert pd.read_csv(tmp_path / "again" / "loss.csv")["step"].tolist() == [1, 2]


def test_a_checkpoint_written_under_another_checkpoint_interval_or_worker_count_is_resumed(tiny_assets, tmp_path):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, [(i, "text", 1) for i in IDS])
    first = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], checkpoint_every_steps=1)
    # A resubmitted job that checkpoints more often and collates in workers continues the same run.
    assert run_identity.fingerprint(mixture, first) == run_identity.fingerprint(
        mixture, make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], checkpoint_every_steps=7,
                               checkpoint_every_minutes=30, data_workers=2, time_limit_margin_minutes=5))
    assert run_identity.fingerprint(mixture, first) != run_identity.fingerprint(
        mixture, make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)], checkpoint_every_steps=1, seed=1))


def test_a_run_logs_its_steps_and_its_model_holds_the_live_loss_csv_and_tensorboard_events(
    tiny_assets, tmp_path, caplog  # noqa: F811
):
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    # 12 items, 4 per step, 2 epochs: 6 steps.
    settings = make_settings(tiny_assets.model_dir, [(1, 2, 1e-3, 0.0)], log_every_steps=2)
    with caplog.at_level(logging.INFO, logger="lalm_slu.training.step_log"):
        finetune(mixture, settings, tmp_path / "out", tmp_path / "work")
    lines = [r.getMessage() for r in caplog.records if r.name == "lalm_slu.training.step_log"]
    assert [line.split()[:5] for line in lines] == [["step", f"{s}/6", "phase", "1", "epoch"] for s in (2, 4, 6)]
    assert all(re.search(r"answer tokens/s \d+ ETA", line) for line in lines)
    final = pd.read_csv(tmp_path / "out" / "loss.csv")
    assert final.columns.tolist() == ["step", "phase", "epoch", "loss", "answer_tokens", "text_items",
                                      "speech_items", "lr", "grad_norm"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "work" / "loss.csv"), final)
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    assert [s.value for s in events.Scalars("train/loss")] == final["loss"].astype(np.float32).tolist()


def test_dev_evaluation_writes_dev_csv_tensorboard_and_the_summary_at_its_steps(
    tiny_assets, tmp_path, caplog  # noqa: F811
):
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    dev_eval = {"every_steps": 4, "at_phase_end": True, "max_examples": 5, "inputs": ["text", "speech"],
                "batch_size": 3, "max_new_tokens": 8}
    settings = make_settings(tiny_assets.model_dir, [(1, 2, 1e-3, 0.0)], dev_eval=dev_eval)  # 6 steps
    manifests = {"text": str(tiny_assets.text_manifest), "speech": str(tiny_assets.speech_manifest)}
    with caplog.at_level(logging.INFO, logger="lalm_slu.training.step_log"):
        summary = finetune(mixture, settings, tmp_path / "out", tmp_path / "work", dev_manifests=manifests)
    dev = pd.read_csv(tmp_path / "out" / "dev.csv")
    assert dev[["step", "inputs"]].values.tolist() == [[4, "text"], [4, "speech"], [6, "text"], [6, "speech"]]
    assert (dev["examples"] == 5).all() and (dev["loss"] > 0).all() and (dev["answer_tokens"] > 0).all()
    assert dev["slu_f1"].between(0, 1).all() and dev["intent_accuracy"].between(0, 1).all()
    assert summary["dev"]["speech"] == {key: value for key, value in dev.iloc[3].items() if key != "inputs"}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["dev"] == summary["dev"]
    assert sum("dev (speech, 5 utterances)" in r.getMessage() for r in caplog.records) == 2
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("dev_text/loss")] == [
        (step, np.float32(loss)) for step, loss in dev[dev["inputs"] == "text"][["step", "loss"]].values.tolist()]


def test_dev_evaluation_leaves_training_bitwise_unchanged(tiny_assets, tmp_path):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    plain = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)])
    evaluated = make_settings(tiny_assets.model_dir, [(1, 1, 1e-3, 0.0)],
                              dev_eval={"every_steps": 1, "max_examples": 3, "max_new_tokens": 4})
    finetune(mixture, plain, tmp_path / "plain", tmp_path / "plain-work")
    finetune(mixture, evaluated, tmp_path / "evaluated", tmp_path / "evaluated-work",
             dev_manifests={"text": str(tiny_assets.text_manifest)})
    assert len(pd.read_csv(tmp_path / "evaluated" / "dev.csv")) == 3
    expected, actual = weights(tmp_path / "plain"), weights(tmp_path / "evaluated")
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "plain" / "loss.csv"),
                                  pd.read_csv(tmp_path / "evaluated" / "loss.csv"))


@pytest.mark.slow
def test_two_gloo_processes_evaluate_the_dev_sample_as_one_does(tiny_assets, tmp_path):  # noqa: F811
    # The projector trains: its sharded weights are gathered for generation on both processes, step by step.
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    dev_eval = {"every_steps": 2, "max_examples": 5, "inputs": ["text", "speech"], "batch_size": 2,
                "max_new_tokens": 12}
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 2e-3, 0.0)],
                             trainable=["multi_modal_projector", *LLM_ONLY], per_device_batch_size=1,
                             global_batch_size=4, output_dtype="fp32", dev_eval=dev_eval)
    manifests = {"text": str(tiny_assets.text_manifest), "speech": str(tiny_assets.speech_manifest)}
    finetune(mixture, settings, tmp_path / "single", tmp_path / "single-work", dev_manifests=manifests)
    command = TORCHRUN + ["-m", "lalm_slu"] + run_cli(mixture, settings, tmp_path / "ddp", tmp_path / "ddp-work")[3:]
    command += ["--dev-manifests", *(f"{inputs}={path}" for inputs, path in manifests.items())]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    one, two = (pd.read_csv(tmp_path / name / "dev.csv") for name in ("single", "ddp"))
    pd.testing.assert_frame_equal(one[["step", "inputs", "examples", "answer_tokens"]],
                                  two[["step", "inputs", "examples", "answer_tokens"]])
    # The weights agree to ~1e-5 (see the test above): the losses to about as much.
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)
