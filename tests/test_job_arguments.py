"""What a job's command is told beyond its files: settings JSON and argument lists from the config and a run."""

import json

import pytest

from lalm_slu.planning.config_checks import ConfigError
from lalm_slu.planning.grid import Run
from lalm_slu.planning.job_arguments import (
    alignment_model_setting,
    audio_frames_argument,
    cascade_settings,
    comparison_pair_arguments,
    decode_input_arguments,
    decode_settings,
    download_arguments,
    finetune_launcher,
    finetune_output_option,
    gold_arguments,
    imitation_decode_settings,
    imitation_pool_arguments,
    imitation_tasks,
    max_utterance_arguments,
    mixture_scheme_arguments,
    mixture_target_arguments,
    reader_option_arguments,
    score_meta,
    settings_json,
    start_from_argument,
    start_from_option,
)

DECODE = {"modalities": ["speech", "text"], "num_beams": 1, "batch_size": 8, "max_new_tokens": 128}
IMITATION = {"tasks": [{"task": "summary", "instruction": None, "model": "base"}], "max_new_tokens": 64}


def job_config():
    return {
        "corpora": {
            "massive": {"locales": {"de": "de-DE"}, "languages": ["de", "en"],
                        "options": {"path": "data/{locale}.jsonl", "cache_dir": "cache", "limit": 3},
                        "download": {"corpus": "AmazonScience/massive"}},
        },  # fmt: skip
        "decode": DECODE,
        "cascade": {"model": "whisper", "batch_size": 4},
        "prompt": {"instruction": "Answer in JSON."},
        "schemes": {"mtbi": {"interleaving": {"ratio": 0.5}, "imitation": IMITATION}},
        "comparisons": {"scheme_pairs": [["text_only", "mtbi"]], "modality_pairs": [["text", "speech"]]},
        "resources": {"finetune": {"gpu": 1, "nodes": 1, "threads": 2}},
        "alignment": {"models": {"en": {"hub_id": "org/ctc-en", "revision": None}}},
    }


MTBI = Run("massive", "en", None, "mtbi", "5", 0)


def test_reader_options_fill_in_the_locale_and_name_the_hub_config():
    assert reader_option_arguments(job_config(), "massive", "de") == [
        "--option", "cache_dir=cache", "config=de-DE", "limit=3", "path=data/de-DE.jsonl",
    ]  # fmt: skip
    assert reader_option_arguments(job_config(), "massive", "en")[-1] == "path=data/en.jsonl"


def test_a_download_names_the_corpus_cache_and_the_configured_locales():
    assert download_arguments(job_config(), "massive") == [
        "--corpus", "AmazonScience/massive", "--cache-dir", "cache", "--locales", "de-DE",
    ]  # fmt: skip


def test_utterance_caps_are_given_per_split_and_left_out_when_none():
    assert max_utterance_arguments({"train": 100, "test": 20}) == ["--max-utterances", "train=100", "test=20"]
    assert max_utterance_arguments({}) == []


def test_decoding_gets_decode_s_settings_and_the_prompt_but_not_the_modalities():
    settings = json.loads(decode_settings(job_config()))
    assert settings == {"num_beams": 1, "batch_size": 8, "max_new_tokens": 128, "instruction": "Answer in JSON."}


def test_the_cascade_block_overrides_decode_s_settings():
    assert json.loads(cascade_settings(job_config())) == {
        "num_beams": 1, "batch_size": 4, "max_new_tokens": 128, "model": "whisper",
    }  # fmt: skip


def test_each_modality_is_decoded_from_its_manifest_to_its_output():
    inputs = {"manifest_speech": "speech.parquet", "manifest_text": "text.parquet"}
    # Outputs are matched by name, whatever their order: the modalities' order makes the arguments.
    outputs = {"text": "text.jsonl", "speech": "speech.jsonl"}
    assert decode_input_arguments(job_config(), inputs, outputs) == [
        "--input", "speech", "speech.parquet", "speech.jsonl", "--input", "text", "text.parquet", "text.jsonl",
    ]  # fmt: skip


def test_a_modality_without_its_named_output_is_an_error_not_a_shifted_pair():
    inputs = {"manifest_speech": "speech.parquet", "manifest_text": "text.parquet"}
    with pytest.raises(KeyError, match="text"):
        decode_input_arguments(job_config(), inputs, {"speech": "speech.jsonl", "other": "text.jsonl"})


def test_frames_and_a_start_checkpoint_are_passed_only_when_the_job_has_them():
    assert audio_frames_argument({"audio_frames": "f.safetensors"}) == ["--audio-frames", "f.safetensors"]
    assert audio_frames_argument({}) == []
    assert start_from_argument({"start_from": ["ckpt"]}) == ["--start-from", "ckpt"]
    assert start_from_argument({"start_from": []}) == []


