"""A tiny Qwen2-Audio (Whisper tiny.en audio tower, a 2-layer 64-wide LLM) and a few eSpeak clips, for tests.

Built once per test session into a shared temp directory; test modules import `tiny_assets` as a fixture.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lalm_slu.demo_model.build import DEFAULT_ARCHITECTURE

REPO = Path(__file__).resolve().parents[1]

INSTRUCTION = 'Give scenario, action and entities as JSON: {"scenario": ..., "action": ..., "entities": [...]}.'

# The audio side must keep Whisper tiny's shape (its weights load strictly); the text side is as small as it gets.
TINY_ARCHITECTURE = {
    "audio": DEFAULT_ARCHITECTURE["audio"],
    "text": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
    },
    "vocab_size": 400,
}

# (id, text, scenario, action, entities); lengths vary so batches need padding.
UTTERANCES = [
    ("u0", "wake me up at seven am", "alarm", "set", [{"type": "time", "filler": "seven am"}]),
    (
        "u1",
        "will it rain in paris tomorrow",
        "weather",
        "query",
        [{"type": "place_name", "filler": "paris"}, {"type": "date", "filler": "tomorrow"}],
    ),
    ("u2", "play some jazz", "play", "music", [{"type": "music_genre", "filler": "jazz"}]),
    ("u3", "turn the lights off", "iot", "hue_lightoff", []),
    (
        "u4",
        "cancel my meeting with john on friday afternoon",
        "calendar",
        "remove",
        [
            {"type": "person", "filler": "john"},
            {"type": "date", "filler": "friday"},
            {"type": "timeofday", "filler": "afternoon"},
        ],
    ),
    ("u5", "what time is it", "datetime", "query", []),
    ("u6", "tell me a joke", "general", "joke", []),
    ("u7", "set the volume to five", "audio", "volume_up", []),
]


@dataclass(frozen=True)
class TinyAssets:
    model_dir: Path
    speech_manifest: Path  # every utterance with an eSpeak clip
    text_manifest: Path  # the same utterances without audio
    root: Path


def subprocess_env() -> dict:
    """Child processes: this checkout's package, one thread, no network."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def build_tiny_assets(root: Path) -> TinyAssets:
    import soundfile

    from lalm_slu.demo_model.build import build_demo_model
    from lalm_slu.data.records import Utterance, write_manifest
    from lalm_slu.data.slu_json import format_target
    from lalm_slu.speech.tts import ESpeakSynthesizer, Voice

    assets = TinyAssets(root / "model", root / "speech.parquet", root / "text.parquet", root)
    if (root / "done").exists():
        return assets
    root.mkdir(parents=True, exist_ok=True)
    texts = [INSTRUCTION] * 3
    for _, text, scenario, action, entities in UTTERANCES:
        texts += [text, format_target(scenario, action, entities)]
    build_demo_model(texts, assets.model_dir, architecture=TINY_ARCHITECTURE)
    synthesizer = ESpeakSynthesizer()
    voice = Voice("en-us", rate_wpm=190)
    speech, text_only = [], []
    for utt_id, text, scenario, action, entities in UTTERANCES:
        audio = synthesizer.synthesize(text, voice)
        path = root / "audio" / f"{utt_id}.flac"
        path.parent.mkdir(exist_ok=True)
        soundfile.write(path, audio, 16_000)
        fields = dict(
            id=utt_id,
            corpus="tiny",
            lang="en",
            split="train",
            text=text,
            scenario=scenario,
            action=action,
            entities=entities,
        )
        speech.append(Utterance(**fields, audio=str(path), duration_s=len(audio) / 16_000, voice=voice.key))
        text_only.append(Utterance(**fields))
    write_manifest(speech, assets.speech_manifest)
    write_manifest(text_only, assets.text_manifest)
    (root / "done").write_text(json.dumps({"python": sys.version}))
    return assets


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> TinyAssets:
    import torch

    torch.set_num_threads(1)
    # Shared by every module importing this fixture (each gets its own fixture instance, the build is cached).
    return build_tiny_assets(tmp_path_factory.getbasetemp() / "tiny-qwen2-audio")


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as Slurm ends a job (torchrun's workers run in
    sessions of their own, so killing torchrun's process group would leave them training)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        tree.append(pending.pop())
        pending.extend(children.get(tree[-1], []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def checkpoint_step(work_dir: Path) -> int:
    """The step of the newest complete checkpoint (0: none yet)."""
    steps = [int(p.name.removeprefix("step-")) for p in (work_dir / "checkpoints").glob("step-*")
             if p.name.removeprefix("step-").isdigit()]
    return max(steps, default=0)
