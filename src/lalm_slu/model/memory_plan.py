"""Per-GPU memory of a fine-tuning job, planned from the model's config.json before anything runs.

Plain Python on purpose: the Snakefile imports this at planning time (no torch, no transformers).

Parameter counts are analytic, per parameter and under the names of
`Qwen2AudioForConditionalGeneration.named_parameters()` (without the leading `model.`): the text config
is a Qwen2 LLM, the audio config a Whisper-like encoder, the projector one Linear(audio width → LLM
width). A field missing from config.json takes transformers' default, as loading the model would.

The job is the trainer's FSDP2 set-up, one process per GPU, N GPUs (all sizes per GPU, in GiB =
2^30 bytes; an "80 GB" card holds 80 GiB):

    weights      frozen audio-tower and projector params R, replicated in the compute dtype (c = 2 bytes
                 bf16, 4 fp32): c·R; every other param S (trained or not) as fp32 master weights sharded
                 over N: 4·S/N
    gradients    of the T trained params, fp32, sharded: 4·T/N
    optimizer    AdamW's two fp32 moments, sharded: 8·T/N
    gathered     the largest all-gathered FSDP unit U (its sharded params), twice for prefetch, in the
                 compute dtype, plus the unsharded fp32 gradient of the largest trained unit G: 2·c·U + 4·G
    activations  B items × S sequence tokens, L LLM layers of width h and MLP width i:
                 without checkpointing c·B·S·L·(10·h + 4·i)  (what one layer saves for backward:
                 norms, q/k/v, attention output, residuals (~10·h), gate, up, activation, product (4·i));
                 with checkpointing only each layer's input, c·B·S·L·h, plus one layer recomputed,
                 c·B·S·(10·h + 4·i).  Attention is SDPA/flash (no S² term).
                 + logits at the answer positions (the loss projects only those): B·A·V·(c + 4 + 4)
                 (compute-dtype logits, their fp32 copy for the loss, its fp32 gradient)
                 + the audio encoder over P positions per item, width d, FFN f, E layers:
                 trained as the LLM is, with c·B·P·(8·d + 2·f) per layer; frozen, only one layer's
                 working set at a time, c·B·P·(8·d + 2·f)
    overhead     a fixed 4 GiB: CUDA context, NCCL buffers, cuBLAS workspaces, allocator fragmentation
    step scratch what AdamW's implementation (training.optimizer) allocates in the step, after backward has freed
                 the gathered units and activations: foreach a full copy of the local shard of trained params
                 (4·T/N), the for-loop one local parameter's worth (4·largest/N), fused nothing.  The peak is
                 weights + gradients + optimizer + overhead + the larger of (gathered + activations) and scratch.

With LoRA (model.lora) the language model and head stay frozen (the adapters, a few MB, are left out);
audio parts a scheme names still train fully.

FSDP units are lalm_slu.training.distributed.parallelize's: each LLM decoder layer, the token embeddings, the
output head, each trained audio layer, the rest of a trained audio tower, a trained projector, and
the root (the final norm).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from lalm_slu.config.files import architecture_path
from lalm_slu.config.settings import TrainingSettings

GIB = 2**30
OVERHEAD_GIB = 4.0
COMPUTE_BYTES = {"fp32": 4, "bf16": 2}
# One line of SLU JSON (scenario, action, a few entities) with its end token: 30-60 tokens.
ANSWER_TOKENS_PER_ITEM = 64
# Prompt, audio tokens of a few-second clip (25 per second) and the answer.
DEFAULT_SEQUENCE_TOKENS = 512
MODEL_PARTS = ("audio_tower", "multi_modal_projector", "language_model", "lm_head")
AUDIO_PARTS = ("audio_tower", "multi_modal_projector")
# The encoder's positional table is a fixed sinusoid table, never trained (trainable.set_trainable).
NEVER_TRAINED = ("audio_tower.embed_positions.weight",)
TOKEN_EMBEDDINGS = "language_model.embed_tokens.weight"

# transformers' defaults for fields a config.json leaves out: Qwen2Config, and the audio encoder
# defaults Qwen2AudioConfig fills in (tests check both against transformers).
TEXT_DEFAULTS = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
}
AUDIO_DEFAULTS = {
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "max_source_positions": 1500,
}


class MemoryPlanError(ValueError):
    """A fine-tuning job does not fit the configured card."""


@dataclass(frozen=True)
class Architecture:
    """The shape of a Qwen2-Audio model, as far as memory goes."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    audio_width: int
    audio_layers: int
    audio_ffn_size: int
    num_mel_bins: int
    audio_positions: int

    @classmethod
    def from_config(cls, config: dict) -> Architecture:
        text = {**TEXT_DEFAULTS, **config.get("text_config", {})}
        audio = {**AUDIO_DEFAULTS, **config.get("audio_config", {})}
        heads = text["num_attention_heads"]
        return cls(
            hidden_size=text["hidden_size"],
            num_hidden_layers=text["num_hidden_layers"],
            intermediate_size=text["intermediate_size"],
            num_attention_heads=heads,
            num_key_value_heads=text["num_key_value_heads"] or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            vocab_size=text["vocab_size"],
            audio_width=audio["d_model"],
            audio_layers=audio["encoder_layers"],
            audio_ffn_size=audio["encoder_ffn_dim"],
            num_mel_bins=audio["num_mel_bins"],
            audio_positions=audio["max_source_positions"],
        )


