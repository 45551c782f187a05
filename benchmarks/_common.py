"""Shared set-up for the benchmarks: the demo model (or a freshly built one of the same shape), SLURP test
sentences spoken by demo eSpeak voices, the trainer's optimizer step, and the result file."""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from lalm_slu.model.batches import ChatItem  # noqa: E402
from lalm_slu.config.layered import load_config  # noqa: E402
from lalm_slu.data.corpora.common import BadRecordPolicy  # noqa: E402
from lalm_slu.data.corpora.slurp import read_slurp_release  # noqa: E402
from lalm_slu.model.loss import answer_loss  # noqa: E402
from lalm_slu.data.records import Utterance  # noqa: E402
from lalm_slu.config.settings import TrainingSettings  # noqa: E402
from lalm_slu.data.slu_json import format_target  # noqa: E402
from lalm_slu.speech.tts import ESpeakSynthesizer, Voice  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DEMO_MODEL = REPO / "models" / "demo-qwen2-audio"
# The demo's training voices (config.yaml, speech.voices.en.train).
VOICES = [
    Voice("en-us+m1", 150, 45),
    Voice("en-us+m3", 170, 50),
    Voice("en-us+f2", 160, 60),
    Voice("en-us+f4", 180, 55),
]
# The demo's own settings, so that benchmarks measure what the pipeline runs.
DEMO_CONFIG = load_config(workdir=REPO)
DEMO_TRAINING = TrainingSettings.from_dict(DEMO_CONFIG["training"], "config.yaml training")
INSTRUCTION = DEMO_CONFIG["prompt"]["instruction"]


def set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def slurp_sentences(count: int, seed: int = 0) -> list[Utterance]:
    """A seeded sample of the vendored SLURP test sentences (realistic lengths and targets)."""
    logging.getLogger("lalm_slu.data.corpora").setLevel(logging.ERROR)  # the reader reports each dropped record
    utterances = [
        u
        for u in read_slurp_release(REPO / "data" / "slurp", "slurp", "en", BadRecordPolicy("drop"))
        if u.split == "test"
    ]
    return random.Random(seed).sample(utterances, count)


def with_speech(utterances: list[Utterance], work: Path) -> list[Utterance]:
    """Each utterance spoken by one of the demo voices, written as a 16 kHz FLAC under `work`."""
    import soundfile

    synthesizer = ESpeakSynthesizer()
    spoken = []
    for index, utt in enumerate(utterances):
        audio = synthesizer.synthesize(utt.text, VOICES[index % len(VOICES)], seed=index)
        path = work / f"{index:05d}.flac"
        soundfile.write(path, audio, 16_000)
        spoken.append(Utterance(**{**utt.__dict__, "audio": str(path), "duration_s": len(audio) / 16_000}))
    return spoken


def chat_items(utterances: list[Utterance], modality: str, with_answer: bool = True) -> list[ChatItem]:
    from lalm_slu.data.audio import load_audio

    items = []
    for utt in utterances:
        answer = format_target(utt.scenario, utt.action, utt.entities) if with_answer else None
        if modality == "speech":
            items.append(ChatItem(INSTRUCTION, answer, audio=load_audio(utt.audio)))
        else:
            items.append(ChatItem(INSTRUCTION, answer, text=utt.text))
    return items


def model_path(work: Path) -> tuple[str, str]:
    """The shipped demo model, or (before it exists) a fresh one of the same architecture."""
    if (DEMO_MODEL / "config.json").exists():
        return str(DEMO_MODEL), "shipped demo model"
    from lalm_slu.demo_model.build import build_demo_model

    texts = [INSTRUCTION] + [u.text for u in slurp_sentences(2000, seed=1)]
    build_demo_model(texts, work / "fresh-demo-model")
    return str(work / "fresh-demo-model"), "freshly built demo-shaped model (random LLM, Whisper tiny.en encoder)"


def optimizer_step(model, optimizer, batch: dict, params: list, encoder_frozen: bool,
                   dtype: torch.dtype = torch.float32) -> float:
    """One step as the trainer takes it: forward (under autocast unless fp32), backward, clip, AdamW."""
    model.train()
    if encoder_frozen:
        model.model.audio_tower.eval()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = answer_loss(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return float(loss.detach())


def scratch_dir() -> Path:
    """A temporary directory for clips and a freshly built model, removed when the benchmark exits."""
    path = Path(tempfile.mkdtemp(prefix="lalm-slu-bench-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.exists() else []


def cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_flags(wanted: tuple[str, ...]) -> list[str]:
    """Which of `wanted` the CPU has: matrix kernels (and bf16 autocast) speed differ with them."""
    for line in _cpuinfo():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in wanted if flag in present]
    return []


def write_result(name: str, parameters: dict, measurements: dict, targets: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            # Two 2-core machines measured 1.6x apart (random-batch text step 0.54 vs 0.83 s): name the CPU.
            "processor": cpu_model(),
            "cpu_flags": cpu_flags(("avx2", "avx512f", "avx512_bf16", "amx_bf16")),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "parameters": parameters,
        "measurements": measurements,
        "targets": targets,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"measurements": measurements, "targets": targets}, indent=2))
    return path
