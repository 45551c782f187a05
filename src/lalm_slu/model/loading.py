"""Loading the audio LLM (the demo model or the 7B model, one path): device, dtype, threads, model and processor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from lalm_slu.model.length_aware_encoder import make_encoder_length_aware


class ModelNotAvailableError(RuntimeError):
    pass


def resolve_device(requested_device: str) -> str:
    """The device that `requested_device` (auto or cpu) means on this machine: this process's GPU, if any."""
    device = "cuda" if torch.cuda.is_available() and requested_device != "cpu" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = f"cuda:{torch.cuda.current_device()}"
    return device


def device_and_dtype(settings) -> tuple[str, torch.dtype]:
    """The device and dtype that a settings view (lalm_slu.config.settings) with `device` and `precision`
    (auto/fp32/bf16/fp16) asks for on this machine."""
    device, precision = resolve_device(settings.device), settings.precision
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return device, dtype


def set_threads(threads: int | None) -> None:
    """CPU threads of this process's torch operations (None: torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))


def resolve_model_source(name_or_path: str) -> str:
    """A local directory, or a hub id that must already be cached when running offline."""
    if os.path.isdir(name_or_path):
        return str(Path(name_or_path).resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if not isinstance(cached, str):
            raise ModelNotAvailableError(
                f"model {name_or_path!r} is not a local directory and is not in the Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); this node is offline "
                "(HF_HUB_OFFLINE=1): download it on a login node first (see docs/SLURM.md)."
            )
    return name_or_path


def load_model_and_processor(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The same calls a user makes for `Qwen/Qwen2-Audio-7B-Instruct`, plus the length-aware encoder.

    A directory holding a peft adapter (a LoRA fine-tuning output) loads its base model, then the adapter
    merged in, so decoding is the same code for full and LoRA fine-tuning."""
    source = resolve_model_source(name_or_path)
    adapter_config = Path(source) / "adapter_config.json"
    if adapter_config.exists():
        from peft import PeftModel

        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        model, _ = load_model_and_processor(base, dtype=dtype, device="cpu")
        model = PeftModel.from_pretrained(model, source).merge_and_unload()
        return model.to(device), AutoProcessor.from_pretrained(source)
    processor = AutoProcessor.from_pretrained(source)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(source, dtype=dtype)
    make_encoder_length_aware(model)
    return model.to(device), processor


def base_model(model) -> Qwen2AudioForConditionalGeneration:
    """The Qwen2AudioForConditionalGeneration under a peft wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def stored_dtype(model_path: str) -> torch.dtype:
    """The dtype a model's weights are stored in (its config says), fp32 when it does not say."""
    config_file = Path(model_path) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    stored = config.get("dtype") or config.get("torch_dtype")
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(stored, torch.float32)

