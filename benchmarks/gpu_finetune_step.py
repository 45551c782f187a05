"""Paper-scale fine-tuning steps, compute only: Qwen2-Audio-7B-Instruct's shape, randomly initialized, trained by
the trainer's own parts (AnswerLoss under lalm_slu.training.distributed.parallelize: FSDP2, bf16 compute on fp32 master
weights, the trainer's AdamW) on SLURP-like batches already on the device: half 3-s clips, half transcripts, 40
answer tokens, global batch 128 by accumulation. No data loading, no collation, no checkpoints, no evaluation.

The model is built on the meta device, sharded, then allocated shard by shard on the device and initialized there
(torchtitan's order): no process ever holds the whole model on the host.

Model FLOPs are counted as torchtitan counts them, for what this model trains (`step_flops`): 6 per trained
non-embedding LLM parameter and token, causal attention, no FLOPs for the embedding lookup, the output head only at
the answer positions (the loss projects only those, lalm_slu.model.loss), 2 per frozen audio-encoder parameter and position
(forward only). MFU divides these by the card's dense bf16 peak; HFU adds the forward that gradient checkpointing
recomputes. Peak memory is set against lalm_slu.model.memory_plan's plan for the same job.

Run it where GPUs are, one process per GPU:
    torchrun --standalone --nproc-per-node 8 benchmarks/gpu_finetune_step.py
    python benchmarks/gpu_finetune_step.py --llm-layers fit     # one card: the most LLM layers the plan fits
Writes benchmarks/results/gpu_finetune_step.json (or --out). `--tiny` runs the same code on a tiny model of the same
structure (the test suite runs it on CPU with gloo).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration  # noqa: E402

from lalm_slu.model.batches import IGNORE_INDEX, audio_token_count  # noqa: E402
from lalm_slu.training.distributed import ProcessGroup, parallelize  # noqa: E402
from lalm_slu.model.length_aware_encoder import make_encoder_length_aware  # noqa: E402
from lalm_slu.model.memory_plan import GIB, Architecture, TrainingShape, parameter_sizes, plan_memory  # noqa: E402
from lalm_slu.config.settings import TrainingSettings  # noqa: E402
from lalm_slu.model.forward import AnswerLoss  # noqa: E402
from lalm_slu.training.finetune import training_precision  # noqa: E402
from lalm_slu.training.optimizer import build_optimizer  # noqa: E402
from lalm_slu.model.trainable import set_trainable  # noqa: E402
from lalm_slu.config.files import architecture_path  # noqa: E402

ARCHITECTURE = architecture_path("Qwen2-Audio-7B-Instruct")
RESULT = REPO / "benchmarks" / "results" / "gpu_finetune_step.json"
# Dense bf16 peak per device (no sparsity), for MFU; the first name found in the device's name counts.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
# A SLURP utterance: ~12 transcript tokens, a ~30-token instruction, ~40 answer tokens; 3-s clips.
PROMPT_TOKENS, TRANSCRIPT_TOKENS, ANSWER_TOKENS, CLIP_SECONDS = 30, 12, 40, 3.0
MEL_FRAMES_PER_SECOND = 100
TRAINED = ("language_model", "lm_head")  # the paper's full fine-tuning
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": 1000}
TINY_AUDIO = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 128}
SCOPE = ("compute only: synthetic batches resident on the device (no data loading, no collation), "
         "no checkpoints, no evaluation")


def architecture_spec(llm_layers: int | None, tiny: bool) -> dict:
    """The model's config.json as a dict: the 7B architecture, or its tiny twin; optionally fewer LLM layers."""
    spec = json.loads(ARCHITECTURE.read_text())
    if tiny:
        spec["text_config"].update(TINY)
        spec["audio_config"].update(TINY_AUDIO)
        spec["audio_token_index"] = TINY["vocab_size"] - 1
    if llm_layers:
        spec["text_config"]["num_hidden_layers"] = llm_layers
    return spec


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


# ---------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimizer step on one process. `model`: what the step must compute (MFU's numerator);
    `recomputed`: the decoder layers' forward again, under gradient checkpointing (HFU adds it)."""

    model: float
    recomputed: float

    @property
    def hardware(self) -> float:
        return self.model + self.recomputed


def llm_parameters(arch: Architecture) -> tuple[int, int]:
    """(decoder layers and final norm: the dense non-embedding part, decoder layers alone); the token embeddings
    are a lookup and the output head is counted per answer token."""
    sizes = parameter_sizes(arch)
    layers = sum(n for name, n in sizes.items() if name.startswith("language_model.layers."))
    return layers + sizes["language_model.norm.weight"], layers