def test_the_start_checkpoint_and_a_prefix_s_output_are_quoted_shell_text_of_one_command():
    # The text follows --audio-frames FILE: a space, then the quoted option (a lone space without a checkpoint).
    assert start_from_option({"start_from": ["work dir/ckpt"]}) == " --start-from 'work dir/ckpt'"
    assert start_from_option({"start_from": []}) == " "
    assert finetune_output_option(prefix=True) == " --output checkpoint"
    assert finetune_output_option(prefix=False) == ""


def test_one_process_runs_plain_python_and_several_gpus_torchrun():
    config = job_config()
    assert finetune_launcher(config, 0) == "python"
    assert finetune_launcher(config, 4) == "python -m torch.distributed.run --standalone --nproc-per-node 4"
    config["resources"]["finetune"]["nodes"] = 2
    assert finetune_launcher(config, 4).startswith(
        "srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --cpus-per-task 8 --kill-on-bad-exit 1"
        " python -m torch.distributed.run --nnodes 2 --nproc-per-node 4"
    )


def test_score_meta_holds_the_run_s_grid_coordinates_test_set_and_input():
    meta = score_meta(Run("xsid", "en", "de", "curriculum", "10", 1, target_text=False), "xsid-de", "cascade")
    assert json.loads(meta) == {
        "run": "xsid-en2de-notext_curriculum_b10_s1", "corpus": "xsid", "scheme": "curriculum",
        "source": "en", "target": "de", "target_text": False, "budget": "10", "seed": 1,
        "testset": "xsid-de", "modality": "cascade",
    }  # fmt: skip
    assert json.loads(score_meta(MTBI, "slurp-en", "speech"))["lang"] == "en"


def test_comparison_pairs_and_gold_manifests_become_flag_arguments():
    assert comparison_pair_arguments(job_config()) == [
        "--scheme-pair", "text_only", "mtbi", "--modality-pair", "text", "speech",
    ]  # fmt: skip
    assert gold_arguments({"xsid-de": "b.parquet", "slurp-en": "a.parquet"}) == [
        "slurp-en=a.parquet", "xsid-de=b.parquet",
    ]  # fmt: skip


def test_a_crosslingual_mixture_is_told_its_target_manifests_and_whether_to_use_target_text():
    run = Run("xsid", "en", "de", "direct_mixing", "10", 0, target_text=False)
    inputs = {"target_text": "t.parquet", "target_speech": "s.parquet", "target_speech_ids": "ids.txt"}
    assert mixture_target_arguments(job_config(), run, inputs) == [
        "--target-text-manifest", "t.parquet", "--target-speech-manifest", "s.parquet",
        "--target-speech-ids", "ids.txt", "--no-target-text",
    ]  # fmt: skip
    assert mixture_target_arguments(job_config(), MTBI, inputs) == []


def test_mtbi_mixes_interleaved_speech_with_imitation_targets():
    inputs = {"imitation_targets": "targets.parquet"}
    assert mixture_scheme_arguments(job_config(), MTBI, inputs) == [
        "--interleave", '{"ratio": 0.5}', "--imitation-targets", "targets.parquet",
    ]  # fmt: skip


def test_the_imitation_pool_passes_each_speech_pool_and_the_base_model():
    inputs = {"speech": "s.parquet", "speech_ids": "s.txt", "label_free_speech": "l.parquet",
              "label_free_ids": "l.txt", "base_model": "models/base"}  # fmt: skip
    assert imitation_pool_arguments(inputs) == [
        "--pool", "s.parquet", "s.txt", "--pool", "l.parquet", "l.txt", "--base-model", "models/base",
    ]  # fmt: skip


def test_imitation_tasks_default_to_the_slu_prompt_and_targets_use_the_imitation_length_limit():
    assert json.loads(imitation_tasks(job_config(), MTBI)) == [
        {"task": "summary", "instruction": "Answer in JSON.", "model": "base"}
    ]
    assert json.loads(imitation_decode_settings(job_config(), MTBI))["max_new_tokens"] == 64


def test_a_ctc_model_revision_defaults_to_main_and_a_missing_language_is_a_config_error():
    assert alignment_model_setting(job_config(), "en", "hub_id") == "org/ctc-en"
    assert alignment_model_setting(job_config(), "en", "revision") == "main"
    with pytest.raises(ConfigError, match="^alignment.models: no CTC model for language 'fr'"):
        alignment_model_setting(job_config(), "fr", "hub_id")


def test_a_settings_block_is_sorted_json():
    assert settings_json({"a": {"b": {"z": 1, "y": 2}}}, "a", "b") == '{"y": 2, "z": 1}'
