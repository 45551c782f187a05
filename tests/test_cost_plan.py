"""`lalm-slu plan`: GPUs, FLOPs, checkpoint bytes and GPU-hours of the grid's GPU jobs, checked against a hand
computation from the 7B shape; bad inputs stop it with the file or key named; docs/SLURM.md shows its figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lalm_slu.cli import main
from lalm_slu.commands.plan import plan, read_config
from lalm_slu.planning.cost_plan import PlanError, grid_costs, plan_settings, read_plan_config
from lalm_slu.model.memory_plan import TrainingShape, parameter_sizes, plan_memory, read_architecture
from lalm_slu.config.files import architecture_path

REPO = Path(__file__).resolve().parents[1]
PAPER = Path("workflow/configs/paper.yaml")
ARCHITECTURE = architecture_path("Qwen2-Audio-7B-Instruct")


def in_clean_checkout(monkeypatch, tmp_path) -> None:
    """Work in a checkout without results/: the plan counts items from manifests where they exist, and a
    developer's demo manifests (results/manifests/...) would stand in for the paper's corpora."""
    clean = tmp_path / "checkout"
    clean.mkdir()
    for name in ("workflow", "config.yaml"):
        (clean / name).symlink_to(REPO / name)
    monkeypatch.chdir(clean)


@pytest.fixture
def paper(monkeypatch, tmp_path):
    in_clean_checkout(monkeypatch, tmp_path)
    return read_config([PAPER])


def test_one_text_only_run_costs_what_the_7b_shape_gives_by_hand(paper, tmp_path):
    paper["training"]["dev_eval"] = None  # its cost: the next test
    text = json.loads(ARCHITECTURE.read_text())["text_config"]
    h, i, layers, vocab = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"], text["vocab_size"]
    kv = text["num_key_value_heads"] * h // text["num_attention_heads"]
    matrices = layers * (2 * h * h + 2 * h * kv + 3 * h * i)  # q, o, k, v, gate, up, down
    settings, _ = plan_settings(paper, results=tmp_path)  # no benchmark results: the config's assumptions
    tokens, answer = settings.mean_sequence_tokens, settings.mean_answer_tokens
    # Trained LLM with gradient checkpointing: forward, backward (2×), recompute; the head without recompute.
    per_item = 4 * (2 * matrices * tokens + 2 * layers * tokens * h * tokens) + 2 * vocab * h * answer * 3
    items = 3 * paper["plan"]["corpus_sizes"]["slurp"]["en"]["train"]  # 3 epochs of every transcript as text
    gpus = 2  # full fine-tuning's fewest 80 GB cards at 16 per device
    compute_s = items * per_item / (gpus * 989e12 * 0.35)
    weights_bytes = 2 * sum(parameter_sizes(read_architecture(ARCHITECTURE)).values())
    costs = {(c.rule, c.name): c for c in grid_costs(paper, read_architecture(ARCHITECTURE), settings)}
    run = costs[("finetune_model", "slurp-en_text_only_b0_s0")]
    assert run.gpus == gpus
    assert run.flops == pytest.approx(items * per_item, rel=1e-3)
    # 12 bytes per trained parameter: the LLM's 7.75 B (layers, embeddings, norm, head)
    assert run.checkpoint_bytes == pytest.approx(12 * 7.755e9, rel=1e-3)
    staging = (compute_s // 1800) * run.checkpoint_bytes / gpus / 10e9
    seconds = compute_s + staging + 2 * weights_bytes / 1e9
    assert run.seconds == pytest.approx(seconds, rel=1e-3)
    assert run.gpu_hours == pytest.approx(gpus * seconds / 3600, rel=1e-3)
    assert run.runtime_minutes(settings) == -(-seconds * 1.5 // 60)


def test_dev_evaluation_adds_its_decoding_and_loss_pass_at_each_evaluation(paper, tmp_path):
    from lalm_slu.planning.cost_plan import AUDIO_FRAMES_PER_SECOND, layer_elements

    arch = read_architecture(ARCHITECTURE)
    settings, _ = plan_settings(paper, results=tmp_path)
    name = ("finetune_model", "slurp-en_text_only_b0_s0")
    with_dev = {(c.rule, c.name): c for c in grid_costs(paper, arch, settings)}[name]
    dev_eval = paper["training"]["dev_eval"]
    paper["training"]["dev_eval"] = None
    without = {(c.rule, c.name): c for c in grid_costs(paper, arch, settings)}[name]
    sizes = paper["plan"]["corpus_sizes"]["slurp"]["en"]
    steps = 3 * -(-sizes["train"] // paper["training"]["global_batch_size"])
    evaluations = steps // dev_eval["every_steps"] + 1  # and one at the phase's end
    dev = min(dev_eval["max_examples"], sizes["dev"])
    prompts = dev * len(dev_eval["inputs"])  # transcripts and speech
    llm, audio = layer_elements(arch)
    flops = (2 * prompts * 2 * llm * settings.mean_sequence_tokens  # the decode's prefill and the loss pass
             + dev * 2 * audio * settings.mean_audio_seconds * AUDIO_FRAMES_PER_SECOND)
    one = flops / (989e12 * 0.35) + prompts * settings.mean_answer_tokens / 1200
    assert with_dev.seconds - without.seconds == pytest.approx(evaluations * one / with_dev.gpus, rel=1e-6)
    assert with_dev.seconds - without.seconds > 0


def test_projector_only_runs_ask_one_card_and_full_fine_tuning_two(paper):
    costs = grid_costs(paper, read_plan_config(paper)[0], plan_settings(paper)[0])
    gpus = {(c.rule, c.scheme): c.gpus for c in costs if c.rule.startswith("finetune")}
    assert {g for (rule, scheme), g in gpus.items() if scheme in ("mtbi", "behaviour_imitation")} == {1}
    assert {g for (rule, scheme), g in gpus.items() if scheme in ("direct_mixing", "curriculum")} == {2}


def test_the_grid_plans_every_gpu_job_of_the_dry_run(paper):
    result = plan(paper)
    jobs = {rule: row["jobs"] for rule, row in result["by_rule"].items()}
    assert jobs == {"finetune_model": 564, "finetune_prefix": 21, "decode_test_set": 555, "transcribe_test_set": 6,
                    "imitation_targets": 111}
    assert result["total"]["gpu_hours"] == pytest.approx(sum(j["gpu_hours"] for j in result["jobs"]))


def test_the_memory_plan_counts_adamw_s_scratch_by_implementation():
    arch = read_architecture(ARCHITECTURE)
    shape = TrainingShape(("language_model", "lm_head"), gpus=2, per_device_batch_size=8, gradient_checkpointing=True)
    fused, foreach, forloop = (plan_memory(arch, TrainingShape(**{**shape.__dict__, "optimizer": o}))
                               for o in ("fused", "foreach", "forloop"))
    assert fused.step_scratch == 0
    assert foreach.step_scratch == pytest.approx(fused.gradients)  # a full copy of the local fp32 shard
    vocab, hidden = (json.loads(ARCHITECTURE.read_text())["text_config"][k] for k in ("vocab_size", "hidden_size"))
    assert forloop.step_scratch == pytest.approx(4 * vocab * hidden / 2)  # the largest parameter's shard (the head)
    assert round(foreach.total / 2**30, 1) == 77.4 and round(fused.total / 2**30, 1) == 70.6


@pytest.mark.parametrize(
    "layer, message",
    [
        ("resources: {finetune: {gpu: 0}}\n", "resources.finetune: the plan needs gpu >= 1"),
        ("training: {per_device_batch_size: -4}\n", "per_device_batch_size"),
        ("- a list\n", "a config file is a mapping of keys, not a YAML list"),
    ],
)
def test_bad_configs_stop_the_plan_naming_the_file_or_key(paper, tmp_path, layer, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(layer)
    with pytest.raises(SystemExit) as stop:
        main(["plan", "--configfile", str(PAPER), str(bad)])
    assert message in str(stop.value)


def test_an_architecture_file_that_is_not_json_is_named(tmp_path, monkeypatch):
    in_clean_checkout(monkeypatch, tmp_path)
    broken = tmp_path / "arch.json"
    broken.write_text("{not json")
    layer = tmp_path / "layer.yaml"
    layer.write_text(f"model: {{architecture: {broken}}}\n")
    for command in ("plan", "plan-memory"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--configfile", str(PAPER), str(layer)])
        assert f"{broken}: not JSON" in str(stop.value)


def test_docs_slurm_shows_the_plan_s_own_figures(paper):
    from lalm_slu.commands.plan import render

    doc = (REPO / "docs/SLURM.md").read_text()
    table = re.search(r"<!-- plan: paper.yaml -->\n(.*?)\n<!-- /plan -->", doc, flags=re.DOTALL)
    assert table, "docs/SLURM.md has no generated plan table"
    assert table.group(1).strip() == render(plan(paper)).strip()


def test_a_gpu_grid_without_counts_keeps_the_config_s_resources_and_the_plan_command_names_the_key(paper):
    from lalm_slu.planning.cost_plan import gpu_job_plans

    unsized = {**paper, "plan": {**paper["plan"], "corpus_sizes": {}}}
    assert gpu_job_plans(unsized) == {}
    with pytest.raises(PlanError, match=r"plan.corpus_sizes.slurp.en.train"):
        plan(unsized)
    assert gpu_job_plans(paper)[("finetune_model", "slurp-en_mtbi_b5_s0")]["gpu"] == 1
