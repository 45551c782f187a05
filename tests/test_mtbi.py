"""MTBI's schemes: behaviour imitation's targets come from the phase-1 model's text path only, are cached per
phase-1 model and instructions; interleaved items speak exactly their span's audio."""

from __future__ import annotations

import copy

import numpy as np
import torch
import pandas as pd
import pytest
import soundfile
from conftest import REPO, WorkflowCopy
from test_workflow_rerun import micro_config, stand_in_everything, write_config
from tiny_model import tiny_assets  # noqa: F401 - session fixture

import lalm_slu.evaluation.decode as decode
import lalm_slu.training.imitation as imitation
from lalm_slu.model.batches import AUDIO_SPAN, Collator, audio_features, audio_token_count
from lalm_slu.data.budgets import write_budget_ids
from lalm_slu.cli import main
from lalm_slu.data.mixtures import ManifestCache, MixturePart, build_mixture, with_item_data
from lalm_slu.model.loading import load_model_and_processor
from lalm_slu.data.records import DataError, Utterance, read_manifest, write_manifest
from lalm_slu.config.settings import GenerationSettings, ImitationTask, InterleavingSettings
from lalm_slu.speech.tts import ESpeakSynthesizer, Voice
from lalm_slu.training.items import load_items, sequence_lengths, to_chat_items

TASKS = [{"task": "slu", "instruction": "Give the scenario, action and entities as JSON."},
         {"task": "transcribe", "instruction": "Write down what is said."}]  # fmt: skip
SETTINGS = {"max_new_tokens": 6, "batch_size": 4, "device": "cpu", "precision": "fp32"}
# TASKS and SETTINGS as the imitation-targets job reads its --tasks and --settings.
TASK_VIEWS = [ImitationTask.from_dict(task, "test tasks") for task in TASKS]
GENERATION = GenerationSettings.from_dict(SETTINGS, "test settings")


