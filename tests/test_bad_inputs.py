"""Bad input never crashes obscurely, never passes silently, never reaches a shell.

Each case is one bad input or fault a user could meet; it asserts the named error (file and line, or
config key, and a non-zero exit) or the documented repair with its count, and that nothing computed
before is lost. docs/RELIABILITY.md lists the classes and points here.
"""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import soundfile
import yaml
from conftest import REPO, WorkflowCopy

# A file or folder name a shell would split, expand or run, and its parts.
NASTY = "it's \"a\" $(rm -f canary) `rm -f canary`; rm -f canary &"


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def slurp_release_record(slurp_id, recordings, sentence="wake me at five am",
                         annotation="wake me at [time : five am]", scenario="alarm", action="set") -> dict:
    return {"slurp_id": slurp_id, "sentence": sentence, "sentence_annotation": annotation, "scenario": scenario,
            "action": action, "recordings": [{"file": name} for name in recordings]}  # fmt: skip


def write_jsonl(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def write_tone(path, seconds=0.3, rate=16_000, amplitude=0.2, subtype=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = amplitude * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)
    soundfile.write(path, samples.astype(np.float32), rate, subtype=subtype)


# ================================================================ security: nothing reaches a shell


def recorded_corpus_config(source: str, audio_root: str) -> dict:
    config = default_config()
    config["corpora"] = {
        "tiny": {"reader": "slurp_release", "source": source, "languages": ["en"], "speech": "recorded",
                 "audio_root": audio_root, "options": {"recording": "first"}}
    }  # fmt: skip
    config["grid"] = {"monolingual": [], "crosslingual": []}
    config["demo_model"] = {}
    return config


@pytest.mark.slow
def test_file_names_with_shell_syntax_reach_jobs_as_one_argument_and_run_nothing(tmp_path):
    copy = WorkflowCopy(tmp_path)
    source, audio_root = f"corpora/en US/{NASTY}", f"audio root/{NASTY}"
    for split, name in (("train", "train"), ("dev", "devel"), ("test", "test")):
        write_jsonl(copy.root / source / f"{name}.jsonl", [slurp_release_record(f"{split}1", [f"{split} 1.flac"])])
        write_tone(copy.root / audio_root / f"{split} 1.flac")
    (copy.root / "config.yaml").write_text(yaml.safe_dump(recorded_corpus_config(source, audio_root)))
    (copy.root / "canary").write_text("still here\n")
    copy.snakemake("results/speech/tiny/en/test.parquet")
    assert (copy.root / "canary").exists()
    manifest = copy.root / "results/speech/tiny/en/test.parquet"
    assert soundfile.info(next((copy.root / "results/speech/tiny/en/test").glob("*.flac"))).samplerate == 16_000
    assert manifest.stat().st_size > 0


def planned_commands(copy: WorkflowCopy, *targets: str) -> list[list[str]]:
    """Every planned job's shell command, split as the shell would split it."""
    output = copy.snakemake("--dry-run", "--printshellcmds", *targets).stdout
    return [shlex.split(line.strip()) for line in output.splitlines() if "python -m lalm_slu" in line]


def test_planned_commands_keep_every_config_path_and_option_one_argument(tmp_path):
    copy = WorkflowCopy(tmp_path)
    config = recorded_corpus_config(f"corpora/{NASTY}", f"audio/{NASTY}")
    config["corpora"]["hub"] = {
        "reader": "speech_massive_hub", "source": "FBK-MT/Speech-MASSIVE", "languages": ["fr"],
        "locales": {"fr": "fr-FR"}, "download": {"corpus": "speech_massive"}, "speech": "recorded", "audio_root": ".",
        "options": {"cache_dir": f"hf cache/{NASTY}", "audio_dir": f"audio dir/{NASTY}"},
    }  # fmt: skip
    (copy.root / "config.yaml").write_text(yaml.safe_dump(config))
    (copy.root / f"corpora/{NASTY}").mkdir(parents=True)
    commands = planned_commands(copy, "results/speech/tiny/en/test.parquet", "results/manifests/hub/fr/test.parquet")
    arguments = [argument for command in commands for argument in command]
    assert f"corpora/{NASTY}" in arguments
    assert f"audio/{NASTY}" in arguments
    assert f"hf cache/{NASTY}" in arguments  # the download job's --cache-dir
    assert f"cache_dir=hf cache/{NASTY}" in arguments and f"audio_dir=audio dir/{NASTY}" in arguments
    assert len(commands) == 4  # download, two prepare-corpus, ingest-audio


@pytest.mark.parametrize(
    "path",
    ["data/en\nUS.jsonl", "data/en-US.jsonl\n", "\rdata", "-data/en-US.jsonl", ""],
    ids=["newline-inside", "trailing-newline", "carriage-return", "leading-dash", "empty"],
)
def test_schema_refuses_a_path_no_command_line_can_carry(path):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = default_config()
    config["corpora"]["slurp"]["source"] = {"en": path}
    with pytest.raises(WorkflowError, match="source"):
        validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
