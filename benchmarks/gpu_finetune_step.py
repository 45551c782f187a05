"""Paper-scale fine-tuning steps: Qwen2-Audio-7B-Instruct's shape, randomly initialized, trained by the trainer's
own parts (AnswerLoss under lalm_slu.distributed.parallelize: FSDP2, bf16 compute on fp32 master weights) on
SLURP-like batches: half 3-s clips, half transcripts, ~40 answer tokens, global batch 128 by accumulation.

Run it where GPUs are, one process per GPU:
    torchrun --standalone --nproc-per-node 8 benchmarks/gpu_finetune_step.py
    python benchmarks/gpu_finetune_step.py --llm-layers 8        # one card: fewer LLM layers to fit
Writes step time, tokens/s, MFU and peak memory to benchmarks/results/gpu_finetune_step.json. `--tiny` runs the
same code on a tiny model of the same structure (the test suite runs it on CPU with gloo).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration  # noqa: E402

from lalm_slu.batches import IGNORE_INDEX, audio_token_count  # noqa: E402
from lalm_slu.distributed import ProcessGroup, parallelize  # noqa: E402
from lalm_slu.length_aware_encoder import make_encoder_length_aware  # noqa: E402
from lalm_slu.settings import TrainingSettings  # noqa: E402
from lalm_slu.train import AnswerLoss, training_precision  # noqa: E402
from lalm_slu.trainable import set_trainable  # noqa: E402

ARCHITECTURE = REPO / "workflow" / "architectures" / "Qwen2-Audio-7B-Instruct.json"
RESULT = REPO / "benchmarks" / "results" / "gpu_finetune_step.json"
# Dense bf16 peak per device (no sparsity), for MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
# A SLURP utterance: ~12 transcript tokens, a ~30-token instruction, ~40 answer tokens; 3-s clips.
PROMPT_TOKENS, TRANSCRIPT_TOKENS, ANSWER_TOKENS, CLIP_SECONDS = 30, 12, 40, 3.0
MEL_FRAMES_PER_SECOND = 100
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": 1000}
TINY_AUDIO = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 128}


def build_config(llm_layers: int | None, tiny: bool) -> Qwen2AudioConfig:
    spec = json.loads(ARCHITECTURE.read_text())
    if tiny:
        spec["text_config"].update(TINY)
        spec["audio_config"].update(TINY_AUDIO)
        spec["audio_token_index"] = TINY["vocab_size"] - 1
    if llm_layers:
        spec["text_config"]["num_hidden_layers"] = llm_layers
    return Qwen2AudioConfig(**spec)


def synthetic_batch(config: Qwen2AudioConfig, items: int, speech: bool, generator: torch.Generator) -> dict:
    """Right-padded token ids of `items` utterances (all speech or all text; the trainer groups by modality), the
    answer labelled; speech items carry 3-s log-mel features and one <|AUDIO|> token per frame."""
    vocab = config.text_config.vocab_size - 2  # below the audio token
    mel = int(CLIP_SECONDS * MEL_FRAMES_PER_SECOND)
    middle = [config.audio_token_index] * audio_token_count(mel) if speech else None
    rows, labels = [], []
    for _ in range(items):
        prompt = torch.randint(0, vocab, (PROMPT_TOKENS,), generator=generator).tolist()
        content = middle or torch.randint(0, vocab, (TRANSCRIPT_TOKENS,), generator=generator).tolist()
        answer = torch.randint(0, vocab, (ANSWER_TOKENS,), generator=generator).tolist()
        rows.append(prompt[:5] + content + prompt[5:] + answer)
        labels.append([IGNORE_INDEX] * (len(rows[-1]) - len(answer)) + answer)
    batch = {
        "input_ids": torch.tensor(rows),
        "attention_mask": torch.ones(len(rows), len(rows[0]), dtype=torch.long),
        "labels": torch.tensor(labels),
    }
    if speech:
        batch["input_features"] = torch.randn(items, config.audio_config.num_mel_bins, mel, generator=generator)
        batch["feature_attention_mask"] = torch.ones(items, mel, dtype=torch.long)
    return batch


def step_flops(config: Qwen2AudioConfig, model, batches: list[dict]) -> float:
    """Model FLOPs of one optimizer step (recomputation not counted, as MFU is defined): 6 per trained LLM
    parameter and token, 2 per frozen audio-tower parameter and encoder position."""
    llm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    audio = sum(p.numel() for p in model.model.audio_tower.parameters())
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    positions = sum(int(b["feature_attention_mask"].sum()) // 2 for b in batches if "input_features" in b)
    return 6.0 * llm * tokens + 2.0 * audio * positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-layers", type=int, default=None, help="fewer LLM layers, to fit the cards at hand")
    parser.add_argument("--tiny", action="store_true", help="a tiny model of the same structure (CPU test)")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--per-device-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    device, dtype = training_precision(TrainingSettings.from_dict({"precision": args.precision}, "--precision"))
    group = ProcessGroup(device)
    config = build_config(args.llm_layers, args.tiny)
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    make_encoder_length_aware(model)
    set_trainable(model, ["language_model", "lm_head"])  # the paper's full fine-tuning
    if not args.no_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    root = AnswerLoss(model)
    parallelize(root, model, dtype, group)
    params = [p for p in root.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-6)

    accumulation = args.global_batch // (args.per_device_batch * group.world_size)
    generator = torch.Generator().manual_seed(group.rank)
    # Half the micro-batches speech, half text, as a 50 % mixture gives.
    batches = [
        {k: v.to(group.device) for k, v in synthetic_batch(config, args.per_device_batch, i % 2 == 0, generator).items()}
        for i in range(accumulation)
    ]
    times = []
    if group.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(group.device)
    for step in range(args.warmup_steps + args.steps):
        if group.device.type == "cuda":
            torch.cuda.synchronize(group.device)
        started = time.perf_counter()
        for batch in batches:
            (root(batch) / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if group.device.type == "cuda":
            torch.cuda.synchronize(group.device)
        if step >= args.warmup_steps:
            times.append(time.perf_counter() - started)

    step_s = statistics.median(times)
    flops = step_flops(config, model, batches) * group.world_size
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) * group.world_size
    measurements = {
        "step_s": round(step_s, 4),
        "step_s_all": [round(t, 4) for t in times],
        "tokens_per_s": round(tokens / step_s, 1),
        "tokens_per_step": tokens,
        "model_tflops_per_step": round(flops / 1e12, 3),
    }
    name = torch.cuda.get_device_name(group.device) if group.device.type == "cuda" else "cpu"
    peak = next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)
    measurements["mfu"] = round(flops / step_s / group.world_size / (peak * 1e12), 4) if peak else None
    if group.device.type == "cuda":
        measurements["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(group.device) / 2**30, 2)
    peaks = group.gather(measurements.get("peak_memory_gb"))
    if group.is_main:
        measurements["peak_memory_gb_per_process"] = peaks
        result = {
            "benchmark": "gpu_finetune_step",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": name,
            "processes": group.world_size,
            "parameters": {**vars(args), "out": str(args.out), "accumulation": accumulation,
                           "llm_layers": config.text_config.num_hidden_layers,
                           "trainable_parameters": sum(p.numel() for p in params),
                           "torch": torch.__version__},
            "measurements": measurements,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    group.close()
    assert math.isfinite(step_s)


if __name__ == "__main__":
    main()
