"""Where the workflow's files live and which of them a job reads, as pure functions of the config and a run."""

import inspect

import pytest

from lalm_slu.planning import paths

from lalm_slu.planning.grid import Run
from lalm_slu.planning.job_arguments import dev_manifests_argument
from lalm_slu.planning.paths import (
    budget_path,
    comparison_inputs,
    corpus_inputs,
    decode_inputs,
    decode_outputs,
    finetune_inputs,
    imitation_pool_inputs,
    imitation_pool_name,
    imitation_targets_path,
    metrics_paths,
    prediction_paths,
    mixture_inputs,
    mixture_scheme_inputs,
    model_download_stamp,
    release_text_dir,
    run_audio_frames,
    gold_manifests,
    work_dir,
)

TASKS = [{"task": "transcribe", "instruction": None}]


def workflow_config(speech="tts", precompute=True, modalities=("speech", "text")):
    return {
        "corpora": {
            "slurp": {"speech": speech, "source": "data/slurp", "download": None, "download_release_text": False,
                      "reader": "slurp", "options": {"annotations": "data/slurp/text"}},
            "xsid": {"speech": "tts", "source": {"en": "data/xsid/en", "de": "data/xsid/de"}, "download": None,
                     "download_release_text": False, "reader": "xsid", "options": {}},
        },  # fmt: skip
        "schemes": {
            "direct_mixing": {"trainable_modules": ["model.layers"]},
            "interleaving": {"trainable_modules": ["model.layers"]},
            "oracle": {"trainable_modules": ["multi_modal_projector"]},
            "behaviour_imitation": {"trainable_modules": ["lm_head"],
                                    "imitation": {"tasks": TASKS, "max_new_tokens": 64}},
        },  # fmt: skip
        "audio_frames": {"precompute": precompute},
        "decode": {"modalities": list(modalities)},
        "model": {"path": "models/demo-qwen2-audio"},
    }


MONO = Run("slurp", "en", None, "direct_mixing", "5", 0)
CROSS = Run("xsid", "en", "de", "direct_mixing", "10", 1, target_split="dev")


def test_a_monolingual_mixture_reads_the_language_s_text_speech_and_budgeted_ids():
    assert mixture_inputs(workflow_config(), MONO) == {
        "text": "results/manifests/slurp/en/train.parquet",
        "speech": "results/speech/slurp/en/train.parquet",
        "speech_ids": "results/budgets/slurp/en/train/seed0/5.txt",
    }


def test_a_crosslingual_mixture_takes_all_source_speech_and_the_budget_of_target_speech():
    inputs = mixture_inputs(workflow_config(), CROSS)
    assert inputs["speech_ids"] == "results/budgets/xsid/en/train/seed1/100.txt"
    assert inputs["target_text"] == "results/manifests/xsid/de/dev.parquet"
    assert inputs["target_speech_ids"] == "results/budgets/xsid/de/dev/seed1/10.txt"


def test_crosslingual_text_only_training_takes_no_source_speech():
    run = Run("xsid", "en", "de", "text_only", "0", 0, target_split="dev")
    assert mixture_inputs(workflow_config(), run)["speech_ids"] == budget_path("xsid", "en", "train", 0, "0")


def test_interleaving_recorded_speech_reads_the_forced_aligned_manifest():
    run = Run("slurp", "en", None, "interleaving", "5", 0)
    assert mixture_inputs(workflow_config(speech="recorded"), run)["speech"] == "results/aligned/slurp/en/train.parquet"
    assert mixture_inputs(workflow_config(speech="tts"), run)["speech"] == "results/speech/slurp/en/train.parquet"


def test_frames_serve_a_run_only_when_neither_audio_tower_nor_projector_trains():
    assert run_audio_frames(workflow_config(), MONO) == ["results/audio_frames/slurp/en/train.safetensors"]
    assert run_audio_frames(workflow_config(), Run("slurp", "en", None, "oracle", "100", 0)) == []
    assert run_audio_frames(workflow_config(precompute=False), MONO) == []