def read_architecture(config_json: str | Path) -> Architecture:
    return Architecture.from_config(json.loads(Path(config_json).read_text(encoding="utf-8")))


def linear(name: str, inputs: int, outputs: int, bias: bool = True) -> dict[str, int]:
    sizes = {f"{name}.weight": inputs * outputs}
    if bias:
        sizes[f"{name}.bias"] = outputs
    return sizes


def norm(name: str, width: int, bias: bool) -> dict[str, int]:
    return {f"{name}.weight": width, **({f"{name}.bias": width} if bias else {})}


def audio_layer(prefix: str, width: int, ffn: int) -> dict[str, int]:
    return {
        **linear(f"{prefix}.self_attn.k_proj", width, width, bias=False),
        **linear(f"{prefix}.self_attn.v_proj", width, width),
        **linear(f"{prefix}.self_attn.q_proj", width, width),
        **linear(f"{prefix}.self_attn.out_proj", width, width),
        **norm(f"{prefix}.self_attn_layer_norm", width, bias=True),
        **linear(f"{prefix}.fc1", width, ffn),
        **linear(f"{prefix}.fc2", ffn, width),
        **norm(f"{prefix}.final_layer_norm", width, bias=True),
    }


def text_layer(prefix: str, arch: Architecture) -> dict[str, int]:
    hidden = arch.hidden_size
    query, key_value = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    return {
        **linear(f"{prefix}.self_attn.q_proj", hidden, query),
        **linear(f"{prefix}.self_attn.k_proj", hidden, key_value),
        **linear(f"{prefix}.self_attn.v_proj", hidden, key_value),
        **linear(f"{prefix}.self_attn.o_proj", query, hidden, bias=False),
        **linear(f"{prefix}.mlp.gate_proj", hidden, arch.intermediate_size, bias=False),
        **linear(f"{prefix}.mlp.up_proj", hidden, arch.intermediate_size, bias=False),
        **linear(f"{prefix}.mlp.down_proj", arch.intermediate_size, hidden, bias=False),
        **norm(f"{prefix}.input_layernorm", hidden, bias=False),
        **norm(f"{prefix}.post_attention_layernorm", hidden, bias=False),
    }


def parameter_sizes(arch: Architecture) -> dict[str, int]:
    """Elements of every parameter, by name (audio_tower.layers.0.fc1.weight, lm_head.weight, ...).
    The output head is its own matrix: Qwen2AudioForConditionalGeneration ties no weights."""
    width = arch.audio_width
    sizes = {
        "audio_tower.conv1.weight": width * arch.num_mel_bins * 3,
        "audio_tower.conv1.bias": width,
        "audio_tower.conv2.weight": width * width * 3,
        "audio_tower.conv2.bias": width,
        "audio_tower.embed_positions.weight": arch.audio_positions * width,
    }
    for index in range(arch.audio_layers):
        sizes.update(audio_layer(f"audio_tower.layers.{index}", width, arch.audio_ffn_size))
    sizes.update(norm("audio_tower.layer_norm", width, bias=True))
    sizes.update(linear("multi_modal_projector.linear", width, arch.hidden_size))
    sizes[TOKEN_EMBEDDINGS] = arch.vocab_size * arch.hidden_size
    for index in range(arch.num_hidden_layers):
        sizes.update(text_layer(f"language_model.layers.{index}", arch))
    sizes.update(norm("language_model.norm", arch.hidden_size, bias=False))
    sizes["lm_head.weight"] = arch.vocab_size * arch.hidden_size
    return sizes


