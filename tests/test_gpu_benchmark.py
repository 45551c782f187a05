"""The GPU fine-tuning benchmark runs the trainer's sharded path; here at tiny size on CPU, as 2 gloo processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from tiny_model import subprocess_env

pytestmark = pytest.mark.slow


def test_the_gpu_benchmark_runs_two_processes_at_tiny_size_and_writes_its_measurements(tmp_path):
    out = tmp_path / "gpu_finetune_step.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(REPO / "benchmarks" / "gpu_finetune_step.py"), "--tiny", "--global-batch", "8",
               "--per-device-batch", "2", "--steps", "2", "--out", str(out)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["processes"] == 2 and report["parameters"]["accumulation"] == 2
    measured = report["measurements"]
    assert len(measured["step_s_all"]) == 2 and measured["step_s"] > 0
    # 8 items per step: each ~82 tokens as text, ~145 with a 3-s clip's 75 audio tokens.
    assert 8 * 80 <= measured["tokens_per_step"] <= 8 * 150
    assert measured["model_tflops_per_step"] > 0 and measured["mfu"] is None  # no known peak for a CPU
