"""The CTranslate2 Whisper tiny.en encoder lands, tensor for tensor, in a Qwen2-Audio audio tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2AudioEncoderConfig, WhisperFeatureExtractor
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from lalm_slu.demo_model.whisper_ct2 import bundled_whisper_tiny_en, load_whisper_encoder_into, read_ct2_variables
from lalm_slu.speech.tts import ESpeakSynthesizer, Voice

WHISPER_TINY = dict(
    d_model=384,
    encoder_layers=4,
    encoder_attention_heads=6,
    encoder_ffn_dim=1536,
    num_mel_bins=80,
    max_source_positions=1500,
)


class RecordingDict(dict):
    """Remembers which variables a computation read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


@pytest.fixture(scope="module")
def ct2_encoder():
    torch.set_num_threads(1)
    return read_ct2_variables(bundled_whisper_tiny_en(), prefix="encoder/")


@pytest.fixture(scope="module")
def converted_tower(ct2_encoder):
    torch.manual_seed(0)
    tower = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**WHISPER_TINY)).eval()
    random_init = {name: value.clone() for name, value in tower.state_dict().items()}
    loaded = load_whisper_encoder_into(tower)
    return tower, random_init, loaded


@pytest.fixture(scope="module")
def clip_features():
    audio = ESpeakSynthesizer().synthesize("turn the kitchen lights off at ten pm", Voice("en-us", 175))
    features = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16_000, return_tensors="pt")
    return features["input_features"]  # (1, 80, 3000): Whisper's full 30-s window


def weights(ct2_encoder: dict) -> dict:
    """The tensors (the file also stores the head count as a scalar)."""
    return {name: array for name, array in ct2_encoder.items() if name != "encoder/num_heads"}


def test_stored_weights_are_float16_with_six_heads(ct2_encoder):
    assert {array.dtype for array in weights(ct2_encoder).values()} == {np.dtype(np.float16)}
    assert int(ct2_encoder["encoder/num_heads"]) == WHISPER_TINY["encoder_attention_heads"]


def test_every_tower_tensor_is_loaded_and_replaces_the_random_init(converted_tower):
    tower, random_init, loaded = converted_tower
    assert sorted(loaded) == sorted(tower.state_dict())
    unchanged = [name for name, value in tower.state_dict().items() if torch.equal(value, random_init[name])]
    assert unchanged == []


def test_every_ct2_element_lands_except_the_all_zero_key_biases(ct2_encoder, converted_tower):
    tower, _, _ = converted_tower
    ct2_elements = sum(array.size for array in weights(ct2_encoder).values())
    tower_elements = sum(value.numel() for value in tower.state_dict().values())
    # Whisper's key projection has no bias; CTranslate2 stores zeros for it inside the fused q/k/v bias.
    dropped_key_biases = WHISPER_TINY["encoder_layers"] * WHISPER_TINY["d_model"]
    assert ct2_elements == tower_elements + dropped_key_biases


def reference_whisper_encoder(v: dict, features: torch.Tensor) -> torch.Tensor:
    """Whisper's encoder written out from the raw CTranslate2 arrays, then Qwen2-Audio's avg-pool(2) before the
    final layer norm."""

    def w(name):
        return torch.from_numpy(v[f"encoder/{name}"].astype(np.float32))

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * w(f"{prefix}/gamma") + w(f"{prefix}/beta")

    def gelu(x):
        return 0.5 * x * (1.0 + torch.erf(x / np.sqrt(2.0)))

    x = gelu(torch.nn.functional.conv1d(features, w("conv1/weight"), w("conv1/bias"), padding=1))
    x = gelu(torch.nn.functional.conv1d(x, w("conv2/weight"), w("conv2/bias"), stride=2, padding=1))
    x = x[0].T + w("position_encodings/encodings")[: x.shape[-1]]
    length, width = x.shape
    heads = int(v["encoder/num_heads"])
    head_dim = width // heads
    layer = 0
    while f"encoder/layer_{layer}/self_attention/linear_0/weight" in v:
        p = f"layer_{layer}"
        h = layer_norm(x, f"{p}/self_attention/layer_norm")
        qkv = h @ w(f"{p}/self_attention/linear_0/weight").T + w(f"{p}/self_attention/linear_0/bias")
        q, k, val = (t.reshape(length, heads, head_dim).transpose(0, 1) for t in qkv.split(width, dim=-1))
        scores = (q * head_dim**-0.5) @ k.transpose(1, 2)
        attended = torch.softmax(scores, dim=-1) @ val
        attended = attended.transpose(0, 1).reshape(length, width)
        x = x + attended @ w(f"{p}/self_attention/linear_1/weight").T + w(f"{p}/self_attention/linear_1/bias")
        h = layer_norm(x, f"{p}/ffn/layer_norm")
        h = gelu(h @ w(f"{p}/ffn/linear_0/weight").T + w(f"{p}/ffn/linear_0/bias"))
        x = x + h @ w(f"{p}/ffn/linear_1/weight").T + w(f"{p}/ffn/linear_1/bias")
        layer += 1
    pooled = x[: length // 2 * 2].reshape(length // 2, 2, width).mean(1)
    return layer_norm(pooled, "layer_norm")


def test_converted_encoder_matches_a_reference_forward_from_the_raw_arrays(ct2_encoder, converted_tower, clip_features):
    tower, _, _ = converted_tower
    recorded = RecordingDict(ct2_encoder)
    with torch.no_grad():
        expected = reference_whisper_encoder(recorded, clip_features)
        actual = tower(clip_features).last_hidden_state[0]
    # The reference reads every stored encoder tensor, so a match means every one is wired where it belongs.
    assert recorded.read == set(ct2_encoder)
    assert actual.shape == (750, 384)
    # fp16 weights upcast to fp32 in both; what remains is fp32 summation order over 4 layers of activations
    # of magnitude ~10 (measured max difference ~1e-5).
    scale = expected.abs().max().item()
    assert scale > 1.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4 * scale)
