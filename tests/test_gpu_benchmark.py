"""The GPU fine-tuning benchmark: its FLOP count against a hand computation, and its sharded path run at tiny size on
CPU, as 2 gloo processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from tiny_model import subprocess_env
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_finetune_step import (  # noqa: E402
    TRAINED,
    architecture_spec,
    most_layers_that_fit,
    step_flops,
    synthetic_batch,
)

from lalm_slu.model.memory_plan import GIB, Architecture, TrainingShape, plan_memory  # noqa: E402

# The tiny model by hand: LLM width 64, MLP 128, 2 layers, 4 heads of 16, vocabulary 1000; audio width 64, FFN 128,
# 2 layers, 128 mel bins.
QKV = 3 * (64 * 64 + 64)  # q, k, v projections with biases
LLM_LAYER = QKV + 64 * 64 + 3 * 64 * 128 + 2 * 64  # + o_proj, gate/up/down, two RMS norms
LLM_LAYERS = 2 * LLM_LAYER
LLM_DENSE = LLM_LAYERS + 64  # + the final norm; no token embeddings, no output head
CONV1, CONV2 = 64 * 128 * 3 + 64, 64 * 64 * 3 + 64
# k (no bias), q/v/out, fc1, fc2, two layer norms
AUDIO_LAYER = 64 * 64 + 3 * (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64) + 2 * 2 * 64
AUDIO_POOLED = 2 * 64 + 64 * 64 + 64  # final layer norm and projector, per pooled frame


def hand_count(length: int, answers: int, mel_frames: int | None) -> tuple[float, float]:
    """(model FLOPs, recomputed FLOPs) of one item of `length` tokens."""
    attention_forward = 2 * 2 * length**2 * 64  # 2 layers, causal: Q·Kᵀ and A·V over the lower triangle
    model = 6 * LLM_DENSE * length + 3 * attention_forward + 6 * 1000 * 64 * answers
    if mel_frames:
        positions = mel_frames // 2
        model += 2 * (CONV1 * mel_frames + (CONV2 + 2 * AUDIO_LAYER) * positions + AUDIO_POOLED * positions // 2)
        model += 2 * 4 * positions**2 * 64  # bidirectional attention, 2 layers
    return model, 2 * LLM_LAYERS * length + attention_forward


def test_the_hand_counted_parameters_are_the_tiny_models():
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration._from_config(Qwen2AudioConfig(**architecture_spec(None, tiny=True)))
    counts = {}
    for name, param in model.named_parameters():
        part = name.split(".")[2] if name.startswith("model.audio_tower.") else name.split(".")[1]
        counts[part] = counts.get(part, 0) + param.numel()
    assert sum(p.numel() for p in model.model.language_model.layers.parameters()) == LLM_LAYERS
    assert counts["conv1"] == CONV1 and counts["conv2"] == CONV2 and counts["layers"] == 2 * AUDIO_LAYER
    assert counts["layer_norm"] + counts["multi_modal_projector"] == AUDIO_POOLED


@pytest.mark.parametrize("checkpointing", [True, False])
def test_step_flops_exclude_the_embedding_and_project_only_answer_tokens(checkpointing):
    spec = architecture_spec(None, tiny=True)
    config = Qwen2AudioConfig(**spec)
    generator = torch.Generator().manual_seed(0)
    text, speech = (synthetic_batch(config, 2, is_speech, generator) for is_speech in (False, True))
    # 30 prompt + 12 transcript (or 75 audio tokens for 300 mel frames) + 40 answer tokens.
    assert text["input_ids"].shape == (2, 82) and speech["input_ids"].shape == (2, 145)
    text_model, text_recomputed = hand_count(82, 40, None)
    speech_model, speech_recomputed = hand_count(145, 40, 300)
    counted = step_flops(Architecture.from_config(spec), [text, speech], checkpointing)
    assert counted.model == 2 * (text_model + speech_model)
    assert counted.recomputed == (2 * (text_recomputed + speech_recomputed) if checkpointing else 0)
    assert counted.hardware == counted.model + counted.recomputed


def test_one_card_gets_the_most_7b_layers_its_memory_plan_fits():
    spec = architecture_spec(None, tiny=False)
    shape = TrainingShape(TRAINED, per_device_batch_size=8, gradient_checkpointing=True)

    def planned_gib(layers):
        return plan_memory(Architecture.from_config(architecture_spec(layers, tiny=False)), shape).total / GIB

    layers = most_layers_that_fit(spec, shape, 79.2)  # an H100's 80 GB
    assert 1 < layers < 32 and planned_gib(layers) <= 79.2 < planned_gib(layers + 1)
    assert most_layers_that_fit(spec, shape, 140.0) == 32  # the whole model, where it fits
    with pytest.raises(SystemExit, match="not even one LLM layer"):
        most_layers_that_fit(spec, shape, 8.0)


@pytest.mark.slow
def test_the_gpu_benchmark_runs_two_processes_at_tiny_size_and_writes_its_measurements(tmp_path):
    out = tmp_path / "gpu_finetune_step.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(REPO / "benchmarks" / "gpu_finetune_step.py"), "--tiny", "--global-batch", "8",
               "--per-device-batch", "2", "--steps", "2", "--out", str(out)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["processes"] == 2 and report["parameters"]["accumulation"] == 2
    assert report["scope"].startswith("compute only")
    measured = report["measurements"]
    assert len(measured["step_s_all"]) == 2 and measured["step_s"] > 0
    assert len(measured["loss_per_step"]) == 3 + 2  # three warm-up steps, then the timed ones
    # A freshly initialized model: every answer token about equally likely, loss ≈ ln(vocabulary).
    assert all(abs(loss - 6.91) < 0.1 for loss in measured["loss_per_step"])
    # 8 items per step: 4 text of 82 tokens, 4 speech of 145 (75 audio tokens per 3-s clip); 40 answer tokens each.
    assert measured["tokens_per_step"] == 4 * 82 + 4 * 145 and measured["answer_tokens_per_step"] == 8 * 40
    assert measured["hardware_tflops_per_step"] > measured["model_tflops_per_step"] > 0
    assert measured["mfu"] is None  # no known peak for a CPU
    assert measured["memory_plan_gib"]["total"] > 0 and len(measured["per_process"]) == 2