def test_text_only_training_reads_no_frames():
    assert run_audio_frames(workflow_config(), Run("slurp", "en", None, "direct_mixing", "0", 0)) == []


def test_a_run_continues_its_prefix_checkpoint_and_a_prefix_job_starts_from_the_model():
    run = Run("slurp", "en", None, "curriculum", "5", 0)
    config = workflow_config()
    config["schemes"]["curriculum"] = {"trainable_modules": ["lm_head"]}
    inputs = finetune_inputs(config, run)
    assert inputs["mixture"] == "results/mixtures/slurp-en_curriculum_b5_s0.parquet"
    assert inputs["start_from"] == ["results/prefixes/slurp-en_curriculum_phase1_s0/checkpoint"]
    assert inputs["model"] == "models/demo-qwen2-audio"
    prefix_inputs = finetune_inputs(config, run, "slurp-en_curriculum_phase1_s0")
    assert prefix_inputs["mixture"] == "results/prefixes/slurp-en_curriculum_phase1_s0/mixture.parquet"
    assert prefix_inputs["start_from"] == []


def test_dev_evaluation_reads_the_dev_split_of_the_run_s_test_language_unless_it_trains_on_it():
    config = workflow_config()
    assert finetune_inputs(config, MONO)["dev_text"] == finetune_inputs(config, MONO)["dev_speech"] == []
    config["training"] = {"dev_eval": {"inputs": ["text", "speech"]}}
    inputs = finetune_inputs(config, MONO)
    assert inputs["dev_text"] == ["results/manifests/slurp/en/dev.parquet"]
    assert inputs["dev_speech"] == ["results/speech/slurp/en/dev.parquet"]
    assert dev_manifests_argument(inputs) == ["--dev-manifests", "text=results/manifests/slurp/en/dev.parquet",
                                              "speech=results/speech/slurp/en/dev.parquet"]
    # xSID's German trains on its dev split, as a cross-lingual target and as its own oracle's training data.
    assert finetune_inputs(config, CROSS)["dev_text"] == []
    oracle = Run("xsid", "de", None, "oracle", "100", 0, source_split="dev")
    assert dev_manifests_argument(finetune_inputs(config, oracle)) == []
    english = Run("xsid", "en", "de", "direct_mixing", "10", 1, target_split="train")
    assert finetune_inputs(config, english)["dev_text"] == ["results/manifests/xsid/de/dev.parquet"]


def test_checkpoints_live_under_work_by_run_or_prefix():
    assert work_dir({}, MONO) == "work/slurp-en_direct_mixing_b5_s0"
    assert work_dir({}, MONO, "slurp-en_curriculum_phase1_s0") == "work/prefixes/slurp-en_curriculum_phase1_s0"


def test_the_cascade_decodes_the_shared_transcripts_of_the_test_speech():
    config = workflow_config(modalities=("speech", "cascade"))
    assert decode_inputs(config, MONO, "slurp-en") == {
        "model": "results/runs/slurp-en_direct_mixing_b5_s0/model",
        "manifest_speech": "results/speech/slurp/en/test.parquet",
        "manifest_cascade": "results/cascade/slurp-en.parquet",
        "audio_frames": "results/audio_frames/slurp/en/test.safetensors",
    }


def test_only_evaluated_runs_have_metrics_and_test_sets():
    phase_one = Run("slurp", "en", None, "text_only", "0", 0, evaluated=False)
    runs = {MONO.name: MONO, phase_one.name: phase_one}
    assert metrics_paths(workflow_config(modalities=("text",)), runs) == [
        "results/runs/slurp-en_direct_mixing_b5_s0/metrics/slurp-en.text.json"
    ]
    assert gold_manifests(runs) == {"slurp-en": "results/manifests/slurp/en/test.parquet"}
    assert comparison_inputs(workflow_config(modalities=("text",)), runs)["gold"] == [
        "results/manifests/slurp/en/test.parquet"
    ]


