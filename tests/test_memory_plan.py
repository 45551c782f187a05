"""The memory plan: analytic parameter counts equal the real model's, the 7B architecture copy has the
published size, and planning refuses a fine-tuning job that cannot fit its card, naming the numbers."""

import json
from pathlib import Path
from dataclasses import replace

import pytest
import torch
import yaml
from conftest import REPO
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

from lalm_slu.cli import main
from lalm_slu.commands.plan import read_config
from lalm_slu.model.memory_plan import (
    AUDIO_DEFAULTS,
    TEXT_DEFAULTS,
    Architecture,
    MemoryPlanError,
    TrainingShape,
    check_memory_plan,
    parameter_sizes,
    part_sizes,
    plan_memory,
    read_architecture,
    trainable_parameters,
)
from lalm_slu.model.trainable import set_trainable
from lalm_slu.config.files import architecture_path

DEMO_CONFIG = REPO / "models/demo-qwen2-audio/config.json"
ARCHITECTURE_7B = architecture_path("Qwen2-Audio-7B-Instruct")
PAPER_MODULES = ("language_model", "lm_head")


def meta_model_from(config):
    with torch.device("meta"):
        return Qwen2AudioForConditionalGeneration(config)


def meta_model(config_json):
    return meta_model_from(Qwen2AudioConfig.from_dict(json.loads(config_json.read_text())))


def real_sizes(model):
    return {name.removeprefix("model."): p.numel() for name, p in model.named_parameters()}