def part_sizes(sizes: dict[str, int]) -> dict[str, int]:
    """Elements per top-level model part."""
    return {part: sum(n for name, n in sizes.items() if name.split(".")[0] == part) for part in MODEL_PARTS}


def in_module(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def trainable_parameters(sizes: dict[str, int], modules: list[str], freeze_token_embeddings: bool) -> set[str]:
    """Names of the parameters a scheme trains (modules as in scheme.trainable_modules, dotted parts allowed)."""
    chosen = set()
    for module in modules:
        if module.split(".")[0] not in MODEL_PARTS:
            raise ValueError(
                f"unknown trainable module {module!r}; choose from {sorted(MODEL_PARTS)} or a dotted part of one"
            )
        matched = {name for name in sizes if in_module(name, module)}
        if not matched:
            raise ValueError(f"unknown trainable module {module!r}: the model has no such part")
        chosen |= matched
    chosen -= set(NEVER_TRAINED)
    if freeze_token_embeddings:
        chosen.discard(TOKEN_EMBEDDINGS)
    return chosen


def fsdp_unit(name: str) -> str:
    """The FSDP unit a sharded parameter lies in: its layer, the token embeddings, the output head, the
    audio tower or the projector, else the root."""
    parts = name.split(".")
    if parts[1:2] == ["layers"]:
        return ".".join(parts[:3])
    if name == TOKEN_EMBEDDINGS:
        return "language_model.embed_tokens"
    if parts[0] in ("lm_head", *AUDIO_PARTS):
        return parts[0]
    return "root"


@dataclass(frozen=True)
class TrainingShape:
    """What a fine-tuning job trains and how."""

    trainable_modules: tuple[str, ...]
    precision: str = "bf16"  # fp32, or bf16 compute with fp32 master weights
    gpus: int = 1
    per_device_batch_size: int = 1
    sequence_tokens: int = DEFAULT_SEQUENCE_TOKENS
    gradient_checkpointing: bool = False
    freeze_token_embeddings: bool = False
    # LoRA: the language model stays frozen (its adapters, a few MB, are left out); audio parts train fully.
    lora: bool = False
    optimizer: str = "fused"  # AdamW's implementation: fused, foreach or forloop


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU, by kind."""

    weights: float
    gradients: float
    optimizer: float
    gathered_units: float
    activations: float
    overhead: float
    step_scratch: float = 0.0

    @property
    def total(self) -> float:
        backward = self.gathered_units + self.activations
        return self.weights + self.gradients + self.optimizer + self.overhead + max(backward, self.step_scratch)

    def fits(self, gpu_memory_gb: float) -> bool:
        return self.total <= gpu_memory_gb * GIB

    def breakdown(self) -> str:
        return ", ".join(f"{label} {gib(value)}" for label, value in self.rows()[:-1]) + " GB"

    def rows(self) -> list[tuple[str, float]]:
        return [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer", self.optimizer),
            ("gathered units", self.gathered_units),
            ("activations", self.activations),
            ("overhead", self.overhead),
            ("step scratch", self.step_scratch),
            ("total", self.total),
        ]


def gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def compute_bytes(precision: str) -> int:
    # auto is bf16 on the cards a memory plan is for (data-centre GPUs all support it).
    return COMPUTE_BYTES["bf16" if precision == "auto" else precision]


def activation_bytes(arch: Architecture, shape: TrainingShape, audio_trained: bool) -> float:
    c, items = compute_bytes(shape.precision), shape.per_device_batch_size
    text_layer_bytes = c * (10 * arch.hidden_size + 4 * arch.intermediate_size)
    audio_layer_bytes = c * (8 * arch.audio_width + 2 * arch.audio_ffn_size)
    tokens, positions = items * shape.sequence_tokens, items * arch.audio_positions
    if shape.gradient_checkpointing:
        text = tokens * (arch.num_hidden_layers * c * arch.hidden_size + text_layer_bytes)
        audio = positions * (arch.audio_layers * c * arch.audio_width + audio_layer_bytes)
    else:
        text = tokens * arch.num_hidden_layers * text_layer_bytes
        audio = positions * arch.audio_layers * audio_layer_bytes
    if not audio_trained:
        audio = positions * audio_layer_bytes
    logits = items * ANSWER_TOKENS_PER_ITEM * arch.vocab_size * (c + 4 + 4)
    return text + audio + logits


def plan_memory(arch: Architecture, shape: TrainingShape) -> MemoryPlan:
    sizes = parameter_sizes(arch)
    modules = [m for m in shape.trainable_modules if not shape.lora or m.split(".")[0] in AUDIO_PARTS]
    trained = trainable_parameters(sizes, modules, shape.freeze_token_embeddings)
    # Frozen audio parts stay whole on every process; everything else is sharded.
    replicated = {name for name in sizes if name.split(".")[0] in AUDIO_PARTS and name not in trained}
    units: dict[str, int] = {}
    trained_units: dict[str, int] = {}
    for name in sizes.keys() - replicated:
        units[fsdp_unit(name)] = units.get(fsdp_unit(name), 0) + sizes[name]
        if name in trained:
            trained_units[fsdp_unit(name)] = trained_units.get(fsdp_unit(name), 0) + sizes[name]
    trainable = sum(sizes[name] for name in trained)
    sharded = sum(sizes.values()) - sum(sizes[name] for name in replicated)
    c, shards = compute_bytes(shape.precision), shape.gpus
    audio_trained = any(name.startswith("audio_tower.") for name in trained)
    scratch = {"fused": 0, "foreach": trainable, "forloop": max((sizes[name] for name in trained), default=0)}
    return MemoryPlan(
        weights=4 * sharded / shards + c * sum(sizes[name] for name in replicated),
        gradients=4 * trainable / shards,
        optimizer=8 * trainable / shards,
        gathered_units=2 * c * max(units.values(), default=0) + 4 * max(trained_units.values(), default=0),
        activations=activation_bytes(arch, shape, audio_trained),
        overhead=OVERHEAD_GIB * GIB,
        step_scratch=4 * scratch[shape.optimizer] / shards,
    )


def smallest_gpu_count(arch: Architecture, shape: TrainingShape, gpu_memory_gb: float, most: int = 64) -> int | None:
    for gpus in range(1, most + 1):
        if plan_memory(arch, replace(shape, gpus=gpus)).fits(gpu_memory_gb):
            return gpus
    return None


def memory_table(arch: Architecture, shapes: list[TrainingShape], gpu_memory_gb: float | None) -> str:
    """A Markdown table: one column per shape (usually per GPU count), GiB per GPU."""
    plans = [plan_memory(arch, shape) for shape in shapes]
    header = ["per GPU (GB)"] + [f"{s.gpus} GPU{'s' if s.gpus > 1 else ''}" for s in shapes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, (label, _) in enumerate(plans[0].rows()):
        lines.append("| " + " | ".join([label] + [gib(plan.rows()[index][1]) for plan in plans]) + " |")
    if gpu_memory_gb is not None:
        fits = ["yes" if plan.fits(gpu_memory_gb) else "no" for plan in plans]
        lines.append("| " + " | ".join([f"fits {gpu_memory_gb:g} GB"] + fits) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- from the workflow's config


def model_config_json(model: dict) -> Path | None:
    """The downloaded model's config.json once it is there, else the architecture copy (or None)."""
    downloaded = Path(model["path"]) / "config.json"
    if downloaded.is_file():
        return downloaded
    return architecture_path(model["architecture"]) if model.get("architecture") else None


def scheme_modules(config: dict) -> dict[tuple[str, ...], list[str]]:
    """Trainable-module sets of the grid's runs, each with the schemes (and entries) that train it."""
    found: dict[tuple[str, ...], list[str]] = {}
    grid = config.get("grid", {})
    for entry in [*grid.get("monolingual", []), *grid.get("crosslingual", [])]:
        for scheme in entry["schemes"]:
            settings = {**config.get("schemes", {}).get(scheme, {}), **entry.get("scheme_settings", {}).get(scheme, {})}
            if "trainable_modules" in settings:
                users = found.setdefault(tuple(settings["trainable_modules"]), [])
                if scheme not in users:
                    users.append(scheme)
    return found


def optimizer_on(training: TrainingSettings, gpu: bool) -> str:
    """AdamW's implementation a job uses (train.optimizer_implementation): auto = fused on a GPU, else the for-loop."""
    return training.optimizer if training.optimizer != "auto" else "fused" if gpu else "forloop"


def training_shape(config: dict, modules: tuple[str, ...], **overrides) -> TrainingShape:
    training = TrainingSettings.from_dict(config.get("training", {}), "config training")
    gpus = config.get("resources", {}).get("finetune", {}).get("gpu", 0)
    shape = TrainingShape(
        trainable_modules=modules,
        optimizer=optimizer_on(training, gpus > 0),
        precision=training.precision,
        gpus=max(1, gpus),
        per_device_batch_size=training.per_device_batch_size,
        gradient_checkpointing=training.gradient_checkpointing,
        freeze_token_embeddings=training.freeze_token_embeddings,
        lora=bool(config.get("model", {}).get("lora")),
    )
    return replace(shape, **{key: value for key, value in overrides.items() if value is not None})


def check_memory_plan(config: dict) -> None:
    """Refuse, before any job runs, a fine-tuning job that cannot fit its GPU (only when it runs on
    GPUs and resources.finetune.gpu_memory_gb says how big they are)."""
    finetune = config.get("resources", {}).get("finetune", {})
    card = finetune.get("gpu_memory_gb")
    config_json = model_config_json(config["model"])
    if finetune.get("gpu", 0) < 1 or card is None or config_json is None:
        return
    arch = read_architecture(config_json)
    for modules, schemes in scheme_modules(config).items():
        shape = training_shape(config, modules)
        plan = plan_memory(arch, shape)
        if not plan.fits(card):
            raise MemoryPlanError(refusal(arch, shape, plan, card, schemes, config_json))


def refusal(
    arch: Architecture, shape: TrainingShape, plan: MemoryPlan, card: float, schemes: list[str], config_json: Path
) -> str:
    enough = smallest_gpu_count(arch, shape, card)
    remedies = [
        f"set resources.finetune.gpu: {enough} (the fewest GPUs that fit)" if enough else "no GPU count up to 64 fits",
        "lower training.per_device_batch_size",
    ]
    if not shape.gradient_checkpointing:
        remedies.append("set training.gradient_checkpointing: true")
    remedies.append("train fewer modules (schemes.<scheme>.trainable_modules) or use a bigger card")
    gpus = f"{shape.gpus} GPU{'s' if shape.gpus > 1 else ''}"
    return (
        f"config resources.finetune: fine-tuning ({', '.join(schemes)}: trains {', '.join(shape.trainable_modules)}; "
        f"{shape.precision}, {gpus}, per_device_batch_size {shape.per_device_batch_size} × {shape.sequence_tokens} tokens, "
        f"gradient_checkpointing {'on' if shape.gradient_checkpointing else 'off'}) needs {gib(plan.total)} GB per GPU; "
        f"the card has {card:g} GB (resources.finetune.gpu_memory_gb). Per GPU: {plan.breakdown()}. "
        f"To fit: {', or '.join(remedies)}. Model shape from {config_json}; "
        "`lalm-slu plan-memory --configfile <config>` prints the table."
    )


def check_job_fits(settings: dict, processes: int, card_gb: float) -> MemoryPlan:
    """The fine-tuning job's own check, before it loads anything: its settings (as the trainer gets them) on
    `processes` GPUs of `card_gb` each. The planning-time check cannot see the cards a job lands on."""
    training = TrainingSettings.from_dict(settings["training"], "fine-tuning settings: training")
    scheme = settings["scheme"]
    config_json = Path(settings["model"]["path"]) / "config.json"
    arch = read_architecture(config_json)
    shape = TrainingShape(
        trainable_modules=tuple(scheme["trainable_modules"]),
        precision=training.precision,
        gpus=processes,
        per_device_batch_size=training.per_device_batch_size,
        gradient_checkpointing=training.gradient_checkpointing,
        freeze_token_embeddings=training.freeze_token_embeddings,
        lora=bool(settings["model"].get("lora")),
        optimizer=optimizer_on(training, True),
    )
    plan = plan_memory(arch, shape)
    if not plan.fits(card_gb):
        raise MemoryPlanError(refusal(arch, shape, plan, card_gb, [scheme.get("name", "?")], config_json))
    return plan