def audio_forward_flops(arch: Architecture, mel_frames: int) -> float:
    """The frozen encoder and projector on one clip, forward only: each parameter twice per position it runs at
    (conv1 per mel frame, conv2 and the layers per encoder position, the final norm and the projector per pooled
    frame; the positional table is a lookup), plus bidirectional attention."""
    sizes = parameter_sizes(arch)
    positions = mel_frames // 2
    rate = {"audio_tower.conv1": mel_frames, "audio_tower.embed_positions": 0, "audio_tower.layer_norm": positions // 2,
            "multi_modal_projector": positions // 2}
    flops = 0.0
    for name, count in sizes.items():
        if name.startswith(("audio_tower.", "multi_modal_projector.")):
            module = name.rsplit(".", 1)[0]
            flops += 2.0 * count * next((r for prefix, r in rate.items() if module.startswith(prefix)), positions)
    # Q·Kᵀ and attention·V, each 2·positions²·width per layer.
    return flops + arch.audio_layers * 4.0 * positions**2 * arch.audio_width


def step_flops(arch: Architecture, batches: list[dict], gradient_checkpointing: bool) -> StepFlops:
    """One process's FLOPs over its micro-batches of one step (see the module docstring for what is counted)."""
    dense, layers = llm_parameters(arch)
    attention_width = arch.num_attention_heads * arch.head_dim
    model = recomputed = 0.0
    for batch in batches:
        for length in batch["attention_mask"].sum(dim=1).tolist():
            # Causal attention: Q·Kᵀ and attention·V over the lower triangle, 2·length²·width forward per layer.
            attention_forward = arch.num_hidden_layers * 2.0 * length**2 * attention_width
            model += 6.0 * dense * length + 3.0 * attention_forward
            recomputed += (2.0 * layers * length + attention_forward) if gradient_checkpointing else 0.0
        answers = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        model += 6.0 * arch.vocab_size * arch.hidden_size * answers
        if "feature_attention_mask" in batch:
            model += sum(audio_forward_flops(arch, int(m)) for m in batch["feature_attention_mask"].sum(dim=1))
    return StepFlops(model, recomputed)


# ---------------------------------------------------------------- model, memory


def most_layers_that_fit(spec: dict, shape: TrainingShape, card_gib: float) -> int:
    """The most LLM layers (up to the architecture's own count) whose memory plan fits a card of `card_gib`."""
    for layers in range(spec["text_config"]["num_hidden_layers"], 0, -1):
        arch = Architecture.from_config({**spec, "text_config": {**spec["text_config"], "num_hidden_layers": layers}})
        if plan_memory(arch, shape).total <= card_gib * GIB:
            return layers
    raise SystemExit(f"not even one LLM layer fits the memory plan on a {card_gib:.1f} GiB card")


def sharded_model(config: Qwen2AudioConfig, dtype: torch.dtype, group: ProcessGroup, gradient_checkpointing: bool):
    """The training forward (AnswerLoss) over a randomly initialized model, sharded by `parallelize`: built on the
    meta device, sharded, then each process allocates and initializes only its shards (and the replicated frozen
    audio parts) on its device."""
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    make_encoder_length_aware(model)
    set_trainable(model, list(TRAINED))
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    root = AnswerLoss(model)
    # parallelize moves what it keeps whole (frozen audio parts, buffers) to the device, and a meta tensor has
    # nothing to move: give those storage first (its values are set below, with the rest).
    for part in (model.model.audio_tower, model.model.multi_modal_projector):
        part.to_empty(device=group.device)
    for module in model.modules():
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            module.to_empty(device=group.device, recurse=False)
    parallelize(root, model, dtype, group)
    root.to_empty(device=group.device)
    torch.manual_seed(0)
    model.initialize_weights()  # transformers' own init (rotary tables included), shard by shard
    return root, model


def peak_host_memory_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------- the benchmark


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-layers", default=None,
                        help="fewer LLM layers (a number), or `fit`: the most the memory plan fits on this card")
    parser.add_argument("--tiny", action="store_true", help="a tiny model of the same structure (CPU test)")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--per-device-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (at least 3)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.warmup_steps < 3:
        parser.error("--warmup-steps: at least 3 (allocator, autotuning and FSDP's first gathers settle)")
    if args.llm_layers not in (None, "fit") and not args.llm_layers.isdigit():
        parser.error(f"--llm-layers: a number or `fit`, not {args.llm_layers!r}")
    return args