def poisoned(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every SLU label replaced by another."""
    return manifest.assign(scenario="poison", action="poison", intent="poison_poison",
                           entities=[[{"type": "poison", "filler": t.split()[0]}] for t in manifest["text"]])


def imitation_mixture(tmp_path, model, speech_manifest, ids, name):
    write_budget_ids(ids, tmp_path / f"{name}.ids")
    pool = imitation.pool_transcripts(str(speech_manifest), ids)
    targets = imitation.imitation_targets(*model, pool, TASK_VIEWS, GENERATION)
    frame = read_manifest(speech_manifest)
    part = MixturePart("en", str(speech_manifest), str(speech_manifest), tuple(frame["id"]), tuple(ids), True)
    listing = build_mixture("behaviour_imitation", [part], 0, imitation=targets)
    return targets, with_item_data(listing, ManifestCache())


def test_imitation_targets_never_read_the_speech_labels(tiny_assets, tmp_path):  # noqa: F811
    model = load_model_and_processor(str(tiny_assets.model_dir))
    ids = ["u1", "u4", "u6"]
    clean = read_manifest(tiny_assets.speech_manifest)
    # The same utterances at the same path, once with their labels, once poisoned.
    manifest = tmp_path / "speech.parquet"
    from lalm_slu.data.records import json_columns

    json_columns(clean).to_parquet(manifest, index=False)
    targets, mixture = imitation_mixture(tmp_path, model, manifest, ids, "clean")
    json_columns(poisoned(clean)).to_parquet(manifest, index=False)
    poisoned_targets, poisoned_mixture = imitation_mixture(tmp_path, model, manifest, ids, "poison")
    pd.testing.assert_frame_equal(targets, poisoned_targets)
    pd.testing.assert_frame_equal(mixture, poisoned_mixture)
    assert set(mixture["phase"]) == {2} and set(mixture["modality"]) == {"speech"}
    assert len(mixture) == len(ids) * len(TASKS) and not mixture["target"].str.contains("poison").any()


def test_imitation_targets_come_from_the_text_path(tiny_assets, monkeypatch):  # noqa: F811
    model = load_model_and_processor(str(tiny_assets.model_dir))
    seen = []

    def generate(model, processor, collator, items, settings, audio=None):
        seen.extend(items)
        return [f"answer to {item.text}" for item in items]

    monkeypatch.setattr(decode, "generate_batch", generate)
    pool = imitation.pool_transcripts(str(tiny_assets.speech_manifest), ["u0", "u2"])
    targets = imitation.imitation_targets(*model, pool, TASK_VIEWS, GENERATION)
    assert all(item.audio is None for item in seen)
    assert {item.text for item in seen} == {"wake me up at seven am", "play some jazz"}
    assert targets.set_index(["id", "task"]).loc[("u2", "transcribe"), "target"] == "answer to play some jazz"


def test_each_task_is_answered_by_its_own_model_from_the_transcript(monkeypatch, tmp_path):
    utterances = [Utterance(f"u{i}", "tiny", "en", "train", text, "alarm", "set", [])
                  for i, text in enumerate(["wake me up", "play jazz"])]  # fmt: skip
    manifest = write_manifest(utterances, tmp_path / "speech.parquet")
    loaded = []
    monkeypatch.setattr(imitation, "load_model_and_processor", lambda path, **_: loaded.append(path) or (path, None))
    monkeypatch.setattr(imitation, "answer_transcripts",
                        lambda model, _, texts, instruction, __: [f"{model}: {t}" for t in texts])  # fmt: skip
    tasks = [{"task": "slu", "instruction": "Give the JSON.", "model": "phase1"},
             {"task": "transcribe", "instruction": "Write down what is said.", "model": "base"}]  # fmt: skip
    out = tmp_path / "targets.parquet"
    imitation.write_imitation_targets({"phase1": "ft", "base": "base"}, [(str(manifest), ["u1", "u0"])], tasks,
                                      SETTINGS, str(out))  # fmt: skip
    targets = pd.read_parquet(out).set_index(["id", "task"])["target"]
    assert targets[("u1", "slu")] == "ft: play jazz" and targets[("u0", "transcribe")] == "base: wake me up"
    assert sorted(loaded) == ["base", "ft"]  # each model loaded once
    with pytest.raises(ValueError, match="'base' model"):
        imitation.write_imitation_targets({"phase1": "ft"}, [(str(manifest), ["u0"])], tasks, SETTINGS, str(out))


def test_label_free_speech_enlarges_the_imitation_pool_and_its_labels_are_never_used(monkeypatch, tmp_path):
    from lalm_slu.data.records import json_columns

    def manifest(name, texts):
        utterances = [Utterance(f"{name}{i}", name, "en", "train", text, "alarm", "set", [], audio=f"{name}{i}.flac",
                                duration_s=1.0) for i, text in enumerate(texts)]  # fmt: skip
        return write_manifest(utterances, tmp_path / f"{name}.parquet")

    budget = manifest("b", ["wake me up", "play jazz", "stop"])
    label_free = manifest("asr", ["turn it down", "what time is it", "hello there"])
    write_budget_ids(["b0", "b2"], tmp_path / "b.ids")
    write_budget_ids(["asr0", "asr2"], tmp_path / "asr.ids")
    monkeypatch.setattr(imitation, "load_model_and_processor", lambda path, **_: (path, None))
    monkeypatch.setattr(imitation, "answer_transcripts",
                        lambda model, _, texts, instruction, __: [f"{instruction} {t}" for t in texts])  # fmt: skip

    def mixture(with_label_free):
        pools = [(str(budget), ["b0", "b2"])] + [(str(label_free), ["asr0", "asr2"])] * with_label_free
        imitation.write_imitation_targets({"phase1": "ft"}, pools, TASKS, SETTINGS, str(tmp_path / "t.parquet"))
        extra = ["--label-free-speech", str(label_free), str(tmp_path / "asr.ids")] * with_label_free
        main(["mix-training-set", "--scheme", "behaviour_imitation", "--text-manifest", str(budget),
              "--speech-manifest", str(budget), "--speech-ids", str(tmp_path / "b.ids"), *extra,
              "--imitation-targets", str(tmp_path / "t.parquet"), "--seed", "0", "--out", str(tmp_path / "m.parquet")])  # fmt: skip
        return pd.read_parquet(tmp_path / "m.parquet")

    labelled_only, enlarged = mixture(False), mixture(True)
    added = set(zip(enlarged["manifest"], enlarged["id"])) - set(zip(labelled_only["manifest"], labelled_only["id"]))
    assert added == {(str(label_free), "asr0"), (str(label_free), "asr2")}
    assert len(enlarged) == len(labelled_only) + 2 * len(TASKS) and set(enlarged["modality"]) == {"speech"}
    # The same label-free utterances with poisoned labels: the same mixture, no label in any target.
    json_columns(poisoned(read_manifest(label_free))).to_parquet(label_free, index=False)
    pd.testing.assert_frame_equal(mixture(True), enlarged)
    assert not enlarged["target"].str.contains("poison|alarm").any()


@pytest.fixture(scope="module")
def timed_clip(tmp_path_factory):
    """One eSpeak utterance with its word times, in a speech manifest."""
    root = tmp_path_factory.mktemp("timed")
    text = "wake me up at seven tomorrow morning"
    audio, times = ESpeakSynthesizer().synthesize_timed(text, Voice("en-us+m3", 160, 50))
    soundfile.write(root / "u0.flac", audio, 16_000, subtype="PCM_16")
    utt = Utterance("u0", "tiny", "en", "train", text, "alarm", "set", [{"type": "time", "filler": "seven"}],
                    audio=str(root / "u0.flac"), duration_s=len(audio) / 16_000, word_times=times)
    return write_manifest([utt], root / "speech.parquet"), soundfile.read(root / "u0.flac", dtype="float32")[0], times


def test_an_interleaved_item_speaks_exactly_its_span(tiny_assets, timed_clip, tmp_path):  # noqa: F811
    manifest, audio, times = timed_clip
    listing = pd.DataFrame({"id": ["u0"], "lang": ["en"], "modality": ["interleaved"], "phase": [1],
                            "manifest": [str(manifest)], "span_start": [2], "span_end": [5]})  # "up at seven"
    with_item_data(listing, ManifestCache()).to_parquet(tmp_path / "mixture.parquet", index=False)
    (item,) = load_items(tmp_path / "mixture.parquet", 1)
    assert item.text == f"wake me {AUDIO_SPAN} tomorrow morning"
    assert item.span_s == (times[2][1], times[4][2])
    _, processor = load_model_and_processor(str(tiny_assets.model_dir))
    (chat,) = to_chat_items([item], "Give the scenario.")
    span = audio[int(round(times[2][1] * 16_000)) : int(round(times[4][2] * 16_000))]
    np.testing.assert_array_equal(chat.audio, span)
    batch = Collator(processor)([chat])
    _, mask = audio_features(processor, [span])
    audio_tokens = int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum())
    assert audio_tokens == audio_token_count(int(mask.sum())) > 0
    # The written words stay text around the span, and the length grouping counts the item as the collator builds it.
    prompt = processor.tokenizer.decode(batch["input_ids"][0])
    assert "wake me <|audio_bos|><|AUDIO|>" in prompt and "<|audio_eos|> tomorrow morning" in prompt
    assert sequence_lengths([item], processor, "Give the scenario.") == [int(batch["attention_mask"].sum())]


def test_interleaving_turns_a_fraction_of_the_speech_into_spans_of_the_configured_length():
    ids = tuple(f"u{i}" for i in range(40))
    part = MixturePart("en", "text.parquet", "speech.parquet", ids, ids[:20], True)
    times = {("speech.parquet", uid): [[f"w{k}", k * 0.3, (k + 1) * 0.3] for k in range(6)] for uid in ids}
    mixture = build_mixture("interleaving", [part], 3, InterleavingSettings(0.5, 2, 3, 0.1), times)
    direct = build_mixture("direct_mixing", [part], 3)
    assert (mixture["modality"] == "interleaved").sum() == 10 and (mixture["modality"] == "speech").sum() == 10
    assert mixture[["id", "lang", "phase", "manifest"]].equals(direct[["id", "lang", "phase", "manifest"]])
    spans = mixture[mixture["modality"] == "interleaved"]
    assert ((spans["span_end"] - spans["span_start"]).between(2, 3)).all() and (spans["span_end"] <= 6).all()


# ------------------------------------------------------------------ the workflow

TARGETS_PREFIX = "results/imitation_targets/tiny-en_text_only_b0_s0/"
PHASE_ONE = "results/runs/tiny-en_text_only_b0_s0/model"


def imitation_config():
    config = micro_config()
    default = __import__("yaml").safe_load((REPO / "config.yaml").read_text())
    config["schemes"] = default["schemes"]
    config["grid"]["monolingual"][0]["schemes"] = ["behaviour_imitation", "mtbi"]
    config["grid"]["crosslingual"] = []
    return config


@pytest.fixture(scope="module")
def planned_imitation(tmp_path_factory):
    copy_ = WorkflowCopy(tmp_path_factory.mktemp("imitation"))
    (copy_.root / "data/tiny").mkdir(parents=True)
    for lang in ("en", "de", "fr"):
        (copy_.root / f"data/tiny/{lang}.jsonl").touch()
    (copy_.root / "models/demo").mkdir(parents=True)
    write_config(copy_, imitation_config())
    stand_in_everything(copy_)
    return copy_


def targets_pending(copy_):
    return {path for path in copy_.pending() if path.startswith(TARGETS_PREFIX)}


def test_both_imitation_schemes_share_one_phase_one_run_and_one_target_file_per_budget(planned_imitation):
    outputs = planned_imitation.summary()
    targets = {path for path in outputs if path.startswith(TARGETS_PREFIX)}
    assert len(targets) == 2  # budgets 10 and 50; behaviour_imitation and mtbi read the same file
    assert PHASE_ONE in outputs
    assert not any("text_only" in path for path in outputs if "/metrics/" in path)  # trained, not evaluated


def test_targets_are_remade_when_the_phase_one_model_changes(planned_imitation, tmp_path):
    copy_ = planned_imitation.clone(tmp_path / "w")
    config = imitation_config()
    config["schemes"]["text_only"]["phases"][0]["epochs"] = 1
    write_config(copy_, config)
    pending = copy_.pending()
    assert PHASE_ONE in pending and len(targets_pending(copy_)) == 2


@pytest.mark.parametrize("key, value", [("instruction", "Repeat what is said."), ("model", "phase1")],
                         ids=["instruction", "answering_model"])
def test_targets_are_remade_when_a_tasks_instruction_or_answering_model_changes(planned_imitation, tmp_path, key,
                                                                                 value):
    copy_ = planned_imitation.clone(tmp_path / "w")
    config = imitation_config()
    for scheme in ("behaviour_imitation", "mtbi"):
        config["schemes"][scheme]["imitation"] = copy.deepcopy(config["schemes"][scheme]["imitation"])
        config["schemes"][scheme]["imitation"]["tasks"][1][key] = value
    write_config(copy_, config)
    pending = copy_.pending()
    assert PHASE_ONE not in pending
    assert {p for p in pending if p.startswith("results/imitation_targets/")}  # new target files


def test_transcript_tasks_read_the_base_model_and_are_remade_when_it_changes(planned_imitation, tmp_path):
    copy_ = planned_imitation.clone(tmp_path / "w")
    commands = copy_.snakemake("--dry-run", "--printshellcmds", "--forceall").stdout.splitlines()
    targets = [line for line in commands if "python -m lalm_slu imitation-targets " in line]
    assert targets and all("--base-model models/demo " in line for line in targets)
    assert not targets_pending(copy_)
    (copy_.root / "models/demo/config.json").write_text("{}")  # a newer base model
    assert len(targets_pending(copy_)) == 2


def test_targets_are_kept_when_only_phase_two_changes(planned_imitation, tmp_path):
    copy_ = planned_imitation.clone(tmp_path / "w")
    config = imitation_config()
    config["schemes"]["mtbi"] = copy.deepcopy(config["schemes"]["mtbi"])
    config["schemes"]["mtbi"]["phases"][0]["learning_rate"] = 1.0e-4
    config["schemes"]["mtbi"]["interleaving"]["fraction"] = 0.25
    write_config(copy_, config)
    pending = copy_.pending()
    assert not targets_pending(copy_) and PHASE_ONE not in pending
    assert "results/runs/tiny-en_mtbi_b10_s0/model" in pending


def test_the_mix_command_builds_an_imitation_mixture_from_targets_alone(tiny_assets, tmp_path):  # noqa: F811
    write_budget_ids(["u1", "u3"], tmp_path / "ids.txt")
    targets = pd.DataFrame({"id": ["u1", "u3"], "lang": "en", "manifest": str(tiny_assets.speech_manifest),
                            "task": "transcribe", "instruction": "Write down what is said.", "target": ["a", "b"]})
    targets.to_parquet(tmp_path / "targets.parquet", index=False)
    main(["mix-training-set", "--scheme", "behaviour_imitation", "--text-manifest", str(tiny_assets.text_manifest),
          "--speech-manifest", str(tiny_assets.speech_manifest), "--speech-ids", str(tmp_path / "ids.txt"),
          "--imitation-targets", str(tmp_path / "targets.parquet"), "--seed", "0", "--out", str(tmp_path / "m.parquet")])
    mixture = pd.read_parquet(tmp_path / "m.parquet").set_index("id")
    assert sorted(mixture["target"]) == ["a", "b"] and set(mixture["phase"]) == {2}
    assert set(mixture["instruction"]) == {"Write down what is said."}
    speech = read_manifest(tiny_assets.speech_manifest).set_index("id").loc[["u1", "u3"]]
    for column in ("text", "audio", "duration_s"):
        assert mixture[column].sort_index().tolist() == speech[column].tolist()


def test_an_mtbi_phase_two_trains_only_the_projector_on_imitation_and_interleaved_items(
    tiny_assets, timed_clip, tmp_path  # noqa: F811
):
    from test_train import make_settings, weights

    from lalm_slu.training.finetune import finetune

    manifest, _, _ = timed_clip
    rows = [("speech", None, None, "Write down what is said.", "wake me up"),
            ("interleaved", 0, 2, "Write down what is said.", "wake me up"),
            ("interleaved", 3, 6, None, None),  # the SLU label under the prompt's instruction
            ("speech", None, None, None, "an answer")]  # fmt: skip
    listing = pd.DataFrame(rows, columns=["modality", "span_start", "span_end", "instruction", "target"])
    listing = listing.assign(id="u0", lang="en", phase=2, manifest=str(manifest))
    listing = listing.astype({"span_start": "Int64", "span_end": "Int64"})
    with_item_data(listing, ManifestCache()).to_parquet(tmp_path / "mixture.parquet", index=False)
    settings = make_settings(tiny_assets.model_dir, [(2, 2, 1e-3, 0.0)], trainable=["multi_modal_projector"],
                             cache_frozen_audio=True)
    summary = finetune(tmp_path / "mixture.parquet", settings, tmp_path / "out", tmp_path / "work")
    before, after = weights(tiny_assets.model_dir), weights(tmp_path / "out")
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all("multi_modal_projector" in name for name in changed)
    assert summary["optimizer_steps"] == 2


def test_paired_speech_pool_is_each_manifests_id_list_and_an_empty_pool_is_refused(tmp_path):
    write_budget_ids(["u2", "u0"], tmp_path / "a.txt")
    write_budget_ids([], tmp_path / "b.txt")
    pool_files = [("a.parquet", str(tmp_path / "a.txt")), ("b.parquet", str(tmp_path / "b.txt"))]
    assert imitation.read_paired_speech_pool(pool_files) == [("a.parquet", ["u2", "u0"]), ("b.parquet", [])]
    with pytest.raises(DataError, match="the paired-speech pool is empty"):
        imitation.read_paired_speech_pool(pool_files[1:])