def paper_config():
    """config.yaml with workflow/configs/paper.yaml on top, as Snakemake reads them; the model path absolute."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        config = read_config([Path("workflow/configs/paper.yaml")])
    config["model"]["path"] = str(REPO / config["model"]["path"])
    return config


@pytest.mark.parametrize("config_json", [DEMO_CONFIG, ARCHITECTURE_7B], ids=["demo", "7B"])
def test_analytic_parameter_counts_equal_a_meta_device_model(config_json):
    analytic = parameter_sizes(read_architecture(config_json))
    real = real_sizes(meta_model(config_json))
    assert analytic == real
    assert part_sizes(analytic) == part_sizes(real)


def test_7b_architecture_has_8_40_b_parameters_7_75_b_of_them_in_the_llm_and_head():
    parts = part_sizes(parameter_sizes(read_architecture(ARCHITECTURE_7B)))
    assert round(sum(parts.values()) / 1e9, 2) == 8.40
    assert round((parts["language_model"] + parts["lm_head"]) / 1e9, 2) == 7.75


def test_the_7b_copy_spells_every_shape_field_since_transformers_defaults_are_another_model():
    config = json.loads(ARCHITECTURE_7B.read_text())
    assert set(TEXT_DEFAULTS) <= set(config["text_config"]) and set(AUDIO_DEFAULTS) <= set(config["audio_config"])
    default = real_sizes(meta_model_from(Qwen2AudioConfig()))
    assert round(sum(default.values()) / 1e9, 1) == 12.7


def test_fields_a_config_json_leaves_out_take_transformers_defaults():
    text, audio = Qwen2AudioConfig().text_config, Qwen2AudioConfig().audio_config
    assert TEXT_DEFAULTS == {key: getattr(text, key) for key in TEXT_DEFAULTS}
    assert AUDIO_DEFAULTS == {key: getattr(audio, key) for key in AUDIO_DEFAULTS}
    # The hub's own config.json names only what differs from those defaults.
    sparse = {"text_config": {"intermediate_size": 11008, "vocab_size": 156032}, "audio_config": {}}
    assert Architecture.from_config(sparse) == read_architecture(ARCHITECTURE_7B)


def test_lm_head_is_its_own_matrix_even_when_the_config_says_tie():
    config = json.loads(DEMO_CONFIG.read_text())
    config["text_config"]["tie_word_embeddings"] = config["tie_word_embeddings"] = True
    names = real_sizes(meta_model_from(Qwen2AudioConfig.from_dict(config)))
    assert "lm_head.weight" in names and "language_model.embed_tokens.weight" in names


@pytest.mark.parametrize(
    "modules, freeze_token_embeddings",
    [
        (["language_model", "lm_head"], False),
        (["language_model", "lm_head"], True),
        (["audio_tower", "multi_modal_projector"], False),
        (["audio_tower.layers.3", "language_model.layers.1.mlp"], False),
    ],
)
def test_trainable_parameters_are_the_ones_set_trainable_unfreezes(modules, freeze_token_embeddings):
    model = meta_model(DEMO_CONFIG)
    set_trainable(model, modules, freeze_token_embeddings)
    unfrozen = {name.removeprefix("model.") for name, p in model.named_parameters() if p.requires_grad}
    sizes = parameter_sizes(read_architecture(DEMO_CONFIG))
    assert trainable_parameters(sizes, modules, freeze_token_embeddings) == unfrozen


def test_an_unknown_trainable_module_is_named():
    sizes = parameter_sizes(read_architecture(DEMO_CONFIG))
    with pytest.raises(ValueError, match="'language_model.layers.9'"):
        trainable_parameters(sizes, ["language_model.layers.9"], False)


def test_sharded_state_shrinks_with_gpus_and_frozen_weights_do_not():
    arch = read_architecture(ARCHITECTURE_7B)
    one = plan_memory(arch, TrainingShape(PAPER_MODULES, gpus=1))
    eight = plan_memory(arch, TrainingShape(PAPER_MODULES, gpus=8))
    assert eight.optimizer == one.optimizer / 8 and eight.gradients == one.gradients / 8
    frozen_bf16 = 2 * (636_968_960 + 5_246_976)  # audio tower and projector, replicated
    assert one.weights - frozen_bf16 == pytest.approx(8 * (eight.weights - frozen_bf16))


def test_gradient_checkpointing_cuts_activations_and_fp32_doubles_them():
    arch = read_architecture(ARCHITECTURE_7B)
    shape = TrainingShape(PAPER_MODULES, per_device_batch_size=8, gradient_checkpointing=False)
    full = plan_memory(arch, shape).activations
    assert plan_memory(arch, replace(shape, gradient_checkpointing=True)).activations < full / 5
    assert plan_memory(arch, replace(shape, precision="fp32")).activations == pytest.approx(2 * full, rel=0.1)


def test_lora_trains_no_language_model_weight():
    lora = plan_memory(read_architecture(ARCHITECTURE_7B), TrainingShape(PAPER_MODULES, gpus=4, lora=True))
    assert lora.optimizer == lora.gradients == 0


def test_frozen_audio_parts_are_replicated_and_a_frozen_llm_is_sharded_without_optimizer_state():
    arch = read_architecture(ARCHITECTURE_7B)
    parts = part_sizes(parameter_sizes(arch))
    audio_only = plan_memory(arch, TrainingShape(("audio_tower",), gpus=4))
    audio = parts["audio_tower"] - 1500 * 1280  # the positional table never trains
    llm = parts["language_model"] + parts["lm_head"]
    assert audio_only.optimizer == 8 * audio / 4
    assert audio_only.weights == 4 * (audio + llm) / 4 + 2 * (parts["multi_modal_projector"] + 1500 * 1280)


def test_paper_config_fits_eight_80_gb_cards():
    config = paper_config()
    config["resources"]["finetune"].update(gpu=8, gpu_memory_gb=80)
    check_memory_plan(config)


def test_paper_config_on_one_80_gb_card_is_refused_naming_the_numbers_and_the_key():
    config = paper_config()
    config["resources"]["finetune"].update(gpu=1, gpu_memory_gb=80)
    with pytest.raises(MemoryPlanError) as refused:
        check_memory_plan(config)
    message = str(refused.value)
    assert "needs 131.2 GB per GPU; the card has 80 GB" in message
    assert "weights 30.1, gradients 28.9, optimizer 57.8" in message
    assert "set resources.finetune.gpu: 2 (the fewest GPUs that fit)" in message
    assert "training.per_device_batch_size" in message


def test_paper_config_as_shipped_passes_the_check():
    check_memory_plan(paper_config())


def test_no_check_for_cpu_jobs_or_an_unknown_card():
    config = paper_config()
    config["resources"]["finetune"].update(gpu=0, gpu_memory_gb=1)
    check_memory_plan(config)
    config["resources"]["finetune"].update(gpu=1)
    del config["resources"]["finetune"]["gpu_memory_gb"]
    check_memory_plan(config)


def test_the_downloaded_config_json_replaces_the_architecture_copy(tmp_path):
    config = paper_config()
    config["resources"]["finetune"].update(gpu=1, gpu_memory_gb=80)
    config["model"]["path"] = str(tmp_path)
    (tmp_path / "config.json").write_text(DEMO_CONFIG.read_text())
    check_memory_plan(config)  # the demo model fits where the 7B one does not


def test_plan_memory_prints_one_column_per_gpu_count(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    main(
        ["plan-memory", "--configfile", "workflow/configs/paper.yaml", "--gpus", "1", "4", "8", "--gpu-memory-gb", "80"]
    )
    table = capsys.readouterr().out
    assert "| per GPU (GB) | 1 GPU | 4 GPUs | 8 GPUs |" in table
    assert "| total | 131.2 | 44.5 | 30.1 |" in table
    assert "| fits 80 GB | no | yes | yes |" in table


def paper_job_settings(model_dir: Path) -> dict:
    """A paper-config fine-tuning job's settings, as the trainer receives them."""
    return {
        "model": {"path": str(model_dir), "lora": None},
        "training": {"precision": "bf16", "per_device_batch_size": 8, "gradient_checkpointing": True,
                     "freeze_token_embeddings": False},
        "scheme": {"name": "direct_mixing", "trainable_modules": ["language_model", "lm_head"]},
    }


def test_a_job_landing_on_too_few_gpus_stops_before_loading_naming_the_numbers(tmp_path):
    import shutil

    from lalm_slu.model.memory_plan import MemoryPlanError, check_job_fits

    shutil.copy(architecture_path("Qwen2-Audio-7B-Instruct"), tmp_path / "config.json")
    assert check_job_fits(paper_job_settings(tmp_path), processes=8, card_gb=80).total < 80 * 2**30
    with pytest.raises(MemoryPlanError, match=r"needs 128\.\d GB per GPU; the card has 80 GB.*resources\.finetune\.gpu"):
        check_job_fits(paper_job_settings(tmp_path), processes=1, card_gb=80)