def main() -> None:
    args = parse_arguments()
    training = TrainingSettings.from_dict({"precision": args.precision}, "--precision")
    device, dtype = training_precision(training)
    group = ProcessGroup(device)
    gradient_checkpointing = not args.no_gradient_checkpointing
    spec = architecture_spec(None, args.tiny)
    # The plan's sequence: the longest row, a speech item's.
    sequence = PROMPT_TOKENS + audio_token_count(int(CLIP_SECONDS * MEL_FRAMES_PER_SECOND)) + ANSWER_TOKENS
    shape = TrainingShape(TRAINED, precision=args.precision, gpus=group.world_size,
                          per_device_batch_size=args.per_device_batch, sequence_tokens=sequence,
                          gradient_checkpointing=gradient_checkpointing)
    cuda = group.device.type == "cuda"
    card_gib = torch.cuda.get_device_properties(group.device).total_memory / GIB if cuda else None
    if args.llm_layers == "fit":
        if card_gib is None:
            raise SystemExit("--llm-layers fit: needs a GPU (its memory is what the layers must fit)")
        # The smallest card among the processes decides.
        spec = architecture_spec(most_layers_that_fit(spec, shape, min(group.gather(card_gib))), args.tiny)
    elif args.llm_layers:
        spec = architecture_spec(int(args.llm_layers), args.tiny)
    config, arch = Qwen2AudioConfig(**spec), Architecture.from_config(spec)

    started = time.perf_counter()
    root, model = sharded_model(config, dtype, group, gradient_checkpointing)
    params = [p for p in root.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, 5e-6, training, group.device)
    init_s = time.perf_counter() - started

    accumulation = args.global_batch // (args.per_device_batch * group.world_size)
    generator = torch.Generator().manual_seed(group.rank)
    # Half the micro-batches speech, half text, as a 50 % mixture gives.
    batches = [
        {k: v.to(group.device) for k, v in synthetic_batch(config, args.per_device_batch, i % 2 == 0, generator).items()}
        for i in range(accumulation)
    ]
    times, losses = [], []
    for step in range(args.warmup_steps + args.steps):
        if step == args.warmup_steps and group.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(group.device)
        if group.device.type == "cuda":
            torch.cuda.synchronize(group.device)
        started = time.perf_counter()
        total = torch.zeros((), device=group.device)
        for batch in batches:
            loss = root(batch) / accumulation
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if group.device.type == "cuda":
            torch.cuda.synchronize(group.device)
        if step >= args.warmup_steps:
            times.append(time.perf_counter() - started)
        losses.append(float(total))  # after the clock: the one host sync per step stays out of the timing

    step_s = statistics.median(times)
    flops = step_flops(arch, batches, gradient_checkpointing)
    model_flops = group.all_sum(flops.model)
    hardware_flops = group.all_sum(flops.hardware)
    tokens = int(group.all_sum(sum(int(b["attention_mask"].sum()) for b in batches)))
    answers = int(group.all_sum(sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)))
    name = torch.cuda.get_device_name(group.device) if group.device.type == "cuda" else "cpu"
    peak = next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)
    peak_total = peak * 1e12 * group.world_size if peak else None
    plan = plan_memory(arch, shape)
    measurements = {
        "step_s": round(step_s, 4),
        "step_s_all": [round(t, 4) for t in times],
        "tokens_per_step": tokens,
        "answer_tokens_per_step": answers,
        "tokens_per_s": round(tokens / step_s, 1),
        "model_tflops_per_step": float(f"{model_flops / 1e12:.4g}"),
        "hardware_tflops_per_step": float(f"{hardware_flops / 1e12:.4g}"),
        "mfu": round(model_flops / step_s / peak_total, 4) if peak_total else None,
        "hfu": round(hardware_flops / step_s / peak_total, 4) if peak_total else None,
        "loss_per_step": [round(value, 4) for value in losses],
        "init_s": round(init_s, 2),
        "memory_plan_gib": {label: round(value / GIB, 2) for label, value in plan.rows()},
    }
    per_process = {"host_peak_rss_gib": round(peak_host_memory_gib(), 2)}
    if group.device.type == "cuda":
        per_process["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(group.device) / GIB, 2)
        per_process["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(group.device) / GIB, 2)
    gathered = group.gather(per_process)
    if group.is_main:
        measurements["per_process"] = gathered
        if group.device.type == "cuda":
            measurements["peak_allocated_over_plan"] = round(
                max(p["peak_allocated_gib"] for p in gathered) * GIB / plan.total, 3)
        result = {
            "benchmark": "gpu_finetune_step",
            "scope": SCOPE,
            "flop_counting": ("model: 6 x trained non-embedding LLM params per token + causal attention + output head "
                              "at answer tokens only (6 x vocab x hidden each) + 2 x frozen audio params per position; "
                              "no embedding FLOPs. hardware: model + the decoder layers' forward recomputed under "
                              "gradient checkpointing."),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": name,
            "device_memory_gib": round(card_gib, 1) if card_gib else None,
            "peak_bf16_tflops_per_device": peak,
            "processes": group.world_size,
            "parameters": {**vars(args), "out": str(args.out), "accumulation": accumulation,
                           "llm_layers": arch.num_hidden_layers, "gradient_checkpointing": gradient_checkpointing,
                           "trainable_parameters": sum(p.numel() for p in params),
                           "optimizer": "fused AdamW" if optimizer.defaults.get("fused") else "AdamW",
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