def test_a_corpus_reads_local_data_per_language_or_its_download_stamps():
    config = workflow_config()
    assert corpus_inputs(config, "xsid", "de") == "data/xsid/de"
    config["corpora"]["slurp"].update(download={"corpus": "slurp"}, download_release_text=True)
    assert corpus_inputs(config, "slurp", "en") == [
        "resources/downloads/slurp.json",
        "resources/downloads/slurp-release.json",
    ]
    assert release_text_dir(config, "slurp") == "data/slurp/text"


def test_the_model_download_stamp_is_named_after_the_model_folder():
    assert model_download_stamp(workflow_config()) == "resources/downloads/models/demo-qwen2-audio.json"


def test_an_imitation_pool_is_named_by_its_phase_one_run_budget_and_settings():
    run = Run("slurp", "en", None, "behaviour_imitation", "5", 0)
    name = imitation_pool_name(workflow_config(), run)
    assert name.startswith("slurp-en_text_only_b0_s0/b5_") and len(name.rpartition("_")[2]) == 8
    changed = workflow_config()
    changed["schemes"]["behaviour_imitation"]["imitation"]["max_new_tokens"] = 32
    assert imitation_pool_name(changed, run) != name
    assert imitation_targets_path(workflow_config(), run) == f"results/imitation_targets/{name}.parquet"


def test_an_imitation_run_mixes_its_targets_and_its_pool_answers_from_phase_one():
    run = Run("slurp", "en", None, "behaviour_imitation", "5", 0)
    config = workflow_config()
    assert mixture_scheme_inputs(config, run)["imitation_targets"] == imitation_targets_path(config, run)
    assert imitation_pool_inputs(config, run) == {
        "model": "results/runs/slurp-en_text_only_b0_s0/model",
        "speech": "results/speech/slurp/en/train.parquet",
        "speech_ids": "results/budgets/slurp/en/train/seed0/5.txt",
    }


def test_label_free_speech_joins_the_pool_with_its_own_budget():
    run = Run("slurp", "en", None, "behaviour_imitation", "5", 0)
    config = workflow_config()
    extra = {"corpus": "slurp", "lang": "en", "split": "dev", "budget": "100"}
    config["schemes"]["behaviour_imitation"]["imitation"]["label_free_speech"] = extra
    pool = imitation_pool_inputs(config, run)
    assert pool["label_free_speech"] == "results/speech/slurp/en/dev.parquet"
    assert pool["label_free_ids"] == "results/budgets/slurp/en/dev/seed0/100.txt"


def path_functions():
    """The functions naming one file each: a path of their arguments alone (no config, no run)."""
    for name, function in inspect.getmembers(paths, inspect.isfunction):
        signature = inspect.signature(function)
        parameters = list(signature.parameters)
        plain = parameters and not {"config", "run", "runs"} & set(parameters)
        # gold_manifest and testset_speech_manifest read a test set name's parts: input functions only.
        derived = name in ("gold_manifest", "testset_speech_manifest")
        if function.__module__ == paths.__name__ and plain and signature.return_annotation == "str" and not derived:
            yield pytest.param(function, parameters, id=name)


@pytest.mark.parametrize("function, parameters", list(path_functions()))
def test_a_rule_s_wildcard_pattern_names_the_files_the_input_functions_name(function, parameters):
    # Rules call these with "{wildcard}" arguments; the jobs that read the files call them with values.
    values = {parameter: f"v{index}x" for index, parameter in enumerate(parameters)}
    pattern = function(*(f"{{{parameter}}}" for parameter in parameters))
    assert pattern.format(**values) == function(*values.values())


def test_a_decode_job_s_outputs_are_named_by_modality_and_are_the_predictions_scored():
    config = workflow_config(modalities=("text", "speech", "cascade"))
    outputs = decode_outputs(config["decode"]["modalities"], "{run}", "{testset}")
    assert list(outputs) == ["text", "speech", "cascade"]
    assert outputs["cascade"] == "results/runs/{run}/predictions/{testset}.cascade.jsonl"
    planned = [path.format(run=MONO.name, testset="slurp-en") for path in outputs.values()]
    assert prediction_paths(config, {MONO.name: MONO}) == planned
