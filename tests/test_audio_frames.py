"""Precomputed audio frames: one file per speech manifest, checked against the model that reads it, and used by
fine-tuning and decoding instead of running the frozen encoder."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_model import INSTRUCTION, tiny_assets  # noqa: F401 - session fixture

from lalm_slu.model.audio_encoding import clip_frames, merge_audio
from lalm_slu.model.audio_frames import encode_manifest, load_frames
from lalm_slu.model.batches import audio_features, audio_token_count
from lalm_slu.evaluation.decode import decode
from lalm_slu.model.loading import load_model_and_processor
from lalm_slu.data.records import DataError, read_manifest
from lalm_slu.data.audio import load_audio
from lalm_slu.training.finetune import finetune
from test_train import LLM_ONLY, count_encoder_batches, make_settings, mixed_rows, weights, write_mixture

SETTINGS = {"batch_size": 3, "length_aware": True, "device": "cpu", "precision": "fp32"}


@pytest.fixture(scope="module")
def frames_file(tiny_assets, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("frames") / "train.safetensors"
    summary = encode_manifest(str(tiny_assets.model_dir), str(tiny_assets.speech_manifest), str(path), SETTINGS)
    return path, summary


@pytest.fixture(scope="module")
def tiny(tiny_assets):  # noqa: F811
    model, processor = load_model_and_processor(str(tiny_assets.model_dir))
    return model.eval(), processor


def test_every_clip_gets_its_own_frames_one_per_audio_token(tiny, tiny_assets, frames_file):  # noqa: F811
    model, processor = tiny
    path, summary = frames_file
    manifest = read_manifest(tiny_assets.speech_manifest)
    frames = load_file(str(path))
    assert sorted(frames) == sorted(manifest["audio"]) and summary["clips"] == len(manifest)
    hop = processor.feature_extractor.hop_length
    for row in manifest.itertuples():
        alone = clip_frames(model, processor, [load_audio(row.audio)])[0]
        mel_frames = audio_features(processor, [load_audio(row.audio)])[1].sum()
        assert len(frames[row.audio]) == audio_token_count(int(mel_frames)) == len(alone)
        assert abs(len(alone) - row.duration_s * 16_000 / hop / 4) <= 1  # one frame per 40 ms of audio
        # Encoded in batches of 3 (longest first) or alone: the same up to float summation order.
        torch.testing.assert_close(frames[row.audio], alone, rtol=1e-4, atol=1e-4)


def test_frames_from_other_audio_weights_are_refused(tiny_assets, frames_file, tmp_path):  # noqa: F811
    path, _ = frames_file
    model, _ = load_model_and_processor(str(tiny_assets.model_dir))
    assert len(load_frames(path, model).frames) == 8
    with torch.no_grad():
        model.model.multi_modal_projector.linear.bias[0] += 1e-3
    with pytest.raises(DataError, match=r"train\.safetensors: frames were computed by .*re-run encode_audio"):
        load_frames(path, model)


def test_frames_encoded_for_another_audio_length_handling_are_refused(tiny, frames_file):
    model, _ = tiny
    with pytest.raises(DataError, match="length_aware=True, this run uses False"):
        load_frames(frames_file[0], model, length_aware=False)


def test_a_file_that_is_not_frames_is_refused_by_name(tiny, tmp_path):
    model, _ = tiny
    other = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(DataError, match="weights.safetensors: not an audio frames file"):
        load_frames(other, model)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="broken.safetensors: cannot read audio frames"):
        load_frames(broken, model)


def test_a_clip_missing_from_the_frames_names_the_file(tiny, frames_file):
    model, _ = tiny
    store = load_frames(frames_file[0], model)
    with pytest.raises(DataError, match=r"train\.safetensors: no frames for clip /nowhere/x.flac"):
        store["/nowhere/x.flac"]


def test_a_manifest_without_audio_is_refused_before_loading_anything(tiny_assets, tmp_path):  # noqa: F811
    with pytest.raises(DataError, match=r"text\.parquet: 8 utterances have no audio"):
        encode_manifest(str(tiny_assets.model_dir), str(tiny_assets.text_manifest), str(tmp_path / "x"), SETTINGS)
    assert not (tmp_path / "x").exists()


def test_frames_that_do_not_fill_the_audio_tokens_are_an_error(tiny):
    model, _ = tiny
    ids = torch.tensor([[1, model.config.audio_token_id, model.config.audio_token_id, 2]])
    with pytest.raises(ValueError, match="3 audio frames for 2 <|AUDIO|> tokens"):
        merge_audio(model, ids, torch.zeros(3, model.config.text_config.hidden_size))


def test_fine_tuning_on_precomputed_frames_never_runs_the_encoder(tiny_assets, frames_file, tmp_path, monkeypatch):  # noqa: F811
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    settings = make_settings(tiny_assets.model_dir, [(1, 2, 2e-3, 0.0)])
    finetune(mixture, settings, tmp_path / "encoded", tmp_path / "encoded-work")
    encoded = count_encoder_batches(monkeypatch)
    finetune(mixture, settings, tmp_path / "frames", tmp_path / "frames-work", [str(frames_file[0])])
    assert encoded == []
    expected, actual = weights(tmp_path / "encoded"), weights(tmp_path / "frames")
    # Frames encoded in other batches differ by float summation order; AdamW turns that into ~1e-5 on weights.
    assert [n for n in expected if not torch.allclose(expected[n], actual[n], rtol=1e-3, atol=1e-4)] == []
    history = pd.read_csv(tmp_path / "frames" / "loss.csv")
    assert history["speech_items"].sum() == 4 * 2  # the clips were trained on, from their frames


@pytest.mark.parametrize("audio_part", ["multi_modal_projector", "audio_tower.layers.3"])
def test_precomputed_frames_are_refused_when_the_scheme_trains_the_audio_path(tiny_assets, frames_file, tmp_path,  # noqa: F811
                                                                                audio_part):
    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    settings = make_settings(tiny_assets.model_dir, [(1, 1, 2e-3, 0.0)], trainable=[audio_part, *LLM_ONLY])
    with pytest.raises(ValueError, match=f"trains \\['{audio_part.split('.')[0]}'\\]: its frames change"):
        finetune(mixture, settings, tmp_path / "out", tmp_path / "work", [str(frames_file[0])])
    # Refused before training: no checkpoint, only the run's lock file.
    assert not (tmp_path / "work").exists() or [p.name for p in (tmp_path / "work").iterdir()] == ["lock"]


def test_decoding_from_precomputed_frames_gives_the_encoded_predictions(tiny_assets, frames_file, tmp_path,  # noqa: F811
                                                                         monkeypatch):
    settings = dict(num_beams=1, batch_size=3, max_new_tokens=12, instruction=INSTRUCTION)
    model_dir, manifest = str(tiny_assets.model_dir), str(tiny_assets.speech_manifest)
    decode(model_dir, [("speech", manifest, str(tmp_path / "encoded.jsonl"))], settings)
    encoded = count_encoder_batches(monkeypatch)
    decode(model_dir, [("speech", manifest, str(tmp_path / "frames.jsonl"))], settings, str(frames_file[0]))
    assert encoded == []
    lines = [[json.loads(line)["raw"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
             for name in ("encoded", "frames")]
    assert lines[0] == lines[1] and len(set(lines[0])) > 1
    with pytest.raises(ValueError, match="speech input only"):
        decode(model_dir, [("text", manifest, str(tmp_path / "text.jsonl"))], settings, str(frames_file[0]))


def test_the_command_line_writes_a_frames_file(tiny_assets, tmp_path):  # noqa: F811
    from lalm_slu.cli import main

    out = tmp_path / "frames" / "test.safetensors"
    main(["encode-audio", "--model", str(tiny_assets.model_dir), "--manifest", str(tiny_assets.speech_manifest),
          "--settings", json.dumps({"batch_size": 8, "device": "cpu"}), "--threads", "1", "--out", str(out)])
    assert len(load_file(str(out))) == 8 and not list(out.parent.glob("*.tmp"))
    shutil.rmtree(out.parent)
