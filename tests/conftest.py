"""Shared fixtures: tiny manifests, and a runner for the workflow in a scratch copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The tests test this checkout, whichever checkout the environment's editable install points to.
sys.path.insert(0, str(REPO / "src"))

from lalm_slu.data.records import Utterance, write_manifest  # noqa: E402
BIN = Path(sys.executable).parent

INTENTS = [
    ("alarm", "set", "wake me up at seven"),
    ("weather", "query", "will it rain today"),
    ("play", "music", "play some jazz"),
    ("iot", "hue_lightoff", "turn the lights off"),
    ("calendar", "remove", "cancel my meeting"),
]


def make_utterances(count: int, lang: str = "en", split: str = "train", prefix: str = "utt") -> list[Utterance]:
    """`count` utterances cycling through INTENTS (so intent frequencies are nearly equal)."""
    utterances = []
    for index in range(count):
        scenario, action, text = INTENTS[index % len(INTENTS)]
        utterances.append(
            Utterance(
                id=f"{prefix}{index:04d}",
                corpus="tiny",
                lang=lang,
                split=split,
                text=f"{text} number {index}",
                scenario=scenario,
                action=action,
            )
        )
    return utterances


@pytest.fixture
def manifest_file(tmp_path):
    """Write utterances to a manifest under tmp_path and return its path."""

    def write(utterances, name="manifest.parquet"):
        return write_manifest(utterances, tmp_path / name)

    return write


def subprocess_env() -> dict:
    """Environment for child processes: this checkout's package, this venv, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


class WorkflowCopy:
    """The workflow (Snakefile, rules, schema, package source) copied into a scratch directory."""

    def __init__(self, root: Path, source: Path = REPO):
        self.root = root
        if source == REPO:
            for name in ("Snakefile", "config.yaml"):
                shutil.copy2(REPO / name, root / name)
            for directory in ("workflow", "envs"):
                shutil.copytree(REPO / directory, root / directory)
            shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
        else:  # a whole scratch workflow, with its results and Snakemake's records
            shutil.copytree(source, root, symlinks=True)
        self.env = subprocess_env()
        self.env["PYTHONPATH"] = str(root / "src")

    def clone(self, root: Path) -> "WorkflowCopy":
        return WorkflowCopy(root, source=self.root)

    def snakemake(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(BIN / "snakemake"), "--cores", "2", *args]
        result = subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def summary(self) -> dict[str, tuple[str, str, str]]:
        """output file -> (rule, status, plan) from `snakemake --summary`."""
        lines = self.snakemake("--summary").stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
        rows = {}
        for line in lines[start + 1 :]:
            fields = line.split("\t")
            if len(fields) == 6:
                rows[fields[0]] = (fields[2], fields[4], fields[5])
        return rows

    def pending(self) -> set[str]:
        return {path for path, (_, _, plan) in self.summary().items() if plan == "update pending"}


@pytest.fixture
def workflow_copy(tmp_path):
    return WorkflowCopy(tmp_path)
