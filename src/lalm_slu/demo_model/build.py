"""Build the small demo Qwen2-Audio: tokenizer, feature extractor, processor and model, in Hugging Face format.

The result loads with exactly the calls used for `Qwen/Qwen2-Audio-7B-Instruct`:
`AutoProcessor.from_pretrained(path)` and `Qwen2AudioForConditionalGeneration.from_pretrained(path)`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

from lalm_slu.demo_model.whisper_ct2 import load_whisper_encoder_into

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
AUDIO_TOKENS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
SPECIAL_TOKENS = [PAD_TOKEN, *CHAT_TOKENS, *AUDIO_TOKENS]

# Whisper tiny.en's encoder shape (the weights we initialize from), a small Qwen2 LLM.
DEFAULT_ARCHITECTURE = {
    "audio": {
        "d_model": 384,
        "encoder_layers": 4,
        "encoder_attention_heads": 6,
        "encoder_ffn_dim": 1536,
        "num_mel_bins": 80,
        "max_source_positions": 1500,
    },
    "text": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_theta": 10000.0,
    },
    "vocab_size": 3000,
}

# The chat template the processor uses (Qwen2AudioProcessor's default, as shipped with the 7B model).
CHAT_TEMPLATE = Qwen2AudioProcessor.default_chat_template.fget(None)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE on training transcripts + the instruction vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token=PAD_TOKEN,
        additional_special_tokens=[*CHAT_TOKENS, *AUDIO_TOKENS],
        model_max_length=DEFAULT_ARCHITECTURE["text"]["max_position_embeddings"],
        padding_side="right",
    )


def build_demo_model(
    texts: list[str], out_dir: str | Path, architecture: dict | None = None, seed: int = 0, whisper_bin=None
) -> Path:
    """Build tokenizer + processor + randomly initialized LLM + Whisper-initialized audio tower; save to out_dir."""
    arch = architecture or DEFAULT_ARCHITECTURE
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(texts, arch["vocab_size"])
    extractor = WhisperFeatureExtractor(feature_size=arch["audio"]["num_mel_bins"])
    processor = Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    text_config = dict(arch["text"], model_type="qwen2", vocab_size=len(tokenizer), tie_word_embeddings=False)
    text_config.update(
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Qwen2AudioConfig(
        audio_config=dict(arch["audio"], model_type="qwen2_audio_encoder"),
        text_config=text_config,
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = Qwen2AudioForConditionalGeneration(config)
    loaded = load_whisper_encoder_into(model.model.audio_tower, whisper_bin)
    log.info("audio tower initialized from Whisper tiny.en (%d tensors)", len(loaded))
    model.generation_config.eos_token_id = text_config["eos_token_id"]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    out_dir = Path(out_dir)
    save_model(model, processor, out_dir)
    return out_dir


def save_model(model, processor, out_dir: str | Path) -> None:
    """Hugging Face format, safetensors, weights stored as float16 to keep the shipped checkpoint small."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)
    original_dtype = next(model.parameters()).dtype
    model.to(torch.float16)
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        model.to(original_dtype)


def keep_language_model_layers(model: Qwen2AudioForConditionalGeneration, keep: list[int]) -> None:
    """Drop every LLM decoder layer not in `keep` (indices into the current layers, in order), updating the
    config so the model saves and reloads at its new depth. Shrinks a pretrained model; a short continued
    pretraining then lets the kept layers adjust to their new neighbours."""
    llm = model.model.language_model
    count = len(llm.layers)
    check_kept_layers(keep, count)
    llm.layers = torch.nn.ModuleList(llm.layers[i] for i in keep)
    for position, layer in enumerate(llm.layers):
        layer.self_attn.layer_idx = position  # as a freshly built model of this depth numbers them
    text_config = model.config.text_config
    text_config.layer_types = [text_config.layer_types[i] for i in keep]
    text_config.num_hidden_layers = len(keep)
    log.info("kept LLM layers %s of %d", list(keep), count)


def check_kept_layers(keep, count: int | None = None) -> None:
    """`keep` must be increasing, unique layer indices (below `count` when the model's depth is known)."""
    valid = (isinstance(keep, list) and keep and all(isinstance(i, int) and i >= 0 for i in keep)
             and keep == sorted(set(keep)) and (count is None or keep[-1] < count))
    if not valid:
        depth = f" of the model's {count} LLM layers" if count is not None else ""
        raise ValueError(f"keep_language_model_layers: {keep!r} must be increasing, unique indices{depth}")
